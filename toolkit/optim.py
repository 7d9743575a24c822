"""Optimizer and per-step learning-rate schedule built from a :class:`TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig

__all__ = ["build_optimizer", "StepSchedule", "build_scheduler"]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    lr_scales: Sequence[tuple[Iterable[torch.nn.Parameter], float]] = ()) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over the trainable parameters; no weight decay on biases and norms.

    ``lr_scales``: (parameters, factor) pairs; those parameters learn at ``factor`` x ``cfg.lr`` (factor > 0, e.g.
    0.1 for a pretrained encoder: discriminative fine-tuning), in their own parameter groups, which the LR
    schedule scales like the others. A parameter named twice takes the last factor. ValueError on a factor <= 0.
    """
    scale = {}
    for params, factor in lr_scales:
        if not 0 < factor < math.inf:
            raise ValueError(f"learning-rate factors must be finite and > 0, got {factor}")
        scale.update({id(p): float(factor) for p in params})
    groups: dict[tuple[float, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:  # biases and norms (1-D) without weight decay
            groups.setdefault((scale.get(id(p), 1.0), p.dim() > 1), []).append(p)
    order = sorted(groups, key=lambda k: (k[0] != 1.0, not k[1], k[0]))  # the unscaled decay group first
    groups = [{"params": groups[k], "lr": cfg.lr * k[0], "weight_decay": cfg.weight_decay if k[1] else 0.0}
              for k in order]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class StepSchedule:
    """LR multiplier as a function of the optimizer step: linear warm-up, then decay.

    ``kind``: "onecycle" (warm up from 1/25 to 1, cosine down to 1e-4), "cosine"
    (warm up from 0, cosine down to 0) or "constant" (warm up, then flat).
    ``total_steps`` may be changed during training (a time budget refits it) through
    :meth:`refit`, which never sends a finished warm-up back into warm-up; being a plain
    object, it is saved and restored with the scheduler's state dict.
    """

    def __init__(self, kind: str, total_steps: int, warmup_fraction: float) -> None:
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_fraction = warmup_fraction
        self.warmup_steps: float | None = None  # fixed once warm-up has ended; None = warmup_fraction of the total

    def warmup(self) -> float:
        """Warm-up length in optimizer steps."""
        return self.warmup_fraction * self.total_steps if self.warmup_steps is None else self.warmup_steps

    def refit(self, total_steps: int, step: int) -> None:
        """Change the schedule's length at optimizer step ``step``; a warm-up already over stays over."""
        if self.warmup_steps is None and step >= self.warmup():
            self.warmup_steps = self.warmup()
        self.total_steps = max(1, int(total_steps))

    def __call__(self, step: int) -> float:
        warmup = self.warmup()
        start = 1 / 25 if self.kind == "onecycle" else 0.0
        if step < warmup:
            return start + (1 - start) * min(1.0, (step + 1) / warmup)  # a fractional warm-up ends at 1, not above
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1.0, self.total_steps - warmup))
        floor = 1e-4 if self.kind == "onecycle" else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> tuple[LambdaLR, StepSchedule]:
    """(a LambdaLR driven by a :class:`StepSchedule`, that schedule); the Trainer steps the scheduler after
    each optimizer step and refits the schedule through the reference returned here."""
    schedule = StepSchedule(cfg.scheduler, total_steps, cfg.warmup_fraction)
    return LambdaLR(optimizer, schedule), schedule
