"""Objectives: how a batch becomes (loss, predictions, targets).

An objective is called as ``objective(model, batch)`` and returns a :class:`StepOutput`.
The Trainer backpropagates ``loss`` in training, and in evaluation gathers
``preds`` and ``targets`` across processes (``gather_for_metrics``) and feeds them to
the metric accumulators. Inputs may arrive as ``uint8`` (0..255) and are brought to
float on the device here (with :mod:`toolkit.data.batch_transforms`), so data loaders can keep
batches small.

The interface (:class:`StepOutput`, :class:`Objective`) is in :mod:`toolkit.objective_base`; the objectives whose
target is the image (reconstruction, denoising, restoration, synthetic lesions) in :mod:`toolkit.image_objectives`;
all are importable from here. A new objective is one class plus one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.batch_transforms import standardize_per_image, to_unit_range
from .image_objectives import DenoisingObjective, LesionObjective, ReconstructionObjective, RestorationObjective
from .losses import DeepSupervisionLoss
from .objective_base import Objective, StepOutput, layout as _layout
from .targets import TargetSpec

__all__ = [
    "StepOutput",
    "Objective",
    "ClassificationObjective",
    "TTA_MODES",
    "check_tta",
    "tta_logits",
    "ReconstructionObjective",
    "DenoisingObjective",
    "RestorationObjective",
    "LesionObjective",
    "SegmentationObjective",
    "OBJECTIVES",
    "build_objective",
]


TTA_MODES = ("none", "flip", "flip-translate")


def check_tta(mode: str) -> str:
    """``mode`` when it is one of :data:`TTA_MODES`; else ValueError naming the valid ones."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {mode!r}")
    return mode


def tta_logits(model: nn.Module, inputs: torch.Tensor, mode: str = "flip") -> torch.Tensor:
    """Test-time augmentation of a classifier: (N, C, H, W) model input → (N, K) float32 logits averaged over views.

    ``"none"``: the image only. ``"flip"``: the image and its horizontal mirror (2 forward passes).
    ``"flip-translate"``: also both of them shifted by one pixel up-left and down-right (reflect padding), the
    shifted views weighted half as much (6 passes). A horizontally symmetric model gives equal views.
    """
    check_tta(mode)
    views = [(inputs, 1.0)]
    if mode != "none":
        views.append((inputs.flip(3), 1.0))
    if mode == "flip-translate":
        h, w = inputs.shape[2:]
        padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
        for dy, dx in ((0, 0), (2, 2)):
            shifted = padded[:, :, dy:dy + h, dx:dx + w]
            views += [(shifted, 0.5), (shifted.flip(3), 0.5)]
    channels_last = inputs.dim() == 4 and inputs.is_contiguous(memory_format=torch.channels_last)
    total = sum(weight * model(_layout(view, channels_last)).float() for view, weight in views)
    return total / sum(weight for _, weight in views)


class ClassificationObjective(Objective):
    """batch = (images (N,C,H,W), labels (N,) int64 in [0, K)); preds = logits (N, K) float32.

    ``tta`` (one of :data:`TTA_MODES`): test-time augmentation in evaluation (model in eval mode) only;
    the logits are averaged over the views of :func:`tta_logits`. Training steps never use it.
    """

    def __init__(self, label_smoothing: float = 0.0, preprocess: Callable = to_unit_range,
                 augment: Callable | None = None, tta: str = "none") -> None:
        super().__init__(preprocess, augment)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing, self.tta = label_smoothing, check_tta(tta)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = batch[0], batch[1]
        inputs = self.model_input(x, model.training)
        if model.training or self.tta == "none":
            logits = model(inputs).float()
        else:
            logits = tta_logits(model, inputs, self.tta)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return StepOutput(loss, logits.detach(), y, inputs)


class SegmentationObjective(Objective):
    """batch = (images (N,C,H,W) uint8/float, masks (N,1,H,W) integer label maps; {0,1} for binary data).

    ``target`` (a :class:`~toolkit.targets.TargetSpec`, default binary) says what the model
    predicts: it returns logits (N, target.out_channels, H, W); the training loss is
    ``loss(logits, target.encode(masks))`` (binary: (N,1,H,W) {0,1} float; classes: (N,H,W)
    class indices; regions: (N,R,H,W) {0,1}); preds = ``target.probs(logits)`` float32 in
    [0, 1] (sigmoid, or softmax over classes); targets = masks as uint8 label maps.
    A model that returns a list in training mode (deep supervision) has its first entry taken as the logits
    and the whole list passed to ``loss`` (:class:`~toolkit.losses.DeepSupervisionLoss`).
    ``crop`` (optional, training mode only) maps the preprocessed (images, masks) to patches,
    e.g. :class:`~toolkit.data.batch_transforms.ForegroundCrop`; evaluation always sees whole slices.
    """

    def __init__(self, loss: nn.Module, preprocess: Callable = standardize_per_image,
                 crop: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 target: TargetSpec | None = None) -> None:
        super().__init__(preprocess)  # augmentation of image and mask together happens in the dataset
        self.loss = loss
        self.crop = crop
        self.target = target if target is not None else TargetSpec.binary()

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        x, masks = batch[0], batch[1]
        if model.training and self.crop is not None:  # standardise the whole slice first, then cut the patch
            x, masks = self.crop(self.preprocess(x), masks)
            inputs = _layout(x, self.channels_last)
        else:
            inputs = self.model_input(x)
        out = model(inputs)  # a deeply supervised model in training: [full-size logits, coarser ones...]
        several = isinstance(out, (list, tuple))
        if several and not isinstance(self.loss, DeepSupervisionLoss):
            raise ValueError(f"the model returned {len(out)} outputs (deep supervision) but the loss is "
                             f"{type(self.loss).__name__}: wrap it in DeepSupervisionLoss "
                             "(segmentation_loss(..., deep_supervision=True))")
        logits = out[0].float() if several else out.float()
        loss = self.loss([o.float() for o in out] if several else logits, self.target.encode(masks))
        return StepOutput(loss, self.target.probs(logits.detach()), masks.to(torch.uint8), inputs)


OBJECTIVES: dict[str, type[Objective]] = {
    "classification": ClassificationObjective,
    "reconstruction": ReconstructionObjective,
    "denoising": DenoisingObjective,
    "restoration": RestorationObjective,
    "lesions": LesionObjective,
    "segmentation": SegmentationObjective,
}


def build_objective(name: str, **kwargs: Any) -> Objective:
    """Objective by name (one of :data:`OBJECTIVES`), with its keyword options."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
