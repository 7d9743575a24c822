"""The pieces one :meth:`Trainer.fit <toolkit.trainer.Trainer.fit>` prepares: data loaders and the loop context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig
from .ema import WeightEMA
from .interrupts import RunGuard
from .optim import StepSchedule

if TYPE_CHECKING:
    from .objectives import Objective

__all__ = ["EpochSeeded", "FitLoop", "FigureFn", "evaluate_loader", "make_loader"]

FigureFn = Callable[[Any], dict]  # StepOutput of the first validation batch -> {name: matplotlib Figure}


def _reseedable(dataset):
    """``dataset`` or the first dataset it wraps (``.dataset``, as Subset) that has ``reseed``; None if none."""
    while dataset is not None and not hasattr(dataset, "reseed"):
        dataset = getattr(dataset, "dataset", None)
    return dataset


class EpochSeeded(Dataset):
    """The training set as the Trainer loads it: sample ``i`` of epoch ``e`` is augmented from ``(seed, e, i)``
    alone, whichever DataLoader worker or process reads it.

    Before each item it calls ``reseed(s)`` of the wrapped dataset, or of the first dataset it wraps that has one
    (``.dataset``, as Subset; none: the items pass through unchanged), with ``s`` derived from ``(seed, epoch, i)``.
    The epoch lives in shared memory, so :meth:`set_epoch` in the main process reaches workers that persist from
    one epoch to the next (no worker start-up each epoch), and a run resumed inside an epoch draws the same
    augmentation for the batches it has left. Items are what the wrapped dataset returns.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._target = _reseedable(dataset)

    def set_epoch(self, epoch: int) -> None:
        """Augment the items read from now on as those of ``epoch`` (call it before the epoch's iterator)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if self._target is not None:
            seed = np.random.SeedSequence([self.seed, int(self._epoch), int(i)]).generate_state(1)[0]
            self._target.reseed(int(seed))
        return self.dataset[i]


def make_loader(dataset: Dataset, cfg: TrainConfig, accelerator: Accelerator, train: bool) -> DataLoader:
    """The (unprepared) DataLoader of ``dataset``: shuffled with its own seeded generator when ``train``.

    Batch size ``cfg.batch_size`` for training, ``cfg.eval_batch_size`` (or twice the batch size)
    for evaluation; the last incomplete training batch is dropped when the data allow one per process.
    Workers persist from one epoch (or validation) to the next: starting them costs a noticeable share of a
    short epoch. Training augmentation follows the epoch through :class:`EpochSeeded`, not the worker.
    """
    batch = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
    return DataLoader(
        dataset, batch_size=batch, shuffle=train, num_workers=cfg.num_workers,
        drop_last=train and len(dataset) >= batch * accelerator.num_processes,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=cfg.num_workers > 0,
        # own generator: creating an iterator draws nothing from the global RNG (exact mid-epoch resume)
        generator=torch.Generator().manual_seed(cfg.seed) if train else None,
    )


@dataclass
class FitLoop:
    """The prepared objects of one :meth:`Trainer.fit` (``trainer.loop`` from its start on).

    model, optimizer, train_dl and val_dl are Accelerate-prepared; train_data the recipe's training set
    wrapped in :class:`EpochSeeded`, val_data the validation set as the recipe gave it; schedule the LR
    multiplier that drives scheduler; guard the run's signal and NaN/inf watch; callbacks the fit hooks in
    calling order.
    """

    model: torch.nn.Module
    objective: "Objective"
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    schedule: StepSchedule
    train_dl: DataLoader
    val_dl: DataLoader | None  # None: a fit without validation
    train_data: EpochSeeded
    val_data: Dataset | None
    metrics: Sequence
    monitor: str
    mode: str
    figures: FigureFn | None
    callbacks: Sequence[Any]
    steps_per_epoch: int
    guard: RunGuard
    ema: WeightEMA | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that validation, ``best.pth`` and figures use: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the monitored result beats ``best`` (None: nothing to beat yet); any number beats
        a NaN best (an undefined first validation), a NaN value beats nothing else."""
        if best is None or best != best:
            return best is None or value == value
        return value > best if self.mode == "max" else value < best


@torch.no_grad()
def evaluate_loader(acc: Accelerator, model, objective: "Objective", loader, metrics: Sequence,
                    sample_size: int) -> tuple[dict, Any]:
    """Mean loss and every metric over ``loader`` (a prepared DataLoader), each sample counted once.

    Metrics see each sample exactly once (``gather_for_metrics`` drops the padding of the last batch);
    ``val_loss`` is the sample-weighted mean of batch losses, ``val_samples`` their number. Returns (results,
    the first batch of the main process as a StepOutput of up to ``sample_size`` samples on the CPU, or None
    for an empty loader).
    """
    from .objectives import StepOutput

    model.eval()
    for metric in metrics:
        metric.reset()
    loss_sum, count, sample = 0.0, 0, None
    for batch in loader:
        out = objective(model, batch)
        per_sample = out.loss.detach().float().reshape(1).expand(out.preds.shape[0])
        preds, targets, losses = acc.gather_for_metrics((out.preds, out.targets, per_sample))
        loss_sum += losses.sum().item()
        count += losses.numel()
        for metric in metrics:
            metric.update(preds, targets)
        if sample is None:
            k = sample_size
            sample = StepOutput(out.loss, out.preds[:k].cpu(), out.targets[:k].cpu(), out.inputs[:k].cpu())
    results = {"val_loss": loss_sum / max(count, 1), "val_samples": count}
    for metric in metrics:
        results.update(metric.compute())
    return results, sample
