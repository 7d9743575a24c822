"""The comparison file (toolkit.comparison) and the compare-script helper (toolkit.compare)."""

import json
import shlex
import subprocess
import sys

import pytest

from toolkit.compare import RunResult, command_line, refuse_flags, split_args, train_run, write_comparison
from toolkit.comparison import Column, Comparison, ComparisonError, best_rows
from toolkit.config import ConfigError

from .utils import ROOT, run_env

COLUMNS = [Column("model"), Column("params", "parameters", format=","),
           Column("mse", "MSE", better="lower", format=".4f"), Column("psnr", "PSNR", "dB", better="higher", format=".2f")]


def _table():
    return Comparison("Autoencoders", COLUMNS,
                      [{"model": "linear", "params": 23567, "mse": 0.0189, "psnr": 17.25},
                       {"model": "cnn", "params": 31000, "mse": 0.0101, "psnr": 19.9},
                       {"model": "PCA-15 (baseline)", "params": 12544, "mse": 0.0312, "psnr": None}],
                      baseline=2, notes=["test set"])


def test_round_trip_and_markdown(tmp_path):
    table = _table()
    path = table.save(tmp_path / "x.comparison.json")
    data = json.loads(path.read_text())
    assert data["format"] == "toolkit.comparison/1" and data["baseline"] == 2
    assert data["columns"][3] == {"key": "psnr", "label": "PSNR", "unit": "dB", "better": "higher", "format": ".2f",
                                  "link": False}
    again = Comparison.load(path)
    assert again == table
    assert again.to_markdown().splitlines() == [
        "| model | parameters | MSE | PSNR (dB) |", "|---|---:|---:|---:|",
        "| linear | 23,567 | 0.0189 | 17.25 |", "| cnn | 31,000 | 0.0101 | 19.90 |",
        "| PCA-15 (baseline) | 12,544 | 0.0312 | – |"]
    assert best_rows(again, again.columns[2]) == {1} and best_rows(again, again.columns[3]) == {1}
    assert best_rows(again, again.columns[1]) == set()  # better "none"
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps({"title": "t", "columns": [{"key": "a"}], "rows": [{"a": 1}]}))
    loaded = Comparison.load(minimal)
    assert loaded.baseline is None and loaded.notes == [] and loaded.columns[0].better == "none"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("rows"), "field rows is missing"),
    (lambda d: d["columns"][2].update(better="smaller"), "field columns[2].better is 'smaller', expected one of"),
    (lambda d: d.update(baseline=3), "field baseline is 3, expected null or a row index from 0 to 2"),
    (lambda d: d["rows"][0].update(loss=1.0), "field rows[0].loss is 1.0, expected only the column keys"),
    (lambda d: d["rows"][1].update(mse=[1]), "field rows[1].mse is [1], expected a string, number"),
    (lambda d: d["columns"].append({"key": "mse"}), "field columns[4].key is 'mse', expected a key no other"),
    (lambda d: d["columns"][0].update(colour="red"), "field columns[0] has unknown field(s) colour"),
    (lambda d: d.update(format="other/2"), "field format is 'other/2'"),
    (lambda d: d.update(title=""), "field title is '', expected a non-empty string"),
])
def test_bad_file_names_the_file_and_field(tmp_path, change, message):
    data = _table().to_dict()
    change(data)
    path = tmp_path / "bad.comparison.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ComparisonError) as err:
        Comparison.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_unreadable_file_and_bad_object():
    with pytest.raises(ComparisonError, match="not readable as JSON"):
        Comparison.load("/nonexistent/comparison.json")
    with pytest.raises(ComparisonError, match="field baseline is True"):
        Comparison("t", [Column("a")], [{"a": 1}], baseline=True)


FAKE_RECIPE = '''
import argparse, json, pathlib, sys
p = argparse.ArgumentParser()
p.add_argument("--output-dir"); p.add_argument("--run-name"); p.add_argument("--value", type=float)
p.add_argument("--resume", action="store_true")
a = p.parse_args()
run = pathlib.Path(a.output_dir) / a.run_name
run.mkdir(parents=True, exist_ok=True)
(run / "history.json").write_text(json.dumps([{"score": a.value / 2}, {"score": a.value}]))
(run / "summary.json").write_text(json.dumps({"best_epoch": 2, "trainable_params": 7, "resumed": a.resume}))
print("fake recipe ran", sys.argv[1:])
'''


def test_compare_helper_trains_reuses_and_writes(tmp_path, monkeypatch, capsys):
    script = tmp_path / "fake_recipe.py"
    script.write_text(FAKE_RECIPE)
    out = tmp_path / "runs"
    monkeypatch.setenv("LAUNCH", shlex.quote(sys.executable))
    (out / "done").mkdir(parents=True)  # finished already: reused, not launched
    (out / "done" / "summary.json").write_text(json.dumps({"best_epoch": 1, "trainable_params": 5}))
    (out / "done" / "history.json").write_text(json.dumps([{"score": 0.25}]))
    argv = ["--output-dir", str(out)]
    dirs = {name: train_run(script, [*argv, "--value", str(v)], name, out) for name, v in (("a", 0.5), ("done", 9))}
    printed = capsys.readouterr().out
    assert printed.count("training ") == 1 and f"training a: {shlex.quote(sys.executable)} {script}" in printed
    results = {name: RunResult.load(d) for name, d in dirs.items()}
    assert results["a"].best == {"score": 0.5} and results["a"].summary["resumed"] is False
    assert results["done"].best == {"score": 0.25}
    table = Comparison("Fake", [Column("run", link=True), Column("score", better="higher", format=".2f"),
                                Column("params", format=",")],
                       [{"run": n, "score": r.best["score"], "params": r.summary["trainable_params"]}
                        for n, r in results.items()], notes=["higher is better"])
    command = command_line("recipes/fake.py", argv)
    assert command.startswith("LAUNCH=") and command.endswith(f"python recipes/fake.py --output-dir {out}")
    text = write_comparison(table, out, "fake", raw={"runs": {n: r.best for n, r in results.items()}}, footer="`cmd`")
    assert text == "| run | score | params |\n|---|---:|---:|\n| a | 0.50 | 7 |\n| done | 0.25 | 5 |\n\nhigher is better"
    assert capsys.readouterr().out == text + "\n"
    assert (out / "fake_comparison.md").read_text() == text + "\n\n`cmd`\n"
    assert json.loads((out / "fake_comparison.json").read_text()) == {"runs": {"a": {"score": 0.5}, "done": {"score": 0.25}}}
    # the run of other arguments is not reused (the table would mix settings); the same arguments reuse it
    with pytest.raises(ConfigError, match=r"runs/a was trained with the arguments .*--value 0.5' "
                                          r"\(changed: value '0.5' -> '2'\)"):
        train_run(script, [*argv, "--value", "2"], "a", out)
    assert train_run(script, [*argv, "--value", "0.5"], "a", out) == out / "a"
    # the same settings in another order or form, or other runtime-only settings: the same run
    assert train_run(script, ["--value=0.5", *argv, "--num-workers", "3"], "a", out) == out / "a"
    assert "training " not in capsys.readouterr().out
    assert json.loads((out / "a" / "launch_args.json").read_text()) == {"args": [*argv, "--value", "0.5"]}
    saved = Comparison.load(out / "fake.comparison.json")
    assert saved.rows == table.rows and saved.notes == ["higher is better", "`cmd`"]
    with pytest.raises(ValueError, match=r"summary.json: best_epoch is 3, expected 1 to 1"):
        RunResult(out / "done", {"best_epoch": 3}, [{}]).best
    with pytest.raises(ConfigError, match="^sets --model itself$"):  # run_recipe: error: ..., exit status 2
        refuse_flags(["--lr", "1", "--model=cnn"], {"--model"}, "sets --model itself")


def test_split_args_keeps_each_group_whole():
    argv = ["--fractions", "0.1,1", "--image_size", "64", "--pretrain-args", "--epochs 3", "--flips", "--seed=2",
            "--widths", "8,16"]
    ours, rest = split_args(argv, {"fractions", "pretrain-args", "image-size"}, takes_value={"pretrain-args"})
    assert ours == ["--fractions", "0.1,1", "--image_size", "64", "--pretrain-args", "--epochs 3"]
    assert rest == ["--flips", "--seed=2", "--widths", "8,16"]
    # without takes_value, a value that starts with -- is the next group, and a bare flag stands alone
    assert split_args(["--pretrain-args", "--epochs 3", "--flips"], {"pretrain-args"}) == (
        ["--pretrain-args"], ["--epochs 3", "--flips"])


@pytest.mark.parametrize("script, refused, recipe", [
    ("mnist_compare.py", ("--model ", "--task ", "--run_name "), "recipes/mnist_autoencoder.py"),
    ("stl10_probe_compare.py", ("--run_name ",), "recipes/stl10_probe.py"),
])
def test_compare_scripts_help_is_their_own(script, refused, recipe):
    """--help of a compare script describes the script and lists the runs' settings without those it refuses
    (it used to print the recipe's help, --run-name and --model included)."""
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / script), "--help"], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(("Compare the MNIST", "Run the STL-10 probe twice")) and recipe in proc.stdout
    settings = [line for line in proc.stdout.splitlines() if line.startswith("  --")]
    assert any(line.startswith("  --epochs ") for line in settings)
    assert not [line for line in settings for flag in refused if line.startswith("  " + flag)]


def test_train_run_resumes_without_giving_resume_twice(tmp_path, monkeypatch, capfd):
    """A run with a state is resumed with --resume; a --resume among the arguments is not given a second time
    (a key given twice is refused by the recipes)."""
    script = tmp_path / "fake_recipe.py"
    script.write_text(FAKE_RECIPE)
    monkeypatch.setenv("LAUNCH", shlex.quote(sys.executable))
    out = tmp_path / "runs"
    (out / "a" / "state").mkdir(parents=True)
    (out / "a" / "state" / "trainer_state.json").write_text("{}")  # the single-folder state layout
    train_run(script, ["--output-dir", str(out), "--value", "1", "--resume"], "a", out)
    line = next(x for x in capfd.readouterr().out.splitlines() if x.startswith("fake recipe ran"))
    assert line.count("--resume") == 1, line
