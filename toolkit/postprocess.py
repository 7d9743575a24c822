"""Post-processing of binary segmentation, chosen automatically on held-out predictions (as nnU-Net does).

A :class:`PostProcess` is the whole recipe that turns a model's tumour probabilities into a
mask: flip and scale test-time augmentation (applied when the probabilities are computed), a
probability threshold, and a connected-component rule (keep the largest region only, or
drop regions smaller than ``min_size`` pixels). :func:`search_postprocess` picks it on
validation or out-of-fold predictions, one part at a time, keeping a part only when it
raises the mean per-image Dice (or, with ``pooled=True``, the Dice of all pixels pooled: the
figure a run whose validation holds empty slices monitors); what each part bought is returned
and stored beside the choice in ``postprocess.json``. ``toolkit evaluate`` and ``toolkit
predict`` apply it.

Per-image Dice counts empty masks as :class:`~toolkit.metrics.SegmentationMetrics` does:
a slice whose true and predicted masks are both empty scores 1, one with only one of them
empty scores 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .checkpoint import save_json

__all__ = ["PostProcess", "search_postprocess", "per_image_dice", "pooled_dice", "largest_component",
           "remove_small_components", "POSTPROCESS_FILE", "load_postprocess", "VOLUME_KEY", "save_volume_key",
           "load_volume_key", "SCALE_TTA", "scaled_side"]

POSTPROCESS_FILE = "postprocess.json"
VOLUME_KEY = "volume"  # postprocess.json: the 3D per-patient choice (toolkit.volume_postprocess), beside "choice"
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.25, 0.80, 0.05))  # probability thresholds tried
MIN_SIZES = (10, 20, 40, 80, 160, 320)  # smallest kept region tried, pixels at the model's resolution
MIN_GAIN = 1e-4  # a part is kept only when it raises the mean per-image Dice by more than this
# scale TTA tried by the search: the scan also predicted at these factors of its side (x, unitless), each with its flip
# when flips are on, averaged with the original scale; chosen on the validation patients of two figshare runs
# (docs/brain-mri.md), where it beat (0.9, 1.1) and the five scales 0.8-1.25
SCALE_TTA = (0.8, 1.25)
TTA_MULTIPLE = 16  # px: scale TTA rounds each scaled side to a multiple of this, so the models pad nothing more


def scaled_side(side: int, scale: float) -> int:
    """The side in pixels that scale TTA predicts a ``side``-pixel scan at for factor ``scale`` (> 0): ``side *
    scale`` rounded to a multiple of 16, at least 16 (240 px: 0.8 → 192, 1.25 → 304). Shared by the PyTorch
    (:mod:`toolkit.ensemble`) and the ONNX (:mod:`toolkit.onnx_predict`) predictions."""
    return max(TTA_MULTIPLE, int(round(side * scale / TTA_MULTIPLE)) * TTA_MULTIPLE)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected region of a binary (H, W) mask (uint8/bool); returns uint8 {0, 1}."""
    mask = mask.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == keep).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop the 8-connected regions of a binary (H, W) mask smaller than ``min_size`` pixels; uint8 {0, 1}."""
    mask = mask.astype(np.uint8)
    if min_size <= 1:
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_size)
    small = small[small > 0]  # label 0 is the background
    if not len(small):
        return mask
    return (mask.astype(bool) & ~np.isin(labels, small)).astype(np.uint8)


@dataclass(frozen=True)
class PostProcess:
    """How probabilities become a mask.

    threshold: probability in (0, 1) at or above which a pixel is tumour.
    flips: average the probabilities with those of the horizontally flipped scan (test-time augmentation).
    scales: extra scan scales for test-time augmentation (factors of the side in (0.25, 4), not 1; () = none):
        the scan is also predicted resized by each (each with its flip when ``flips``), and the probabilities,
        resized back, are averaged with the original scale's (:meth:`~toolkit.ensemble.SegmentationEnsemble.member_probs`).
    largest_only: keep only the largest connected region of each slice.
    min_size: drop regions smaller than this many pixels (at the model's input resolution); 0 = keep all.
    """

    threshold: float = 0.5
    flips: bool = False
    largest_only: bool = False
    min_size: int = 0
    scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        object.__setattr__(self, "scales", check_scales(self.scales))
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 pixels, got {self.min_size}")
        if self.largest_only and self.min_size:
            raise ValueError("use largest_only or min_size, not both")

    def binarize(self, probs: np.ndarray) -> np.ndarray:
        """(H, W) or (N, H, W) float probabilities in [0, 1] → uint8 masks {0, 1} of the same shape.

        ``flips`` and ``scales`` are not applied here: they change how the probabilities are computed.
        """
        probs = np.asarray(probs)
        if probs.ndim == 2:
            return self.binarize(probs[None])[0]
        if probs.ndim != 3:
            raise ValueError(f"probs must be (H, W) or (N, H, W), got shape {probs.shape}")
        masks = (probs >= self.threshold).astype(np.uint8)
        if self.largest_only:
            masks = np.stack([largest_component(m) for m in masks])
        elif self.min_size:
            masks = np.stack([remove_small_components(m, self.min_size) for m in masks])
        return masks

    def at_scale(self, area_factor: float) -> "PostProcess":
        """The same choice for images with ``area_factor`` times the pixels of the model's input (``min_size`` scaled)."""
        return replace(self, min_size=int(round(self.min_size * area_factor))) if self.min_size else self

    def tta(self) -> str:
        """The test-time augmentation in words: "no TTA", "flip TTA", "flip + scale x0.8, x1.25 TTA"."""
        parts = (["flip"] if self.flips else []) + (["scale " + ", ".join(f"x{s:g}" for s in self.scales)]
                                                   if self.scales else [])
        return " + ".join(parts) + " TTA" if parts else "no TTA"

    def describe(self) -> str:
        parts = [f"threshold {self.threshold:g}", self.tta()]
        parts.append("largest region only" if self.largest_only else
                     f"regions under {self.min_size} px removed" if self.min_size else "all regions kept")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "post-processing") -> "PostProcess":
        """Build from a dict such as ``postprocess.json``'s ``"choice"``; unknown or badly typed keys raise ValueError."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(known)}")
        try:
            return cls(**{k: (float(v) if k == "threshold" else int(v) if k == "min_size" else
                              _scales_value(v) if k == "scales" else bool(v)) for k, v in data.items()})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None


def check_scales(scales) -> tuple[float, ...]:
    """``scales`` as a tuple of floats, each in (0.25, 4) and not 1, none twice; ValueError naming the bad value."""
    out = tuple(float(s) for s in scales)
    bad = [s for s in out if not 0.25 < s < 4.0 or s == 1.0]
    if bad or len(set(out)) != len(out):
        raise ValueError(f"scales must be distinct factors in (0.25, 4) other than 1 (the scan's own scale is always "
                         f"predicted), got {list(out)}")
    return out


def _scales_value(value) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"scales must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def load_postprocess(path: str | Path) -> tuple[PostProcess, dict]:
    """Read ``postprocess.json``; returns (the chosen :class:`PostProcess`, the whole file as a dict)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable post-processing file: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("choice"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'choice' object (threshold, flips, largest_only, "
                         f"min_size)")
    return PostProcess.from_dict(data["choice"], where=str(path)), data


def save_volume_key(path: str | Path, volume: dict, threshold: float = 0.5) -> Path:
    """Add (or replace) the ``"volume"`` object of ``postprocess.json`` at ``path``, keeping every other key.

    A file without a 2D ``"choice"`` (classes/regions runs: no 2D search) gets the identity choice, the run's
    ``threshold`` with no TTA and all regions kept, so :func:`load_postprocess` reads it as before.
    """
    path = Path(path)
    data = load_postprocess(path)[1] if path.is_file() else {}
    if "choice" not in data:
        data["choice"] = PostProcess(threshold=float(threshold)).to_dict()
        data["choice_note"] = "no 2D search for this run: its threshold, no TTA, all regions kept"
    return save_json(path, {**data, VOLUME_KEY: volume})


def load_volume_key(path: str | Path) -> dict | None:
    """The ``"volume"`` object of ``postprocess.json`` at ``path``, or None when the file has none."""
    volume = load_postprocess(path)[1].get(VOLUME_KEY)
    if volume is not None and not isinstance(volume, dict):
        raise ValueError(f"{path}: '{VOLUME_KEY}' must be a JSON object (the 3D post-processing), got {volume!r}")
    return volume


def _scored(masks: np.ndarray, targets: np.ndarray):
    """A :class:`~toolkit.metrics.SegmentationMetrics` holding the (N, H, W) binary masks against their targets."""
    if masks.shape != targets.shape:
        raise ValueError(f"masks {masks.shape} and targets {targets.shape} differ in shape")
    import torch  # here: PostProcess.binarize serves torch-free code (toolkit.onnx_predict)

    from .metrics import SegmentationMetrics

    metric = SegmentationMetrics()
    metric.update(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
                  torch.from_numpy(np.ascontiguousarray(targets, dtype=np.uint8)))
    return metric


def per_image_dice(masks: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Dice of each (N, H, W) binary mask against its target (N, H, W) {0, 1}: (N,) float64 in [0, 1].

    Both empty: 1; one empty: 0 (the rule of :class:`~toolkit.metrics.SegmentationMetrics`).
    """
    return _scored(masks, targets).per_image_scores()["dice"].numpy()


def pooled_dice(masks: np.ndarray, targets: np.ndarray) -> float:
    """Dice of all pixels of the (N, H, W) binary masks against their targets (N, H, W) {0, 1} pooled, in
    [0, 1]; 1 when both are empty everywhere (the ``dice_global`` of :class:`~toolkit.metrics.SegmentationMetrics`).
    """
    return float(_scored(masks, targets).compute()["dice_global"])


def _score(choice: PostProcess, probs: np.ndarray, targets: np.ndarray, pooled: bool = False) -> float:
    masks = choice.binarize(probs)
    return pooled_dice(masks, targets) if pooled else float(per_image_dice(masks, targets).mean())


def search_postprocess(probs: np.ndarray, targets: np.ndarray, flipped_probs: np.ndarray | None = None,
                       thresholds: Sequence[float] = THRESHOLDS, min_sizes: Sequence[int] = MIN_SIZES,
                       pooled: bool = False, components: bool = True, threshold: float = 0.5,
                       scaled_probs: np.ndarray | None = None, scaled_flipped_probs: np.ndarray | None = None,
                       scales: Sequence[float] = SCALE_TTA) -> tuple[PostProcess, list[dict]]:
    """Choose the post-processing that maximises mean per-image Dice on held-out predictions (``pooled``:
    the Dice of all pixels pooled, see :func:`pooled_dice`).

    probs: (N, H, W) float tumour probabilities in [0, 1] without test-time augmentation;
    targets: (N, H, W) true masks in {0, 1}; flipped_probs: the same scans' probabilities averaged
    with their horizontally flipped prediction (None: flips are not tried); scaled_probs /
    scaled_flipped_probs: (N, H, W) the same with the scan also predicted at each of ``scales``
    (:meth:`~toolkit.ensemble.SegmentationEnsemble.member_probs`), without / with flips (None: scale TTA is not
    tried; with flip TTA chosen, only ``scaled_flipped_probs`` is tried).
    Parts are decided in turn from the run's own ``threshold`` (in (0, 1); the baseline, what the run validated),
    each kept only when it gains more than ``MIN_GAIN``: flip TTA (at that threshold), scale TTA, then the
    threshold, then
    the component rule (none, largest region only, or each of ``min_sizes``; ``components=False`` leaves it
    out: volume data, where 3D rules decide per patient, see :mod:`toolkit.volume_postprocess`). Returns (the choice, one step record per part:
    ``{"step", "choice", "dice", "gain", "figure"}``; ``dice`` is the figure named by ``figure``,
    ``"dice"`` per image or ``"dice_global"`` pooled).
    """
    probs, targets = np.asarray(probs, dtype=np.float32), np.asarray(targets)
    if probs.ndim != 3 or probs.shape != targets.shape:
        raise ValueError(f"probs and targets must both be (N, H, W), got {probs.shape} and {targets.shape}")
    for name, other in (("flipped_probs", flipped_probs), ("scaled_probs", scaled_probs),
                        ("scaled_flipped_probs", scaled_flipped_probs)):
        if other is not None and np.shape(other) != probs.shape:
            raise ValueError(f"{name} must match probs {probs.shape}, got {np.shape(other)}")
    best = PostProcess(threshold=float(threshold))
    best_dice = _score(best, probs, targets, pooled)
    figure = "dice_global" if pooled else "dice"
    steps = [{"step": "baseline", "choice": best.describe(), "dice": best_dice, "gain": 0.0, "figure": figure}]

    def consider(step: str, candidates: list[tuple[PostProcess, np.ndarray]]) -> None:
        nonlocal best, best_dice
        scored = [(_score(c, p, targets, pooled), c) for c, p in candidates]
        dice, choice = max(scored, key=lambda sc: sc[0])  # the first of equals: the simpler option comes first
        gain = dice - best_dice
        if gain > MIN_GAIN:
            best, best_dice = choice, dice
        steps.append({"step": step, "choice": best.describe(), "dice": best_dice, "gain": max(gain, 0.0),
                      "kept": gain > MIN_GAIN, "figure": figure})

    if flipped_probs is not None:
        flipped_probs = np.asarray(flipped_probs, dtype=np.float32)
        consider("flip TTA", [(replace(best, flips=True), flipped_probs)])
    source = flipped_probs if best.flips else probs
    scaled = scaled_flipped_probs if best.flips else scaled_probs
    if scaled is not None:
        scaled = np.asarray(scaled, dtype=np.float32)
        consider("scale TTA", [(replace(best, scales=tuple(scales)), scaled)])
        source = scaled if best.scales else source
    consider("threshold", [(replace(best, threshold=float(t)), source) for t in thresholds])
    if components:
        rules = [replace(best, largest_only=True)] + [replace(best, min_size=int(s)) for s in min_sizes]
        consider("components", [(r, source) for r in rules])
    return best, steps
