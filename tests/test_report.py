"""`toolkit report`: HTML pages of run folders, checked as text and rendered in headless Chromium."""

import io
import json
import os
import re
import shutil
import subprocess

import sys

import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main as cli_main
from toolkit.comparison import Column, Comparison
from toolkit.report import write_report
from toolkit.report_pages import pick_figures
from toolkit.report_runs import find_runs


def _png(path, seed, size=(48, 64)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def _run(root, name, recipe, monitor, values, mode="max", params=1234, config=None, complete=True,
         figures=("overlays",), extras=None):
    """A run folder of the output contract; ``values`` are the monitored metric per epoch."""
    run = root / name
    run.mkdir(parents=True)
    history = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "lr": 1e-3, "time_s": 2.0, "train_images_per_s": 321.5,
                "val_loss": 1.1 / (i + 1), monitor: v} for i, v in enumerate(values)]
    (run / "config.json").write_text(json.dumps({"recipe": recipe, "run_name": name, "lr": 0.003, **(config or {})}))
    (run / "history.json").write_text(json.dumps(history))
    best = (max if mode == "max" else min)(values)
    if complete:
        summary = {"recipe": recipe, "monitor": monitor, "mode": mode, "best_value": best,
                   "best_epoch": values.index(best) + 1, "epochs_completed": len(values), "trainable_params": params,
                   "total_params": params, "train_images_per_s": 321.5, "wall_time_s": 600.0, "num_processes": 2,
                   "mixed_precision": "bf16", "final": history[-1]}
        (run / "summary.json").write_text(json.dumps(summary))
    for kind in figures:
        for epoch in range(1, len(values) + 1):
            _png(run / "figures" / f"{kind}_epoch{epoch:03d}.png", seed=epoch)
    _png(run / "figures" / "history.png", seed=99)
    for file, data in (extras or {}).items():
        (run / file).write_text(json.dumps(data))
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    seg = {"model": "unet", "loss": "dice_bce", "data_dir": "/data/lgg", "image_size": 240}
    _run(root, "lgg-unet", "brain_mri", "dice", [0.5, 0.7123, 0.7001], params=486409, config=seg,
         extras={"eval_test.json": {"split": "test", "threshold": 0.5, "summary": {"dice": 0.6543, "dice_global": 0.6611}},
                 "split.json": {"source": "lgg", "data_dir": "/data/lgg", "train": ["a"], "val": ["b"]}})
    _run(root, "lgg-smp", "brain_mri", "dice", [0.6, 0.6888], params=390473, config={**seg, "model": "smp_unet"})
    _run(root, "demo", "brain_mri", "dice", [0.3, 0.4321], config={**seg, "data_dir": ""})
    _run(root, "mnist-linear-reconstruction", "mnist_linear_reconstruction", "mse", [0.03, 0.0189], mode="min",
         params=23567, config={"model": "linear", "task": "reconstruction"}, figures=("reconstructions",))
    Comparison("MNIST autoencoders", [Column("model"), Column("run", link=True), Column("params", "parameters"),
                                      Column("mse", "MSE", better="lower", format=".4f")],
               [{"model": "linear", "run": "mnist-linear-reconstruction", "params": 23567, "mse": 0.0189},
                {"model": "PCA-15 (baseline)", "params": 12544, "mse": 0.0312}], baseline=1,
               notes=["python recipes/mnist_compare.py"]).save(root / "mnist.comparison.json")
    _run(root, "stl10_supervised-1", "stl10_supervised", "accuracy", [0.5, 0.7012], figures=())
    _run(root, "stl10_resnet18-1", "stl10_resnet18", "accuracy", [0.8533, 0.85], params=5130, figures=())
    _run(root, "stl10_probe-1-pretrained", "stl10_probe", "accuracy", [0.5521], params=34570, figures=(),
         extras={"encoder.json": {"encoder": "runs/stl10_pretrain-1/best.pth"}})
    _run(root, "stl10_probe-1-random", "stl10_probe", "accuracy", [0.4410], params=34570, figures=(),
         extras={"encoder.json": {"encoder": "random"}})
    _run(root, "unfinished", "cifar10", "accuracy", [0.25, 0.3579], complete=False, figures=())
    Comparison("STL-10: supervised vs pretrained features",
               [Column("approach"), Column("run", link=True), Column("accuracy", better="higher")],
               [{"approach": "supervised CNN", "run": "stl10_supervised-1", "accuracy": 0.7012},
                {"approach": "ImageNet ResNet-18 probe", "run": "stl10_resnet18-1", "accuracy": 0.8533},
                {"approach": "autoencoder probe", "run": "stl10_probe-1-pretrained", "accuracy": 0.5521},
                {"approach": "random encoder probe (control)", "run": "stl10_probe-1-random", "accuracy": 0.4410}],
               baseline=3).save(root / "stl10.comparison.json")
    return root


def test_run_pages_hold_summary_curves_figures_and_config(runs):
    written = write_report(runs)
    assert len(written) == 10 and written[-1] == runs / "index.html"
    page = (runs / "lgg-unet" / "report.html").read_text()
    for text in ("0.7123", "486,409", "321.5", "best epoch", "0.6543", "dice_bce", "lgg"):
        assert text in page, text
    assert page.count("<svg") >= 3  # loss, the monitored Dice, lr, ...
    (run,) = [r for r in find_runs(runs)[0] if r.name == "lgg-unet"]
    chosen = pick_figures(run)  # best epoch 2 and last epoch 3 of the overlays; history.png drawn as SVG instead
    assert [f.name for _, f in chosen] == ["overlays_epoch002.png", "overlays_epoch003.png"]
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    import base64

    decoded = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert decoded.size == (64, 48)
    assert "No summary.json" in (runs / "unfinished" / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//|<link|url\(', page)  # nothing fetched from the network


def test_index_compares_runs_by_task(runs):
    write_report(runs)
    index = (runs / "index.html").read_text()
    for text in ('href="lgg-unet/report.html"', "MNIST autoencoders", "PCA-15 (baseline)", "0.0312", "0.0189",
                 "STL-10", "0.6888", "0.6543", "/data/lgg", "smp_unet"):
        assert text in index, text
    stl = index[index.index("STL-10: supervised"):index.index("All runs by recipe")]
    order = [stl.index(name) for name in ("stl10_supervised-1", "stl10_resnet18-1", "stl10_probe-1-pretrained",
                                          "stl10_probe-1-random")]
    assert order == sorted(order)  # supervised, ResNet-18 probe, autoencoder probe, random-encoder control
    assert "0.7012" in stl and "0.8533" in stl and "0.5521" in stl and "0.441" in stl
    assert '<td class="num top">0.8533</td>' in stl  # higher is better: the best accuracy marked
    assert stl.count(' class="num top"') == 1 and '<tr class="baseline"' in stl
    assert 'href="stl10_probe-1-random/report.html"' in stl
    mnist = index[index.index("MNIST autoencoders"):index.index("STL-10: supervised")]
    assert '<td class="num top">0.0189</td>' in mnist  # lower is better
    brain = index[index.index("id='recipe-brain_mri'"):]
    brain = brain[:brain.index("</table>")]  # the settings that differ between the runs become columns
    assert "<th>model</th>" in brain and "<th>data_dir</th>" in brain and "<th>test dice</th>" in brain
    assert "<th>lr</th>" not in brain  # the same in every run


def test_eval_tables_flatten_per_patient_figures_and_name_the_3d_rule(tmp_path):
    root = tmp_path / "runs"
    summary = {"dice": 0.61, "per_patient": {"dice": 0.52, "tumour": {"dice": 0.7312, "hd95_mm": None}}}
    _run(root, "lgg", "brain_mri", "dice", [0.5, 0.6], extras={"eval_val.json": {
        "split": "val", "threshold": 0.25, "summary": summary,
        "postprocess": {"volume": "tumour: largest component only"}}})
    write_report(root)
    page = (root / "lgg" / "report.html").read_text()
    assert "per_patient.tumour.dice" in page and "0.7312" in page and "{&#x27;" not in page and "{'" not in page
    assert "3D: tumour: largest component only" in page


def test_an_ensemble_evaluation_beside_its_first_member_is_not_that_run_s_score(tmp_path):
    """`toolkit evaluate --weights a b` writes eval_test_ensemble.json into a: the index must not list the
    ensemble's Dice as a's test score, and a's page must say whose score it is."""
    root = tmp_path / "runs"
    ensemble = {"weights": [str(root / "a" / "best.pth"), str(root / "b" / "best.pth")], "split": "test",
                "summary": {"dice": 0.9123}}
    _run(root, "a", "brain_mri", "dice", [0.5, 0.6], extras={
        "eval_test.json": {"weights": [str(root / "a" / "best.pth")], "split": "test", "summary": {"dice": 0.5432}},
        "eval_test_ensemble.json": ensemble})
    _run(root, "b", "brain_mri", "dice", [0.5, 0.7])
    write_report(root)
    index = (root / "index.html").read_text()
    assert "0.5432" in index and "<th>test dice</th>" in index
    assert "0.9123" not in index and "test_ensemble" not in index
    page = (root / "a" / "report.html").read_text()
    assert "eval_test_ensemble.json of an ensemble of 2 runs: a, b" in page and "0.9123" in page


def test_cross_validation_folds_are_runs_one_folder_deeper(tmp_path):
    root = tmp_path / "runs"
    _run(root, "single", "brain_mri", "dice", [0.5, 0.6])
    for k, values in enumerate(([0.61, 0.7711], [0.65, 0.7422])):
        _run(root / "cv", f"fold{k}", "brain_mri", "dice", values)
    (root / "cv" / "cv.json").write_text("{}")
    written = write_report(root)
    assert {p.relative_to(root).as_posix() for p in written} == {
        "single/report.html", "cv/fold0/report.html", "cv/fold1/report.html", "index.html"}
    index = (root / "index.html").read_text()
    assert 'href="cv/fold0/report.html"' in index and "0.7711" in index and "0.7422" in index
    assert "href='../../index.html'" in (root / "cv" / "fold1" / "report.html").read_text()
    assert "href='../index.html'" in (root / "single" / "report.html").read_text()



def test_the_evaluation_of_a_cross_validation_folder_is_on_the_index(tmp_path):
    """`toolkit evaluate --weights runs/<cv>` writes <cv>/eval_<split>.json (the folds' ensemble): the CV folder is
    no run, so its scores were on no page; unreadable ones are named and do not stop the report."""
    root = tmp_path / "runs"
    for k in range(2):
        _run(root / "cv", f"fold{k}", "brain_mri", "dice", [0.6, 0.7])
    weights = [str(root / "cv" / f"fold{k}" / "best.pth") for k in range(2)]
    (root / "cv" / "eval_all.json").write_text(json.dumps({"weights": weights, "split": "all", "summary": {
        "dice": 0.8123, "per_patient": {"dice": 0.7345}}}))
    (root / "cv" / "eval_test.json").write_text("{not json")
    (root / "notes").mkdir()
    (root / "notes" / "eval_x.json").write_text("{}")  # a folder without runs is no group
    write_report(root)
    index = (root / "index.html").read_text()
    assert "Evaluations of folders of runs" in index and "<h3>cv/</h3>" in index
    assert "eval_all.json of an ensemble of 2 runs: cv/fold0, cv/fold1" in index
    assert "0.8123" in index and "per_patient.dice" in index and "0.7345" in index
    assert "Skipped unreadable evaluation files" in index and "cv/eval_test.json" in index
    assert "eval_x" not in index


def test_report_renders_a_comparison_of_a_recipe_it_never_saw(tmp_path):
    root = tmp_path / "runs"
    _run(root, "zebra-7", "zebra_counting", "count_error", [3.0, 1.25], mode="min", figures=())
    Comparison("Zebra counters", [Column("counter"), Column("run", link=True),
                                  Column("error", "count error", "zebras", better="lower", format=".2f"),
                                  Column("speed", "speed", "img/s", better="higher"), Column("notes")],
               [{"counter": "stripes", "run": "zebra-7", "error": 1.25, "speed": 10.0, "notes": "ours"},
                {"counter": "guess", "error": 4.5, "speed": 99.0}],
               baseline=1, notes=["made up for the test"]).save(root / "comparison.json")
    Comparison("Zebra per-run check", [Column("k"), Column("v", better="higher")],
               [{"k": "a", "v": 1}, {"k": "b", "v": 2}]).save(root / "zebra-7" / "comparison.json")
    (root / "broken.comparison.json").write_text(json.dumps({"title": "x", "columns": [{"key": "a", "better": "up"}],
                                                             "rows": []}))
    write_report(root)
    index = (root / "index.html").read_text()
    table = index[index.index("Zebra counters"):]
    table = table[:table.index("</table>")]
    for text in ("count error (zebras) ↓", "speed (img/s) ↑", '<td class="num top">1.25</td>',
                 '<td class="num top">99</td>', 'href="zebra-7/report.html"', '<tr class="baseline"', "guess"):
        assert text in table, text
    assert "made up for the test" in index and "Zebra per-run check" in index
    assert "broken.comparison.json" in index and "field columns[0].better is &#x27;up&#x27;" in index
    page = (root / "zebra-7" / "report.html").read_text()
    assert "Zebra per-run check" in page and '<td class="num top">2</td>' in page
    assert "zebra_counting" in index and "count_error per epoch" in index  # the generic per-recipe section


REPORT_MODULES = ("toolkit.report_html", "toolkit.report_runs", "toolkit.report_pages", "toolkit.report_index",
                  "toolkit.report", "toolkit.comparison")


@pytest.mark.parametrize("module", REPORT_MODULES)
def test_each_report_module_imports_alone(module):
    """A module of an import circle fails when imported first; each one is imported first in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_report_modules_import_one_way_and_name_no_recipe():
    import ast
    import importlib

    order = {m: i for i, m in enumerate(("toolkit.comparison", "toolkit.report_html", "toolkit.report_runs",
                                         "toolkit.report_pages", "toolkit.report_index", "toolkit.report"))}
    for module in order:
        source = importlib.import_module(module).__file__
        tree = ast.parse(open(source).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = f"toolkit.{node.module}"
                if target in order:  # only modules before it: no circle, and no import inside a function
                    assert order[target] < order[module], f"{module} imports {target}"
        text = open(source).read().lower()
        for recipe in ("mnist", "stl10", "brain_mri", "cifar"):
            assert recipe not in text, f"{source} names the recipe {recipe}"


def test_unreadable_run_is_named_and_the_rest_is_written(runs, capsys):
    (runs / "lgg-smp" / "history.json").write_text("{not json")
    assert cli_main(["report", str(runs)]) == 0
    index = (runs / "index.html").read_text()
    assert "Skipped unreadable run folders" in index and "lgg-smp/history.json" in index
    assert (runs / "lgg-unet" / "report.html").is_file()
    assert "wrote 8 run page(s)" in capsys.readouterr().out
    assert cli_main(["report", str(runs / "missing")]) == 2
    assert "runs folder" in capsys.readouterr().err
    # a run folder given instead of the folder of runs: said so (it used to write an empty index into the run)
    assert cli_main(["report", str(runs / "lgg-unet")]) == 2
    err = capsys.readouterr().err
    assert "lgg-unet is a run folder" in err and f"toolkit report {runs}" in err
    assert not (runs / "lgg-unet" / "index.html").exists()


# ------------------------------------------------------------------ headless Chromium
def _apt_install_chromium():
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:  # a fresh image may need the package lists first
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
        proc = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True,
                              timeout=1200)
    return proc


@pytest.fixture(scope="session")
def chromium():
    """Path of Debian's chromium, installed with apt-get when missing and we are root; else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not on PATH and cannot be installed here (needs root and apt-get; "
                    "run `apt-get install -y chromium`)")
    proc = _apt_install_chromium()
    found = shutil.which("chromium")
    if proc.returncode != 0 or not found:
        pytest.skip(f"apt-get install -y chromium failed: {(proc.stderr or proc.stdout)[-500:]}")
    return found


def _browse(chromium, tmp_path, url, *args):
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--virtual-time-budget=5000", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("page", ["lgg-unet/report.html", "index.html"])
def test_pages_render_numbers_and_images_in_chromium(runs, chromium, tmp_path, page):
    write_report(runs)
    url = (runs / page).resolve().as_uri()
    dom = _browse(chromium, tmp_path, url, "--dump-dom")
    marker = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    assert marker, "the page's load script did not run"
    loaded, total = map(int, marker.groups())
    assert loaded == total  # every <img> decoded (naturalWidth > 0)
    if page == "index.html":
        assert "0.8533" in dom and "PCA-15 (baseline)" in dom and dom.count("<svg") >= 4
    else:
        assert total == 2 and dom.count('data-loaded="yes"') == 2 and '<span class="warn">' not in dom
        assert "0.7123" in dom and "486,409" in dom
    shot = tmp_path / "shot.png"
    _browse(chromium, tmp_path, url, f"--screenshot={shot}", "--window-size=1200,1600")
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (1600, 1200)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, table borders, curves, (figures): not a blank page
    assert (image < 128).all(axis=2).mean() > 0.001  # some dark pixels: text was drawn
