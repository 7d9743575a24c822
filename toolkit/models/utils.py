"""Small helpers shared by the model families."""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn

from ..config import ConfigError

__all__ = ["check_param_budget", "count_parameters", "init_from", "meta_parameter_count"]


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


def meta_parameter_count(build: Callable[[], nn.Module]) -> int:
    """Trainable parameters of the model ``build()`` makes, built on the meta device: no memory is taken for its
    weights, so a config can check its parameter budget before any model is built for real (a width of 100,000
    would otherwise allocate hundreds of GB first). Exceptions of ``build`` (e.g. ValueError for bad widths)
    propagate."""
    with torch.device("meta"):
        return count_parameters(build())


def check_param_budget(build: Callable[[], nn.Module], budget: int, what: str, advice: str = "make it smaller",
                       budget_text: str = "") -> int:
    """ConfigError ``"{what} has N trainable parameters, over param_budget B; {advice}"`` when the model
    ``build()`` makes has more trainable parameters than ``budget`` (counted by :func:`meta_parameter_count`: no
    memory taken, so a config refuses a huge width before any model is built); ``budget_text`` replaces
    ``param_budget B`` in the message. Returns the count."""
    n = meta_parameter_count(build)
    if n > budget:
        raise ConfigError(f"{what} has {n:,} trainable parameters, over {budget_text or f'param_budget {budget:,}'}; "
                          f"{advice}")
    return n


def init_from(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights of an earlier run (``best.pth`` / ``.safetensors``) into ``model``; returns ``model``.

    Every parameter and buffer must match by name and shape: weights of another architecture, width
    or number of channels are refused with a ValueError that names the file and the first differences.
    Deep supervision's auxiliary heads (``aux_heads.*``) are the exception: a model with them starts them
    fresh from weights without, and weights with them load into a model without (the heads left out).
    """
    from ..checkpoint import load_weights

    state = load_weights(path)
    own = model.state_dict()
    optional = lambda k: k.startswith("aux_heads.")  # noqa: E731
    missing = [k for k in own if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in own and not optional(k)]
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[:2]})" if shapes else ""]
        raise ValueError(f"--init-from {path}: these weights are of another model than {type(model).__name__} "
                         f"as configured: " + "; ".join(p for p in parts if p) +
                         "; pass weights saved by the same model, widths and channels")
    model.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})
    return model
