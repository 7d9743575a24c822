"""Metrics of multi-output segmentation (several classes or regions), one binary accumulator per channel.

:class:`TargetMetrics` takes what :class:`~toolkit.objectives.SegmentationObjective` returns with a
:class:`~toolkit.targets.TargetSpec` (probabilities and label maps), turns both into per-channel
masks with the spec, and keeps one :class:`~toolkit.metrics.SegmentationMetrics` (tp/fp/fn per
image, then reduced) per scored class or region. The monitored value is their mean.
"""
from __future__ import annotations

import math

import torch

from .metrics import SegmentationMetrics
from .targets import TargetSpec

__all__ = ["TargetMetrics"]

_KEYS = ("dice", "iou", "dice_global", "iou_global", "dice_tumour", "empty_correct")


class TargetMetrics:
    """Dice and IoU per class or region, and their mean.

    Args:
        spec: the run's :class:`~toolkit.targets.TargetSpec` (any kind; binary gives one channel).
        threshold: probability threshold of sigmoid outputs (binary, regions), in (0, 1).

    ``update(preds, targets)``: preds (N, spec.out_channels, H, W) float probabilities in [0, 1];
    targets (N, 1, H, W) integer label maps in the data's label values.

    ``compute()`` returns, for each scored channel ``name`` in ``spec.names``, ``dice_<name>``,
    ``iou_<name>``, ``dice_global_<name>``, ``iou_global_<name>``, ``dice_tumour_<name>`` and
    ``empty_correct_<name>`` (the per-image and pooled scores of
    :class:`~toolkit.metrics.SegmentationMetrics`, same empty-mask rule); ``dice``, ``iou``,
    ``dice_global``, ``iou_global``, ``dice_tumour`` and ``empty_correct`` are their means over
    channels (nan entries left out; nan if all are), and ``num_images``.
    """

    def __init__(self, spec: TargetSpec, threshold: float = 0.5) -> None:
        self.spec = spec
        self.threshold = float(threshold)
        self.channels = [SegmentationMetrics(threshold) for _ in spec.names]

    def reset(self) -> None:
        """Forget every image seen so far."""
        for m in self.channels:
            m.reset()

    @torch.no_grad()
    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: preds (N, out_channels, H, W) probabilities, targets (N, 1, H, W) label maps."""
        if preds.shape[0] != targets.shape[0] or preds.shape[2:] != targets.shape[2:] or targets.shape[1] != 1:
            raise ValueError(f"preds (N, {self.spec.out_channels}, H, W) and targets (N, 1, H, W) must share "
                             f"N, H, W; got {tuple(preds.shape)} and {tuple(targets.shape)}")
        if preds.shape[1] != self.spec.out_channels:
            raise ValueError(f"preds have {preds.shape[1]} channels; the {self.spec.kind} target has "
                             f"{self.spec.out_channels}")
        self.update_masks(self.spec.hard(preds, self.threshold), self.spec.truth(targets))

    @torch.no_grad()
    def update_masks(self, hard: torch.Tensor, truth: torch.Tensor) -> None:
        """Add a batch of masks already made: hard and truth bool (N, len(spec.names), H, W), channel for channel
        as :meth:`~toolkit.targets.TargetSpec.hard` and :meth:`~toolkit.targets.TargetSpec.truth` give them."""
        if hard.shape != truth.shape or hard.ndim != 4 or hard.shape[1] != len(self.channels):
            raise ValueError(f"hard and truth must be bool (N, {len(self.channels)}, H, W) of one shape; got "
                             f"{tuple(hard.shape)} and {tuple(truth.shape)}")
        for c, m in enumerate(self.channels):
            m.update(hard[:, c:c + 1], truth[:, c:c + 1])

    def compute(self) -> dict[str, float]:
        """Per-channel and mean scores (see the class docstring)."""
        out: dict[str, float] = {}
        per = [m.compute() for m in self.channels]
        for key in _KEYS:
            values = [p[key] for p in per if not math.isnan(p[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        for name, p in zip(self.spec.names, per):
            for key in _KEYS:
                out[f"{key}_{name}"] = p[key]
        out["num_images"] = per[0]["num_images"] if per else 0
        return out
