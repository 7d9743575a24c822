"""CIFAR-10 as uint8 tensors in memory, from torchvision's files or from class folders.

Sources that ``--data-dir`` may point at (:func:`find_cifar10_source` tells them apart):

- a torchvision root: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
  (what ``torchvision.datasets.CIFAR10(root, download=True)`` leaves), or that
  ``cifar-10-batches-py`` folder itself; with ``download=True`` a missing set is
  fetched there by torchvision (its mirror and checksums);
- a class-folder root: ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``
  (PNG, BMP and WebP work too), or a folder holding exactly one such root
  (``cifar10-jpeg/``); class folder names are the CIFAR-10 class names;
- a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of such a class-folder tree, or a folder
  holding exactly one such archive (e.g. ``../shared/data/cifar10``): it is extracted
  once into ``cache_dir``.

Class folders are decoded once; the (N, 3, 32, 32) uint8 result is cached as
``cifar10-<split>-uint8.pt`` beside the class folders (or in ``cache_dir`` when that
folder is read-only), written atomically, and reused while the file list is unchanged.

Batches stay uint8 until the device. There, :class:`~toolkit.data.batch_transforms.Normalize`
with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD` (the objective's ``preprocess``) makes them float
and normalised, and :class:`~toolkit.data.batch_transforms.RandomCropFlip` (its ``augment``)
crops and flips whole batches in training only. A validation hold-out is
:func:`toolkit.data.splits.holdout_split`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checkpoint import atomic_write
from .archives import extract_archive, is_archive

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFARTensorDataset",
    "CIFARSource",
    "find_cifar10_source",
    "extract_archive",
    "read_class_folders",
    "load_torchvision_cifar10",
    "load_cifar10",
]

#: torchvision's ``CIFAR10.classes``, in class-index order.
CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                    "ship", "truck")
#: Per-channel mean and std of the CIFAR-10 training images, pixels in [0, 1] (RGB).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "test")
_CACHE_VERSION = 1


class CIFARTensorDataset(Dataset):
    """Images and labels held as two tensors; item i = (image (3, 32, 32) uint8 0..255, label int64 0..K-1).

    images: (N, 3, H, W) torch.uint8; labels: (N,) torch.int64; classes: names in
    class-index order. An item is two views into the tensors, so the DataLoader's
    per-sample fetch and collate cost about 1 ms per batch of 256 on one CPU core.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = CIFAR10_CLASSES) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be (N,) with N = {images.shape[0]}, got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, indices: Sequence[int]) -> CIFARTensorDataset:
        """A new dataset of the items at ``indices`` (ints in 0..N-1, in that order), copied into new tensors."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return CIFARTensorDataset(self.images[index], self.labels[index], self.classes)


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class CIFARSource:
    """Where CIFAR-10 was found. kind: "torchvision" (root holds cifar-10-batches-py/) or "folder"
    (root holds train/<class>/ and test/<class>/); archive: the archive it was extracted from, if any."""

    kind: str
    root: Path
    archive: Path | None = None


def _is_class_folder_root(path: Path) -> bool:
    return all((path / split).is_dir() and any(p.is_dir() for p in (path / split).iterdir()) for split in SPLITS)


def _find_folder_root(path: Path) -> Path | None:
    """``path`` itself or its only sub-folder, whichever holds train/ and test/ class folders."""
    if _is_class_folder_root(path):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and _is_class_folder_root(subdirs[0]):
        return subdirs[0]
    return None


def find_cifar10_source(data_dir: str | os.PathLike, cache_dir: str | os.PathLike = "data/cifar10-cache",
                        download: bool = False) -> CIFARSource:
    """Tell which CIFAR-10 layout ``data_dir`` holds (see the module docstring); extract an archive.

    With ``download=True`` a folder (existing or not) that holds no CIFAR-10 becomes
    the torchvision root that :func:`load_torchvision_cifar10` downloads into.
    Raises FileNotFoundError naming the layouts looked for.
    """
    path = Path(data_dir)
    if is_archive(path):
        root = _find_folder_root(extract_archive(path, cache_dir))
        if root is None:
            raise FileNotFoundError(f"{path}: the archive holds no train/<class>/ and test/<class>/ image folders")
        return CIFARSource("folder", root, archive=path)
    if path.is_dir():
        if path.name == "cifar-10-batches-py":
            return CIFARSource("torchvision", path.parent)
        if (path / "cifar-10-batches-py").is_dir():
            return CIFARSource("torchvision", path)
        root = _find_folder_root(path)
        if root is not None:
            return CIFARSource("folder", root)
        archives = [p for p in sorted(path.iterdir()) if is_archive(p) and p.name != "cifar-10-python.tar.gz"]
        if len(archives) == 1:
            return find_cifar10_source(archives[0], cache_dir, download)
    if download and not path.is_file():
        return CIFARSource("torchvision", path)
    raise FileNotFoundError(
        f"no CIFAR-10 found at {path}: expected a torchvision root (cifar-10-batches-py/), class folders "
        f"(train/<class>/*.jpg and test/<class>/*.jpg), or a .tar.gz of them; pass --download true to fetch "
        f"it with torchvision")


# --------------------------------------------------------------------------- readers
def load_torchvision_cifar10(root: str | os.PathLike, train: bool, download: bool = False) -> CIFARTensorDataset:
    """One split of torchvision's CIFAR10 (md5-checked) as a :class:`CIFARTensorDataset`.

    images (N, 3, 32, 32) uint8 (N = 50,000 train, 10,000 test), labels (N,) int64 in 0..9.
    """
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=download)
    except OSError as err:  # no network, or the server refused: say where the data could come from instead
        if not download:
            raise
        raise FileNotFoundError(
            f"could not download CIFAR-10 into {root} ({err}); point --data-dir at a copy (torchvision root, "
            f"class folders or their .tar.gz)") from None
    except RuntimeError as err:
        if "not found or corrupted" not in str(err):
            raise
        raise FileNotFoundError(
            f"CIFAR-10 not found or corrupted in {Path(root) / CIFAR10.base_folder} ({err}); pass --download true "
            f"to fetch it, or --data-dir to point at a copy") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return CIFARTensorDataset(images, torch.tensor(ds.targets, dtype=torch.long), ds.classes)


def _list_class_folder(split_dir: Path) -> tuple[list[tuple[Path, int]], str]:
    """(file, label) pairs of ``split_dir/<class>/*`` in a fixed order, and a fingerprint of the listing."""
    files: list[tuple[Path, int]] = []
    digest = hashlib.sha256()
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in CIFAR10_CLASSES:
            raise ValueError(f"{class_dir}: {class_dir.name!r} is not a CIFAR-10 class; class folders must be "
                             f"named {', '.join(CIFAR10_CLASSES)}")
        label = CIFAR10_CLASSES.index(class_dir.name)
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
                files.append((Path(entry.path), label))
                digest.update(os.fsencode(f"{class_dir.name}/{entry.name}:{entry.stat().st_size}\n"))  # any name
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {split_dir}")
    return files, digest.hexdigest()


def _decode(files: list[tuple[Path, int]], size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as img:  # reads the header only: the size is checked before decoding
                if img.size != (size, size):
                    raise ValueError(f"{path}: CIFAR-10 images are {size}x{size}, this one is "
                                     f"{img.size[0]}x{img.size[1]}")
                images[i] = np.asarray(img.convert("RGB"))
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # unreadable, truncated, corrupt
            raise ValueError(f"{path}: cannot decode it as an image ({type(err).__name__}: {err})") from None
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), labels


def _cache_path(root: Path, split: str, cache_dir: Path) -> Path:
    """Beside the class folders when writable, else in ``cache_dir`` under a name unique to ``root``."""
    name = f"cifar10-{split}-uint8.pt"
    if os.access(root, os.W_OK):
        return root / name
    key = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:12]
    return cache_dir / f"{root.name}-{key}" / name


def read_class_folders(root: str | os.PathLike, split: str, cache_dir: str | os.PathLike = "data/cifar10-cache",
                       use_cache: bool = True) -> CIFARTensorDataset:
    """Decode ``root/<split>/<class>/*`` into a :class:`CIFARTensorDataset` (images (N, 3, 32, 32) uint8).

    Labels are the index of the folder name in :data:`CIFAR10_CLASSES` (torchvision's
    order). The decoded tensors are cached (see the module docstring); a cache whose
    file listing (names and sizes) no longer matches the folders is rebuilt.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    files, fingerprint = _list_class_folder(root / split)
    cache = _cache_path(root, split, Path(cache_dir))
    if use_cache and cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            if saved.get("version") == _CACHE_VERSION and saved.get("fingerprint") == fingerprint:
                return CIFARTensorDataset(saved["images"], saved["labels"], CIFAR10_CLASSES)
        except Exception:  # an unreadable cache is rebuilt
            pass
    images, labels = _decode(files)
    if use_cache:
        payload = {"version": _CACHE_VERSION, "fingerprint": fingerprint, "images": images, "labels": labels}
        atomic_write(cache, lambda f: torch.save(payload, f))
    return CIFARTensorDataset(images, labels, CIFAR10_CLASSES)


def load_cifar10(data_dir: str | os.PathLike, download: bool = False,
                 cache_dir: str | os.PathLike = "data/cifar10-cache") -> tuple[CIFARTensorDataset, CIFARTensorDataset, CIFARSource]:
    """(train, test, source) from any layout :func:`find_cifar10_source` accepts.

    train: 50,000 and test: 10,000 images for the real set, each item
    (image (3, 32, 32) uint8 0..255, label int64 0..9); ``classes`` == :data:`CIFAR10_CLASSES`.
    """
    source = find_cifar10_source(data_dir, cache_dir, download)
    if source.kind == "torchvision":
        train = load_torchvision_cifar10(source.root, True, download)
        test = load_torchvision_cifar10(source.root, False, download=False)
    else:
        train, test = (read_class_folders(source.root, split, cache_dir) for split in SPLITS)
    return train, test, source
