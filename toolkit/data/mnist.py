"""MNIST from ``torchvision.datasets``, kept as one uint8 tensor per split.

Layout (what torchvision's download leaves)::

    root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]

torchvision 0.29's ``MNIST`` only reads the uncompressed idx files: with just the
``.gz`` files and ``download=False`` it says "Dataset not found", and with
``download=True`` it unpacks them beside themselves (impossible in a read-only copy
such as ``../shared/data/mnist``). :class:`MNISTSplit` therefore also reads the
gzipped files in memory; downloading stays torchvision's own code (its mirrors and
checksums). Images stay uint8 (0..255) up to the device, where the objective's
``to_unit_range`` makes them float in [0, 1].
"""

from __future__ import annotations

import gzip
import math
import zlib
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST

__all__ = ["MNISTSplit", "read_idx", "load_mnist"]

_IDX_DTYPES = {0x08: np.uint8}  # the only element type MNIST uses


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (``.gz`` or plain) into a uint8 tensor of the shape its header gives.

    Header: two zero bytes, the element type (0x08 = uint8), the number of dimensions,
    then one big-endian uint32 per dimension (images: 2051 = 0x00000803, (N, 28, 28);
    labels: 2049 = 0x00000801, (N,)). Raises ValueError for a bad header or size.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # not gzip, truncated stream, bad CRC
        raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {err}); expected an idx file"
                         f"{' compressed with gzip' if path.suffix == '.gz' else ''}") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not a uint8 idx file (magic bytes {data[:4].hex() or 'missing'})")
    nd = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    offset = 4 + 4 * nd
    if len(data) < offset or len(data) - offset != math.prod(shape):  # exact integers: no overflow
        raise ValueError(f"{path}: header says shape {shape} but holds {len(data) - offset} values")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy())


class MNISTSplit(MNIST):
    """torchvision's ``MNIST`` that also accepts the gzipped idx files as they were downloaded.

    Args as ``torchvision.datasets.MNIST(root, train, download=...)``; files are looked
    for in ``root/MNIST/raw/``, plain first, then ``.gz``. ``data`` is (N, 28, 28)
    uint8 in 0..255, ``targets`` (N,) int64 in 0..9.
    """

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, "MNIST", "processed")

    def _file(self, stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (Path(self.raw_folder) / name).is_file():
                return Path(self.raw_folder) / name
        return None

    def _check_exists(self) -> bool:
        return all(self._file(os.path.splitext(name)[0]) for name, _ in self.resources)

    def _load_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "train" if self.train else "t10k"
        images = read_idx(self._file(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(self._file(f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"MNIST {prefix} files in {self.raw_folder} disagree: images {tuple(images.shape)}, "
                             f"labels {tuple(labels.shape)}; expected (N, 28, 28) and (N,)")
        return images, labels.long()


def load_mnist(root: str | os.PathLike, train: bool, download: bool = False) -> TensorDataset:
    """One MNIST split as ``TensorDataset(images, labels)``.

    images: (N, 1, 28, 28) torch.uint8 in 0..255 (N = 60000 train, 10000 test for the
    real set); labels: (N,) int64 in 0..9. ``download=True`` fetches the files with
    torchvision when they are missing (needs a network); otherwise a missing file
    raises FileNotFoundError naming the folder and the flag.
    """
    try:
        ds = MNISTSplit(str(root), train=train, download=download)
    except RuntimeError as err:
        if "Dataset not found" not in str(err):
            raise
        raise FileNotFoundError(
            f"MNIST not found in {Path(root) / 'MNIST' / 'raw'} (need train/t10k images-idx3 and labels-idx1 "
            f"files, .gz or not); pass --download true to fetch it, or --data-dir to point at a copy") from None
    return TensorDataset(ds.data.unsqueeze(1).contiguous(), ds.targets)
