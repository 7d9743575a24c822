"""STL-10 read straight from its binaries through a memory map, batches kept uint8 until the device.

STL-10 (Coates, Lee and Ng, 2011) is 96x96 RGB: 5,000 labelled train images (500 per
class), 8,000 labelled test images and 100,000 unlabelled ones. ``--data-dir`` is the
folder holding ``stl10_binary/`` (what ``torchvision.datasets.STL10(root, download=True)``
leaves) or that ``stl10_binary/`` folder itself::

    stl10_binary/train_X.bin      5,000 x 27,648 bytes   uint8, each image 3 x 96 x 96 column-major
    stl10_binary/train_y.bin      5,000 bytes            labels 1..10
    stl10_binary/test_X.bin       8,000 x 27,648 bytes
    stl10_binary/test_y.bin       8,000 bytes
    stl10_binary/unlabeled_X.bin  100,000 x 27,648 bytes (2.7 GB)
    stl10_binary/class_names.txt, fold_indices.txt

Each image is stored channel by channel, and within a channel column by column (the
byte at ``[c, x, y]``); :class:`STL10Memmap` returns it as (3, 96, 96) = (C, H, W), the
same pixels as torchvision's ``STL10`` gives.

The image files are never read whole: ``np.memmap`` maps them, so every process (and
every DataLoader worker) reads the same pages of the operating system's page cache,
and a batch costs one gather of its images (``__getitems__``), with no per-image
decoding. Normalisation and augmentation happen on the device, on whole batches
(:class:`~toolkit.data.batch_transforms.ResizeNormalize` and
:class:`~toolkit.data.batch_transforms.RandomCropFlip` in the objective).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError

__all__ = [
    "STL10_CLASSES", "STL10_MEAN", "STL10_STD", "IMAGE_BYTES", "SPLIT_FILES",
    "STL10Memmap", "find_stl10_root", "ensure_stl10", "open_stl10", "read_png_folder", "write_stl10_binary",
]

#: torchvision's ``STL10.classes`` (class_names.txt), in label order 0..9 (file labels 1..10).
STL10_CLASSES: tuple[str, ...] = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
#: Per-channel mean and std of STL-10 images, pixels in [0, 1] (values used widely for STL-10).
STL10_MEAN: tuple[float, float, float] = (0.4467, 0.4398, 0.4066)
STL10_STD: tuple[float, float, float] = (0.2603, 0.2566, 0.2713)

SIZE = 96
IMAGE_BYTES = 3 * SIZE * SIZE  # 27,648 bytes per image
BASE_FOLDER = "stl10_binary"
#: (images file, labels file or None) of each split.
SPLIT_FILES: dict[str, tuple[str, str | None]] = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


def _expected_files(splits: Sequence[str]) -> list[str]:
    return [name for split in splits for name in SPLIT_FILES[split] if name]


def find_stl10_root(data_dir: str | os.PathLike, splits: Sequence[str] = ("train", "test")) -> Path:
    """The ``stl10_binary/`` folder of ``data_dir`` (or ``data_dir`` itself) holding the files of ``splits``.

    Raises FileNotFoundError listing the expected files and how to get them.
    """
    path = Path(data_dir)
    for folder in (path / BASE_FOLDER, path):
        if all((folder / name).is_file() for name in _expected_files(splits)):
            return folder
    folder = path / BASE_FOLDER if path.name != BASE_FOLDER else path
    missing = [name for name in _expected_files(splits) if not (folder / name).is_file()]
    raise FileNotFoundError(
        f"STL-10 not found at {path}: expected {folder}/{{{', '.join(_expected_files(splits))}}} "
        f"(missing: {', '.join(missing)}); pass --download true to fetch the 2.6 GB archive with torchvision into "
        f"{path}, or point --data-dir at the folder holding stl10_binary/")


def ensure_stl10(data_dir: str | os.PathLike, splits: Sequence[str], download: bool = False) -> Path:
    """:func:`find_stl10_root`; with ``download=True`` and files missing, torchvision's ``STL10(download=True)``
    fetches and md5-checks the archive into ``data_dir`` first (needs a network)."""
    try:
        return find_stl10_root(data_dir, splits)
    except FileNotFoundError:
        if not download:
            raise
    from torchvision.datasets import STL10

    try:
        STL10(str(data_dir), split="test", download=True)
    except OSError as err:
        raise FileNotFoundError(f"could not download STL-10 into {data_dir} ({err}); copy stl10_binary/ there "
                                f"and pass --download false") from None
    return find_stl10_root(data_dir, splits)


class STL10Memmap(Dataset):
    """One STL-10 split read through ``np.memmap``; item i = (image (3, 96, 96) uint8 0..255, label int64).

    Labels are 0..9 (the files' 1..10 minus one, as torchvision does); the unlabelled
    split gives -1. ``limit`` keeps the first ``limit`` images (0 = all). The map is
    opened lazily in each process and is not pickled (a DataLoader worker opens its
    own, sharing the page cache). ``__getitems__`` gathers a whole batch at once.
    Raises ValueError naming the file when sizes or labels are not STL-10's.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", limit: int = 0) -> None:
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_FILES)}, got {split!r}")
        self.root, self.split = find_stl10_root(root, (split,)), split
        images_name, labels_name = SPLIT_FILES[split]
        self.images_path = self.root / images_name
        size = self.images_path.stat().st_size
        if size == 0 or size % IMAGE_BYTES:
            raise ValueError(f"{self.images_path}: {size} bytes is not a whole number of {IMAGE_BYTES}-byte "
                             f"3x96x96 images")
        n = size // IMAGE_BYTES
        if labels_name:
            labels = np.fromfile(self.root / labels_name, dtype=np.uint8).astype(np.int64)
            if labels.shape[0] != n:
                raise ValueError(f"{self.root / labels_name}: {labels.shape[0]} labels for {n} images in "
                                 f"{images_name}")
            if labels.size and (labels.min() < 1 or labels.max() > 10):
                raise ValueError(f"{self.root / labels_name}: labels must be 1..10, found {labels.min()}..{labels.max()}")
            labels -= 1
        else:
            labels = np.full(n, -1, dtype=np.int64)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.length = min(n, limit) if limit else n
        self.labels = torch.from_numpy(labels[: self.length].copy())
        self.classes = list(STL10_CLASSES)
        self._mm: np.memmap | None = None

    def _map(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.images_path, dtype=np.uint8, mode="r", shape=(self.length, 3, SIZE, SIZE))
        return self._mm

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        image = torch.from_numpy(np.ascontiguousarray(self._map()[index].transpose(0, 2, 1)))
        return image, self.labels[index]

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, 3, 96, 96) uint8 0..255 contiguous batch of the images at ``indices``: one gather from the map,
        then one transposing copy to (C, H, W) (numpy's, about twice as fast as torch's for uint8)."""
        raw = self._map()[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 1, 3, 2)))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The DataLoader's batched fetch: the items of ``indices`` as views into one gathered batch
        (the collate's stack is then a plain copy)."""
        batch = self.images(indices)
        labels = self.labels[torch.as_tensor(indices, dtype=torch.long)]
        return list(zip(batch.unbind(0), labels.unbind(0)))


def open_stl10(data_dir: str | os.PathLike, splits: Sequence[str], download: bool = False, accelerator=None,
               limit: int = 0) -> dict[str, STL10Memmap]:
    """``{split: STL10Memmap}`` for a recipe: one download per machine (local main process first) when
    ``download``; a missing or malformed file becomes a :class:`~toolkit.data.errors.DataError` naming it."""
    from contextlib import nullcontext

    first = accelerator.local_main_process_first() if accelerator is not None else nullcontext()
    try:
        with first:
            ensure_stl10(data_dir, splits, download)
        return {split: STL10Memmap(data_dir, split, limit=limit) for split in splits}
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None


# --------------------------------------------------------------------------- files in the real layout
def write_stl10_binary(path: str | os.PathLike, images: np.ndarray | torch.Tensor) -> Path:
    """Write (N, 3, 96, 96) uint8 (C, H, W) images to ``path`` in STL-10's column-major layout."""
    array = np.asarray(images, dtype=np.uint8)
    if array.ndim != 4 or array.shape[1:] != (3, SIZE, SIZE):
        raise ValueError(f"images must be (N, 3, 96, 96) uint8, got {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(array.transpose(0, 1, 3, 2)).tofile(path)
    return path


def read_png_folder(folder: str | os.PathLike, limit: int = 0) -> torch.Tensor:
    """Every 96x96 RGB ``*.png`` in ``folder`` (sorted by name) as (N, 3, 96, 96) uint8; ValueError naming a bad file."""
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))[: limit or None]
    if not files:
        raise FileNotFoundError(f"no *.png images in {folder}")
    out = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                if img.size != (SIZE, SIZE):
                    raise ValueError(f"{file}: STL-10 images are 96x96, this one is {img.size[0]}x{img.size[1]}")
                out[i] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # unreadable, truncated, corrupt
            raise ValueError(f"{file}: cannot decode it as an image ({type(err).__name__}: {err})") from None
    return torch.from_numpy(out)
