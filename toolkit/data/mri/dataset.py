"""The brain-MRI segmentation dataset over :class:`~toolkit.data.mri.io.MRISlice` records.

Where the slices come from is :mod:`toolkit.data.mri.discover`; patient-safe splits are
:mod:`toolkit.data.splits`. Images and masks stay uint8 up to the device: normalisation happens there.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import MRIDataError
from .context import context_channels, context_rows, slice_key, stack_context, volume_neighbours
from .io import MRISlice, read_slice
from .nifti import volume_depth
from .resize import resize_square

__all__ = ["MRISegmentationDataset"]


def _as_record(item: MRISlice | Sequence, in_channels: int | None) -> MRISlice:
    if isinstance(item, MRISlice):
        return item
    if in_channels not in (None, 1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB) for (id, image, mask) pairs, got {in_channels}")
    i, image, mask = item
    return MRISlice(str(i), None, "folder", Path(image), Path(mask), channels=(0, 1, 2) if in_channels == 3 else ())


def _volume_groups(records: Sequence[MRISlice]) -> list[list[int]]:
    """Record indices grouped by NIfTI case (every record of a volume in one group, wherever it stands, so that
    each volume is read once), in order of first appearance; other slices one per group."""
    groups: dict = {}
    for i, r in enumerate(records):
        key = ("volume", r.mask_path, r.image_path) if r.index is not None else ("slice", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


class MRISegmentationDataset(Dataset):
    """MRI slices and their masks as uint8 tensors, resized to ``size``×``size``.

    Args:
        records: :class:`MRISlice` records (from
            :func:`~toolkit.data.mri.discover.discover_mri_slices` or
            :func:`~toolkit.data.splits.split_records`), or (id, image_path, mask_path) triples of
            2D files (e.g. from :func:`~toolkit.data.mri.pairs.find_image_mask_pairs`), read
            grey, or RGB with ``in_channels=3``.
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
        context: 2.5D input (:mod:`~toolkit.data.mri.context`): each slice with the ``context``
            slices on each side of its volume stacked as extra channels (needs ``cache``); 0 = none.
            NIfTI slices take the volume's true neighbours (clipped at its first and last slice,
            as :func:`~toolkit.data.mri.context.volume_context` in ``toolkit predict``): those
            that are not records are read once into ``neighbours`` (M, size, size, C) uint8,
            context-only rows that are never samples. LGG patient folders (all their slices
            there, no volume file to read another from): a missing neighbour is the nearest
            record between it and the slice.
        labels: False (default): masks are binary {0, 1} (label > 0). True: NIfTI masks hold the
            label map's values (e.g. 0..4 for BraTS; the cache ``masks`` then holds label values,
            and ``transform`` must treat masks as labels: nearest-neighbour only); 2D layouts
            still give {0, 1}. See :func:`~toolkit.data.mri.io.read_slice`.

    ``dataset[i]`` is ``(image, mask)``: image ``torch.uint8`` (C, size, size) with values
    0..255, mask ``torch.uint8`` (1, size, size) with values {0, 1} (or label values with
    ``labels=True``); C = ``in_channels`` x (2 ``context`` + 1) (``input_channels``). NIfTI images
    are z-scored per volume (see :mod:`toolkit.data.mri.nifti`), 2D ones scaled per slice.
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
        labels: bool = False,
        context: int = 0,
    ):
        if int(size) < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if context and not cache:
            raise ValueError("context slices need cache=True (neighbours are gathered from the cache)")
        self.records: list[MRISlice] = [_as_record(r, in_channels) for r in records]
        counts = sorted({r.num_channels for r in self.records})
        if len(counts) > 1 or (counts and in_channels is not None and counts[0] != in_channels):
            raise ValueError(f"the records read {counts} channel(s) but in_channels={in_channels}; "
                             "all slices of a dataset must have the model's channel count")
        self.in_channels = counts[0] if counts else (in_channels or 1)
        self.size = int(size)
        self.transform = transform
        self.labels = bool(labels)
        self.skipped: list[tuple[Path, str]] = []
        self.images: np.ndarray | None = None
        self.masks: np.ndarray | None = None
        self.context = int(context)
        self.input_channels = context_channels(self.in_channels, self.context)
        self.neighbours: np.ndarray | None = None  # context-only NIfTI slices (see ``context``)
        depths: dict[str, int] = {}
        extra: list[tuple[str, int]] = []
        if cache or skip_bad_files:
            depths, extra = self._read_all(cache, skip_bad_files, num_threads)
        self._rows = context_rows(self.records, self.context, depths, extra) if self.context else None

    def _read_all(self, store: bool, skip: bool, num_threads: int | None) -> tuple[dict, list]:
        """Read (and with ``store`` cache) every record, each NIfTI case once; with ``context``, also the
        context-only neighbours into ``neighbours``. Returns ({volume: depth}, [(volume, index)] per row of
        ``neighbours``) for :func:`~toolkit.data.mri.context.context_rows`."""
        n, s = len(self.records), self.size
        if store:
            self.images = np.empty((n, s, s, self.in_channels), np.uint8)
            self.masks = np.empty((n, s, s), np.uint8)
        bad: dict[int, MRIDataError] = {}

        def fill(group: list[int]) -> tuple | None:
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
            ok = [i for i in group if i not in bad]
            if not (store and self.context and ok and self.records[ok[0]].index is not None):
                return None
            try:  # the volume's neighbours that are no record, read while its volumes are at hand
                return self._read_neighbours([self.records[i] for i in ok], volumes)
            except MRIDataError as err:
                if not skip:
                    raise
                bad.update({i: err for i in ok})
                return None

        groups = _volume_groups(self.records)
        threads = num_threads or min(8, os.cpu_count() or 1)
        if threads > 1 and len(groups) > 1:
            with ThreadPoolExecutor(threads) as pool:
                found = list(pool.map(fill, groups))
        else:
            found = [fill(g) for g in groups]
        found = [f for f in found if f is not None]
        depths = {volume: depth for volume, depth, _, _ in found}
        extra = [(volume, k) for volume, _, ks, _ in found for k in ks]
        if found:
            self.neighbours = np.concatenate([images for *_, images in found])
        if bad:
            keep = [i for i in range(n) if i not in bad]
            self.skipped = [(bad[i].path, bad[i].reason) for i in sorted(bad)]
            self.records = [self.records[i] for i in keep]
            if store:
                self.images, self.masks = self.images[keep], self.masks[keep]
        return depths, extra

    def _read_neighbours(self, records: list[MRISlice], volumes: dict) -> tuple[str, int, list[int], np.ndarray]:
        """The context-only slices of one NIfTI case whose ``records`` were just read (``volumes``: their
        read_slice cache): (volume, depth, slice indices, uint8 (M, size, size, C) images, M = len(indices))."""
        first = records[0]
        depth = volume_depth(first, volumes)  # the case was just read into ``volumes``
        volume = slice_key(first)[0]
        ks = volume_neighbours([r.index for r in records], depth, self.context)
        images = np.empty((len(ks), self.size, self.size, self.in_channels), np.uint8)
        for j, k in enumerate(ks):
            rec = dataclasses.replace(first, index=k, id=f"{volume}_z{k:03d}")
            images[j] = resize_square(read_slice(rec, volumes, labels=self.labels)[0], self.size)
        return volume, depth, ks, images

    @property
    def ids(self) -> list[str]:
        """The slice ids, in dataset order."""
        return [r.id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def load_pair(self, i: int, volumes: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read, check and resize slice ``i`` from disk, untransformed.

        Returns (image uint8 (size, size, C) 0..255, mask uint8 (size, size) {0, 1}, or label values
        with ``labels=True``). ``volumes``: see :func:`~toolkit.data.mri.io.read_slice`.
        """
        img, mask = read_slice(self.records[i], volumes, labels=self.labels)
        return resize_square(img, self.size), resize_square(mask, self.size, nearest=True)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows is not None:  # a new array: the slice and its neighbours along the channel axis
            img, mask = stack_context(self.images, self._rows[i], self.neighbours), self.masks[i].copy()
        elif self.images is not None:
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
        own seed derived from ``seed`` (see :func:`toolkit.data.mri.augment.reseed_transform`).
        The Trainer calls it before every training item, with a seed made of (run seed, epoch, index)
        (:class:`toolkit.loop.EpochSeeded`): each item's augmentation is then the same whichever
        DataLoader worker reads it, and forked workers never share a generator state.
        """
        if self.transform is not None:
            from .augment import reseed_transform  # albumentations is imported only when used

            reseed_transform(self.transform, seed)
