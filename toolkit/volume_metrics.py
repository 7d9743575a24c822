"""Per-patient (3D) segmentation metrics and stacking 2D slice predictions into volumes.

The toolkit trains 2D models on slices; users report per-patient scores per class/region, as
MONAI and nnU-Net do. This module is numpy + scipy.ndimage only:

- ``stack_slices`` / ``lgg_case_and_index``: (case, slice index, 2D mask) triples -> one (D, H, W)
  volume per case;
- ``surface_distances`` / ``hd95``: symmetric 95th-percentile Hausdorff distance in mm, defined as
  MONAI's ``compute_hausdorff_distance(..., percentile=95, directed=False)``;
- ``case_scores``: Dice, IoU, HD95 (mm), volumes and absolute volume difference (ml) for one
  volume and one class/region;
- ``summarise_cases``: means over patients per class/region and over classes/regions, with
  undefined values as ``None`` (JSON null).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath

import numpy as np
from scipy import ndimage

from .checkpoint import json_safe  # re-exported: NaN/inf as null in the JSON files

__all__ = ["EMPTY_RULE", "HD95_DEFINITION", "surface_distances", "hd95", "case_scores", "stack_slices",
           "lgg_case_and_index", "are_volumes", "summarise_cases", "json_safe"]

EMPTY_RULE = (
    "A patient with no voxel of the class/region in the ground truth scores Dice = IoU = 1 if the "
    "prediction is empty too, else 0. HD95 is undefined (NaN; null in JSON) when the prediction or the "
    "ground truth is empty (including a missed tumour: its Dice of 0 counts, its HD95 does not); "
    "undefined HD95 values are left out of the means and counted in 'hd95_undefined'."
)
HD95_DEFINITION = (
    "Edges are mask XOR binary_erosion(mask) (6-/4-connected cross, outside the array is background); "
    "for each edge voxel of one mask the Euclidean distance in mm (voxel indices times spacing) to the "
    "nearest edge voxel of the other; HD95 = max over the two directions of the 95th percentile "
    "(linear interpolation) of that direction's distances, as MONAI compute_hausdorff_distance("
    "percentile=95, directed=False)."
)
SCORE_KEYS = ("dice", "iou", "hd95_mm", "abs_volume_diff_ml")


def _as_mask(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D (H, W) or 3D (D, H, W) array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be boolean or hold only 0 and 1, got values {np.unique(arr)[:6]}")
    return arr.astype(bool)


def _check(pred, truth, spacing) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    p, t = _as_mask(pred, "pred"), _as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(f"spacing must be a sequence of {p.ndim} numbers (mm per axis), got {spacing!r}") from None
    if len(sp) != p.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be {p.ndim} finite positive numbers (mm per axis), got {spacing!r}")
    return p, t, sp


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)  # border_value=0: the array border is background


def surface_distances(pred, truth, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed edge-to-edge distances in mm, both ways (see ``HD95_DEFINITION``).

    pred, truth: bool (or 0/1) arrays of the same shape (D, H, W) or (H, W); spacing: mm per axis,
    ``len(spacing) == pred.ndim``, each > 0. Returns (pred_to_truth, truth_to_pred): float64 1-D arrays,
    values >= 0 mm, one per edge voxel of pred resp. truth. Both are empty when either mask is empty.
    """
    p, t, sp = _check(pred, truth, spacing)
    if not p.any() or not t.any():
        return np.zeros(0), np.zeros(0)
    box = ndimage.find_objects((p | t).astype(np.uint8))[0]  # crop to the union: same edges, less work
    ep, et = _edges(p[box]), _edges(t[box])
    to_truth = ndimage.distance_transform_edt(~et, sampling=sp)  # exact Euclidean, as MONAI's KD-tree
    to_pred = ndimage.distance_transform_edt(~ep, sampling=sp)
    return to_truth[ep].astype(np.float64), to_pred[et].astype(np.float64)


def hd95(pred, truth, spacing: Sequence[float], percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance in mm (95th by default; see ``HD95_DEFINITION``).

    pred, truth: bool (or 0/1) arrays, same shape (D, H, W) or (H, W); spacing: mm per axis (> 0);
    percentile in [0, 100] (100 = the classic Hausdorff distance). Returns a float >= 0 in mm, or
    NaN when pred or truth is empty (undefined).
    """
    if not 0 <= float(percentile) <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    a, b = surface_distances(pred, truth, spacing)
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))


def case_scores(pred, truth, spacing: Sequence[float]) -> dict[str, float]:
    """Scores of one volume (one patient) for one class/region.

    pred, truth: bool (or 0/1) arrays, same shape (D, H, W) or (H, W); spacing: mm per axis (> 0).
    Returns floats: dice, iou in [0, 1]; hd95_mm >= 0 or NaN; abs_volume_diff_ml,
    true_volume_ml, pred_volume_ml >= 0 (voxel counts x prod(spacing) mm^3 / 1000).
    Empty masks follow ``EMPTY_RULE``: no true voxel -> Dice = IoU = 1 if pred is empty, else 0;
    HD95 is NaN when either mask is empty.
    """
    p, t, sp = _check(pred, truth, spacing)
    n_p, n_t = int(p.sum()), int(t.sum())
    inter = int(np.logical_and(p, t).sum())
    if n_t == 0:
        dice = iou = 1.0 if n_p == 0 else 0.0
    else:
        dice = 2.0 * inter / (n_p + n_t)
        iou = inter / (n_p + n_t - inter)
    ml = float(np.prod(sp)) / 1000.0
    return {"dice": dice, "iou": iou, "hd95_mm": hd95(p, t, sp), "abs_volume_diff_ml": abs(n_p - n_t) * ml,
            "true_volume_ml": n_t * ml, "pred_volume_ml": n_p * ml}


def are_volumes(records: Sequence) -> bool:
    """True when slice records (MRISlice) come from volumes: NIfTI slices (an ``index`` set) or LGG patient
    folders (one folder = one volume); False for 2D slices, e.g. figshare."""
    return any(getattr(r, "index", None) is not None or getattr(r, "source", "") == "lgg" for r in records)


def lgg_case_and_index(slice_id: str) -> tuple[str, int]:
    """Split an LGG slice id "TCGA_CS_4941_19960909_12" into ("TCGA_CS_4941_19960909", 12).

    A file name or path ("…/TCGA_CS_4941_19960909_12.tif") is accepted too; the index is the
    integer (>= 0) after the last underscore. Raises ValueError otherwise.
    """
    if not isinstance(slice_id, str):
        raise ValueError(f"slice_id must be a string like 'TCGA_CS_4941_19960909_12', got {slice_id!r}")
    name = PurePath(slice_id).name
    if name.lower().endswith((".tif", ".tiff")):
        name = name.rsplit(".", 1)[0]
    case, sep, index = name.rpartition("_")
    if not sep or not case or not index.isdigit():
        raise ValueError(f"slice_id must be '<patient folder>_<slice number>' like "
                         f"'TCGA_CS_4941_19960909_12', got {slice_id!r}")
    return case, int(index)


def stack_slices(items: Iterable[tuple[str, int, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stack (case_id, slice_index, 2D array (H, W)) triples, in any order, into one volume per case.

    Returns {case_id: (volume (D, H, W), indices (D,) int64)}, cases sorted; the volume keeps the
    slices' dtype. Slices are ordered by index. Missing indices are NOT filled in: the volume is the
    slices present, in index order, and ``indices`` says which they are. Duplicates of the same
    (case, index) (e.g. padding added when gathering predictions from several processes) are counted
    once; duplicates with different contents raise ValueError, as do slices of one case with
    different shapes, non-2D arrays and non-integer indices.
    """
    by_case: dict[str, dict[int, np.ndarray]] = {}
    for item in items:
        try:
            case, index, arr = item
        except (TypeError, ValueError):
            raise ValueError(f"each item must be (case_id, slice_index, 2D array), got {type(item).__name__}") from None
        if isinstance(index, (bool, float)) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"slice_index of case {case!r} must be an integer, got {index!r}")
        arr = np.asarray(arr)
        if arr.ndim != 2:
            raise ValueError(f"slice {case!r}[{index}] must be a 2D (H, W) array, got shape {arr.shape}")
        slices = by_case.setdefault(str(case), {})
        seen = slices.get(int(index))
        if seen is not None:
            if seen.shape != arr.shape or not np.array_equal(seen, arr):
                raise ValueError(f"slice {case!r}[{index}] given twice with different contents")
            continue
        first = next(iter(slices.values()), None)
        if first is not None and first.shape != arr.shape:
            raise ValueError(f"slices of case {case!r} must share one shape, got {first.shape} and "
                             f"{arr.shape} (slice {index})")
        slices[int(index)] = arr
    out = {}
    for case in sorted(by_case):
        indices = np.array(sorted(by_case[case]), dtype=np.int64)
        out[case] = (np.stack([by_case[case][i] for i in indices]), indices)
    return out


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def summarise_cases(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict]:
    """Means over patients, per class/region and over classes/regions.

    per_case: {case_id: {channel_name: scores}}, scores as from ``case_scores`` (at least dice, iou,
    hd95_mm, abs_volume_diff_ml; hd95_mm may be NaN or None). Returns, for an evaluate JSON under
    ``summary.per_patient``::

        {channel_name: {"dice", "iou", "hd95_mm", "abs_volume_diff_ml": mean over patients (float or None),
                        "n_cases": int, "hd95_undefined": int},
         "mean": {same four keys: mean over channels of the channel means (None where none defined),
                  "n_cases": int, "hd95_undefined": int (summed over channels)}}

    Dice, IoU and volume difference are averaged over all patients of the channel (see
    ``EMPTY_RULE``); HD95 over the patients where it is defined, the others counted in
    ``hd95_undefined``. No NaN in the output: it is JSON-safe. A channel may not be named "mean".
    """
    if not isinstance(per_case, Mapping) or not per_case:
        raise ValueError(f"per_case must be a non-empty {{case: {{channel: scores}}}} mapping, got {per_case!r}")
    collected: dict[str, dict[str, list]] = {}
    for case, channels in per_case.items():
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(f"per_case[{case!r}] must be a non-empty {{channel: scores}} mapping, got {channels!r}")
        for channel, scores in channels.items():
            if channel == "mean":
                raise ValueError("a channel may not be named 'mean' (that key holds the mean over channels)")
            missing = [k for k in SCORE_KEYS if not isinstance(scores, Mapping) or k not in scores]
            if missing:
                raise ValueError(f"per_case[{case!r}][{channel!r}] lacks {missing}; expected keys {list(SCORE_KEYS)}")
            lists = collected.setdefault(str(channel), {k: [] for k in SCORE_KEYS})
            for k in SCORE_KEYS:
                v = scores[k]
                lists[k].append(math.nan if v is None else float(v))
    out: dict[str, dict] = {}
    for channel, lists in collected.items():
        entry = {k: _mean(lists[k]) for k in SCORE_KEYS}
        entry["n_cases"] = len(lists["dice"])
        entry["hd95_undefined"] = sum(math.isnan(v) for v in lists["hd95_mm"])
        out[channel] = entry
    mean = {k: _mean([e[k] for e in out.values()]) for k in SCORE_KEYS}
    mean["n_cases"] = len(per_case)
    mean["hd95_undefined"] = sum(e["hd95_undefined"] for e in out.values())
    out["mean"] = mean
    return out
