"""Small helpers shared by the model families."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Return the number of parameters of ``model`` (an int >= 0).

    Args:
        model: any ``nn.Module``.
        trainable_only: if True (default) count only parameters with
            ``requires_grad=True`` (the ones the spec's 500,000 budget limits);
            if False count every parameter. Buffers (e.g. BatchNorm running
            statistics) are never counted. A parameter shared by several
            sub-modules is counted once.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
