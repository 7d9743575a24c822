"""Objectives whose target is the image itself, or something painted on it: self-supervised pretraining.

Reconstruction (the target is the input), denoising (the model sees it with Gaussian noise), Models-Genesis
restoration (it sees it corrupted) and synthetic lesions (it segments blobs painted onto it). Inputs may arrive
as ``uint8`` (0..255) and are brought to float in [0, 1] on the device (:func:`~toolkit.data.batch_transforms.
to_unit_range` by default). The interface is :class:`~toolkit.objective_base.Objective`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.batch_transforms import DEFAULT_NOISE_STD, add_gaussian_noise, to_unit_range
from .objective_base import Objective, StepOutput, layout

__all__ = ["ReconstructionObjective", "DenoisingObjective", "RestorationObjective", "LesionObjective",
           "EVAL_NOISE_SEED"]

EVAL_NOISE_SEED = 1234  # seed of the denoising objective's evaluation noise (the same images every validation)


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
        return layout(add_gaussian_noise(clean, self.noise_std, generator=self._eval_noise), self.channels_last)

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
        return layout(self.corruption(clean), self.channels_last)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not model.training and not self._evaluating and hasattr(self.eval_corruption, "reset"):
            self.eval_corruption.reset()  # the same corrupted validation images every epoch
        self._evaluating = not model.training
        clean = self.model_input(x, model.training)
        inputs = self.corrupt(clean) if model.training else layout(self.eval_corruption(clean), self.channels_last)
        scaled = self.model_scale(inputs) if self.model_scale is not None else inputs
        restored = torch.sigmoid(model(layout(scaled, self.channels_last)).float())
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
        logits = model(layout(scaled, self.channels_last)).float()
        loss = self.roi_loss(logits, masks, roi)
        return StepOutput(loss, (torch.sigmoid(logits.detach()) * roi), masks.to(torch.uint8), inputs)
