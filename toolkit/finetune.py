"""Fine-tuning a pretrained segmentation model: keep its encoder fixed for the first epochs.

:class:`FreezeEncoder` is a fit callback (see :mod:`toolkit.callbacks`). The optimizer is built over
every parameter as usual; while frozen, each encoder parameter's gradient is zeroed as it is computed
and then dropped (``grad = None``) once accumulated, so AdamW skips the parameter entirely: no update,
no decoupled weight decay, no moment statistics (its state starts at the first unfrozen step, with
AdamW's bias correction as for a fresh parameter). BatchNorm running statistics of the encoder still
follow the new data in training mode. Under DDP the gradient buffers may hand the encoder zero
gradients instead of none; AdamW's weight decay then still shrinks it slightly.
"""

from __future__ import annotations

import torch.nn as nn

from .callbacks import Callback

__all__ = ["FreezeEncoder", "encoder_parameters"]


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The encoder's parameters: ``encoder`` and ``bottleneck`` of a :class:`~toolkit.models.SegAutoEncoder`,
    ``net.encoder`` of the smp baseline, else a module's ``encoder``. Raises ValueError when ``model`` has none."""
    for path in (("encoder", "bottleneck"), ("net.encoder",), ("encoder",)):
        parts = [model.get_submodule(p) if _has(model, p) else None for p in path]
        if all(m is not None for m in parts):
            return [p for m in parts for p in m.parameters()]
    raise ValueError(f"{type(model).__name__} has no encoder (expected an 'encoder' sub-module) to freeze")


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


class FreezeEncoder(Callback):
    """Freeze ``model``'s encoder (:func:`encoder_parameters`) from now until ``epochs`` epochs have ended.

    Create it before ``Trainer.fit`` with the unwrapped model and pass it in ``callbacks``; ``epochs``
    0 freezes nothing. After epoch ``epochs`` of the run (``on_epoch_end``) the encoder trains with the rest;
    a run resumed after that epoch starts unfrozen (``on_fit_start``), so a resume with the same setting
    trains as the run it continues.
    """

    def __init__(self, model: nn.Module, epochs: int) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"freeze epochs must be an int >= 0, got {epochs!r}")
        self.epochs = epochs
        self.params = encoder_parameters(model)
        self.handles = []
        if epochs:
            for p in self.params:
                self.handles.append(p.register_hook(_zeros))
                self.handles.append(p.register_post_accumulate_grad_hook(_drop_grad))

    @property
    def frozen(self) -> bool:
        """True while the encoder receives no updates."""
        return bool(self.handles)

    def release(self) -> None:
        """Unfreeze now."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def on_fit_start(self, trainer, state) -> None:
        if self.frozen and state.epoch >= self.epochs:
            self.release()
            trainer.accelerator.print(f"encoder not frozen: the resumed run is past epoch {self.epochs}, "
                                      f"when --freeze-encoder-epochs released it")

    def on_epoch_end(self, trainer, state, record, sample) -> None:
        if self.frozen and state.epoch >= self.epochs:
            self.release()
            trainer.accelerator.print(f"encoder unfrozen after epoch {state.epoch}")


def _zeros(grad):
    return grad.new_zeros(grad.shape)


def _drop_grad(param: nn.Parameter) -> None:
    param.grad = None
