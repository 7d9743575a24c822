"""Data pipelines: the brain-MRI albumentations pipeline against torchvision.transforms.v2, the STL-10 loader
against torchvision's ``STL10`` + ``ToTensor``, worker start-up per epoch, and loader-or-model bottleneck per recipe.

- MRI: synthetic 512x512 PNG slices (written to a temp folder), read, resized to 240 and
  augmented by :class:`~toolkit.data.mri.dataset.MRISegmentationDataset` with
  :func:`~toolkit.data.mri.augment.mri_train_transforms` (cache off: every read from disk;
  cache on, the recipe's default: augmentation only), against the same operations with the
  same probabilities in torchvision.transforms.v2 on ``tv_tensors.Image`` / ``Mask``
  (decode_image, Resize, RandomHorizontalFlip, RandomAffine, ColorJitter, ElasticTransform).
  One process (``num_workers=0``), batches of 16, images/s.
- STL-10: ``bench/bench_stl10_loader.py`` run as a subprocess when present; its figures.
- Bottleneck: each recipe's training DataLoader at its default batch size and workers on
  fake data in the real format, images/s, against its model's training images/s in the
  default precision (bf16 + channels_last where supported).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .common import Row, interleaved, median

SECTION = "pipelines"
ROOT = Path(__file__).resolve().parents[1]


class TorchvisionMRI(Dataset):
    """The MRI training pipeline in torchvision.transforms.v2: item = (image (1, S, S) uint8, mask (1, S, S) uint8)."""

    def __init__(self, records, size: int = 240, cache: bool = False) -> None:
        from torchvision.transforms import v2

        self.records, self.size = list(records), size
        self.resize = v2.Resize((size, size), antialias=True)  # masks (tv_tensors.Mask) get nearest neighbour
        self.augment = v2.Compose([
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1))], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
            v2.RandomApply([v2.ElasticTransform(alpha=20.0, sigma=5.0)], p=0.1),
        ])
        self.cached = [self._load(i) for i in range(len(self.records))] if cache else None

    def _load(self, i: int):
        from torchvision import tv_tensors
        from torchvision.io import ImageReadMode, decode_image, read_file

        r = self.records[i]
        image = decode_image(read_file(str(r.image_path)), mode=ImageReadMode.GRAY)
        mask = (decode_image(read_file(str(r.mask_path)), mode=ImageReadMode.GRAY) > 127).to(torch.uint8)
        return self.resize(tv_tensors.Image(image), tv_tensors.Mask(mask))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        image, mask = self.cached[i] if self.cached is not None else self._load(i)
        image, mask = self.augment(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _drain(loader, batches: int | None = None) -> int:
    seen = 0
    for k, batch in enumerate(loader):
        seen += batch[0].shape[0]
        if batches is not None and k + 1 >= batches:
            break
    return seen


def mri_rows(quick: bool, repeats: int, tmp: Path) -> list[Row]:
    from toolkit.data.mri.augment import mri_train_transforms
    from toolkit.data.mri.dataset import MRISegmentationDataset
    from toolkit.data.mri.discover import discover_mri_slices
    from toolkit.data.mri.synthetic import generate_synthetic_mri

    n = 8 if quick else 64
    root = generate_synthetic_mri(tmp / "mri", num_images=n, size=512, seed=0)
    records = discover_mri_slices(root, channels=1).slices
    rows = []
    for cache in (False, True):
        alb = MRISegmentationDataset(records, size=240, transform=mri_train_transforms(), cache=cache)
        tv = TorchvisionMRI(records, size=240, cache=cache)
        loaders = {k: DataLoader(d, batch_size=16 if not quick else 4, shuffle=True, num_workers=0)
                   for k, d in (("albumentations", alb), ("torchvision v2", tv))}
        times = interleaved({k: (lambda dl=dl: (_drain(dl), None)[1]) for k, dl in loaders.items()},
                            warmup=1, repeats=repeats)
        rate = {k: n / median(t) for k, t in times.items()}
        what = "cached, augment (recipe default)" if cache else "load 512 PNG + resize 240 + augment"
        rows.append(Row(SECTION, f"brain MRI: {what}", "albumentations (toolkit)", "torchvision v2",
                        rate["albumentations"], rate["torchvision v2"], "images/s",
                        rate["albumentations"] / rate["torchvision v2"], note=f"{n} slices, 1 process",
                        extra={k: t for k, t in times.items()}))
    return rows


def worker_start_rows(quick: bool, repeats: int, tmp: Path) -> list[Row]:
    """Time to the first batch of a new epoch of the MRI training set (cached, augmented, each sample reseeded from
    its epoch by :class:`~toolkit.loop.EpochSeeded`) with 2 workers: persistent ones (the Trainer's since 2 Dec
    2026) against fresh workers every epoch (before)."""
    from toolkit.data.mri.augment import mri_train_transforms
    from toolkit.data.mri.dataset import MRISegmentationDataset
    from toolkit.data.mri.discover import discover_mri_slices
    from toolkit.loop import EpochSeeded

    data = EpochSeeded(MRISegmentationDataset(discover_mri_slices(tmp / "mri", channels=1).slices, size=240,
                                              transform=mri_train_transforms()), seed=0)
    loaders = {p: DataLoader(data, batch_size=4 if quick else 16, shuffle=True, num_workers=2, persistent_workers=p)
               for p in (False, True)}
    for dl in loaders.values():
        _drain(dl)  # the first epoch starts the workers in both cases

    def first_batch(dl) -> float:
        start = time.perf_counter()
        it = iter(dl)
        next(it)
        elapsed = time.perf_counter() - start
        for _ in it:  # finish the epoch so the next one starts clean
            pass
        return elapsed

    times = interleaved({p: (lambda dl=dl: first_batch(dl)) for p, dl in loaders.items()}, warmup=0, repeats=repeats)
    fresh, kept = median(times[False]), median(times[True])
    return [Row(SECTION, "epoch start: first batch, 2 workers", "persistent_workers", "fresh workers each epoch",
                kept, fresh, "s", kept / fresh, note="lower is better", extra={"persistent_s": times[True],
                                                                             "fresh_s": times[False]})]


def stl10_rows(quick: bool, tmp: Path) -> tuple[list[Row], dict]:
    script = ROOT / "bench" / "bench_stl10_loader.py"
    if not script.is_file():
        return [], {"stl10_loader": "bench/bench_stl10_loader.py not present: skipped"}
    out = tmp / "stl10.json"
    args = (["--images", "512", "--batch-size", "64", "--workers", "0", "--warmup", "1", "--batches", "3",
             "--repeats", "2", "--processes", "1"] if quick else
            ["--images", "4000", "--batch-size", "256", "--workers", "0,2", "--warmup", "2", "--batches", "6",
             "--repeats", "4"])
    proc = subprocess.run([sys.executable, str(script), *args, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_stl10_loader.py failed: {proc.stderr[-2000:]}")
    res = json.loads(out.read_text())
    rows = []
    for w, kinds in res["throughput"].items():
        base = kinds["torchvision_totensor"]["images_per_s"]
        for key, label in (("memmap_uint8", "memmap uint8"), ("memmap_uint8_then_cpu_normalise",
                                                              "memmap uint8 + CPU normalise")):
            v = kinds[key]["images_per_s"]
            rows.append(Row(SECTION, f"STL-10 loader, {w} workers", label, "torchvision STL10 + ToTensor", v, base,
                            "images/s", v / base, note=f"{res['images']} fake images, batch {res['batch_size']}"))
    memory = {k: [round(p["Pss"]) for p in procs] for k, procs in res.get("memory_mib", {}).items()}
    return rows, {"stl10_loader_pss_mib_per_process": memory}


def recipe_loaders(quick: bool, tmp: Path) -> dict[str, tuple[Dataset, int, int]]:
    """{recipe: (training dataset on fake data in the real format, default batch, default workers)}."""
    from toolkit.data.cifar import CIFARTensorDataset
    from toolkit.data.mri.augment import mri_train_transforms
    from toolkit.data.mri.dataset import MRISegmentationDataset
    from toolkit.data.mri.discover import discover_mri_slices
    from toolkit.data.stl10 import STL10Memmap, write_stl10_binary

    g = torch.Generator().manual_seed(0)
    n = 512 if quick else 4096
    stl = tmp / "stl10" / "stl10_binary"
    write_stl10_binary(stl / "train_X.bin", torch.randint(0, 256, (n, 3, 96, 96), dtype=torch.uint8, generator=g))
    (stl / "train_y.bin").write_bytes(np.random.default_rng(0).integers(1, 11, n, dtype=np.uint8).tobytes())
    (stl / "unlabeled_X.bin").write_bytes((stl / "train_X.bin").read_bytes())
    mri = discover_mri_slices(tmp / "mri", channels=1).slices
    stl_train = STL10Memmap(tmp / "stl10", "train")
    return {
        "cifar10": (CIFARTensorDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                                       torch.randint(0, 10, (n,), generator=g)), 256, 0),
        "mnist": (TensorDataset(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                                torch.randint(0, 10, (n,), generator=g)), 128, 0),
        "brain_mri": (MRISegmentationDataset(mri, size=240, transform=mri_train_transforms()), 16, 2),
        "stl10_supervised": (stl_train, 128, 2), "stl10_resnet18": (stl_train, 128, 2),
        "stl10_pretrain": (STL10Memmap(tmp / "stl10", "unlabeled"), 256, 4), "stl10_probe": (stl_train, 128, 2),
    }


def bottleneck_rows(quick: bool, repeats: int, tmp: Path, model_rates: dict[str, float] | None) -> list[Row]:
    from .models import TrainStep, recipe_models
    from .trainer_overhead import _bf16_supported

    rows = []
    specs = {s.recipe: s for s in reversed(recipe_models(quick))}  # mnist: the linear AE (the default model)
    for recipe, (data, batch, workers) in recipe_loaders(quick, tmp).items():
        batch = min(batch, len(data) // 4) if quick else batch
        dl = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
        _drain(dl, 2)  # start the workers
        batches = max(1, min(len(dl) - 1, 2 if quick else 12))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _drain(dl, batches)
            times.append(time.perf_counter() - t0)
        loader_rate = batches * batch / median(times)
        del dl
        spec = specs[recipe]
        key = f"{spec.recipe}: {spec.name}"
        if model_rates and key in model_rates:
            model_rate = model_rates[key]
        else:
            step = TrainStep(spec.build(), spec, spec.bench_batch, _bf16_supported(), True)
            step.run(1)
            t0 = time.perf_counter()
            step.run(1 if quick else 3)
            model_rate = (1 if quick else 3) * spec.bench_batch / (time.perf_counter() - t0)
        verdict = "model" if loader_rate > model_rate else "loader"
        rows.append(Row(SECTION, f"bottleneck {recipe}", "DataLoader alone", f"model training ({spec.name})",
                        loader_rate, model_rate, "images/s", loader_rate / model_rate,
                        note=f"batch {batch}, {workers} workers: the {verdict} is the bottleneck"))
    return rows


def run(quick: bool = False, repeats: int = 4, model_rates: dict[str, float] | None = None) -> tuple[list[Row], dict]:
    with tempfile.TemporaryDirectory(prefix="bench-pipelines-") as name:
        tmp = Path(name)
        rows = mri_rows(quick, repeats, tmp)
        rows += worker_start_rows(quick, repeats, tmp)
        stl_rows, info = stl10_rows(quick, tmp)
        rows += stl_rows
        rows += bottleneck_rows(quick, repeats, tmp, model_rates)
    return rows, info
