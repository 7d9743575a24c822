"""The Trainer's progress as one explicit object, saved as ``trainer_state.json`` in every state folder.

:class:`TrainState` holds everything a resumed run needs besides the tensors that
Accelerate saves (model, optimizer, grad scaler, RNGs) and the scheduler's state dict:
where training stands (epoch, optimizer step, batches done inside the epoch and the
running sums of that partial epoch), the best validation value so far, the history of
epoch records, the planned number of epochs and the timings. Its JSON form keeps the
keys of every earlier version of the file, so states saved before still resume.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["TrainState", "plan_epochs", "note_patience"]

_REQUIRED = ("epoch", "global_step", "history", "planned_epochs")  # in every trainer_state.json ever written


@dataclass
class TrainState:
    """Where a training run stands; changed in place by the Trainer.

    epoch: epochs completed (0 before the first ends); global_step: optimizer steps taken;
    batch_in_epoch: batches of epoch ``epoch + 1`` already trained on when a state is saved
    inside an epoch (0 at an epoch boundary); partial: the running sums of that partial
    epoch (``loss_sum``, ``seen`` images, ``time_s``) or None; best / best_epoch: the best
    monitored validation value and the (1-based) epoch that reached it, None before the first;
    history: one record (dict of numbers) per completed epoch; planned_epochs: epochs the
    run will train (a time budget may lower it); train_time_s / wall_time_s: seconds spent
    in training steps / in whole epochs (training, evaluation, outputs); epoch_end_walls:
    ``wall_time_s`` at the end of each epoch (time-budget planning); skipped_steps:
    optimizer steps the fp16 grad scaler skipped; patience_best: the monitored value that
    later epochs must improve on by ``min_delta`` (early stopping; None before the first epoch);
    epochs_without_improvement: validations since it was last set; stop_reason: why the run stopped
    before its planned epochs (early stopping), None while it has not; steps_per_epoch: optimizer steps per
    epoch of the fit that saved it (None in older states; a resume at another pace refits the LR schedule).
    """

    planned_epochs: int
    epoch: int = 0
    global_step: int = 0
    batch_in_epoch: int = 0
    partial: dict[str, float] | None = None
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    epoch_end_walls: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    patience_best: float | None = None
    epochs_without_improvement: int = 0
    stop_reason: str | None = None
    steps_per_epoch: int | None = None

    @property
    def more_epochs(self) -> bool:
        """Whether the run trains another epoch: planned epochs remain and it did not stop early."""
        return self.epoch < self.planned_epochs and self.stop_reason is None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the keys of ``trainer_state.json`` (a deep copy: later changes don't reach it)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainState":
        """The state a ``trainer_state.json`` dict describes, of this or any earlier format.

        Keys that older files lack (``batch_in_epoch``, ``partial``, ``skipped_steps``, ``epoch_end_walls``,
        the early-stopping keys, ``steps_per_epoch``) take their defaults; keys this class does not know are ignored.
        Raises ValueError naming the keys when one of epoch, global_step, history or
        planned_epochs is missing.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a trainer state must be a JSON object, got {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"trainer state lacks {missing}; expected the keys {list(_REQUIRED)} at least, "
                             f"got {sorted(data)}")
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.history = [dict(h) for h in state.history]
        state.epoch_end_walls = list(state.epoch_end_walls)
        state.partial = dict(state.partial) if state.partial else None
        return state

    def summary(self, **run: Any) -> dict:
        """``summary.json`` of a finished fit: ``run`` (recipe, run folder, monitor, parameters, processes, …)
        first, then the best value and epoch, epochs completed and planned (a time budget lowers the plan),
        whether, after which epoch and why it stopped early, timings, mean training images/s, skipped steps and
        the final epoch's record."""
        history, stopped = self.history, self.stop_reason is not None
        return {
            **run, "best_value": self.best, "best_epoch": self.best_epoch, "epochs_completed": self.epoch,
            "epochs_planned": self.planned_epochs,  # below the epochs asked for when a time budget cut the plan
            "stopped_early": stopped, "stopped_epoch": self.epoch if stopped else None, "stop_reason": self.stop_reason,
            "wall_time_s": self.wall_time_s, "train_time_s": self.train_time_s,
            "train_images_per_s": (sum(h["train_images_per_s"] for h in history) / len(history)) if history else None,
            "skipped_steps": self.skipped_steps, "final": history[-1] if history else None,
        }


def plan_epochs(state: TrainState, max_epochs: int, budget_s: float) -> int:
    """Epochs that fit the time budget ``budget_s`` (seconds), called at the end of each epoch.

    Records ``state.wall_time_s`` in ``state.epoch_end_walls``, then predicts the duration of
    the next epochs from the median of the last five (training + evaluation): it follows a
    lasting change of speed within three epochs, while one or two slow epochs (a passing load)
    move it little. Returns a number between ``state.epoch`` and ``max_epochs``; returns
    ``state.planned_epochs`` unchanged (and records nothing) once the plan has run out, so that
    a finished schedule is never restarted. Does not change ``planned_epochs`` itself.
    """
    if state.planned_epochs <= state.epoch:
        return state.planned_epochs
    walls = state.epoch_end_walls
    walls.append(state.wall_time_s)
    recent = walls[-6:]
    durations = [b - a for a, b in zip(recent, recent[1:])]
    per_epoch = statistics.median(durations) if durations else walls[0] / state.epoch
    left = int(max(0.0, budget_s - state.wall_time_s) / max(per_epoch, 1e-9))
    return max(state.epoch, min(max_epochs, state.epoch + left))


def note_patience(state: TrainState, value: float, monitor: str, mode: str, patience: int, min_delta: float) -> bool:
    """Early stopping, called once after each validation with its monitored ``value``; True when the run must stop.

    The epoch improves when ``value`` beats ``state.patience_best`` by at least ``min_delta`` (>= 0, in the
    metric's units, up to float rounding; up for ``mode`` "max", down for "min"; any change > 0 when
    ``min_delta`` is 0): then it becomes the new reference and the count restarts, otherwise
    ``state.epochs_without_improvement`` grows.
    The first epoch always improves; a NaN value never does. With ``patience`` > 0, the count reaching
    ``patience`` sets ``state.stop_reason``; ``patience`` 0 never stops (the count is still kept).
    """
    ref = state.patience_best
    if ref is None:
        gain = math.inf if value == value else math.nan
    else:
        gain = value - ref if mode == "max" else ref - value
    if gain > 0 and (gain >= min_delta or math.isclose(gain, min_delta, rel_tol=1e-9)):  # 0.6 - 0.5 counts as 0.1
        state.patience_best, state.epochs_without_improvement = value, 0
    else:
        state.epochs_without_improvement += 1
    count = state.epochs_without_improvement
    if 0 < patience <= count:
        # count is in validations (every --eval-every epochs): the epoch that improved is the validated one
        # count validations back, read from the history's validated records (they hold the monitor)
        validated = [h.get("epoch") for h in state.history if monitor in h]
        last = validated[-1 - count] if len(validated) > count else None
        last = state.epoch - count if last is None else last  # records without an epoch: every epoch validated
        since = f"{ref:.6g} at epoch {last}" if ref is not None else "none (no valid value)"
        state.stop_reason = (f"{monitor} did not improve ({mode}) by at least {min_delta:g} for {count} validations "
                             f"(--patience {patience}); last improvement: {since}")
    return state.stop_reason is not None
