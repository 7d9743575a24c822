"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step.

With ``--ema-decay D`` (``TrainConfig.ema_decay``) the Trainer keeps :class:`WeightEMA` beside the
model it trains: validation, ``best.pth`` and the figures use the averaged weights, the optimizer
keeps stepping the raw ones, and every resumable state saves the average (``ema.pt``) so a resumed
run continues it exactly. The decay ramps up as TensorFlow's ``ExponentialMovingAverage`` with
``num_updates`` does: ``min(D, (1 + n) / (10 + n))`` at update ``n``, so the first steps' random
weights do not linger in the average of a short run.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["WeightEMA", "build_ema"]


class WeightEMA:
    """The moving average of ``source``'s floating-point parameters and buffers.

    ``source``: the (unwrapped) model being trained, on its device; the average starts as a copy of it
    and lives on the same device (``module``, in eval mode, no gradients). ``decay``: the largest
    weight the old average keeps per update, in (0, 1); e.g. 0.999 averages over about 1,000 optimizer
    steps once the ramp (:meth:`current_decay`) has reached it, after about 9 / (1 - decay) updates
    (9,000 for 0.999); before that the average spans about the last ninth of the steps. Integer buffers
    (BatchNorm's ``num_batches_tracked``) are copied, not averaged.
    Raises ValueError for a decay outside (0, 1).
    """

    def __init__(self, source: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), e.g. 0.999, got {decay}")
        self.source, self.decay, self.updates = source, decay, 0
        self.module = copy.deepcopy(source).eval().requires_grad_(False)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(averaged float tensors, their source tensors, other averaged tensors, their sources), in module order."""
        avg, src, avg_other, src_other = [], [], [], []
        mine = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
        theirs = {**dict(self.source.named_parameters()), **dict(self.source.named_buffers())}
        for name, tensor in mine.items():
            pair = (avg, src) if tensor.is_floating_point() else (avg_other, src_other)
            pair[0].append(tensor)
            pair[1].append(theirs[name].detach())
        return avg, src, avg_other, src_other

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: ``min(decay, (1 + n) / (10 + n))`` after n updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the source's current weights: ``avg += (1 - d) * (w - avg)``."""
        weight = 1.0 - self.current_decay()
        avg, src, avg_other, src_other = self._pairs()
        if avg:
            torch._foreach_lerp_(avg, [s.to(a.dtype) for a, s in zip(avg, src)], weight)
        for a, s in zip(avg_other, src_other):
            a.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"updates": n, "weights": the averaged state dict}`` (tensors on the CPU)."""
        weights = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        return {"updates": self.updates, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the decay is the configured one, not saved).

        Raises ValueError when the saved weights do not fit the model (another architecture).
        """
        try:
            self.module.load_state_dict(state["weights"])
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"the saved EMA weights do not fit this model: {err}") from None
        self.updates = int(state.get("updates", 0))


def build_ema(accelerator, model: nn.Module, decay: float) -> WeightEMA | None:
    """The weight average of a prepared ``model`` (None when ``decay`` is 0): it follows the plain module
    under any DDP or ``torch.compile`` wrapper, so ``best.pth`` keys are the model's own.

    Raises ValueError under FSDP or DeepSpeed, whose processes hold only shards of the weights.
    """
    if decay <= 0:
        return None
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(f"--ema-decay needs the whole model on every process (CPU, GPUs with DDP); "
                         f"{accelerator.distributed_type.value} shards it: drop --ema-decay")
    return WeightEMA(accelerator.unwrap_model(model, keep_torch_compile=False), decay)
