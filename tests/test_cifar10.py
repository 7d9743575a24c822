"""CIFAR-10: data sources (torchvision pickles, class folders, .tar.gz), model, batched augmentation, recipe."""

import hashlib
import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision.datasets import CIFAR10

from toolkit import ClassificationObjective
from toolkit.data.batch_transforms import Normalize, RandomCropFlip
from toolkit.data.cifar import (
    CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, find_cifar10_source, load_cifar10, read_class_folders,
)
from toolkit.models.classifiers import CIFARFastNet, CIFARResNet, ConvBNReLU, build_classifier, cifar_classifier
from toolkit.models.classifiers import predict_proba, whiten_init_
from toolkit.objectives import tta_logits
from toolkit.models.utils import count_parameters

from .utils import ACCELERATE, ROOT, load_recipe, run_env

REAL_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"

# one solid colour per class, far apart so JPEG round trips keep them apart
COLOURS = {name: ((37 * i) % 256, (91 * i + 40) % 256, (173 * i + 80) % 256) for i, name in enumerate(CIFAR10_CLASSES)}


# --------------------------------------------------------------------------- fake data
def write_fake_torchvision(root: Path, per_batch: int = 6, test: int = 8, seed: int = 0):
    """cifar-10-batches-py/ in torchvision's layout: pickled dicts (str keys, as Python 2 wrote them) of
    "data" uint8 (N, 3072) in CHW order and "labels" lists. Returns {file: md5} and the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    md5s, arrays = {}, {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "data": data, "labels": labels}, protocol=2))
        arrays[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}, protocol=2))
    for name in [*names, "batches.meta"]:
        md5s[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return md5s, arrays


@pytest.fixture
def fake_md5s(monkeypatch):
    """Point torchvision's checksum lists at the fake files (its integrity check itself still runs)."""

    def patch(md5s):
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})

    return patch


def write_fake_folders(root: Path, counts=None, ext="jpg"):
    """root/{train,test}/<class>/NNNN.<ext>, solid-colour 32x32 images; returns {split: [label, ...]} in file order."""
    counts = counts or {"train": {"airplane": 3, "cat": 2, "truck": 3}, "test": {"bird": 2, "truck": 1}}
    labels = {}
    for split, per_class in counts.items():
        labels[split] = []
        for name in sorted(per_class):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class[name]):
                Image.new("RGB", (32, 32), COLOURS[name]).save(root / split / name / f"{i:04d}.{ext}")
                labels[split].append(CIFAR10_CLASSES.index(name))
    return labels


def make_tar(src_dir: Path, archive: Path, arcname: str = "cifar10-jpeg") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir, arcname=arcname)
    return archive


# --------------------------------------------------------------------------- data
def test_torchvision_layout_reads_pickles(tmp_path, fake_md5s):
    md5s, arrays = write_fake_torchvision(tmp_path / "tv")
    fake_md5s(md5s)
    for data_dir in (tmp_path / "tv", tmp_path / "tv" / "cifar-10-batches-py"):
        train, test, source = load_cifar10(data_dir, cache_dir=tmp_path / "cache")
        assert source.kind == "torchvision" and source.root == tmp_path / "tv"
        assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
        assert test.images.shape == (8, 3, 32, 32) and train.labels.dtype == torch.int64
        data, labels = arrays["data_batch_2"]
        assert torch.equal(train.images[6:12], torch.from_numpy(data.reshape(-1, 3, 32, 32)))  # CHW kept
        assert train.labels[6:12].tolist() == labels
        assert test.labels.tolist() == arrays["test_batch"][1]
        assert train.classes == list(CIFAR10_CLASSES) == CIFAR10(str(tmp_path / "tv")).classes
    image, label = train[7]
    assert image.shape == (3, 32, 32) and int(label) == arrays["data_batch_2"][1][1]


def test_torchvision_layout_checks_md5_and_says_how_to_fix(tmp_path):
    write_fake_torchvision(tmp_path / "tv")  # real md5 lists: the fake files fail torchvision's check
    with pytest.raises(FileNotFoundError, match="--download true"):
        load_cifar10(tmp_path / "tv")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 found"):
        find_cifar10_source(tmp_path / "missing")
    assert find_cifar10_source(tmp_path / "missing", download=True).kind == "torchvision"


def test_class_folders_read_with_right_labels_and_cache(tmp_path, monkeypatch):
    labels = write_fake_folders(tmp_path / "jpeg")
    train, test, source = load_cifar10(tmp_path / "jpeg", cache_dir=tmp_path / "cache")
    assert source.kind == "folder"
    assert train.images.shape == (8, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == labels["train"] and test.labels.tolist() == labels["test"]
    for img, label in zip(train.images, train.labels):
        expected = torch.tensor(COLOURS[CIFAR10_CLASSES[label]], dtype=torch.int16).view(3, 1, 1)
        assert (img.to(torch.int16) - expected).abs().max() <= 3  # JPEG keeps a solid colour
    assert (tmp_path / "jpeg" / "cifar10-train-uint8.pt").is_file()

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(Image, "open", no_decode)  # every decode opens the image with PIL
    again = read_class_folders(tmp_path / "jpeg", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    monkeypatch.undo()
    Image.new("RGB", (32, 32), COLOURS["cat"]).save(tmp_path / "jpeg" / "train" / "cat" / "0009.jpg")
    assert len(read_class_folders(tmp_path / "jpeg", "train")) == 9  # listing changed: cache rebuilt


def test_tar_gz_extracted_once_and_found_through_its_folder(tmp_path):
    labels = write_fake_folders(tmp_path / "src", ext="png")
    (tmp_path / "shared").mkdir()
    archive = make_tar(tmp_path / "src", tmp_path / "shared" / "cifar10-jpeg.tar.gz")
    cache = tmp_path / "cache"
    train, test, source = load_cifar10(archive, cache_dir=cache)
    assert source.kind == "folder" and source.archive == archive
    assert source.root == cache / "cifar10-jpeg" / "cifar10-jpeg"
    assert train.labels.tolist() == labels["train"] and test.labels.tolist() == labels["test"]
    exact = torch.tensor(COLOURS["truck"], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32)
    assert torch.equal(test.images[-1], exact)  # PNG: lossless
    stamp = (source.root / "train" / "cat" / "0000.png").stat().st_mtime_ns
    train2, _, source2 = load_cifar10(tmp_path / "shared", cache_dir=cache)  # the folder holding the archive
    assert source2 == source and torch.equal(train2.images, train.images)
    assert (source.root / "train" / "cat" / "0000.png").stat().st_mtime_ns == stamp  # not extracted again
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("spoil, message", [
    (lambda good: b"not gzip", "ReadError: file could not be opened successfully)"),
    (lambda good: good[: len(good) // 2], "EOFError: Compressed file ended before the end-of-stream marker"),
])
def test_a_corrupt_archive_is_refused_naming_it(tmp_path, spoil, message):
    """It was a bare tarfile.ReadError or EOFError naming no file (and no recipe turned it into an error line)."""
    write_fake_folders(tmp_path / "src", ext="png")
    archive = make_tar(tmp_path / "src", tmp_path / "cifar10-jpeg.tar.gz")
    archive.write_bytes(spoil(archive.read_bytes()))
    with pytest.raises(ValueError) as err:
        load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(f"{archive}: cannot extract it as a .tar.gz or .tar archive (")
    assert message in str(err.value)
    assert not list((tmp_path / "cache").iterdir())  # nothing half-extracted left


def test_class_folder_with_unknown_class_is_refused(tmp_path):
    write_fake_folders(tmp_path / "d", counts={"train": {"cat": 1}, "test": {"cat": 1}})
    (tmp_path / "d" / "train" / "kitten").mkdir()
    with pytest.raises(ValueError, match="'kitten' is not a CIFAR-10 class"):
        load_cifar10(tmp_path / "d")


# --------------------------------------------------------------------------- model
def test_model_budget_shape_and_layers():
    model = CIFARResNet()
    assert count_parameters(model) <= 500_000
    assert count_parameters(build_classifier("resnet", width=21)) <= 500_000
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and out.dtype == torch.float32
    blocks = [m for m in model.modules() if isinstance(m, ConvBNReLU)]
    assert len(blocks) >= 10
    assert [type(layer) for layer in blocks[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    assert isinstance(list(model.children())[-1], nn.Linear)
    probs = predict_proba(model.train(), torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8),
                          preprocess=Normalize(CIFAR10_MEAN, CIFAR10_STD), batch_size=2)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5)) and model.training
    with pytest.raises(ValueError):
        CIFARResNet(width=0)


def test_fast_model_budget_shape_and_blocks():
    model = build_classifier("fast")
    assert isinstance(model, CIFARFastNet) and count_parameters(model) == 288_746 <= 500_000
    out = model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.shape == (4, 10) and out.dtype == torch.float32
    # three stages of Conv -> MaxPool -> BN -> ReLU, then a Conv-BN-ReLU block; one linear layer at the end
    layers = list(model.blocks)
    assert [type(m) for m in layers[:5]] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU, ConvBNReLU]
    assert sum(isinstance(m, ConvBNReLU) for m in layers) == 3 and isinstance(list(model.children())[-1], nn.Linear)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert count_parameters(cifar_classifier("fast", widths="8,16,32")) < count_parameters(model)
    with pytest.raises(ValueError, match="three comma-separated positive ints"):
        cifar_classifier("fast", widths="8,16")
    with pytest.raises(ValueError, match="unknown classifier 'vgg'; valid: resnet, fast"):
        build_classifier("vgg")


# --------------------------------------------------------------------------- augmentation
def test_objective_augments_in_training_only():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    objective = ClassificationObjective(0.1, preprocess=Normalize(CIFAR10_MEAN, CIFAR10_STD), augment=RandomCropFlip())
    clean = Normalize(CIFAR10_MEAN, CIFAR10_STD)(x)
    assert torch.equal(objective.model_input(x, training=False), clean)
    assert not torch.equal(objective.model_input(x, training=True), clean)
    model = CIFARResNet(width=4)
    model.eval()
    out = objective(model, (x, torch.zeros(16, dtype=torch.long)))
    assert torch.equal(out.inputs, clean) and out.preds.shape == (16, 10)


class _Linear(nn.Module):
    """A fixed, position-dependent classifier: logits = flattened image @ W."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3 * 8 * 8, 10, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.w


def test_tta_averages_the_views_in_evaluation_only():
    x = torch.rand(4, 3, 8, 8)
    model = _Linear()
    assert torch.equal(tta_logits(model, x, "none"), model(x))
    assert torch.allclose(tta_logits(model, x, "flip"), (model(x) + model(x.flip(3))) / 2)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, :8, :8], padded[:, :, 2:, 2:]
    by_hand = (model(x) + model(x.flip(3)) + 0.5 * sum(model(v) + model(v.flip(3)) for v in (up_left, down_right))) / 4
    assert torch.allclose(tta_logits(model, x, "flip-translate"), by_hand, atol=1e-5)
    objective = ClassificationObjective(tta="flip", preprocess=lambda t: t)
    y = torch.zeros(4, dtype=torch.long)
    assert torch.equal(objective(model.train(), (x, y)).preds, model(x).detach())  # training: no TTA
    assert torch.allclose(objective(model.eval(), (x, y)).preds, tta_logits(model, x, "flip"))
    for bad in ("flips", "hflip"):
        with pytest.raises(ValueError, match="tta must be one of none, flip, flip-translate"):
            ClassificationObjective(tta=bad)
        with pytest.raises(ValueError, match="tta must be one of"):
            tta_logits(model, x, bad)


def test_whiten_init_decorrelates_the_first_conv_and_keeps_extra_filters():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(200, 3, 12, 12, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images = images + 0.8 * images.roll(1, 3)  # neighbouring pixels correlate
    conv = nn.Conv2d(3, 60, 3, padding=1, bias=False)
    before = conv.weight.detach().clone()
    whiten_init_(conv, images, eps=1e-6, chunk=64)
    w = conv.weight.detach()
    assert torch.allclose(w[1:54:2], -w[0:54:2])  # +v, -v pairs
    assert torch.equal(w[54:], before[54:])  # 2 * 27 filters are whitening ones; the rest stay random
    out = torch.nn.functional.conv2d(images, w[0:54:2])  # valid positions only: the patches themselves
    feats = out.permute(0, 2, 3, 1).reshape(-1, 27).double()
    cov = feats.T @ feats / feats.shape[0]
    assert torch.allclose(cov, torch.eye(27, dtype=torch.float64), atol=1e-3)
    assert (w[0:54:2].flatten(1).norm(dim=1).diff() >= -1e-4).all()  # strongest direction first: smallest gain
    with pytest.raises(ValueError, match=r"needs images \(N >= 1, 3, H, W\)"):
        whiten_init_(conv, images[:, :2])
    with pytest.raises(ValueError, match="eps must be > 0"):
        whiten_init_(conv, images, eps=0)


# --------------------------------------------------------------------------- recipe
def test_recipe_end_to_end(tmp_path):
    counts = {"train": {name: 7 for name in CIFAR10_CLASSES[:8]}, "test": {name: 3 for name in CIFAR10_CLASSES}}
    write_fake_folders(tmp_path / "data", counts=counts, ext="png")
    cmd = [*ACCELERATE, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
           "--dynamo_backend", "no", str(ROOT / "recipes" / "cifar10.py"),
           "--data-dir", str(tmp_path / "data"), "--download", "false", "--cache-dir", str(tmp_path / "cache"),
           "--output-dir", str(tmp_path / "runs"), "--run-name", "c10", "--epochs", "2", "--batch-size", "16",
           "--width", "4", "--num-workers", "0", "--wandb-mode", "disabled"]
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train 56, validation = test (30)" in proc.stdout
    run = tmp_path / "runs" / "c10"
    for name in ("history.json", "summary.json", "best.pth", "figures/history.png", "figures/accuracy.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["monitor"] == "accuracy" and summary["mode"] == "max" and summary["epochs_completed"] == 2
    assert summary["mixed_precision"] == "bf16" and summary["trainable_params"] <= 500_000
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all({"train_loss", "accuracy", "val_loss"} <= set(h) and h["num_samples"] == 30 for h in history)
    assert summary["best_value"] == max(h["accuracy"] for h in history)
    model = build_classifier("resnet", width=4)
    model.load_state_dict(torch.load(run / "best.pth", weights_only=True))


def _recipe():
    return load_recipe("cifar10")


def test_recipe_validation_from_train_in_process(tmp_path, capsys):
    counts = {"train": {"cat": 10, "dog": 10}, "test": {"cat": 2}}
    write_fake_folders(tmp_path / "data", counts=counts, ext="png")
    history = _recipe().main(["--data-dir", str(tmp_path / "data"), "--download", "false", "--val-from-train", "6",
                              "--output-dir", str(tmp_path / "runs"), "--run-name", "v", "--epochs", "1",
                              "--batch-size", "8", "--model", "fast", "--widths", "8,16,32",
                              "--whiten", "true", "--tta", "flip", "--wandb-mode", "disabled"])
    assert "train 14, validation = 6 images held out of train (6)" in capsys.readouterr().out
    assert history[0]["num_samples"] == 6
    weights = torch.load(tmp_path / "runs" / "v" / "best.pth", weights_only=True)
    cifar_classifier("fast", widths="8,16,32").load_state_dict(weights)  # the fast model was trained


def test_recipe_help_and_bad_values():
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "cifar10.py"), "--help"], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--val_from_train" in proc.stdout and "--crop_padding" in proc.stdout
    for bad in (["--dropout", "1.5"], ["--model", "fast", "--widths", "8,x,32"], ["--model", "vgg"],
                ["--tta", "mirror"]):
        with pytest.raises(SystemExit) as err:
            _recipe().main(bad)
        assert err.value.code == 2


# --------------------------------------------------------------------------- the real copy
def test_real_jpeg_archive_layout_and_first_images():
    archive = REAL_CIFAR / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"real CIFAR-10 copy not found at {archive}")
    seen = {}
    with tarfile.open(archive) as tar:
        for member in tar:  # streams; stops after a handful of images
            parts = Path(member.name).parts
            if member.isfile():
                assert parts[0] == "cifar10-jpeg" and parts[1] in ("train", "test") and parts[2] in CIFAR10_CLASSES
                img = Image.open(io.BytesIO(tar.extractfile(member).read()))
                assert img.size == (32, 32) and img.mode == "RGB"
                seen[member.name] = parts[2]
                if len(seen) == 5:
                    break
    assert len(seen) == 5


def test_whitening_images_are_drawn_from_every_class_not_the_first_ones(monkeypatch):
    """Class folders are read class by class: the first 2,000 images of CIFAR-10's copy were all airplanes."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    recipe = load_recipe("cifar10")
    labels = torch.arange(10).repeat_interleave(50)  # sorted by class, as the class-folder layout reads them
    train = [(torch.full((3, 32, 32), int(k), dtype=torch.uint8), k) for k in labels]
    images = recipe.whitening_images(train, seed=0, count=40)
    assert images.shape == (40, 3, 32, 32) and len(images[:, 0, 0, 0].unique()) >= 5
    assert torch.equal(images, recipe.whitening_images(train, seed=0, count=40))  # the same on every process


def test_class_folders_with_a_file_name_that_is_not_utf8(tmp_path):
    """A name such as b'\\xff.png' (not UTF-8) used to end in a bare UnicodeEncodeError from the cache fingerprint;
    it is read as any other image, from the folders and then from the cache."""
    import os

    from toolkit.data.cifar import read_class_folders

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / split / "cat" / "a.png")
    os.rename(tmp_path / "train" / "cat" / "a.png", os.fsencode(tmp_path / "train" / "cat") + b"/\xff.png")
    for _ in range(2):  # decoded, then the cache
        ds = read_class_folders(tmp_path, "train", cache_dir=tmp_path / "cache")
        assert len(ds) == 1 and int(ds[0][0][0, 0, 0]) == 7
