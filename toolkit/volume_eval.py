"""``toolkit evaluate`` per patient (volumes) and per class/region: the path for runs that predict classes or
regions, or whose data are volumes (NIfTI slices with an ``index``: BraTS, raw layout; LGG patient folders).

Every slice of the split is predicted with the ensemble (the run's input scaling and target), turned into
bool masks per scored channel (``TargetSpec.hard`` / ``truth``; binary runs: one channel "tumour", after
the run's post-processing), stacked into one volume per patient (:func:`~toolkit.volume_metrics.stack_slices`:
a slice given twice counts once) and scored with :func:`~toolkit.volume_metrics.case_scores`.

Spacing: a NIfTI record's ``spacing`` is (X, Y, Z) mm of the file; the masks are scored at the run's
``image_size`` S, so the in-plane spacing is scaled by (original in-plane size / S) per axis (the size read
once per case from the NIfTI header) and a volume (Z, S, S) gets spacing (Z, X * nx / S, Y * ny / S) mm.
Data without spacing (LGG TIFFs) are scored in voxels of the resized slices (spacing (1, 1, 1); "hd95_mm" is
then in voxels and volumes in thousands of voxels). 2D slices that are no volume (figshare; the classes of a
metadata column) are pooled per patient for Dice/IoU/volume; their HD95 is not computed (undefined).
Slices a volume lacks (left out by the run's slice rule) count as empty in prediction and truth.
The command's JSON, file name and printed table: :mod:`toolkit.volume_report`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .data.mri.context import slice_key
from .data.mri.nifti import load_nifti
from .target_metrics import TargetMetrics
from .targets import TargetSpec
from .volume_postprocess_run import stored_volume_postprocess
from .volume_metrics import (EMPTY_RULE, HD95_DEFINITION, are_volumes, case_scores, json_safe,
                             stack_slices, summarise_cases)

__all__ = ["wants_volume_eval", "case_keys", "case_spacings", "pack_masks", "unpack_masks", "score_cases",
           "score_packed", "class_accuracy", "predict_packed", "volume_masks", "volume_scores", "UNKNOWN_SPACING"]

UNKNOWN_SPACING = "unknown (voxels)"
NO_VOLUME = "2D slices, not volumes: HD95 not computed; Dice/IoU/volumes pool each patient's slices"
CLASS_RULE = ("on slices whose truth has tumour, the predicted class is the one holding most predicted tumour "
              "pixels (no predicted tumour = wrong), compared with the slice's metadata class")


def wants_volume_eval(spec: TargetSpec, records: Sequence) -> bool:
    """True when a run of target ``spec`` on ``records`` (MRISlice) is scored here: a classes/regions target,
    or volume data (a slice ``index`` set, or LGG patient folders)."""
    return spec.kind != "binary" or are_volumes(records)


def case_keys(records: Sequence) -> tuple[list[tuple[str, int]], bool]:
    """(case, slice index) per record and whether the records are volumes.

    NIfTI and LGG slices: :func:`~toolkit.data.mri.context.slice_key` ((patient, index); LGG: the patient folder
    and the number in the id); other 2D slices: (patient or id, running number within the patient) and ``False``.
    """
    volumes = are_volumes(records)
    keys, counts = [], {}
    for r in records:
        key = slice_key(r)  # volumes: the key the 2.5D neighbours are found by
        if key is None:
            case = str(r.patient or r.id)
            counts[case] = counts.get(case, -1) + 1
            key = (case, counts[case])
        keys.append(key)
    return keys, volumes


def case_spacings(records: Sequence, keys: Sequence[tuple[str, int]], size: int) -> dict[str, tuple | None]:
    """{case: spacing in mm of the stacked (Z, S, S) volume, or None when unknown}; see the module docstring."""
    out: dict[str, tuple | None] = {}
    for r, (case, _) in zip(records, keys):
        if case in out:
            continue
        if r.spacing is None:
            out[case] = None
            continue
        nx, ny = load_nifti(Path(r.image_path), data=False).shape[:2]
        sx, sy, sz = (float(s) for s in r.spacing)
        out[case] = (sz, sx * nx / size, sy * ny / size)
    return out


def pack_masks(pred, truth) -> np.ndarray:
    """bool (N, C, H, W) prediction and truth → one unsigned int array (N, H, W): bit c = pred channel c,
    bit C + c = truth channel c (C <= 32). Raises ValueError for other shapes."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.ndim != 4 or pred.shape != truth.shape or not 0 < pred.shape[1] <= 32:
        raise ValueError(f"pred and truth must be bool (N, C, H, W) of one shape with 1 <= C <= 32, "
                         f"got {pred.shape} and {truth.shape}")
    c = pred.shape[1]
    dtype = np.uint8 if c <= 4 else np.uint16 if c <= 8 else np.uint64
    out = np.zeros((pred.shape[0],) + pred.shape[2:], dtype)
    for k in range(c):
        out |= pred[:, k].astype(dtype) << dtype(k)
        out |= truth[:, k].astype(dtype) << dtype(c + k)
    return out


def unpack_masks(packed: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`pack_masks`: (N, H, W) packed → (pred, truth) bool (N, channels, H, W)."""
    packed = np.asarray(packed)
    bits = [((packed >> k) & 1).astype(bool) for k in range(2 * channels)]
    return np.stack(bits[:channels], 1), np.stack(bits[channels:], 1)


def score_packed(keys: Sequence[tuple[str, int]], packed: np.ndarray, names: Sequence[str],
                 spacings: Mapping[str, Sequence[float] | None], volumes: bool = True) -> tuple[dict, list[dict]]:
    """Per-patient scores of packed masks (:func:`pack_masks`, (N, H, W), one slice per key).

    keys: (case, slice index) per slice; repeated keys (repeated records, padding from several processes)
    count once. spacings: {case: (D, H, W) mm or None (voxels)}. ``volumes`` False: HD95 is NaN (slices
    that are no volume). Returns ({case: {name: case_scores}}, rows [{case, num_slices, missing_slices,
    spacing_mm, <name>: scores}]).
    """
    if len(keys) != len(packed):
        raise ValueError(f"{len(keys)} (case, index) keys for {len(packed)} slices; expected one per slice")
    per_case, rows = {}, []
    for case, (vol, idx) in stack_slices((c, i, a) for (c, i), a in zip(keys, packed)).items():
        full = np.zeros((int(idx[-1] - idx[0]) + 1,) + vol.shape[1:], vol.dtype)
        full[idx - idx[0]] = vol  # gaps (slices left out) are empty in both
        spacing = spacings.get(case)
        scores = {}
        for c, name in enumerate(names):
            s = case_scores(((full >> c) & 1).astype(bool), ((full >> (len(names) + c)) & 1).astype(bool),
                            spacing or (1.0, 1.0, 1.0))
            scores[name] = {**s, "hd95_mm": s["hd95_mm"] if volumes else float("nan")}
        per_case[case] = scores
        rows.append({"case": case, "num_slices": len(idx), "missing_slices": len(full) - len(idx),
                     "spacing_mm": list(spacing) if spacing else None, **scores})
    return per_case, json_safe(rows)


def score_cases(keys: Sequence[tuple[str, int]], pred, truth, names: Sequence[str],
                spacings: Mapping[str, Sequence[float] | None] | None = None, volumes: bool = True):
    """Per-patient scores of injected masks: pred, truth bool (N, C, H, W), C = len(names), one slice per key;
    the rest as :func:`score_packed` (spacings default: unknown, voxels)."""
    if np.shape(pred)[1:2] != (len(names),):
        raise ValueError(f"pred has shape {np.shape(pred)}; expected (N, {len(names)}, H, W) for channels {names}")
    return score_packed(keys, pack_masks(pred, truth), names, spacings or {}, volumes)


def class_accuracy(pred_pixels: np.ndarray, truth_pixels: np.ndarray, true_class: Sequence[str],
                   names: Sequence[str]) -> dict:
    """Slice-level class accuracy (see ``CLASS_RULE``): pred_pixels, truth_pixels int (N, C) tumour pixels per
    class and slice, true_class the metadata class of each slice (one of ``names``). Returns {"accuracy",
    "correct", "num_slices", "per_class": {name: same three}, "rule"}; accuracy None without slices."""
    pred_pixels, has = np.asarray(pred_pixels), np.asarray(truth_pixels).sum(1) > 0
    guess = np.where(pred_pixels.sum(1) > 0, pred_pixels.argmax(1), -1)
    truth = np.array([list(names).index(t) if t in names else -2 for t in true_class])
    right = (guess == truth) & has

    def entry(sel: np.ndarray) -> dict:
        n = int(sel.sum())
        return {"accuracy": float(right[sel].sum() / n) if n else None, "correct": int(right[sel].sum()),
                "num_slices": n}

    return {**entry(has), "per_class": {n: entry(has & (truth == k)) for k, n in enumerate(names)},
            "rule": CLASS_RULE}


@torch.no_grad()
def predict_packed(ensemble, dataset, threshold: float, flips: bool = False,
                   batch_size: int = 16, scales: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Predict every slice of ``dataset`` ((uint8 image (C, S, S), uint8 label map (1, S, S)) pairs) in order.

    Predicted masks are :meth:`~toolkit.targets.TargetSpec.written` (regions as read back from the label map that
    ``toolkit predict`` writes). Returns (packed masks (N, S, S) as :func:`pack_masks`, predicted and true pixels
    per channel int64 (N, C), the slice-level :class:`~toolkit.target_metrics.TargetMetrics` scores
    (``dice_<name>`` ...), JSON-safe).
    """
    spec, metric = ensemble.target, TargetMetrics(ensemble.target, threshold)
    packed, pred_px, true_px = [], [], []
    ensemble.eval()
    for images, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        probs = ensemble(ensemble.preprocess(images), flips=flips, scales=scales)
        hard, truth = spec.written(probs, threshold), spec.truth(labels)  # regions as predict writes them
        metric.update_masks(hard, truth)
        hard, truth = hard.numpy(), truth.numpy()
        packed.append(pack_masks(hard, truth))
        pred_px.append(hard.sum((2, 3)))
        true_px.append(truth.sum((2, 3)))
    if not packed:
        raise ValueError("the data set to score holds no slice")
    return np.concatenate(packed), np.concatenate(pred_px), np.concatenate(true_px), json_safe(metric.compute())


def score_units(volumes: bool, unknown: int, cases: int) -> dict[str, str]:
    """The units of the ``hd95_mm`` and ``abs_volume_diff_ml`` scores, whose keys keep their names whatever the
    spacing: mm and ml from NIfTI spacing; voxels and thousands of voxels of the resized slices without it (LGG
    TIFFs; ``unknown`` of ``cases`` cases); 2D slices that are no volume: HD95 not computed, pixels pooled."""
    if not volumes:
        return {"hd95_mm": "not computed (2D slices)", "abs_volume_diff_ml": "thousands of pixels"}
    if unknown == cases:
        return {"hd95_mm": "voxels", "abs_volume_diff_ml": "thousands of voxels"}
    mixed = f" (voxels / thousands of voxels for the {unknown} case(s) without spacing)" if unknown else ""
    return {"hd95_mm": "mm" + mixed, "abs_volume_diff_ml": "ml" + mixed}


def volume_scores(records: Sequence, packed: np.ndarray, names: Sequence[str], size: int, volume_post=None) -> dict:
    """The per-patient part of an evaluate JSON: spacing, units, rules, ``per_patient`` summary and ``patients`` rows.

    records: the scored MRISlice records in order; packed: their (N, S, S) predictions and truths as
    :func:`pack_masks`, channels ``names``, S = ``size``; ``volume_post`` (a VolumePostprocess, volumes only) is
    applied first, the scores without it kept apart as ``without_volume_postprocess``."""
    keys, volumes = case_keys(records)
    spacings = case_spacings(records, keys, size)
    extra = {}
    if volume_post is not None and volumes:
        before = summarise_cases(score_packed(keys, packed, names, spacings, volumes)[0])
        extra = {"without_volume_postprocess": json_safe(before)}
        packed = volume_post.apply_packed(keys, packed)
    per_case, rows = score_packed(keys, packed, names, spacings, volumes)
    unknown = [c for c, s in spacings.items() if s is None]
    spacing = (NO_VOLUME if not volumes else UNKNOWN_SPACING if len(unknown) == len(spacings) else
               f"mm from the NIfTI headers, in-plane scaled by (original size / {size})"
               + (f"; unknown (voxels) for {len(unknown)} case(s)" if unknown else ""))
    return {"spacing": spacing, "units": score_units(volumes, len(unknown), len(spacings)),
            "empty_volumes": EMPTY_RULE, "hd95_definition": HD95_DEFINITION,
            "per_patient": json_safe(summarise_cases(per_case)), "patients": rows, **extra}


def volume_masks(source: str | None, records: Sequence, masks: np.ndarray) -> tuple[np.ndarray, bool]:
    """Binary runs: the (N, S, S) {0, 1} ``masks`` of ``records`` (MRISlice, in order) after the 3D rule of the
    applied postprocess.json (``source``: :func:`~toolkit.inference.pick_postprocess`'s), per patient volume, and
    whether a rule applied; unchanged (and False) for 2D slices or without a stored ``"volume"`` choice. So the
    per-slice scores of ``toolkit evaluate`` are those of the masks that ``toolkit predict`` writes for a volume."""
    keys, volumes = case_keys(records)
    vpost = stored_volume_postprocess(source, TargetSpec.binary())[0] if volumes else None
    if vpost is None:
        return masks, False
    masks = np.asarray(masks)
    packed = vpost.apply_packed(keys, pack_masks(masks[:, None], np.zeros_like(masks, bool)[:, None]))
    return (packed & 1).astype(masks.dtype), True
