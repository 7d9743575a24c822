"""STL-10: memory-mapped binaries against torchvision, models and budgets, frozen encoders, the four recipes."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import STL10

from toolkit.config import ConfigError, TrainConfig
from toolkit.data.stl10 import STL10Memmap, find_stl10_root, read_png_folder, write_stl10_binary
from toolkit.figures import reconstruction_pairs, save_figure
from toolkit.models.stl10 import (
    STL10CNN,
    FrozenEncoderClassifier,
    STL10AutoEncoder,
    frozen_resnet18,
    linear_probe_head,
)
from toolkit.models.utils import count_parameters
from toolkit.optim import build_optimizer

from .utils import ACCELERATE, ROOT, SHARED_DATA, free_port, load_recipe, run_env
from .stl10_fake import write_fake_stl10

CPU1 = [*ACCELERATE, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
        "--dynamo_backend", "no"]
COMMON = ["--epochs", "2", "--batch-size", "8", "--num-workers", "0", "--wandb-mode", "disabled"]


def _run(cmd, timeout=240, **env):
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(**env), capture_output=True, text=True, timeout=timeout)
    return proc


def _recipe(name):
    return load_recipe(name)


@pytest.fixture
def fake(tmp_path):
    written = write_fake_stl10(tmp_path / "data", train=24, test=12, unlabeled=40)
    return tmp_path / "data", written


# --------------------------------------------------------------------------- data
@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_memmap_agrees_with_torchvision_pixel_for_pixel(fake, monkeypatch, split):
    root, written = fake
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)  # fake files, real layout
    reference = STL10(str(root), split=split)
    ours = STL10Memmap(root, split)
    assert len(ours) == len(reference) == written[split][0].shape[0]
    for i in range(len(ours)):
        image, label = ours[i]
        pil, target = reference[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 96, 96) and label.dtype == torch.int64
        assert torch.equal(image, torch.from_numpy(np.array(pil)).permute(2, 0, 1))
        assert torch.equal(image, torch.from_numpy(written[split][0][i]))
        assert int(label) == target
    if split == "train":
        assert ours.classes == reference.classes
    batch = next(iter(DataLoader(ours, batch_size=7, shuffle=False)))  # the batched __getitems__ path
    assert torch.equal(batch[0], torch.stack([ours[i][0] for i in range(7)]))
    assert torch.equal(batch[1], torch.as_tensor(reference.labels[:7], dtype=torch.long))
    assert torch.equal(ours.images([5, 0, 3]), torch.stack([ours[5][0], ours[0][0], ours[3][0]]))


def test_workers_open_their_own_map_and_pickles_stay_small(fake):
    root, written = fake
    ds = STL10Memmap(root, "unlabeled", limit=30)
    ds[0]
    assert len(pickle.dumps(ds)) < 10_000  # the map is not pickled, only its path
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    images = torch.cat([b[0] for b in loader])
    assert torch.equal(images, torch.from_numpy(written["unlabeled"][0][:30]))
    assert set(torch.cat([b[1] for b in loader]).tolist()) == {-1}


def test_missing_and_malformed_files_are_named(fake, tmp_path):
    root, _ = fake
    with pytest.raises(FileNotFoundError, match=r"train_X\.bin.*--download true"):
        find_stl10_root(tmp_path / "nowhere")
    assert find_stl10_root(root / "stl10_binary") == find_stl10_root(root) == root / "stl10_binary"
    folder = root / "stl10_binary"
    np.array([0, 3], dtype=np.uint8).tofile(folder / "test_y.bin")
    with pytest.raises(ValueError, match="test_y.bin: 2 labels for 12 images"):
        STL10Memmap(root, "test")
    np.full(12, 11, dtype=np.uint8).tofile(folder / "test_y.bin")
    with pytest.raises(ValueError, match=r"test_y.bin: labels must be 1\.\.10"):
        STL10Memmap(root, "test")
    with open(folder / "train_X.bin", "ab") as f:
        f.write(b"\0" * 5)
    with pytest.raises(ValueError, match="train_X.bin.*not a whole number"):
        STL10Memmap(root, "train")
    with pytest.raises(ConfigError, match="unlabeled_X.bin"):
        _recipe("stl10_pretrain").main(["--data-dir", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "r"),
                                        "--wandb-mode", "disabled"])


# --------------------------------------------------------------------------- models
def test_models_layers_and_parameter_budgets():
    cnn = STL10CNN()
    assert count_parameters(cnn) <= 500_000 and cnn(torch.randn(2, 3, 96, 96)).shape == (2, 10)
    kinds = {type(m) for m in cnn.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU} <= kinds
    assert isinstance(list(cnn.children())[-1], nn.Linear)
    ae = STL10AutoEncoder()
    assert 180_000 <= count_parameters(ae) <= 220_000
    convs = [m for m in ae.modules() if type(m) is nn.Conv2d]
    deconvs = [m for m in ae.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert 4 <= len(convs) <= 5 and 4 <= len(deconvs) <= 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ae.modules()) >= 7
    out = ae(torch.rand(3, 3, 96, 96))
    assert out.shape == (3, 3, 96, 96) and out.min() >= 0 and out.max() <= 1
    assert ae.encoder(torch.rand(1, 3, 96, 96)).shape[1:] == ae.code_shape()


def _train_steps(model, steps=3):
    opt = build_optimizer(model, TrainConfig(lr=0.1))
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(torch.rand(6, 3, 96, 96)), torch.randint(0, 10, (6,)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("kind", ["probe", "resnet18"])
def test_frozen_parameters_get_no_gradient_and_do_not_change(kind, tmp_path):
    if kind == "probe":
        ae = STL10AutoEncoder()
        model = FrozenEncoderClassifier(ae.encoder, linear_probe_head(ae.code_shape()))
    else:
        import torchvision

        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
        model = frozen_resnet18(str(tmp_path / "r18.pth"))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # parameters and BN statistics
    head_before = [p.clone() for p in model.head.parameters()]
    opt = _train_steps(model)
    assert count_parameters(model) == count_parameters(model.head) < count_parameters(model, trainable_only=False)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training and model.training
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters()))


def test_nine_image_figure(tmp_path):
    x = torch.rand(12, 3, 96, 96)
    fig = reconstruction_pairs(x, x.flip(-1), 9)
    assert sum(bool(ax.images) for ax in fig.axes) == 18
    path = save_figure(fig, tmp_path / "nine.png")
    assert Image.open(path).size[0] > Image.open(path).size[1] > 200


# --------------------------------------------------------------------------- recipes end to end
def test_pretrain_two_processes_then_probe_and_control(fake, tmp_path):
    root, _ = fake
    runs = tmp_path / "runs"
    cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(ROOT / "recipes" / "stl10_pretrain.py"),
           "--data-dir", str(root), "--output-dir", str(runs), "--run-name", "stl10_pretrain-t", "--val-images", "12",
           *COMMON]
    proc = _run(cmd, ACCELERATE_USE_CPU="true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pre = runs / "stl10_pretrain-t"
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["mixed_precision"] == "bf16"
    assert 180_000 <= summary["trainable_params"] <= 220_000 and summary["monitor"] == "mse"
    assert Image.open(pre / "figures" / "reconstructions.png").size[0] > 300
    assert (pre / "figures" / "reconstructions_epoch002.png").is_file()

    launch = " ".join(CPU1)
    proc = _run([sys.executable, str(ROOT / "recipes" / "stl10_probe_compare.py"), "--data-dir", str(root),
                 "--output-dir", str(runs), *COMMON], timeout=300, LAUNCH=launch)  # --encoder latest
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    comparison = json.loads((runs / "stl10_probe_comparison.json").read_text())
    assert comparison["runs"]["pretrained"]["encoder"] == str(pre / "best.pth")
    assert comparison["runs"]["random"]["encoder"].startswith("random")
    assert "pretraining gain over the random-encoder control" in proc.stdout
    pretrained = torch.load(pre / "best.pth", weights_only=True)
    probe = torch.load(comparison["runs"]["pretrained"]["run"] + "/best.pth", weights_only=True)
    encoder_keys = [k for k in pretrained if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(pretrained[k], probe[k]) for k in encoder_keys)  # loaded, unchanged
    random_probe = torch.load(comparison["runs"]["random"]["run"] + "/best.pth", weights_only=True)
    assert not torch.equal(random_probe["encoder.0.0.weight"], probe["encoder.0.0.weight"])
    summary = json.loads((runs / comparison["runs"]["random"]["run"] / "summary.json").read_text())
    assert summary["trainable_params"] == 34_570 < summary["total_params"]


def test_pretrain_validating_every_other_epoch_keeps_the_best_figure(fake, tmp_path):
    """With --eval-every 2 the first epoch's record has no mse: the best figure follows the Trainer's best epoch
    (the recipe used to fail with KeyError: 'mse' after training)."""
    root, _ = fake
    from accelerate.state import AcceleratorState

    try:
        _recipe("stl10_pretrain").main(["--data-dir", str(root), "--output-dir", str(tmp_path / "runs"), "--run-name",
                                        "p", "--val-images", "8", *COMMON[2:], "--epochs", "3", "--eval-every", "2"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    figures = tmp_path / "runs" / "p" / "figures"
    best = json.loads((figures.parent / "summary.json").read_text())["best_epoch"]
    kept = (figures / f"reconstructions_epoch{best:03d}.png").read_bytes()
    assert (figures / "reconstructions.png").read_bytes() == kept


def test_supervised_recipe_end_to_end(fake, tmp_path):
    root, _ = fake
    proc = _run([*CPU1, str(ROOT / "recipes" / "stl10_supervised.py"), "--data-dir", str(root), "--output-dir",
                 str(tmp_path / "runs"), "--run-name", "s", "--width", "4", *COMMON])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train 24, test 12" in proc.stdout
    run = tmp_path / "runs" / "s"
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(h["num_samples"] == 12 for h in history)
    assert (run / "figures" / "accuracy.png").is_file()
    STL10CNN(width=4).load_state_dict(torch.load(run / "best.pth", weights_only=True))


def test_resnet18_recipe_with_local_weights_and_offline_error(fake, tmp_path):
    import torchvision

    root, _ = fake
    backbone = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(backbone, tmp_path / "r18.pth")
    proc = _run([*CPU1, str(ROOT / "recipes" / "stl10_resnet18.py"), "--data-dir", str(root), "--output-dir",
                 str(tmp_path / "runs"), "--run-name", "r", "--weights", str(tmp_path / "r18.pth"),
                 "--image-size", "64", "--crop-padding", "8", *COMMON])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["trainable_params"] == 5_130 and summary["total_params"] == 11_181_642
    best = torch.load(tmp_path / "runs" / "r" / "best.pth", weights_only=True)
    assert all(torch.equal(best[f"encoder.{k}"], v) for k, v in backbone.items() if not k.startswith("fc."))
    assert best["head.weight"].shape == (10, 512)

    offline = {"TORCH_HOME": str(tmp_path / "torch-home"), "HTTPS_PROXY": "http://127.0.0.1:9",
               "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    proc = _run([sys.executable, str(ROOT / "recipes" / "stl10_resnet18.py"), "--data-dir", str(root),
                 "--output-dir", str(tmp_path / "runs"), "--wandb-mode", "disabled"], timeout=120, **offline)
    assert proc.returncode != 0
    assert "needs a network" in proc.stderr and "--weights PATH/resnet18-f37072fd.pth" in proc.stderr
    proc = _run([sys.executable, str(ROOT / "recipes" / "stl10_resnet18.py"), "--weights", "nope.pth",
                 "--output-dir", str(tmp_path / "runs"), "--wandb-mode", "disabled"], timeout=120)
    assert proc.returncode != 0 and "weights file not found: nope.pth" in proc.stderr


def test_budget_is_checked_before_training(fake, tmp_path, capsys):
    root, _ = fake
    with pytest.raises(SystemExit) as exit_info:  # refused when the settings are read: error line, exit status 2
        _recipe("stl10_pretrain").main(["--data-dir", str(root), "--output-dir", str(tmp_path / "r"),
                                        "--channels", "32,64,128,256", "--val-images", "4", *COMMON])
    assert exit_info.value.code == 2
    assert "has 777,283 trainable parameters, over param_budget 220,000" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # no run folder, no model


def test_probe_budget_is_checked_on_the_encoder_runs_channels_before_it_is_built(tmp_path, monkeypatch):
    """--encoder PATH: the channels come from its run's config.json, known only in main; the probe's head is
    counted on the meta device before the encoder is loaded (an empty best.pth here: never read)."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))  # stl10_probe imports stl10_pretrain
    run = tmp_path / "runs" / "stl10_pretrain-x"
    run.mkdir(parents=True)
    (run / "best.pth").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"dataset": "stl10", "channels": [24, 48, 64, 100000]}))
    with pytest.raises(ConfigError, match=r"channels \(24, 48, 64, 100000\) \(96x96 images\) has 36,000,010 "
                                          r"trainable parameters, over param_budget 500,000"):
        _recipe("stl10_probe").main(["--encoder", str(run), "--output-dir", str(tmp_path / "runs"), *COMMON])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["stl10_pretrain-x"]  # no probe run folder


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(40), b"not an image"])
def test_read_png_folder_names_a_file_it_cannot_decode(tmp_path, content):
    """Its docstring's ValueError naming the file: it was PIL's UnidentifiedImageError (or a truncation OSError)."""
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "0000.png")
    (tmp_path / "0001.png").write_bytes(content)
    with pytest.raises(ValueError, match=f"^{tmp_path / '0001.png'}: cannot decode it as an image"):
        read_png_folder(tmp_path)


# --------------------------------------------------------------------------- real images
def test_real_stl10_images_round_trip_and_reconstruct(tmp_path):
    folder = SHARED_DATA / "stl10-subset" / "unlabeled"
    if not folder.is_dir():
        pytest.skip(f"real STL-10 images not found at {folder}")
    images = read_png_folder(folder)
    assert images.shape == (246, 3, 96, 96)
    write_stl10_binary(tmp_path / "data" / "stl10_binary" / "unlabeled_X.bin", images)
    ds = STL10Memmap(tmp_path / "data", "unlabeled")
    assert torch.equal(ds.images(range(len(ds))), images)  # real pixels through the real layout and back
    first = np.array(Image.open(folder / "0000.png").convert("RGB"))
    assert torch.equal(ds[0][0], torch.from_numpy(first).permute(2, 0, 1))
    history = _recipe("stl10_pretrain").main([
        "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "runs"), "--run-name", "real",
        "--val-images", "46", "--epochs", "4", "--batch-size", "25", "--lr", "5e-3", "--num-workers", "0",
        "--wandb-mode", "disabled"])
    scores = [(round(h["mse"], 4), round(h["psnr"], 2)) for h in history]
    assert history[-1]["mse"] < 0.6 * history[0]["mse"] and history[-1]["psnr"] > 14, scores  # it learns real images
    assert (tmp_path / "runs" / "real" / "figures" / "reconstructions.png").is_file()
