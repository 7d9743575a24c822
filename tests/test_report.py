"""`toolkit report`: HTML pages of run folders, checked as text and rendered in headless Chromium."""

import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main as cli_main
from toolkit.report import find_runs, pick_figures, write_report
from toolkit.report_index import stl10_approach


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
    (root / "mnist_comparison.json").write_text(json.dumps(
        {"pca15": {"params": 12544, "reconstruction": 0.0312, "denoising": 0.0456}, "command": "python recipes/mnist_compare.py"}))
    _run(root, "stl10_supervised-1", "stl10_supervised", "accuracy", [0.5, 0.7012], figures=())
    _run(root, "stl10_resnet18-1", "stl10_resnet18", "accuracy", [0.8533, 0.85], params=5130, figures=())
    _run(root, "stl10_probe-1-pretrained", "stl10_probe", "accuracy", [0.5521], params=34570, figures=(),
         extras={"encoder.json": {"encoder": "runs/stl10_pretrain-1/best.pth"}})
    _run(root, "stl10_probe-1-random", "stl10_probe", "accuracy", [0.4410], params=34570, figures=(),
         extras={"encoder.json": {"encoder": "random"}})
    _run(root, "unfinished", "cifar10", "accuracy", [0.25, 0.3579], complete=False, figures=())
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
                 "STL-10", "Segmentation models per data set", "synthetic (built-in)", "0.6888", "0.6543"):
        assert text in index, text
    stl = index[index.index("STL-10: supervised"):index.index("Segmentation models")]
    order = [stl.index(name) for name in ("stl10_supervised-1", "stl10_resnet18-1", "stl10_probe-1-pretrained",
                                          "stl10_probe-1-random")]
    assert order == sorted(order)  # supervised, ResNet-18 probe, autoencoder probe, random-encoder control
    assert "0.7012" in stl and "0.8533" in stl and "0.5521" in stl and "0.441" in stl
    runs_by_name = {r.name: r for r in find_runs(runs)[0]}
    assert stl10_approach(runs_by_name["stl10_probe-1-random"]).startswith("random encoder")
    assert stl10_approach(runs_by_name["stl10_probe-1-pretrained"]).startswith("autoencoder encoder")
    lgg = index[index.index("<h3>lgg</h3>"):]
    assert "lgg-smp" in lgg[:lgg.index("</table>")] and "demo" not in lgg[:lgg.index("</table>")]


def test_unreadable_run_is_named_and_the_rest_is_written(runs, capsys):
    (runs / "lgg-smp" / "history.json").write_text("{not json")
    assert cli_main(["report", str(runs)]) == 0
    index = (runs / "index.html").read_text()
    assert "Skipped unreadable run folders" in index and "lgg-smp/history.json" in index
    assert (runs / "lgg-unet" / "report.html").is_file()
    assert "wrote 8 run page(s)" in capsys.readouterr().out
    assert cli_main(["report", str(runs / "missing")]) == 2
    assert "runs folder" in capsys.readouterr().err


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
