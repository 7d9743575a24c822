"""Typed dataclass configs with command-line overrides.

Each recipe declares a dataclass that extends :class:`TrainConfig`. Every field has a
default and a trailing one-line comment giving its meaning and unit; that comment is
also the ``--help`` text. ``parse_config(Config, argv)`` accepts ``--key value``,
``--key=value`` and, for booleans, a bare ``--key``. Values are converted by the
field's declared type; an unknown key is refused with the list of valid ones, and so is a
key given twice (``--some-key`` and ``--some_key`` are one key). ``--config FILE`` reads settings
from a JSON or YAML file first (:mod:`toolkit.config_file`); the command line's win.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

__all__ = ["ConfigError", "TrainConfig", "check_folder_name", "parse_config", "config_help", "run_recipe"]

C = TypeVar("C")

WANDB_MODES = ("online", "offline", "disabled")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message says why."""


@dataclass
class TrainConfig:
    """Settings every recipe shares: run folder, schedule, optimiser, logging."""

    run_name: str = ""  # run folder name under output_dir; "" = <recipe>-<date>-<time>
    output_dir: str = "runs"  # parent folder of run folders
    resume: bool | str = False  # continue the run (run_name, else the newest) from its state/; auto = if it has one
    epochs: int = 10  # passes over the training set
    max_minutes: float = 0.0  # wall-clock training budget in minutes; the LR schedule is fitted to it; 0 = none
    batch_size: int = 16  # samples per process per micro-step
    grad_accum_steps: int = 1  # micro-steps per optimizer step
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # peak learning rate (per optimizer step)
    weight_decay: float = 1e-4  # decoupled weight decay (AdamW) or L2 (SGD), per step
    momentum: float = 0.9  # SGD momentum (Nesterov); unused by AdamW
    scheduler: str = "onecycle"  # onecycle | cosine | constant, stepped once per optimizer step
    warmup_fraction: float = 0.1  # fraction of all optimizer steps spent warming the LR up
    ema_decay: float = 0.0  # weight average per optimizer step, e.g. 0.999 (~1,000 steps); validation uses it; 0 = off
    max_grad_norm: float = 1.0  # clip the global gradient L2 norm to this; 0 = no clipping
    seed: int = 0  # base random seed (each process adds its rank)
    num_workers: int = 2  # DataLoader worker processes per training process
    channels_last: bool = True  # NHWC memory layout for 4-D tensors (faster convolutions)
    eval_batch_size: int = 0  # samples per process per evaluation step; 0 = 2 x batch_size
    log_every: int = 10  # optimizer steps between step-level W&B logs
    checkpoint_every: int = 0  # optimizer steps between resumable states inside an epoch; 0 = only at epoch ends
    keep_states: int = 2  # newest resumable states kept under state/ (older ones deleted), >= 1
    eval_every: int = 1  # validate every N epochs and after the last (best.pth and patience follow it); 1 = every epoch
    patience: int = 0  # stop after this many validations without improvement of the monitored metric; 0 = never
    min_delta: float = 0.0  # smallest change of the monitored metric that counts as an improvement (its units)
    wandb_mode: str = ""  # online | offline | disabled; empty = $WANDB_MODE when set, else offline
    wandb_project: str = "toolkit"  # W&B project name

    def __post_init__(self) -> None:
        _check_types(self)
        positive = ("batch_size", "grad_accum_steps", "log_every", "keep_states", "eval_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("epochs", "max_minutes", "weight_decay", "max_grad_norm", "num_workers", "eval_batch_size",
                        "checkpoint_every", "patience", "min_delta")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**31:  # seed + process index must stay a valid numpy seed
            raise ConfigError(f"seed must be in [0, 2**31), got {self.seed}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 = no weight average; e.g. 0.999), got {self.ema_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1) (SGD; 0 = none), got {self.momentum}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        _check_choice("scheduler", self.scheduler, ("onecycle", "cosine", "constant"))
        if isinstance(self.resume, str) and self.resume != "auto":
            raise ConfigError(f"resume must be true, false or auto, got {self.resume!r}")
        if self.wandb_mode == "":
            self.wandb_mode = _wandb_mode_from_env()
        _check_choice("wandb_mode", self.wandb_mode, WANDB_MODES)
        if self.run_name:  # "" = a name from the recipe and the time
            check_folder_name("run_name", self.run_name)


def check_folder_name(field: str, value: str) -> None:
    """ConfigError unless ``value`` is a plain folder name (not empty, no ``/``, not ``.`` or ``..``): the name
    of a folder made under an output folder, which must not land beside it, above it or elsewhere."""
    if not value or Path(value).name != value or value in (".", ".."):
        raise ConfigError(f"{field} must be a plain folder name (no '/', not . or ..), got {value!r}")


def _wandb_mode_from_env() -> str:
    """W&B mode from the ``WANDB_MODE`` environment variable (W&B's own convention), else ``offline``."""
    raw = os.environ.get("WANDB_MODE", "").strip().lower()
    mode = {"": "offline", "dryrun": "offline", "run": "online"}.get(raw, raw)
    if mode not in WANDB_MODES:
        raise ConfigError(f"the environment variable WANDB_MODE={raw!r} must be one of {', '.join(WANDB_MODES)} "
                          "(or unset; --wandb-mode overrides it)")
    return mode


def _check_types(cfg: Any) -> None:
    """Refuse a field whose value is not of its declared type (configs built in code, not parsed).

    An int is accepted for a float field; bool is not accepted for int/float (nor the reverse);
    NaN and infinity are refused for float fields.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        tp, value = hints[f.name], getattr(cfg, f.name)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None:
                continue
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = next((a for a in options if type(value) is a), options[0])  # bool | str: the type of the value
            origin = typing.get_origin(tp)
        expected = origin or tp
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and value != value or ok and abs(value) == float("inf"):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected in (bool, str, tuple, list):
            ok = isinstance(value, expected)
        else:
            continue
        if not ok:
            raise ConfigError(f"{f.name} must be of type {getattr(expected, '__name__', expected)}, "
                              f"got {type(value).__name__} {value!r}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# --------------------------------------------------------------------------- parsing
def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comment`` of every field assignment in ``cls`` and its bases."""
    comments: dict[str, str] = {}
    pattern = re.compile(r"^\s*(\w+)\s*:[^=#]+=[^#]*#\s*(.+?)\s*$")
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        for line in lines:
            match = pattern.match(line)
            if match:
                comments[match.group(1)] = match.group(2)
    return comments


def _convert(key: str, raw: str, tp: Any) -> Any:
    """Convert the string ``raw`` to the declared type ``tp`` of field ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and raw.lower() in ("none", "null", ""):
            return None
        if args[0] is bool and len(args) > 1:  # bool | str: a boolean word is the bool, any other word the str
            return _convert(key, raw, bool if raw.lower() in _TRUE | _FALSE else args[1])
        return _convert(key, raw, args[0])
    if tp is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"--{key} expects a boolean (true/false), got {raw!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        item = args[0] if args else str
        items = raw.replace(" ", "").split(",") if raw.strip() else []  # "" = no items
        if "" in items:  # "16,,32" or "16,32,": a value left out, not silently dropped
            raise ConfigError(f"--{key} expects comma-separated {getattr(item, '__name__', item)} values, got "
                              f"{raw!r} (an empty item)")
        values = [_convert(key, s, item) for s in items]
        return tuple(values) if origin is tuple else values
    if tp in (int, float, str):
        try:
            return tp(raw)
        except ValueError:
            raise ConfigError(f"--{key} expects {tp.__name__}, got {raw!r}") from None
    raise ConfigError(f"--{key}: unsupported field type {tp!r}")


def config_help(cls: type, prog: str = "") -> str:
    """The ``--help`` text: one line per field with its type, default and meaning."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    lines = [f"usage: {prog or 'recipe'} [--config FILE] [--key value | --key=value ...]   (--some-key and --some_key "
             "both work; FILE: JSON or YAML settings, e.g. a run's config.json, under the command line's)",
             "", (cls.__doc__ or "").strip(), ""]
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), repr(default)))
    # columns as wide as their longest entry (a default longer than 20 characters overflows its column alone)
    wtype = max(len(t) for _, t, _ in rows)
    wdefault = max([len(d) for _, _, d in rows if len(d) <= 20] or [0])
    for name, tname, default in rows:
        lines.append(f"  --{name:<22} {tname:<{wtype}} default {default:<{wdefault}} {comments.get(name, '')}")
    return "\n".join(lines)


def parse_config(cls: type[C], argv: Sequence[str] | None = None, *, exit_on_error: bool = True) -> C:
    """Build ``cls`` from its defaults overridden by ``argv`` (default: ``sys.argv[1:]``).

    Raises :class:`ConfigError` for an unknown key (listing the valid ones), a key given twice, a value
    that does not convert to the field's type, or a value the config refuses. With
    ``exit_on_error`` (the command-line case) the message goes to stderr and the
    process exits with status 2 instead; ``--help`` prints the help and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _parse(cls, argv)
    except ConfigError as err:
        if not exit_on_error:
            raise
        _exit_with(err)


def run_recipe(main: Callable[[], Any]) -> None:
    """A recipe's entry point: call ``main()``; a :class:`ConfigError` raised after parsing (data that do not
    fit the settings, a refused resume) ends the process as a parse error does: ``error: <message>`` on stderr
    (from the process of rank 0 only, not once per process) and exit status 2, no traceback; the run folder of a
    Trainer that had not started training is left as no run (:meth:`~toolkit.trainer.Trainer.abandon`)."""
    try:
        main()
    except ConfigError as err:
        if "toolkit.trainer" in sys.modules:  # a run folder made for a run that never trained: none left
            for trainer in list(sys.modules["toolkit.trainer"].UNSTARTED):
                trainer.abandon()
        _exit_with(err)


def _exit_with(err: ConfigError) -> None:
    """``error: <err>`` on stderr, once (rank 0 of a multi-process launch), then exit status 2."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def _parse(cls: type[C], argv: list[str]) -> C:
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, Path(sys.argv[0]).name))
        raise SystemExit(0)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    from .config_file import file_settings, split_config_flag

    argv, path = split_config_flag(argv)  # --config FILE: its settings under the command line's
    values: dict[str, Any] = {}
    for key, raw in (file_settings(path, names) if path else {}).items():
        try:
            values[key] = _convert(key, raw, hints[key])
        except ConfigError as err:
            raise ConfigError(f"--config {path}: {err}") from None
    given: dict[str, str] = {}  # key -> its token as given, to name both when a key comes twice
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"expected --key or --key=value, got {token!r}")
        key, eq, raw = token[2:].partition("=")
        key = key.replace("-", "_")
        if key not in hints:
            raise ConfigError(f"unknown config key --{key}; valid keys: {', '.join(names)}")
        if key in given:  # the later one would silently win
            raise ConfigError(f"--{key} given twice ({given[key]} and {token.partition('=')[0]}); give it once")
        given[key] = token.partition("=")[0]
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            flag = hints[key] is bool or bool in typing.get_args(hints[key])  # bool | str takes any next word
            word = nxt is not None and not nxt.startswith("--") and (
                hints[key] is not bool or nxt.lower() in _TRUE | _FALSE)
            if flag and not word and nxt is not None and not nxt.startswith("--"):  # a word no boolean reads
                raise ConfigError(f"--{key} expects a boolean (true/false), got {nxt!r}")
            if flag and not word:
                raw = "true"
            elif nxt is None:
                raise ConfigError(f"--{key} needs a value")
            else:
                raw = nxt
                i += 1
        values[key] = _convert(key, raw, hints[key])
        i += 1
    return cls(**values)
