"""Objectives: how a batch becomes (loss, predictions, targets).

An objective is called as ``objective(model, batch)`` and returns a :class:`StepOutput`.
The Trainer backpropagates ``loss`` in training, and in evaluation gathers
``preds`` and ``targets`` across processes (``gather_for_metrics``) and feeds them to
the metric accumulators. Inputs may arrive as ``uint8`` (0..255) and are brought to
float on the device here (with :mod:`toolkit.data.batch_transforms`), so data loaders can keep
batches small.

A new objective is one class here plus one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.batch_transforms import DEFAULT_NOISE_STD, add_gaussian_noise, standardize_per_image, to_unit_range
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


@dataclass
class StepOutput:
    """What an objective returns for one batch.

    loss: scalar float tensor (differentiable in training).
    preds: (N, ...) predictions whose first dim is the batch (probabilities, logits or images).
    targets: (N, ...) ground truth matching ``preds`` along the batch dim.
    inputs: (N, ...) the model's inputs as float, kept for figures.
    """

    loss: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    inputs: torch.Tensor


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class Objective:
    """Base class. Subclasses implement :meth:`__call__`.

    ``preprocess`` maps the raw input batch (uint8 or float) to the model's float input.
    ``augment`` (optional) maps a float batch to an augmented one on the device, and
    runs only while the model is in training mode: batched augmentation (random crops,
    flips) without per-sample Python work. ``channels_last`` is set by the Trainer.
    """

    def __init__(self, preprocess: Callable[[torch.Tensor], torch.Tensor] = to_unit_range,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.preprocess = preprocess
        self.augment = augment
        self.channels_last = False

    def model_input(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Raw batch input → float model input (augmented when ``training``) in the configured layout."""
        x = self.preprocess(x)
        if training and self.augment is not None:
            x = self.augment(x)
        return _layout(x, self.channels_last)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:  # pragma: no cover - interface
        raise NotImplementedError


TTA_MODES = ("none", "flip", "flip-translate")
EVAL_NOISE_SEED = 1234  # seed of the denoising objective's evaluation noise (the same images every validation)


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


class ReconstructionObjective(Objective):
    """batch = images (N,C,H,W) or (images, anything); target = the input; preds in [0, 1]."""

    def __init__(self, loss: nn.Module | None = None, preprocess: Callable = to_unit_range,
                 augment: Callable | None = None) -> None:
        super().__init__(preprocess, augment)
        self.loss = loss if loss is not None else nn.MSELoss()

    def corrupt(self, clean: torch.Tensor) -> torch.Tensor:
        """What the model sees; reconstruction shows it the clean image."""
        return clean

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        clean = self.model_input(x, model.training)
        inputs = self.corrupt(clean)
        recon = model(inputs).float()
        return StepOutput(self.loss(recon, clean), recon.detach(), clean, inputs)


class DenoisingObjective(ReconstructionObjective):
    """As reconstruction, but the model sees ``add_gaussian_noise(clean, noise_std)``: in training fresh noise from
    torch's global RNG (seeded per process by the Trainer, saved in every resumable state); in evaluation noise
    from its own generator, restarted (seed ``EVAL_NOISE_SEED``) at the first batch after training, so every
    validation scores the same noisy images (for an unshuffled loader) and leaves training's sequence as it was.
    """

    def __init__(self, noise_std: float = DEFAULT_NOISE_STD, loss: nn.Module | None = None,
                 preprocess: Callable = to_unit_range, augment: Callable | None = None) -> None:
        super().__init__(loss, preprocess, augment)
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = noise_std
        self._eval_noise: torch.Generator | None = None  # set at the first evaluation batch, None in training

    def corrupt(self, clean: torch.Tensor) -> torch.Tensor:
        return _layout(add_gaussian_noise(clean, self.noise_std, generator=self._eval_noise), self.channels_last)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        if model.training:
            self._eval_noise = None
        elif self._eval_noise is None:  # the first evaluation batch: the same noise as every validation's
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            self._eval_noise = torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED)
        return super().__call__(model, batch)


class RestorationObjective(ReconstructionObjective):
    """Models-Genesis restoration: the model sees a corrupted image and restores the clean one.

    ``preprocess`` maps the raw batch (images (N, C, H, W) uint8 0..255, or (images, anything)) to the
    clean image, float in [0, 1] (default :func:`to_unit_range`); ``corrupt`` (default a
    :class:`~toolkit.data.corruptions.Corrupt` with the Models-Genesis probabilities) makes the
    corrupted image, float in [0, 1]; ``model_scale`` maps it to the model's input scale (e.g.
    per-slice standardisation, so a fine-tuned segmentation model sees inputs as in pretraining;
    default identity). The model returns logits (N, C, H, W), or (N, 1, H, W) for C > 1 channels, whose
    target is then the channel mean; preds = ``sigmoid(logits)`` float32 in [0, 1]; loss = MSE(preds,
    target); targets = the clean image (or its channel mean); inputs = the corrupted images in [0, 1].
    In evaluation the corruptions restart from ``corrupt``'s seed at the first batch after training,
    so every epoch's validation sees the same corrupted images (for an unshuffled loader). Training
    draws from torch's global RNG instead (a ``corrupt`` with a ``seed`` attribute is copied with
    ``seed=None``): the Trainer seeds it per process (seed + rank, so processes corrupt differently)
    and every resumable state saves it, so a resumed run corrupts as the run it continues would have.
    """

    def __init__(self, corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 model_scale: Callable[[torch.Tensor], torch.Tensor] | None = None, loss: nn.Module | None = None,
                 preprocess: Callable = to_unit_range, augment: Callable | None = None) -> None:
        super().__init__(loss, preprocess, augment)
        if corrupt is None:
            from .data.corruptions import Corrupt
            corrupt = Corrupt()
        self.corruption = copy.copy(corrupt)
        if getattr(corrupt, "seed", None) is not None:  # training: the global RNG, restored on resume
            self.corruption.seed = None
        # evaluation draws from its own copy, restarted each time, so training's sequence runs on undisturbed
        self.eval_corruption = copy.deepcopy(corrupt) if hasattr(corrupt, "reset") else corrupt
        self.model_scale = model_scale
        self._evaluating = False

    def corrupt(self, clean: torch.Tensor) -> torch.Tensor:
        """Clean (N, C, H, W) float in [0, 1] -> corrupted, same shape, in [0, 1] (training's sequence)."""
        return _layout(self.corruption(clean), self.channels_last)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not model.training and not self._evaluating and hasattr(self.eval_corruption, "reset"):
            self.eval_corruption.reset()  # the same corrupted validation images every epoch
        self._evaluating = not model.training
        clean = self.model_input(x, model.training)
        inputs = self.corrupt(clean) if model.training else _layout(self.eval_corruption(clean), self.channels_last)
        scaled = self.model_scale(inputs) if self.model_scale is not None else inputs
        restored = torch.sigmoid(model(_layout(scaled, self.channels_last)).float())
        target = clean if restored.shape[1] == clean.shape[1] else clean.mean(1, keepdim=True)
        return StepOutput(self.loss(restored, target), restored.detach(), target, inputs)


class LesionObjective(ReconstructionObjective):
    """Self-supervised segmentation: find the synthetic lesions painted onto an unlabelled image.

    ``lesions`` (a :class:`~toolkit.data.lesions.SyntheticLesions`) maps the clean image (float (N, C, H, W) in
    [0, 1], from ``preprocess``, default :func:`to_unit_range`) to (lesioned image, masks, roi); ``model_scale``
    maps the lesioned image to the model's input scale (e.g. per-slice standardisation, as the segmentation run
    that starts from these weights will see). The model returns logits (N, 1, H, W). The loss is the spec's
    soft Dice per image plus BCE, both restricted to ``roi`` (the pixels around each lesion; elsewhere the
    slice may hold a real, unlabelled tumour); images without lesions add nothing. preds = ``sigmoid(logits)
    * roi`` float32 in [0, 1]; targets = masks uint8 {0, 1} (N, 1, H, W); inputs = the lesioned images.
    Training draws lesions from torch's global RNG (seeded per process by the Trainer and saved in every
    resumable state); evaluation restarts ``lesions``' seed at the first batch after training, so every
    validation scores the same lesions.
    """

    def __init__(self, lesions: Callable, model_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 preprocess: Callable = to_unit_range, augment: Callable | None = None, eps: float = 1e-6) -> None:
        super().__init__(None, preprocess, augment)
        self.lesions = copy.copy(lesions)
        if getattr(lesions, "seed", None) is not None:  # training: the global RNG, restored on resume
            self.lesions.seed = None
        self.eval_lesions = copy.deepcopy(lesions)
        self.model_scale = model_scale
        self.eps = eps
        self._evaluating = False

    def roi_loss(self, logits: torch.Tensor, masks: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """Soft Dice per image (the spec's formula) + BCE, on the ``roi`` pixels only: (N, 1, H, W) logits, {0, 1}
        masks and roi -> scalar float32; images whose roi is empty count for neither term."""
        probs = torch.sigmoid(logits) * roi
        dims = tuple(range(1, logits.ndim))
        dice = (2 * (probs * masks).sum(dims) + self.eps) / ((probs ** 2).sum(dims) + masks.sum(dims) + self.eps)
        has = roi.sum(dims) > 0
        bce = F.binary_cross_entropy_with_logits(logits, masks, weight=roi, reduction="sum") / roi.sum().clamp_min(1)
        return (1 - dice)[has].sum() / has.sum().clamp_min(1) + bce

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not model.training and not self._evaluating and hasattr(self.eval_lesions, "reset"):
            self.eval_lesions.reset()  # the same lesions every validation
        self._evaluating = not model.training
        clean = self.model_input(x, model.training)
        inputs, masks, roi = (self.lesions if model.training else self.eval_lesions)(clean)
        scaled = self.model_scale(inputs) if self.model_scale is not None else inputs
        logits = model(_layout(scaled, self.channels_last)).float()
        loss = self.roi_loss(logits, masks, roi)
        return StepOutput(loss, (torch.sigmoid(logits.detach()) * roi), masks.to(torch.uint8), inputs)


class SegmentationObjective(Objective):
    """batch = (images (N,C,H,W) uint8/float, masks (N,1,H,W) integer label maps; {0,1} for binary data).

    ``target`` (a :class:`~toolkit.targets.TargetSpec`, default binary) says what the model
    predicts: it returns logits (N, target.out_channels, H, W); the training loss is
    ``loss(logits, target.encode(masks))`` (binary: (N,1,H,W) {0,1} float; classes: (N,H,W)
    class indices; regions: (N,R,H,W) {0,1}); preds = ``target.probs(logits)`` float32 in
    [0, 1] (sigmoid, or softmax over classes); targets = masks as uint8 label maps.
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
        logits = model(inputs).float()
        loss = self.loss(logits, self.target.encode(masks))
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
