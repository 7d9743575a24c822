"""The objective interface: how a batch becomes (loss, predictions, targets).

An objective is called as ``objective(model, batch)`` and returns a :class:`StepOutput`. The Trainer
backpropagates ``loss`` in training, and in evaluation gathers ``preds`` and ``targets`` across processes
(``gather_for_metrics``) and feeds them to the metric accumulators. The objectives themselves are in
:mod:`toolkit.objectives` (classification, segmentation, the registry) and :mod:`toolkit.image_objectives`
(reconstruction, denoising, restoration, synthetic lesions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from .data.batch_transforms import to_unit_range

__all__ = ["StepOutput", "Objective", "layout"]


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


def layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in channels-last memory when ``channels_last`` and it is 4-D (N, C, H, W); same values, shape and
    dtype; any other tensor as it is."""
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
        return layout(x, self.channels_last)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:  # pragma: no cover - interface
        raise NotImplementedError
