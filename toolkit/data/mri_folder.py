"""Brain-MRI segmentation datasets and patient-safe splits over :class:`~toolkit.data.mri_sources.MRISlice` records.

Where the slices come from (image/mask folders, Kaggle LGG, figshare .mat, BraTS NIfTI) is
:mod:`toolkit.data.mri_sources`; ``find_image_mask_pairs`` and ``natural_key`` are re-exported
here for older callers. Images and masks stay uint8 up to the device: normalisation happens there.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .mri_io import IMAGE_EXTENSIONS, MRIDataError, MRISlice, natural_key, read_slice
from .mri_sources import find_image_mask_pairs

__all__ = ["IMAGE_EXTENSIONS", "MRISegmentationDataset", "find_image_mask_pairs", "load_split", "natural_key",
           "save_split", "split_ids", "split_records"]


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    out = cv2.resize(a, (size, size), interpolation=interp)
    return out[:, :, None] if a.ndim == 3 and out.ndim == 2 else out


def _as_record(item: MRISlice | Sequence, in_channels: int | None) -> MRISlice:
    if isinstance(item, MRISlice):
        return item
    if in_channels not in (None, 1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB) for (id, image, mask) pairs, got {in_channels}")
    i, image, mask = item
    return MRISlice(str(i), None, "folder", Path(image), Path(mask), channels=(0, 1, 2) if in_channels == 3 else ())


def _volume_groups(records: Sequence[MRISlice]) -> list[list[int]]:
    """Indices in runs that share a volume (BraTS case), so that each volume is read once; 2D: one each."""
    groups: list[list[int]] = []
    for i, r in enumerate(records):
        if r.index is not None and groups and records[groups[-1][0]].mask_path == r.mask_path:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class MRISegmentationDataset(Dataset):
    """MRI slices and their masks as uint8 tensors, resized to ``size``×``size``.

    Args:
        records: :class:`MRISlice` records (from :func:`~toolkit.data.mri_sources.discover_mri_slices`
            or :func:`split_records`), or (id, image_path, mask_path) triples of 2D files (e.g.
            from :func:`find_image_mask_pairs`), read grey, or RGB with ``in_channels=3``.
        size: side in pixels that images (INTER_AREA when shrinking, INTER_LINEAR when growing)
            and masks (INTER_NEAREST) are resized to.
        transform: optional albumentations ``Compose`` applied jointly as
            ``transform(image=(H, W, C) uint8, mask=(H, W) uint8 {0, 1})``; it must keep uint8.
        cache: True reads every slice once here (each NIfTI volume once) into two contiguous
            uint8 arrays, ``images`` (N, size, size, C) and ``masks`` (N, size, size), that
            DataLoader workers share copy-on-write; False reads the files in ``__getitem__``
            (slow for NIfTI: a whole volume per slice).
        in_channels: for triples, 1 (grey, default) or 3 (RGB); for records, None or their
            channel count (a check).
        num_threads: reading threads for the cache (None: up to 8).
        skip_bad_files: drop slices whose files cannot be read or whose mask is bad (wrong size,
            not binary), listing them in ``skipped``; with ``cache=False`` every slice is read
            once here to find them. False: the first bad file raises MRIDataError naming it.

    ``dataset[i]`` is ``(image, mask)``: image ``torch.uint8`` (C, size, size) with values
    0..255, mask ``torch.uint8`` (1, size, size) with values {0, 1}; C = ``in_channels``.
    ``ids`` (list of str) and ``records`` follow the dataset order; ``skipped`` is a list of
    (path, reason) of the slices left out.

    Raises MRIDataError (a ValueError naming the file) for an unreadable file, a mask whose
    height×width differs from its image's, or a mask with values other than {0, 255} or {0, 1}.
    """

    def __init__(
        self,
        records: Sequence[MRISlice | tuple[str, str | os.PathLike, str | os.PathLike]],
        size: int = 240,
        transform: Any = None,
        cache: bool = True,
        in_channels: int | None = None,
        num_threads: int | None = None,
        skip_bad_files: bool = False,
    ):
        if int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.records: list[MRISlice] = [_as_record(r, in_channels) for r in records]
        counts = sorted({r.num_channels for r in self.records})
        if len(counts) > 1 or (counts and in_channels is not None and counts[0] != in_channels):
            raise ValueError(f"the records read {counts} channel(s) but in_channels={in_channels}; "
                             "all slices of a dataset must have the model's channel count")
        self.in_channels = counts[0] if counts else (in_channels or 1)
        self.size = int(size)
        self.transform = transform
        self.skipped: list[tuple[Path, str]] = []
        self.images: np.ndarray | None = None
        self.masks: np.ndarray | None = None
        if cache or skip_bad_files:
            self._read_all(cache, skip_bad_files, num_threads)

    def _read_all(self, store: bool, skip: bool, num_threads: int | None) -> None:
        n, s = len(self.records), self.size
        if store:
            self.images = np.empty((n, s, s, self.in_channels), np.uint8)
            self.masks = np.empty((n, s, s), np.uint8)
        bad: dict[int, MRIDataError] = {}

        def fill(group: list[int]) -> None:
            volumes: dict = {}  # one case's NIfTI volumes, read once for all its slices
            for i in group:
                try:
                    img, mask = self.load_pair(i, volumes)
                except MRIDataError as err:
                    if not skip:
                        raise
                    bad[i] = err
                    continue
                if store:
                    self.images[i], self.masks[i] = img, mask

        groups = _volume_groups(self.records)
        threads = num_threads or min(8, os.cpu_count() or 1)
        if threads > 1 and len(groups) > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fill, groups))
        else:
            for g in groups:
                fill(g)
        if bad:
            keep = [i for i in range(n) if i not in bad]
            self.skipped = [(bad[i].path, bad[i].reason) for i in sorted(bad)]
            self.records = [self.records[i] for i in keep]
            if store:
                self.images, self.masks = self.images[keep], self.masks[keep]

    @property
    def ids(self) -> list[str]:
        """The slice ids, in dataset order."""
        return [r.id for r in self.records]

    @property
    def pairs(self) -> list[tuple[str, Path, Path]]:
        """(id, image_path, mask_path) per slice, as older callers expect."""
        return [(r.id, r.image_path, r.mask_path) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def load_pair(self, i: int, volumes: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read, check and resize slice ``i`` from disk, untransformed.

        Returns (image uint8 (size, size, C) 0..255, mask uint8 (size, size) {0, 1}).
        ``volumes``: see :func:`~toolkit.data.mri_sources.read_slice`.
        """
        img, mask = read_slice(self.records[i], volumes)
        return _resize(img, self.size, nearest=False), _resize(mask, self.size, nearest=True)

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


def split_records(
    records: Sequence[MRISlice], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
    block_size: int = 1,
) -> dict[str, list[MRISlice]]:
    """Split slices into "train", "val" (and "test" when ``test_fraction`` > 0), never splitting a patient.

    The units drawn are patients (``record.patient``) where known, else runs of ``block_size``
    consecutive patient-less records in the given order (figshare ids run in patient order:
    blocks of about 20). Fractions count units, not slices. "test" is drawn first (seed + 1),
    then "val" from the rest with ``val_fraction / (1 - test_fraction)`` (seed), as
    :func:`split_ids`; each list keeps the input order. Deterministic for given records and seed.

    Raises ValueError for fractions outside (0, 1) with ``val_fraction + test_fraction < 1``,
    duplicate ids, or too few units to fill every split.
    """
    records = list(records)
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction):
        raise ValueError(f"need 0 < val_fraction < 1 and 0 <= test_fraction < 1 - val_fraction, "
                         f"got {val_fraction} and {test_fraction}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    unit, k = {}, 0
    for r in records:
        if r.patient is not None:
            unit[r.id] = f"patient {r.patient}"
        else:
            unit[r.id], k = f"block {k // block_size}", k + 1
    need = 3 if test_fraction > 0 else 2
    if len(set(unit.values())) < need:
        raise ValueError(f"cannot split {len(records)} slice(s) into {need} non-empty sets: they form "
                         f"{len(set(unit.values()))} unit(s) (patients, or blocks of {block_size} slices without "
                         f"a patient id); need >= {need}")
    ids = [r.id for r in records]
    out: dict[str, list[str]] = {}
    if test_fraction > 0:
        ids, out["test"] = split_ids(ids, test_fraction, seed + 1, groups=[unit[i] for i in ids])
    out["train"], out["val"] = split_ids(ids, val_fraction / (1 - test_fraction), seed, groups=[unit[i] for i in ids])
    by_id = {r.id: r for r in records}
    return {name: [by_id[i] for i in out[name]] for name in ("train", "val", "test") if name in out}


def save_split(path: str | os.PathLike, split: dict[str, Sequence[MRISlice]], **info: Any) -> Path:
    """Write ``split`` as JSON ``{**info, "train": [ids], "val": [ids], ...}`` (atomically); returns the path.

    ``info`` holds extra str/number fields, e.g. ``data_dir=..., source=...``; it must not use a split's name.
    """
    from ..checkpoint import save_json

    clash = set(info) & set(split)
    if clash:
        raise ValueError(f"info keys {sorted(clash)} clash with split names")
    return save_json(path, {**{k: str(v) if isinstance(v, Path) else v for k, v in info.items()},
                            **{name: [r.id for r in recs] for name, recs in split.items()}})


def load_split(path: str | os.PathLike, records: Sequence[MRISlice],
               names: Sequence[str] | None = None) -> dict[str, list[MRISlice]]:
    """Read a :func:`save_split` file back onto ``records``: split name → records, in the file's order.

    Every list-valued entry is a split (other entries are info); ``names`` limits the result
    (and the id check) to those splits, e.g. ``["test"]`` to score data that holds only them; a
    name the file lacks is simply absent from the result. Raises FileNotFoundError when ``path``
    is missing, ValueError when it holds no split or a returned split names ids absent from
    ``records`` (the message gives the count and examples).
    """
    path = Path(path)
    data = json.loads(path.read_text())
    by_id = {r.id: r for r in records}
    out = {}
    for name, ids in data.items():
        if not isinstance(ids, list) or (names is not None and name not in names):
            continue
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"{path}: {len(missing)} of the {len(ids)} ids of the {name!r} split are not among the "
                             f"{len(by_id)} slices found, e.g. {missing[:5]}; was it saved for other data "
                             "(another folder, channels or slice rule)?")
        out[name] = [by_id[i] for i in ids]
    if not any(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path} holds no split (no list of ids)")
    return out
