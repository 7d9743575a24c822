"""2.5D input: each slice with its ``n`` neighbours on each side of its volume, stacked as extra channels.

A 2D model sees one slice; a tumour's extent across slices (where it starts, what continues above and
below) is in the neighbours. With ``--context-slices n`` the brain-MRI recipe feeds each slice together with
the slices at offsets ``-n .. n`` of the same volume (a NIfTI case or an LGG patient folder), so a model of
C channels per slice takes C x (2n + 1) input channels: the slice's own C channels first (so channel 0 is
what figures show), then those of the neighbours in offset order ``-n .. -1, 1 .. n`` (:func:`offsets`).

Missing neighbours (the volume's first and last slices, or slices a slice rule left out) are replaced by the
nearest slice that is there between the neighbour and the slice itself: at the edge of a volume this repeats
the edge slice, as a "replicate" padding along the slice axis. :func:`volume_context` does the same on a
whole (X, Y, Z, C) volume for ``toolkit predict``, where every slice is there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["MAX_CONTEXT", "offsets", "context_channels", "slice_key", "context_rows", "stack_context",
           "volume_context"]

MAX_CONTEXT = 8  # most neighbours on each side (2 x 8 + 1 = 17 slices per input)


def offsets(context: int) -> list[int]:
    """The slice offsets in input-channel order: 0 (the slice itself), then ``-context .. -1, 1 .. context``."""
    return [0] + [d for d in range(-context, context + 1) if d]


def context_channels(channels: int, context: int) -> int:
    """Input channels of a model fed ``channels`` per slice with ``context`` neighbours on each side."""
    if not 0 <= int(context) <= MAX_CONTEXT:
        raise ValueError(f"context slices must be in [0, {MAX_CONTEXT}], got {context}")
    return int(channels) * (2 * int(context) + 1)


def slice_key(record) -> tuple[str, int] | None:
    """(volume, slice index) of an MRISlice record: NIfTI slices (patient or image file name, ``index``); LGG
    slices (patient folder, number from the id, :func:`~toolkit.volume_metrics.lgg_case_and_index`); None for 2D
    slices that belong to no volume. With several data folders the volume carries the id's folder tag
    (``synA/synth_003``), so same-named cases of two folders stay two volumes."""
    if record.index is not None:
        case, index = str(record.patient or Path(record.image_path).name), int(record.index)
    elif record.source == "lgg":
        from ...volume_metrics import lgg_case_and_index  # numpy + scipy only

        case, index = lgg_case_and_index(record.id)
    else:
        return None
    tag = str(record.id).rpartition("/")[0]  # toolkit.data.mri.folders: "<folder tag>/<id>" with several folders
    return (f"{tag}/{case}" if tag else case), index


def context_rows(records: Sequence, context: int) -> np.ndarray:
    """int64 (N, 2 * context + 1): for each record (row i), the rows of ``records`` that hold the slices at
    :func:`offsets` of its volume (column 0 is i itself). A neighbour not among the records gives the nearest
    one between it and the slice; a record of no volume gives i in every column."""
    keys = [slice_key(r) for r in records]
    where = {k: i for i, k in enumerate(keys) if k is not None}
    rows = np.empty((len(keys), 2 * context + 1), np.int64)
    for i, key in enumerate(keys):
        for j, offset in enumerate(offsets(context)):
            row = i
            if key is not None:
                step = 1 if offset > 0 else -1
                for d in range(offset, 0, -step):  # from the neighbour back toward the slice itself
                    found = where.get((key[0], key[1] + d))
                    if found is not None:
                        row = found
                        break
            rows[i, j] = row
    return rows


def stack_context(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) slices and one row of :func:`context_rows` (K indices) → (H, W, K x C), in its order."""
    return np.concatenate([images[r] for r in rows], axis=-1)


def volume_context(volume: np.ndarray, context: int) -> np.ndarray:
    """(X, Y, Z, C) volume → (X, Y, Z, C x (2 context + 1)): each slice k with slices k + d for d in
    :func:`offsets` (clipped to the volume: the edge slice repeated), in the order of :func:`stack_context`."""
    if context == 0:
        return volume
    depth = volume.shape[2]
    parts = [volume[:, :, np.clip(np.arange(depth) + d, 0, depth - 1)] for d in offsets(context)]
    return np.concatenate(parts, axis=-1)
