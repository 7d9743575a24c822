"""Brain-MRI segmentation data in folders of image / mask files.

Layout (figshare PNG conversion, Kaggle-style sets and :mod:`toolkit.data.synthetic_mri`)::

    root/images/<id>.<ext>            the scans
    root/masks/<id>_mask.<ext>        their masks, or root/masks/<id>.<ext>

with ``ext`` one of png, jpg, jpeg, tif, tiff (any case); a mask's extension may differ
from its image's. Images and masks stay uint8 up to the device: normalisation happens
there.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "find_image_mask_pairs", "natural_key", "MRISegmentationDataset", "split_ids"]

#: File extensions recognised as images or masks (lower case, compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_EXT_PATTERN = "<" + "|".join(e[1:] for e in IMAGE_EXTENSIONS) + ">"


def natural_key(text: str) -> tuple:
    """Sort key ordering embedded numbers numerically: "2" < "10", "a9" < "a10"."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower()) for tok in re.split(r"(\d+)", text) if tok)


def _image_files(folder: Path) -> dict[str, Path]:
    """Map stem → path for the image files directly in ``folder``; a stem twice is an error."""
    found: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        if p.stem in found:
            raise ValueError(
                f"two files share the id {p.stem!r} in {folder}: {found[p.stem].name} and {p.name}; keep one"
            )
        found[p.stem] = p
    return found


def find_image_mask_pairs(root: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """List the (id, image_path, mask_path) triples of an MRI folder, naturally sorted by id.

    ``root/images/<id>.<ext>`` is paired with ``root/masks/<id>_mask.<ext2>`` or, failing
    that, ``root/masks/<id>.<ext2>`` (ext, ext2 in png/jpg/jpeg/tif/tiff, any case).
    Numeric ids sort numerically ("2" before "10"). Masks without an image are ignored.

    Raises:
        FileNotFoundError: ``root``, ``root/images`` or ``root/masks`` is missing, there is
            no image in ``root/images``, or an image has no mask (the message names the
            image and the mask paths tried).
        ValueError: two images or two masks with the same name but different extensions.
    """
    root = Path(root)
    layout = (
        f"expected {root}/images/<id>.{_EXT_PATTERN} and {root}/masks/<id>_mask.{_EXT_PATTERN} "
        f"(or masks/<id>.{_EXT_PATTERN})"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"MRI data folder {root} does not exist or is not a folder; {layout}")
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"no {folder.name}/ folder in {root}: {folder} is missing; {layout}")
    images = _image_files(images_dir)
    if not images:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}; {layout}")
    masks = _image_files(masks_dir)
    pairs = []
    for stem in sorted(images, key=natural_key):
        mask = masks.get(f"{stem}_mask") or masks.get(stem)
        if mask is None:
            raise FileNotFoundError(
                f"no mask for image {images[stem]}: tried {masks_dir}/{stem}_mask.{_EXT_PATTERN} "
                f"and {masks_dir}/{stem}.{_EXT_PATTERN}"
            )
        pairs.append((stem, images[stem], mask))
    return pairs


def _read(path: Path, flags: int) -> np.ndarray:
    """Decode an image file with OpenCV (works with non-ASCII paths); ValueError if unreadable."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise ValueError(f"cannot decode image file {path}: not a readable PNG/JPEG/TIFF image (empty or corrupt?)")
    return img


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(a, (size, size), interpolation=interp)


class MRISegmentationDataset(Dataset):
    """Image / mask pairs as uint8 tensors, resized to ``size``×``size``.

    Args:
        pairs: (id, image_path, mask_path) triples, e.g. from :func:`find_image_mask_pairs`.
        size: side in pixels that images (INTER_AREA when shrinking, INTER_LINEAR when
            growing) and masks (INTER_NEAREST) are resized to.
        transform: optional albumentations ``Compose`` applied jointly as
            ``transform(image=(H, W, C) uint8, mask=(H, W) uint8 {0, 1})``; it must keep uint8.
        cache: True decodes every pair once here into two contiguous uint8 arrays,
            ``images`` (N, size, size, C) and ``masks`` (N, size, size), that DataLoader
            workers share copy-on-write; False reads the files in ``__getitem__``.
        in_channels: 1 reads grey, 3 reads RGB.
        num_threads: decoding threads for the cache (None: up to 8).

    ``dataset[i]`` is ``(image, mask)``: image ``torch.uint8`` (C, size, size) with values
    0..255, mask ``torch.uint8`` (1, size, size) with values {0, 1}.

    Raises ValueError (naming the files) for an unreadable file, a mask whose height×width
    differs from its image's, or a mask with values other than {0, 255} or {0, 1}.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str | os.PathLike, str | os.PathLike]],
        size: int = 240,
        transform: Any = None,
        cache: bool = True,
        in_channels: int = 1,
        num_threads: int | None = None,
    ):
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        if int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.pairs = [(str(i), Path(im), Path(m)) for i, im, m in pairs]
        self.ids: list[str] = [p[0] for p in self.pairs]
        self.size = int(size)
        self.transform = transform
        self.in_channels = in_channels
        self.images: np.ndarray | None = None
        self.masks: np.ndarray | None = None
        if cache:
            n, s = len(self.pairs), self.size
            self.images = np.empty((n, s, s, in_channels), np.uint8)
            self.masks = np.empty((n, s, s), np.uint8)

            def fill(i: int) -> None:
                self.images[i], self.masks[i] = self.load_pair(i)

            threads = num_threads or min(8, os.cpu_count() or 1)
            if threads > 1 and n > 1:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(fill, range(n)))
            else:
                for i in range(n):
                    fill(i)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Read, check and resize pair ``i`` from disk, untransformed.

        Returns (image uint8 (size, size, C) 0..255, mask uint8 (size, size) {0, 1}).
        """
        _, img_path, mask_path = self.pairs[i]
        if self.in_channels == 1:
            img = _read(img_path, cv2.IMREAD_GRAYSCALE)
        else:
            img = cv2.cvtColor(_read(img_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = _read(mask_path, cv2.IMREAD_GRAYSCALE)
        if mask.shape[:2] != img.shape[:2]:
            raise ValueError(
                f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {img_path} "
                f"is {img.shape[0]}x{img.shape[1]}; a mask must have its image's size"
            )
        if mask.dtype != np.uint8:
            raise ValueError(f"mask {mask_path} has dtype {mask.dtype}; expected 8-bit values {{0, 255}} or {{0, 1}}")
        present = set(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
        if not (present <= {0, 255} or present <= {0, 1}):
            shown = sorted(present)[:8]
            raise ValueError(
                f"mask {mask_path} is not binary: it holds the values {shown}"
                f"{' ...' if len(present) > 8 else ''} ({len(present)} distinct); expected only {{0, 255}} or {{0, 1}}"
            )
        img = _resize(img, self.size, nearest=False)
        if img.ndim == 2:
            img = img[:, :, None]
        mask = _resize((mask > 0).view(np.uint8), self.size, nearest=True)
        return img, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            img, mask = self.images[i], self.masks[i]
            if self.transform is not None:  # a transform must never write into the shared cache
                img, mask = img.copy(), mask.copy()
        else:
            img, mask = self.load_pair(i)
        if self.transform is not None:
            out = self.transform(image=img, mask=mask)
            img, mask = out["image"], out["mask"]
            if img.ndim == 2:
                img = img[:, :, None]
            if img.dtype != np.uint8 or mask.dtype != np.uint8:
                raise TypeError(
                    f"the transform returned image {img.dtype} / mask {mask.dtype}; it must keep uint8 "
                    "(normalise on the device instead)"
                )
        # Always copy: the tensors must never alias the shared cache.
        image = torch.from_numpy(np.array(img.transpose(2, 0, 1), order="C", copy=True))
        mask_t = torch.from_numpy(np.array(mask[None], order="C", copy=True))
        return image, mask_t

    def reseed(self, seed: int) -> None:
        """Make the augmentation sequence reproducible from ``seed`` (a non-negative int).

        Calls ``transform.set_random_seed(seed)`` and gives every transform inside it its
        own seed derived from ``seed`` (see :func:`toolkit.data.transforms.reseed_transform`).
        Call it per epoch and per DataLoader worker (e.g. in ``worker_init_fn``): forked
        workers otherwise inherit identical generator states.
        """
        if self.transform is not None:
            from .transforms import reseed_transform  # albumentations is imported only when used

            reseed_transform(self.transform, seed)


def split_ids(
    ids: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    block_size: int = 1,
    groups: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split ids into (train, val) deterministically from ``seed``; both keep the input order.

    The split is drawn over units: single ids (default), runs of ``block_size`` consecutive
    ids in the given order (the figshare ids run in patient order: blocks of ~20 keep most
    patients on one side), or ``groups`` (one key per id, e.g. a patient id; a group is
    never split). ``round(val_fraction * units)`` units, at least one and at most all but
    one, go to val.

    Raises ValueError when there are fewer than 2 units (ids, blocks or groups), when
    ``val_fraction`` is not in (0, 1), or when ``groups`` does not match ``ids`` in length.
    """
    ids = [str(i) for i in ids]
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if groups is not None:
        if len(groups) != len(ids):
            raise ValueError(f"groups has {len(groups)} entries but there are {len(ids)} ids")
        unit_of = [str(g) for g in groups]
    else:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        unit_of = [str(k // block_size) for k in range(len(ids))]
    units = sorted(set(unit_of), key=natural_key)
    if len(units) < 2:
        raise ValueError(
            f"cannot split {len(ids)} id(s) into non-empty train and val sets: they form "
            f"{len(units)} unit(s) (block_size={block_size}, "
            f"groups={'given' if groups is not None else 'none'}); need >= 2"
        )
    n_val = min(max(1, round(val_fraction * len(units))), len(units) - 1)
    order = np.random.default_rng(seed).permutation(len(units))
    val_units = {units[k] for k in order[:n_val]}
    train = [i for i, u in zip(ids, unit_of) if u not in val_units]
    val = [i for i, u in zip(ids, unit_of) if u in val_units]
    return train, val
