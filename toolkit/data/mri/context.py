"""2.5D input: each slice with its ``n`` neighbours on each side of its volume, stacked as extra channels.

A 2D model sees one slice; a tumour's extent across slices (where it starts, what continues above and
below) is in the neighbours. With ``--context-slices n`` the brain-MRI recipe feeds each slice together with
the slices at offsets ``-n .. n`` of the same volume (a NIfTI case or an LGG patient folder), so a model of
C channels per slice takes C x (2n + 1) input channels: the slice's own C channels first (so channel 0 is
what figures show), then those of the neighbours in offset order ``-n .. -1, 1 .. n`` (:func:`offsets`).

Which slice a neighbour is:

- NIfTI slices (sources brats and raw, ``record.index`` set): the volume's true slice ``index + d``, clipped
  to the volume's depth (at its first and last slices the edge slice repeats, a "replicate" padding along the
  slice axis), whether or not that slice is itself a record of the dataset (a slice rule such as ``tumour``
  keeps only some of a volume's slices). The dataset
  (:class:`~toolkit.data.mri.dataset.MRISegmentationDataset`) reads the neighbours that are not records from
  the volume into context-only rows (:func:`volume_neighbours`), which never become samples. This is what
  :func:`volume_context` gives on a whole (X, Y, Z, C) volume for ``toolkit predict``, so training,
  validation, evaluate and predict see the same neighbours.
- LGG slices (a patient folder of .tif files: it holds all its slices, and there is no volume file to read a
  missing one from) and :func:`context_rows` without ``depths``: a neighbour not among the records is
  replaced by the nearest record between it and the slice, which at a volume's edge repeats the edge slice.
- 2D slices of no volume: the slice itself in every position.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["MAX_CONTEXT", "offsets", "context_channels", "slice_key", "volume_neighbours", "context_rows",
           "stack_context", "volume_context"]

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


def volume_neighbours(indices: Sequence[int], depth: int, context: int) -> list[int]:
    """The slices of a volume of ``depth`` slices that the records at ``indices`` (ints in [0, depth)) need as
    neighbours but that are not records: sorted ints ``clip(k + d, 0, depth - 1)`` over k in ``indices`` and d in
    :func:`offsets` (``context`` >= 0), less ``indices``; [] when ``context`` is 0."""
    have = {int(k) for k in indices}
    need = {min(max(k + d, 0), int(depth) - 1) for k in have for d in offsets(context)}
    return sorted(need - have)


def context_rows(records: Sequence, context: int, depths: dict[str, int] | None = None,
                 extra: Sequence[tuple[str, int]] = ()) -> np.ndarray:
    """int64 (N, 2 * context + 1): for each of the N ``records`` (row i), the rows that hold the slices at
    :func:`offsets` of its volume (column 0 is i itself); values in [0, N + len(extra)).

    ``depths``: volume (:func:`slice_key`'s first item) → its number of slices, for NIfTI volumes. A NIfTI
    record (``index`` set) of such a volume takes the slice ``clip(index + d, 0, depth - 1)``: the record that
    holds it, else row N + j where ``extra[j]`` is its (volume, index) (context-only slices, e.g. from
    :func:`volume_neighbours`); ValueError when it is neither. Other records of a volume (LGG, or NIfTI without
    ``depths``): a neighbour not among the records gives the nearest one between it and the slice. A record of
    no volume gives i in every column."""
    keys = [slice_key(r) for r in records]
    where = {k: i for i, k in enumerate(keys) if k is not None}
    where.update({tuple(k): len(keys) + j for j, k in enumerate(extra) if tuple(k) not in where})
    depths = depths or {}
    rows = np.empty((len(keys), 2 * context + 1), np.int64)
    for i, key in enumerate(keys):
        for j, offset in enumerate(offsets(context)):
            row = i
            if key is not None and records[i].index is not None and key[0] in depths:
                at = (key[0], min(max(key[1] + offset, 0), depths[key[0]] - 1))  # the volume's true neighbour
                row = where.get(at)
                if row is None:
                    raise ValueError(f"slice {at[1]} of volume {at[0]} (neighbour of {records[i].id}) is neither a "
                                     "record nor a context-only slice")
            elif key is not None:
                step = 1 if offset > 0 else -1
                for d in range(offset, 0, -step):  # from the neighbour back toward the slice itself
                    found = where.get((key[0], key[1] + d))
                    if found is not None and found < len(keys):
                        row = found
                        break
            rows[i, j] = row
    return rows


def stack_context(images: np.ndarray, rows: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) slices and one row of :func:`context_rows` (K indices) → uint8 (H, W, K x C), in its
    order; indices N .. N + M - 1 pick the M context-only slices of ``extra`` (uint8 (M, H, W, C))."""
    n = len(images)
    return np.concatenate([images[r] if r < n else extra[r - n] for r in rows], axis=-1)


def volume_context(volume: np.ndarray, context: int) -> np.ndarray:
    """(X, Y, Z, C) volume (any dtype; uint8 0..255 from normalise_channels) → (X, Y, Z, C x (2 context + 1)), the
    same dtype and values: each slice k with slices k + d for d in :func:`offsets` (clipped to the volume: the edge
    slice repeated), in the order of :func:`stack_context`; the volume itself when ``context`` is 0."""
    if context == 0:
        return volume
    depth = volume.shape[2]
    parts = [volume[:, :, np.clip(np.arange(depth) + d, 0, depth - 1)] for d in offsets(context)]
    return np.concatenate(parts, axis=-1)
