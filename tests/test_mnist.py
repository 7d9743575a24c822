"""MNIST task: idx reading through torchvision's class, both autoencoders, noise, the recipe and the comparison."""

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from toolkit.data.batch_transforms import DEFAULT_NOISE_STD, add_gaussian_noise
from toolkit.data.mnist import load_mnist, read_idx
from toolkit.models.autoencoders import AutoEncoder_CNN, LinearAutoEncoder
from toolkit.objectives import DenoisingObjective

from .utils import ACCELERATE, ROOT, load_recipe, run_env

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write a uint8 array in the idx format (magic 0x0000 08 <ndim>, big-endian uint32 sizes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def fake_mnist(root: Path, n_train: int = 300, n_test: int = 100, compress: bool = True, seed: int = 0) -> dict:
    """MNIST/raw/ idx files (gzipped as downloaded, or plain as torchvision unpacks them) of blob 'digits'."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        cy, cx, r = rng.uniform(9, 19, (3, n, 1, 1))
        images = np.clip(255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 3) ** 2)), 0, 255).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize("compress", [True, False])
def test_fake_idx_files_read_back(tmp_path, compress):
    arrays = fake_mnist(tmp_path, 30, 10, compress=compress)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = load_mnist(tmp_path, train=train, download=False)
        images, labels = ds.tensors
        assert images.dtype == torch.uint8 and images.shape == (len(arrays[prefix][0]), 1, 28, 28)
        assert labels.dtype == torch.int64
        assert np.array_equal(images[:, 0].numpy(), arrays[prefix][0])
        assert np.array_equal(labels.numpy(), arrays[prefix][1])
        image, label = ds[0]
        assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= int(label) <= 9


def test_download_true_with_files_present_does_not_touch_the_network(tmp_path, monkeypatch):
    fake_mnist(tmp_path, 20, 10)  # checksums differ from the real files: a download attempt would fail offline
    import torchvision.datasets.mnist as tv

    monkeypatch.setattr(tv, "download_and_extract_archive", lambda *a, **k: pytest.fail("tried to download"))
    assert len(load_mnist(tmp_path, train=True, download=True)) == 20
    assert not list((tmp_path / "MNIST" / "raw").glob("*-ubyte"))  # nothing unpacked beside the .gz files


def test_missing_or_bad_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST not found in .*--download"):
        load_mnist(tmp_path, train=True)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "bad").write_bytes(b"\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        read_idx(raw / "bad")
    write_idx(raw / "short", np.zeros((2, 3), np.uint8), compress=False)
    (raw / "short").write_bytes((raw / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"header says shape \(2, 3\)"):
        read_idx(raw / "short")


def test_real_mnist_copy():
    if not (REAL_MNIST / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {REAL_MNIST}")
    train, test = load_mnist(REAL_MNIST, True), load_mnist(REAL_MNIST, False)
    assert len(train) == 60000 and len(test) == 10000
    for ds in (train, test):
        images, labels = ds.tensors
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.uint8
        assert int(images.min()) == 0 and int(images.max()) == 255
        assert set(labels.unique().tolist()) == set(range(10))
    assert train.tensors[1][:5].tolist() == [5, 0, 4, 1, 9]  # the original order


# ----------------------------------------------------------------------------- models
def test_linear_autoencoder_is_the_spec_layout():
    model = LinearAutoEncoder()
    expected_enc = [nn.Flatten, (784, 128), nn.ReLU, (128, 64), nn.ReLU, (64, 32), nn.ReLU, (32, 15)]
    expected_dec = [(15, 32), nn.ReLU, (32, 64), nn.ReLU, (64, 128), nn.ReLU, (128, 784), nn.Sigmoid]
    for seq, expected in ((model.encoder, expected_enc), (model.decoder, expected_dec)):
        assert len(seq) == len(expected)
        for layer, want in zip(seq, expected):
            if isinstance(want, tuple):
                assert type(layer) is nn.Linear and (layer.in_features, layer.out_features) == want
            else:
                assert type(layer) is want
    assert sum(p.numel() for p in model.parameters()) == 223_391
    x = torch.rand(5, 1, 28, 28)
    assert model.encoder(x).shape == (5, 15)
    y = model(x)
    assert y.shape == (5, 1, 28, 28) and 0 <= y.min() and y.max() <= 1


def test_cnn_autoencoder_budget_pooling_and_output():
    model = AutoEncoder_CNN()
    n = sum(p.numel() for p in model.parameters())
    assert n <= 35_000 and n * 6 <= sum(p.numel() for p in LinearAutoEncoder().parameters())
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(p.return_indices for p in pools)
    assert any(isinstance(m, nn.MaxUnpool2d) for m in model.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    x = torch.rand(4, 1, 28, 28)
    code, indices = model.encode(x)
    assert code.shape == indices.shape == (4, 15, 1, 1) and indices.dtype == torch.int64
    y = model(x)
    assert y.shape == (4, 1, 28, 28) and 0 <= y.min() and y.max() <= 1
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- noise
def test_gaussian_noise_is_clamped_new_and_has_the_default_std():
    torch.manual_seed(0)
    grey = torch.full((64, 1, 28, 28), 0.5)
    noisy = add_gaussian_noise(grey)
    assert noisy is not grey and torch.equal(grey, torch.full_like(grey, 0.5))
    assert noisy.min() >= 0 and noisy.max() <= 1
    # noise clipped at +-0.5: std of a normal clipped at a = 0.5 (t = a / sigma), exactly
    s, a = DEFAULT_NOISE_STD, 0.5
    t = a / s
    tail = 0.5 * math.erfc(t / math.sqrt(2))
    pdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    clipped_std = math.sqrt(s * s * (1 - 2 * tail - 2 * t * pdf) + 2 * a * a * tail)
    added = noisy - grey
    assert abs(added.std().item() - clipped_std) < 0.01 and abs(added.mean().item()) < 0.005
    inner = added[(noisy > 0) & (noisy < 1)]  # unclipped values: a normal truncated at +-a
    assert inner.abs().max() < a
    assert DenoisingObjective().noise_std == DEFAULT_NOISE_STD
    white = add_gaussian_noise(torch.ones(1000), std=0.2)
    assert white.max() <= 1 and (white < 1).float().mean() > 0.4  # half the noise pushes below 1


def test_denoising_validates_on_the_same_noise_and_leaves_training_noise_alone():
    """Every validation sees the same noisy images (its own generator, restarted after training), so best.pth is
    picked on one set; evaluation draws nothing from the global RNG, so --eval-every leaves training's noise."""
    model = torch.nn.Conv2d(1, 1, 1)
    objective, images = DenoisingObjective(0.3), torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)

    def validate():
        model.eval()
        with torch.no_grad():
            return [objective(model, images[i:i + 2]).inputs for i in (0, 2)]

    torch.manual_seed(0)
    first = validate()
    state = torch.get_rng_state()
    model.train()
    trained = objective(model, images).inputs  # training: the global RNG
    assert not torch.equal(trained[:2], first[0])
    again = validate()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    torch.manual_seed(0)
    validate()
    assert torch.equal(torch.get_rng_state(), state)  # validation drew nothing from it


# ----------------------------------------------------------------------------- recipe and comparison
LAUNCH = [*ACCELERATE, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
          "--dynamo_backend", "no"]
TINY = ["--epochs", "2", "--batch-size", "32", "--num-workers", "0", "--wandb-mode", "disabled"]


def test_recipe_linear_reconstruction_end_to_end(tmp_path):
    fake_mnist(tmp_path / "data")
    args = [*TINY, "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs"),
            "--model", "linear", "--task", "reconstruction"]
    proc = subprocess.run([*LAUNCH, str(ROOT / "recipes" / "mnist_autoencoder.py"), *args], cwd=ROOT,
                          env=run_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("mnist_linear_reconstruction-*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_params"] == 223_391 and summary["param_budget"] == 500_000
    assert summary["monitor"] == "mse" and summary["mode"] == "min" and summary["epochs_completed"] == 2
    assert summary["final"]["num_images"] == 100 and 0 < summary["final"]["mse"] < 0.2
    assert {"mse", "psnr", "val_loss", "train_loss"} <= set(summary["final"])
    LinearAutoEncoder().load_state_dict(torch.load(run / "best.pth", weights_only=True))
    assert (run / "figures" / "reconstructions_epoch002.png").is_file()


def test_compare_trains_missing_runs_and_reuses_finished_ones(tmp_path):
    """One real tiny cnn-denoising launch; the other three runs are finished runs it must reuse."""
    fake_mnist(tmp_path / "data")
    runs = tmp_path / "runs"
    for i, name in enumerate(["mnist-linear-reconstruction", "mnist-linear-denoising", "mnist-cnn-reconstruction"]):
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text(json.dumps(
            {"trainable_params": 1000 + i, "best_epoch": 1, "epochs_completed": 2, "wall_time_s": 1.0,
             "mixed_precision": "bf16"}))
        (runs / name / "history.json").write_text(json.dumps([{"mse": 0.01 * (i + 1), "psnr": 20.0 + i}, {}]))
    launch = " ".join(map(str, LAUNCH))
    args = [*TINY, "--data-dir", str(tmp_path / "data"), "--output-dir", str(runs)]
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_compare.py"), *args], cwd=tmp_path,
                          env=run_env(LAUNCH=launch), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("training ") == 1 and "training mnist-cnn-denoising" in proc.stdout
    run = runs / "mnist-cnn-denoising"
    AutoEncoder_CNN().load_state_dict(torch.load(run / "best.pth", weights_only=True))
    assert (run / "figures" / "reconstructions_epoch002.png").is_file()
    assert json.loads((run / "config.json").read_text())["noise_std"] == DEFAULT_NOISE_STD
    result = json.loads((runs / "mnist_comparison.json").read_text())
    assert result["runs"]["linear-denoising"]["mse"] == 0.02 and result["runs"]["cnn-denoising"]["params"] <= 35_000
    assert 0 < result["pca15"]["reconstruction"] < result["pca15"]["denoising"] < 0.2
    table = (runs / "mnist_comparison.md").read_text()
    assert "| cnn |" in table and "PCA-15" in table and "| 1,000 |" in table


def test_recipe_refuses_unknown_model_and_compare_refuses_model_flag(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_autoencoder.py"), "--model", "mlp"],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "model must be linear or cnn, got 'mlp'" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_compare.py"), "--model", "cnn"],
                          cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "sets --model" in proc.stderr


def test_compare_refuses_val_images(tmp_path, monkeypatch, capsys):
    """--val-images makes each run score held-out training images; the table (and PCA) are on the test set.
    Refused as every driver refuses a setting: ``error: ...`` and exit status 2 (it was status 1)."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    compare = load_recipe("mnist_compare")
    monkeypatch.setattr(compare, "train_run", lambda *a, **k: pytest.fail("nothing may train"))
    with pytest.raises(SystemExit) as exit_info:
        compare.run_recipe(lambda: compare.main(["--val-images", "50", "--output-dir", str(tmp_path)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mnist_compare scores") and "drop --val-images 50" in err
