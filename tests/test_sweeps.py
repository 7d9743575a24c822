"""The W&B sweep files of examples/sweeps/ (docs/reports.md#sweeps): every parameter is a setting of the recipe
the sweep runs, every value one that setting takes, as the W&B agent writes it on the command line, and a run
launched with those arguments writes the sweep's metric to its summary, best in the sweep's direction; and the
settings files of examples/configs/ that `make demo` and `make demo-brats` pass with --config."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args  # how `wandb agent` writes ${args}

from toolkit import TrainConfig, parse_config

from .utils import ROOT, load_recipe, run_env

DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
                 "q_log_uniform", "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values", "normal",
                 "q_normal", "log_normal", "q_log_normal", "beta", "q_beta"}
SWEEPS = sorted((ROOT / "examples" / "sweeps").glob("*.yaml"))
#: settings that make a sweep's command a seconds-long run on built-in synthetic data, per recipe file
TINY = {"brain_mri.py": {"data_dir": "", "synthetic_images": 12, "image_size": 64, "batch_size": 4,
                         "num_workers": 1, "epochs": 1, "wandb_mode": "disabled"}}


def _config_class(program: Path) -> type:
    """The recipe's config dataclass: the TrainConfig subclass defined in ``program`` that no other one there extends."""
    module = load_recipe(program.stem)
    own = [c for c in vars(module).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
           and issubclass(c, TrainConfig) and c.__module__ == module.__name__]
    leaves = [c for c in own if not any(o is not c and issubclass(o, c) for o in own)]
    assert len(leaves) == 1, f"{program}: expected one config class, found {leaves}"
    return leaves[0]


def _choices(spec: dict) -> list:
    """The values a sweep parameter can take that matter here: its value, its values, or its range's ends."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec["min"], spec["max"]]


def _argv(values: dict) -> list[str]:
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]


def _load(path: Path) -> tuple[dict, Path]:
    sweep = yaml.safe_load(path.read_text())
    program = ROOT / sweep["program"]
    assert program.is_file(), f"{path}: program {sweep['program']} is no file"
    assert "${args}" in sweep["command"] and "${program}" in sweep["command"], sweep["command"]
    return sweep, program


def test_there_are_sweeps():
    assert [p.name for p in SWEEPS] == ["brain_mri.yaml"]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_value_is_a_setting_the_recipe_takes(path):
    sweep, program = _load(path)
    cls = _config_class(program)
    params = sweep["parameters"]
    first = {key: _choices(spec)[0] for key, spec in params.items()}
    for key, spec in params.items():
        for value in _choices(spec):
            cfg = parse_config(cls, _argv({**first, key: value}), exit_on_error=False)
            assert getattr(cfg, key) == value, (path.name, key, value)
    assert sweep["metric"]["goal"] in ("maximize", "minimize") and sweep["method"] in ("grid", "random", "bayes")
    for key, spec in params.items():  # W&B's sweep schema (the server checks it; these are its names)
        assert spec.get("distribution", "constant") in DISTRIBUTIONS, (key, spec)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_a_sweep_run_writes_its_metric_best_in_the_sweeps_direction(path, tmp_path):
    sweep, program = _load(path)
    values = {key: _choices(spec)[0] for key, spec in sweep["parameters"].items()}
    values.update(TINY[program.name], output_dir=str(tmp_path / "runs"), synthetic_dir=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, str(program), *_argv(values)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert isinstance(summary[sweep["metric"]["name"]], float)  # what set_summary gives the W&B run summary
    assert summary["mode"] == sweep["metric"]["goal"][:3]  # "max" / "min"


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_make_targets_settings_files_are_settings_of_the_recipe(path, tmp_path, monkeypatch):
    """examples/configs/demo*.yaml (`make demo`, `make demo-brats` pass them with --config): every key a setting of
    recipes/brain_mri.py with a value it takes, and the command line's value wins over the file's. Run from a
    folder where a data_dir of the file exists (make demo-brats writes it before training)."""
    cls = _config_class(ROOT / "recipes" / "brain_mri.py")
    values = yaml.safe_load(path.read_text())
    monkeypatch.chdir(tmp_path)
    for folder in filter(None, str(values.get("data_dir", "")).split(",")):
        (tmp_path / folder).mkdir(parents=True)
    cfg = parse_config(cls, ["--config", str(path)], exit_on_error=False)
    for key, value in values.items():  # as the command line would give it (widths: "8,16,32,64")
        word = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        assert getattr(cfg, key) == getattr(parse_config(cls, [f"--{key}={word}"], exit_on_error=False), key), key
        assert getattr(cfg, key) != getattr(cls(), key), f"{key}: the default already"
    assert parse_config(cls, ["--config", str(path), "--epochs", "3"], exit_on_error=False).epochs == 3


def test_make_demo_passes_its_settings_file_and_names_the_run_unless_args_do():
    def launch_line(*args):
        out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if "recipes/brain_mri.py" in line)

    line = launch_line("demo", "ARGS=--epochs 5")
    assert "--config examples/configs/demo.yaml --run-name demo-" in line and line.endswith("--epochs 5")
    assert line.count("--run-name") == 1 and launch_line("demo", "ARGS=--run-name mine").count("--run") == 1
    assert "--config examples/configs/demo_brats.yaml --run-name demo-brats-" in launch_line("demo-brats")
