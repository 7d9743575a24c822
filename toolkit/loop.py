"""The pieces one :meth:`Trainer.fit <toolkit.trainer.Trainer.fit>` prepares: data loaders and the loop context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

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

__all__ = ["FitLoop", "FigureFn", "make_loader", "reseed"]

FigureFn = Callable[[Any], dict]  # StepOutput of the first validation batch -> {name: matplotlib Figure}


def reseed(dataset, seed: int) -> None:
    """Call ``reseed(seed)`` on the dataset (or the dataset it wraps) so augmentation is reproducible."""
    while dataset is not None:
        if hasattr(dataset, "reseed"):
            dataset.reseed(seed)
            return
        dataset = getattr(dataset, "dataset", None)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    reseed(info.dataset, info.seed % 2**32)


def make_loader(dataset: Dataset, cfg: TrainConfig, accelerator: Accelerator, train: bool) -> DataLoader:
    """The (unprepared) DataLoader of ``dataset``: shuffled with its own seeded generator when ``train``.

    Batch size ``cfg.batch_size`` for training, ``cfg.eval_batch_size`` (or twice the batch size)
    for evaluation; the last incomplete training batch is dropped when the data allow one per process.
    Evaluation workers persist from one validation to the next (they draw no random numbers); training
    workers start afresh each epoch, so that each epoch's augmentation follows the dataset's reseed.
    """
    batch = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
    return DataLoader(
        dataset, batch_size=batch, shuffle=train, num_workers=cfg.num_workers,
        drop_last=train and len(dataset) >= batch * accelerator.num_processes,
        pin_memory=accelerator.device.type == "cuda", worker_init_fn=_seed_worker,
        persistent_workers=not train and cfg.num_workers > 0,
        # own generator: creating an iterator draws nothing from the global RNG (exact mid-epoch resume)
        generator=torch.Generator().manual_seed(cfg.seed) if train else None,
    )


@dataclass
class FitLoop:
    """The prepared objects of one :meth:`Trainer.fit` (``trainer.loop`` from its start on).

    model, optimizer, train_dl and val_dl are Accelerate-prepared; train_data and val_data
    the datasets as the recipe gave them; schedule the LR multiplier that drives scheduler;
    guard the run's signal and NaN/inf watch; callbacks the fit hooks in calling order.
    """

    model: torch.nn.Module
    objective: "Objective"
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    schedule: StepSchedule
    train_dl: DataLoader
    val_dl: DataLoader
    train_data: Dataset
    val_data: Dataset
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
        """Whether ``value`` of the monitored result beats ``best`` (None: nothing to beat yet)."""
        return best is None or (value > best if self.mode == "max" else value < best)
