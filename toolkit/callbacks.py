"""Hooks into :meth:`Trainer.fit <toolkit.trainer.Trainer.fit>`: what a recipe adds to the generic loop.

A callback is any object with some of these methods (all optional; :class:`Callback`
provides no-op versions to subclass):

``on_fit_start(trainer, state)``
    once the state is fresh or restored (``state.epoch`` epochs already done on a resume), before the first
    epoch trains: a callback whose behaviour depends on the epoch sets itself from it here.
``on_epoch_end(trainer, state, record, sample)``
    after each epoch's validation, best weights, history and figures, before the state
    is saved. ``state`` is the :class:`~toolkit.state.TrainState`, ``record`` the epoch's
    history record, ``sample`` the first validation batch of the main process (a
    ``StepOutput`` with up to 16 samples on the CPU, or None).
``on_fit_end(trainer, state)``
    after the last epoch, before ``summary.json`` is written and the trackers end.

The Trainer calls the hooks on every process, callback by callback in the order of the
list; a hook that writes files or talks to W&B checks ``trainer.accelerator.is_main_process``
itself, and one that runs a collective must do so on every process. The prepared objects of
the running fit are ``trainer.loop`` (model, objective, loaders, datasets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .figures import plot_history, save_figure

if TYPE_CHECKING:
    from .state import TrainState

__all__ = ["Callback", "ChooseOnRun", "SaveCurve", "call_hook"]


class Callback:
    """Base class of fit hooks; override the methods you need (see the module docstring)."""

    def on_fit_start(self, trainer, state: "TrainState") -> None:
        """Before the first epoch of this fit; ``state.epoch``: epochs already done (a resumed run: > 0)."""

    def on_epoch_end(self, trainer, state: "TrainState", record: dict[str, Any], sample) -> None:
        """After epoch ``state.epoch`` (1-based, just completed); ``sample``: first validation batch or None."""

    def on_fit_end(self, trainer, state: "TrainState") -> None:
        """After the last epoch, while the trackers are still open."""


class ChooseOnRun(Callback):
    """A callback whose work is ``choose(run_dir, print_fn)`` on the finished run folder: at fit end the main
    process calls it; ``toolkit postprocess`` calls it on a run trained earlier."""

    def on_fit_end(self, trainer, state: "TrainState") -> None:
        if trainer.accelerator.is_main_process:
            self.choose(trainer.run_dir, trainer.accelerator.print)

    def choose(self, run_dir, print_fn=print) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define choose(run_dir, print_fn)")


def call_hook(callbacks: Sequence[Any], hook: str, *args) -> None:
    """Call ``hook(*args)`` on each callback that has it, in list order."""
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


class SaveCurve(Callback):
    """At fit end, the main process saves ``figures/<name>.png``: ``plot_history(history, keys)``.

    keys: history keys to plot, one panel each (e.g. ``["accuracy"]``); name: the file stem.
    Nothing is written when the history is empty.
    """

    def __init__(self, keys: Sequence[str], name: str) -> None:
        if isinstance(keys, str) or not keys:
            raise ValueError(f"SaveCurve keys must be a non-empty list of history keys, got {keys!r}")
        if not name or "/" in name or "\\" in name:
            raise ValueError(f"SaveCurve name must be a plain file stem such as 'accuracy', got {name!r}")
        self.keys, self.name = list(keys), name

    def on_fit_end(self, trainer, state: "TrainState") -> None:
        if trainer.accelerator.is_main_process and state.history:
            save_figure(plot_history(state.history, keys=self.keys), trainer.figures_dir / f"{self.name}.png")
