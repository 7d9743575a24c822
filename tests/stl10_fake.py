"""Fake STL-10 binaries in the real layout, for tests and the loader benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.data.stl10 import STL10_CLASSES, write_stl10_binary


def write_fake_stl10(root: Path, train: int = 20, test: int = 10, unlabeled: int = 24, seed: int = 0) -> dict:
    """root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt, fold_indices.txt.

    Images are random uint8 (C, H, W) arrays written column-major as STL-10 stores them;
    labels 1..10 in the label files. Returns the (C, H, W) arrays and 0-based labels written.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    written = {}
    for split, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        write_stl10_binary(folder / f"{split}_X.bin", images)
        labels = None
        if split != "unlabeled":
            labels = rng.integers(0, 10, size=n).astype(np.int64)
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        written[split] = (images, labels)
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    folds = [" ".join(str(i) for i in range(k, train, 10)) for k in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return written
