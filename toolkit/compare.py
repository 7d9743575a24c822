"""Helpers for compare scripts: train (or reuse) runs of a recipe, read their results, and write the
comparison table as ``<name>_comparison.json`` (the raw results), ``<name>_comparison.md`` and
``<name>.comparison.json`` (the :mod:`toolkit.comparison` file that `toolkit report` renders).

    from toolkit.compare import RunResult, command_line, train_run, write_comparison

    run_dir = train_run("recipes/x.py", argv, "x-a", output_dir)      # $LAUNCH recipes/x.py ... --run-name x-a
    result = RunResult.load(run_dir)                                 # summary.json, history.json
    write_comparison(Comparison(...), output_dir, "x", raw={...}, footer=f"`{command_line(...)}`")
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import atomic_write, save_json
from .comparison import Comparison
from .config import ConfigError, config_help
from .state_folders import find_state

__all__ = ["DEFAULT_LAUNCH", "LAUNCH_ARGS_FILE", "RUNTIME_KEYS", "has_trained", "settings_of", "started_with",
           "check_run_args", "driver_help", "launch_prefix", "given_flags", "refuse_flags", "split_args", "train_run", "read_json",
           "RunResult", "command_line", "write_comparison"]


def cpu_precision(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU launch's ``--mixed_precision``, as the Makefile picks it: "bf16" where the CPU has bf16 instructions
    (``avx512_bf16`` or ``amx_bf16`` among the flags of ``cpuinfo``), else "no" (emulated bf16 is many times
    slower than fp32); "no" when the file cannot be read."""
    try:
        flags = set(next((ln for ln in Path(cpuinfo).read_text().splitlines() if ln.startswith("flags")),
                         "").split())
    except OSError:
        return "no"
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "no"


#: accelerate of the running Python, so that it is found without the virtual environment activated
DEFAULT_LAUNCH = (f"{shlex.quote(sys.executable)} -m accelerate.commands.launch --cpu --num_processes 1 "
                  f"--mixed_precision {cpu_precision()}")


def launch_prefix(default: str = DEFAULT_LAUNCH) -> str:
    """The launch command: ``$LAUNCH`` when set and not empty, else ``default``."""
    return os.environ.get("LAUNCH") or default


def driver_help(doc: str, cls: type, set_here: Sequence[str], note: str) -> None:
    """Print a compare script's ``--help`` and exit 0: its ``doc``, ``note``, then the settings of its recipe's
    config class ``cls`` (:func:`~toolkit.config.config_help` lines) but those the script sets itself
    (``set_here``, field names), which it refuses."""
    settings = [line for line in config_help(cls).splitlines()
                if line.startswith("  --") and line.split()[0][2:] not in set_here]
    print("\n".join([doc.strip(), "", note, *settings]))
    raise SystemExit(0)


def given_flags(argv: list[str], flags: set[str]) -> set[str]:
    """Which of ``flags`` ``argv`` holds (also as ``--flag=value``)."""
    return set(flags) & {a.split("=")[0] for a in argv}


def _key(token: str) -> str:
    return token[2:].split("=")[0].replace("_", "-")


def split_args(argv: list[str], keys: set[str], takes_value: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """``argv`` split into (the groups whose key is in ``keys``, the other groups), each ``--key value`` /
    ``--key=value`` / bare ``--flag`` group kept whole and in order. Keys are dashed names (``image-size``; an
    ``--image_size`` in argv matches it too). A key in ``takes_value`` always takes the next token, even one
    starting with ``--`` (``--pretrain-args "--epochs 200"``); any other takes it unless it starts with ``--``."""
    picked: tuple[list[str], list[str]] = ([], [])
    i = 0
    while i < len(argv):
        value = i + 1 < len(argv) and (not argv[i + 1].startswith("--") or _key(argv[i]) in takes_value)
        j = i + 2 if value and "=" not in argv[i] else i + 1
        picked[_key(argv[i]) not in keys].extend(argv[i:j])
        i = j
    return picked


def refuse_flags(argv: list[str], flags: set[str], message: str) -> None:
    """:class:`~toolkit.config.ConfigError` ``message`` when ``argv`` holds one of ``flags`` (also as
    ``--flag=value``): under :func:`~toolkit.config.run_recipe`, ``error: <message>`` and exit status 2."""
    if given_flags(argv, flags):
        raise ConfigError(message)


LAUNCH_ARGS_FILE = "launch_args.json"  # the recipe arguments a driver started a run with (train_run)
#: Settings that change how a run is carried out, not what it learns: a run may be reused or resumed with others.
RUNTIME_KEYS = frozenset({"num_workers", "wandb_mode", "wandb_project", "log_every", "resume", "run_name",
                          "output_dir", "checkpoint_every", "keep_states", "eval_batch_size"})


def has_trained(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished run (summary.json) or a saved state."""
    return (Path(run_dir) / "summary.json").is_file() or find_state(Path(run_dir)) is not None


def settings_of(argv: list[str]) -> dict[str, str]:
    """Recipe arguments → {key: value} as a config reads them: ``--some-key v``, ``--some_key=v`` (a bare flag:
    "true"), in any order; :data:`RUNTIME_KEYS` left out."""
    out, i = {}, 0
    while i < len(argv):
        token = str(argv[i])
        if not token.startswith("--"):
            i += 1
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            nxt = i + 1 < len(argv) and not str(argv[i + 1]).startswith("--")
            value, i = (str(argv[i + 1]), i + 1) if nxt else ("true", i)
        if key.replace("-", "_") not in RUNTIME_KEYS:
            out[key.replace("-", "_")] = value
        i += 1
    return out


def started_with(record: Path, asked: dict, trained: bool) -> dict | None:
    """What the JSON file ``record`` says a run (or CV folder) was started with, when that differs from ``asked``
    and ``trained`` (results of it exist, so reusing or resuming them would mix settings); else None, after
    writing ``asked`` to ``record`` (atomically, its folder created). The ``args`` lists of both are compared
    by :func:`settings_of` (order, ``--k=v`` and runtime-only settings do not count)."""
    if trained and record.is_file():
        started = read_json(record)
        started = started if isinstance(started, dict) else {"args": started}
        same = ({k: v for k, v in started.items() if k != "args"} == {k: v for k, v in asked.items() if k != "args"}
                and settings_of(started.get("args", [])) == settings_of(asked.get("args", [])))
        return None if same else started
    record.parent.mkdir(parents=True, exist_ok=True)
    save_json(record, asked)
    return None


def check_run_args(run_dir: str | Path, argv: list[str], where: str = "the comparison") -> None:
    """Record ``argv`` as ``run_dir/launch_args.json``; ConfigError naming the changed settings when the run has
    trained (a summary or a state) with others (:func:`started_with`): reusing or resuming it would mix settings
    into ``where``. Runs without the file (trained before 3 Dec 2026) are taken as they are."""
    run_dir = Path(run_dir)
    old = started_with(run_dir / LAUNCH_ARGS_FILE, {"args": [str(a) for a in argv]}, has_trained(run_dir))
    if old is not None:
        was, now = settings_of(old.get("args", [])), settings_of(argv)
        changed = ", ".join(f"{k} {was.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
                            for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
        raise ConfigError(f"{run_dir} was trained with the arguments {shlex.join(map(str, old.get('args', [])))!r} "
                          f"(changed: {changed}); reusing or resuming it would mix settings into {where}: give "
                          f"the arguments it was trained with, another output folder or name, or remove {run_dir}")


def train_run(script: str | Path, argv: list[str], run_name: str, output_dir: str | Path, *, reuse: bool = True,
              default_launch: str = DEFAULT_LAUNCH) -> Path:
    """Run ``<launch> script *argv --run-name run_name`` unless ``reuse`` and the run has ``summary.json``.

    An interrupted run (a saved state, no summary) is resumed with ``--resume``. ``<run>/launch_args.json``
    records ``argv``: a run that has trained (a summary or a state) with other arguments is neither reused nor
    resumed (:func:`check_run_args`: ConfigError naming the changed settings); runs without the file
    (trained before 3 Dec 2026) are taken as they are. Prints the command; raises
    ``subprocess.CalledProcessError`` when the recipe fails. Returns the run folder.
    """
    run_dir = Path(output_dir) / run_name
    check_run_args(run_dir, argv)
    if reuse and (run_dir / "summary.json").is_file():
        return run_dir
    launch = launch_prefix(default_launch)
    resume = find_state(run_dir) is not None and not given_flags(argv, {"--resume"})  # not twice: refused
    args = [str(script), *argv, "--run-name", run_name] + ["--resume"] * resume
    print(f"training {run_name}: {launch} {shlex.join(args)}", flush=True)
    subprocess.run(f"{launch} {shlex.join(args)}", shell=True, check=True)
    return run_dir


def read_json(path: str | Path) -> Any:
    """Parsed JSON of ``path``; ValueError naming the file when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from err


@dataclass
class RunResult:
    """A finished run's ``summary.json`` and ``history.json``."""

    path: Path
    summary: dict
    history: list[dict]

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunResult":
        run_dir = Path(run_dir)
        summary = read_json(run_dir / "summary.json")
        history = read_json(run_dir / "history.json") if (run_dir / "history.json").is_file() else []
        if not isinstance(summary, dict):
            raise ValueError(f"{run_dir / 'summary.json'}: expected a JSON object, got {type(summary).__name__}")
        if not isinstance(history, list):
            raise ValueError(f"{run_dir / 'history.json'}: expected a list of per-epoch objects")
        return cls(run_dir, summary, history)

    @property
    def best(self) -> dict:
        """The history record of ``summary["best_epoch"]`` (epochs count from 1)."""
        epoch = self.summary.get("best_epoch")
        if not isinstance(epoch, int) or not 1 <= epoch <= len(self.history):
            raise ValueError(f"{self.path / 'summary.json'}: best_epoch is {epoch!r}, expected 1 to "
                             f"{len(self.history)} (the epochs in history.json)")
        return self.history[epoch - 1]

    def json(self, name: str) -> Any:
        """Another JSON file of the run, e.g. ``encoder.json``."""
        return read_json(self.path / name)


def command_line(script: str, argv: list[str]) -> str:
    """The command that reproduces a compare script's call, with the ``LAUNCH`` it ran under."""
    return f"LAUNCH={shlex.quote(os.environ.get('LAUNCH', ''))} python {script} {shlex.join(argv)}"


def write_comparison(comparison: Comparison, output_dir: str | Path, name: str, raw: dict, footer: str = "") -> str:
    """Write ``<name>_comparison.json`` (``raw``), ``<name>_comparison.md`` (the table, the notes, ``footer``) and
    ``<name>.comparison.json`` (``comparison``, ``footer`` added to its notes) under ``output_dir``; print and
    return the table with its notes."""
    out = Path(output_dir)
    text = "\n\n".join([comparison.to_markdown(), *comparison.notes])
    save_json(out / f"{name}_comparison.json", raw)
    atomic_write(out / f"{name}_comparison.md", lambda f: f.write(f"{text}\n\n{footer}\n" if footer else f"{text}\n"),
                 mode="w")
    notes = [*comparison.notes, footer] if footer else comparison.notes
    Comparison(comparison.title, comparison.columns, comparison.rows, comparison.baseline, notes).save(
        out / f"{name}.comparison.json")
    print(text)
    return text
