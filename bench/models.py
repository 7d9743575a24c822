"""Every recipe's model, with its input shape, task and default batch size, and one timed training step.

The training step is what the Trainer does per batch on the device, written out:
forward under ``torch.autocast`` (bf16) or not (fp32), the loss in float32, backward,
AdamW step, ``zero_grad``; inputs and model in channels_last or the default NCHW layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Spec", "recipe_models", "TrainStep", "CONFIGS"]

#: (name, bf16 autocast, channels_last) of the precision/layout variants; the first is the baseline.
CONFIGS: tuple[tuple[str, bool, bool], ...] = (
    ("fp32", False, False), ("fp32+channels_last", False, True),
    ("bf16", True, False), ("bf16+channels_last", True, True),
)


@dataclass
class Spec:
    """A recipe's model: ``build()`` → nn.Module taking (N, *shape) float; ``task`` picks the loss."""

    recipe: str
    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, int, int]
    task: str  # "cls" (10-class logits), "recon" (output = input in [0, 1]), "seg" (1-channel mask logits)
    batch: int  # the recipe's default batch size
    bench_batch: int  # batch used here (smaller for the slow models, to keep the suite short)


def _resnet18_frozen() -> nn.Module:
    from torchvision.models import resnet18

    from toolkit.models.stl10 import FrozenEncoderClassifier

    model = resnet18(weights=None)  # random weights: speed does not depend on them, and nothing is downloaded
    model.fc = nn.Identity()
    return FrozenEncoderClassifier(model, nn.Linear(512, 10))


def _probe() -> nn.Module:
    from toolkit.models.stl10 import FrozenEncoderClassifier, STL10AutoEncoder, linear_probe_head

    ae = STL10AutoEncoder()
    return FrozenEncoderClassifier(ae.encoder, linear_probe_head(ae.code_shape(96), 10))


def recipe_models(quick: bool = False) -> list[Spec]:
    """The model of every recipe at its default settings; ``quick`` shrinks the bench batches to 2-4."""
    from toolkit.models.autoencoders import AutoEncoder_CNN, LinearAutoEncoder
    from toolkit.models.classifiers import CIFARResNet
    from toolkit.models.segmentation import build_segmentation_model
    from toolkit.models.stl10 import STL10CNN, STL10AutoEncoder

    specs = [
        Spec("cifar10", "ResNet-20", lambda: CIFARResNet(), (3, 32, 32), "cls", 256, 128),
        Spec("mnist", "linear AE", LinearAutoEncoder, (1, 28, 28), "recon", 128, 128),
        Spec("mnist", "CNN AE", AutoEncoder_CNN, (1, 28, 28), "recon", 128, 128),
        Spec("brain_mri", "U-Net s2d", lambda: build_segmentation_model("unet_s2d"), (1, 240, 240), "seg", 16, 16),
        Spec("stl10_supervised", "STL10CNN", STL10CNN, (3, 96, 96), "cls", 128, 64),
        Spec("stl10_resnet18", "frozen ResNet-18 @224", _resnet18_frozen, (3, 224, 224), "cls", 128, 16),
        Spec("stl10_pretrain", "conv AE", STL10AutoEncoder, (3, 96, 96), "recon", 256, 64),
        Spec("stl10_probe", "frozen encoder + linear", _probe, (3, 96, 96), "cls", 128, 64),
    ]
    if quick:
        for s in specs:
            s.bench_batch = 4 if s.shape[-1] <= 32 else 2
    return specs


def _loss(task: str, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = out.float()
    if task == "cls":
        return F.cross_entropy(out, y)
    if task == "recon":
        return F.mse_loss(out, x)
    return F.binary_cross_entropy_with_logits(out, y)


class TrainStep:
    """A model copy, a fixed batch and an AdamW optimiser; ``run(steps)`` trains ``steps`` steps.

    ``model``: the module (deep-copied here); ``spec``: its shape and task; ``bf16``: forward
    under CPU/GPU autocast to bfloat16; ``channels_last``: NHWC model and input; ``compile``:
    a ``torch.compile`` backend name ("inductor", "eager") to wrap the model in, or None.
    The batch is random: x (B, *shape) float in [0, 1], targets as the task needs.
    """

    def __init__(self, model: nn.Module, spec: Spec, batch: int, bf16: bool, channels_last: bool,
                 compile: str | None = None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.spec, self.bf16 = spec, bf16
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = copy.deepcopy(model).to(self.device).train()
        x = torch.rand((batch, *spec.shape), generator=g)
        if spec.task == "cls":
            y = torch.randint(0, 10, (batch,), generator=g)
        elif spec.task == "seg":
            y = (torch.rand((batch, 1, *spec.shape[1:]), generator=g) > 0.9).float()
        else:
            y = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.model = torch.compile(model, backend=compile) if compile else model
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(self.x)
        return _loss(self.spec.task, out, self.x, self.y)

    def run(self, steps: int) -> float:
        """Train ``steps`` steps on the fixed batch; returns the last loss (synchronises the device)."""
        for _ in range(steps):
            loss = self.loss()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def initial_loss(self) -> float:
        """The loss of the untrained copy on the batch (evaluation mode), to compare precisions."""
        self.model.eval()
        try:
            return self.loss().item()
        finally:
            self.model.train()
