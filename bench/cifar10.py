"""CIFAR-10 recipe against a plain loop: ``recipes/cifar10.py`` end to end beside a hand-written loop.

Both train the same model (same builder, same initial weights) on the same images for the same
number of steps: the documented 20-CPU-minute settings (batch 128, peak LR 0.08), SGD with Nesterov momentum and OneCycle, label smoothing, random
crop (4-pixel padding) and horizontal flip on every batch, channels_last, and bf16 autocast
where this machine has bf16 (else fp32) for both. The recipe runs as a user runs it: it reads
the images from class folders on disk (PNG, lossless: the same pixels) through its own loader,
and its Trainer evaluates, writes best.pth, state/, history.json and figures every epoch. The
plain loop holds the uint8 images as one tensor, indexes a shuffled batch, normalises, crops,
flips, steps, then evaluates and saves its weights once per epoch.

Images: the first ``steps x 128`` training and 2,000 test images of the real CIFAR-10 when a copy
is found (``$TOOLKIT_CIFAR10_DIR``, else ``../shared/data/cifar10``), random images otherwise
(``--quick`` always: no decode). Two epochs each; the second epoch's training images/s is the
figure (the first pays one-off kernel set-up), and the epoch wall time (training + evaluation +
checkpoints) the second row. Models: the documented 20-CPU-minute model (``--model fast``) and
the default ResNet-20.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import Row, interleaved, median
from .trainer_overhead import _bf16_supported, _reset_accelerate

SECTION = "cifar10"
ROOT = Path(__file__).resolve().parents[1]
BATCH, TEST_IMAGES, EPOCHS = 128, 2000, 2  # the documented 20-CPU-minute command's batch (docs/cifar10.md)
SETTINGS = {"lr": 0.08, "momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.2, "dropout": 0.1}


def _real_cifar(n_train: int, n_test: int):
    """(train images (n, 3, 32, 32) uint8, labels (n,), test images, test labels) of a local real copy, or None."""
    from toolkit.data import load_cifar10

    for candidate in (os.environ.get("TOOLKIT_CIFAR10_DIR"), ROOT.parent / "shared" / "data" / "cifar10"):
        if candidate and Path(candidate).exists():
            train, test, _ = load_cifar10(candidate, download=False, cache_dir=ROOT / "data" / "cifar10-cache")
            return (train.images[:n_train], train.labels[:n_train], test.images[:n_test], test.labels[:n_test],
                    f"real CIFAR-10 ({candidate})")
    return None


def _write_class_folders(root: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """root/split/<class>/NNNNN.png: the recipe's class-folder layout, lossless."""
    from PIL import Image

    from toolkit.data.cifar import CIFAR10_CLASSES

    for i, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
        folder = root / split / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(folder / f"{i:05d}.png")


def _recipe_main():
    spec = importlib.util.spec_from_file_location("bench_cifar10_recipe", ROOT / "recipes" / "cifar10.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


class Bench:
    def __init__(self, quick: bool, tmp: Path) -> None:
        self.steps = 3 if quick else 40
        n_train, n_test = self.steps * BATCH, 64 if quick else TEST_IMAGES
        real = None if quick else _real_cifar(n_train, n_test)
        if real is None:
            g = torch.Generator().manual_seed(0)
            real = (torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n_train,), generator=g),
                    torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n_test,), generator=g), "random images")
        self.x, self.y, self.x_test, self.y_test, self.source = real
        # ImageFolder-style class folders keep the file order per class: the recipe reads the same images
        self.data_dir = tmp / "cifar10"
        _write_class_folders(self.data_dir, "train", self.x, self.y)
        _write_class_folders(self.data_dir, "test", self.x_test, self.y_test)
        self.tmp, self.run = tmp, 0
        self.precision = "bf16" if _bf16_supported() else "no"
        # the classifier settings of each model (recipe flags = cifar_classifier arguments)
        self.models = {"fast": {"model": "fast", "widths": "8,16,32" if quick else "32,64,128"}}
        if not quick:  # the smoke run keeps to one model (the test suite runs it)
            self.models["resnet"] = {"model": "resnet", "width": 16, "depth": 3}
        self.main = _recipe_main()
        self.rates: dict[str, list[float]] = {}
        self.epoch_s: dict[str, list[float]] = {}

    def _note(self, key: str, rate: float, epoch_s: float) -> None:
        self.rates.setdefault(key, []).append(rate)
        self.epoch_s.setdefault(key, []).append(epoch_s)

    def recipe(self, model: str) -> None:
        self.run += 1
        _reset_accelerate()
        os.environ["ACCELERATE_MIXED_PRECISION"] = self.precision
        argv = ["--data-dir", str(self.data_dir), "--download", "false", "--cache-dir", str(self.tmp / "cache"),
                "--output-dir", str(self.tmp / "runs"), "--run-name", f"r{self.run}", "--epochs", str(EPOCHS),
                "--batch-size", str(BATCH), "--num-workers", "0", "--wandb-mode", "disabled", "--seed", "0",
                *[a for k, v in (SETTINGS | self.models[model]).items() for a in (f"--{k.replace('_', '-')}", str(v))]]
        history = self.main(argv)
        _reset_accelerate()
        summary = json.loads((self.tmp / "runs" / f"r{self.run}" / "summary.json").read_text())
        # the second epoch's training rate; the wall time per epoch from the run's own clock
        self._note(f"recipe {model}", history[-1]["train_images_per_s"], summary["wall_time_s"] / len(history))

    def plain(self, model: str) -> None:
        from toolkit.data import CIFAR10_MEAN, CIFAR10_STD
        from toolkit.models import cifar_classifier

        torch.manual_seed(0)
        net = cifar_classifier(**self.models[model], dropout=SETTINGS["dropout"]).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=SETTINGS["lr"], momentum=SETTINGS["momentum"], nesterov=True,
                              weight_decay=SETTINGS["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, SETTINGS["lr"], total_steps=EPOCHS * self.steps)
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) * 255
        bf16, out = self.precision == "bf16", self.tmp / f"plain{self.run}.pth"
        self.run += 1
        for epoch in range(EPOCHS):
            start = time.perf_counter()
            net.train()
            order = torch.randperm(len(self.y))
            for i in range(self.steps):
                idx = order[i * BATCH:(i + 1) * BATCH]
                x = (self.x[idx].float() - mean) / std
                x = F.pad(x, (4, 4, 4, 4))
                offsets = torch.randint(0, 9, (len(idx), 2)).tolist()
                x = torch.stack([img[:, dy:dy + 32, dx:dx + 32] for img, (dy, dx) in zip(x, offsets)])
                x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x.flip(3), x)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), self.y[idx], label_smoothing=SETTINGS["label_smoothing"])
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            train_s = time.perf_counter() - start
            net.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                sum(int((net(((xb.float() - mean) / std).contiguous(memory_format=torch.channels_last))
                                   .argmax(1) == yb).sum())
                              for xb, yb in zip(self.x_test.split(2 * BATCH), self.y_test.split(2 * BATCH)))
            torch.save(net.state_dict(), out)
            epoch_s = time.perf_counter() - start
        self._note(f"plain {model}", self.steps * BATCH / train_s, epoch_s)


def run(quick: bool = False, repeats: int = 3) -> tuple[list[Row], dict]:
    with tempfile.TemporaryDirectory(prefix="bench-cifar10-") as tmp:
        b = Bench(quick, Path(tmp))
        variants = {f"{kind} {m}": (lambda kind=kind, m=m: getattr(b, kind)(m))
                    for m in b.models for kind in ("plain", "recipe")}
        interleaved(variants, warmup=0, repeats=repeats)
    rows = []
    for m in b.models:
        rate, base = median(b.rates[f"recipe {m}"]), median(b.rates[f"plain {m}"])
        wall, base_wall = median(b.epoch_s[f"recipe {m}"]), median(b.epoch_s[f"plain {m}"])
        common = (f"--model {m}, batch {BATCH}, {b.steps} steps/epoch, epoch {EPOCHS} of {EPOCHS}, {b.source}, "
                  f"precision {b.precision}")
        rows += [
            Row(SECTION, f"recipe training ({m})", "recipes/cifar10.py", "plain loop", rate, base, "images/s",
                rate / base, note=common, extra={"recipe": b.rates[f"recipe {m}"], "plain": b.rates[f"plain {m}"]}),
            Row(SECTION, f"recipe epoch wall ({m})", "recipes/cifar10.py", "plain loop + eval + save", wall, base_wall,
                "s", wall / base_wall, note=f"training + evaluation on {len(b.y_test)} test images + checkpoints",
                extra={"recipe": b.epoch_s[f"recipe {m}"], "plain": b.epoch_s[f"plain {m}"]}),
        ]
    return rows, {"source": b.source, "precision": b.precision}
