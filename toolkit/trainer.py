"""The one training loop, on Hugging Face Accelerate.

The same code runs on the CPU, one GPU, many GPUs and many nodes: hardware and
precision (``no``/``fp16``/``bf16``) come from ``accelerate launch`` and its config.
A recipe builds the pieces and calls :meth:`Trainer.fit`.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Sequence

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from . import tracking
from .artifacts import ModelArtifact
from .callbacks import call_hook
from .checkpoint import json_safe, save_json
from .config import ConfigError, TrainConfig
from .ema import build_ema
from .epochs import EpochSteps
from .interrupts import RunGuard
from .loop import EpochSeeded, FigureFn, FitLoop, evaluate_loader, make_loader
from .models.utils import count_parameters
from .objectives import Objective, StepOutput
from .optim import build_optimizer, build_scheduler
from .runs import (abandon_run, changed_settings, fit_end_summary, folder_snapshot, refuse_resume, resolve_run_dir,
                   restore_config, restore_state, resumes, stored_settings)
from .state import TrainState

__all__ = ["Trainer", "ParameterBudgetError"]

FIGURE_SAMPLES = 16  # samples of the first validation batch handed to a recipe's figures()


#: Trainers whose fit has not started training (weakly held): see :meth:`Trainer.abandon`.
UNSTARTED: "weakref.WeakSet[Trainer]" = weakref.WeakSet()


def ask_lomo_once() -> None:
    """Let Accelerate ask only once per process whether the ``lomo_optim`` package is installed.

    ``AcceleratedOptimizer.step`` asks twice every step through ``is_lomo_available``, an importlib search of
    ``sys.path`` that Accelerate does not cache: 0.34 ms a step on a 2-core CPU (profiled); without it the
    Trainer's own cost per step with a tiny model fell from 0.45 to 0.25 ms (docs/performance.md). The answer
    cannot change during a run, so the Accelerate modules that ask get a cached copy of that function.
    Idempotent; a module without the name (another Accelerate version) is left alone.
    """
    import accelerate.accelerator
    import accelerate.optimizer

    cached = None  # one cache for both modules: one search per process
    for module in (accelerate.optimizer, accelerate.accelerator):
        ask = getattr(module, "is_lomo_available", None)
        if callable(ask) and hasattr(ask, "cache_info"):
            cached = cached or ask
        elif callable(ask):
            cached = cached or functools.cache(ask)
            module.is_lomo_available = cached


class ParameterBudgetError(ValueError):
    """A model has more trainable parameters than its recipe allows."""


class Trainer(EpochSteps):
    """Runs training for one recipe and leaves the run folder of the output contract.

    ``runs/<run-name>/``: ``config.json``, ``history.json`` (one record per epoch),
    ``summary.json``, ``best.pth`` and ``best.safetensors`` (state dict of the best epoch
    by ``monitor``; of the last epoch in a fit without validation), ``state/step-*/`` (resumable, newest
    ``keep_states`` kept, saved every epoch and every ``checkpoint_every`` steps), ``figures/`` (the recipe's
    sample figures, ``<name>_epochNNN.png``, at each validation that saves a new ``best.pth`` and at the last epoch;
    ``history.png`` then too and every ``HISTORY_EVERY`` (:mod:`~toolkit.epochs`) epochs: matplotlib figures are slow to draw, and a
    time-bounded run spends its budget on them) and the W&B run in ``wandb/``.
    SIGTERM, SIGUSR1 / Ctrl-C save a state and exit (0 / 130); a NaN/inf loss stops the run; ``patience``
    ends it early (:func:`~toolkit.state.note_patience`). Its progress is a :class:`~toolkit.state.TrainState`;
    ``loop`` holds the prepared objects of the current (or last) fit, None before the first.
    """

    def __init__(self, cfg: TrainConfig, recipe: str) -> None:
        self.cfg, self.recipe = cfg, recipe
        ask_lomo_once()
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum_steps,
            # non_blocking: batches (pinned on CUDA, make_loader) reach the GPU without waiting for it
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                      non_blocking=True),
            **tracking.tracker_kwargs(cfg),
        )
        set_seed(cfg.seed, device_specific=True)
        self.run_dir = resolve_run_dir(cfg, recipe, self.accelerator)
        self.resuming = resumes(cfg, self.run_dir)  # --resume, or --resume auto with a saved state
        self._before = folder_snapshot(self.run_dir)  # the folder as this start found it: what abandon() leaves
        self.loop: FitLoop | None = None
        UNSTARTED.add(self)  # until fit trains: what run_recipe abandons when a ConfigError ends the recipe
        self.figures_dir = self.run_dir / "figures"
        if self.accelerator.is_main_process:
            self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.save_config()
        self.accelerator.wait_for_everyone()
        tracking.start_tracking(self.accelerator, cfg, recipe, self.run_dir)

    def abandon(self) -> None:
        """Leave the run folder as this start found it, after a settings or data error before training (main
        process; :func:`~toolkit.runs.abandon_run`): its config.json as it was, what the start wrote (figures/,
        split.json, target.json, a W&B folder) removed, a folder it created removed, so that no report lists a run
        that never trained and a finished run keeps the settings it trained with. :func:`~toolkit.config.run_recipe`
        calls it for every Trainer whose ``fit`` has not started training when a ConfigError ends the recipe."""
        abandon_run(self.accelerator, self.run_dir, self._before)

    def refuse_resume(self, what: str, keys=None) -> ConfigError:
        """The ConfigError to raise when this resume cannot continue the run (:func:`~toolkit.runs.refuse_resume`:
        names the changed settings, puts the run's config.json back)."""
        return refuse_resume(self.accelerator, self.run_dir, self._before, self.cfg, what, keys)

    def keep_settings(self, keys: Sequence[str], what: str) -> None:
        """On a resume, raise :meth:`refuse_resume` (``what`` says why) when a setting of ``keys`` differs from
        the run's config.json: settings that choose the data it trains and validates on must stay."""
        if self.resuming and changed_settings(self._before, self.cfg, keys):
            raise self.refuse_resume(what, keys=keys)

    def save_config(self) -> None:
        """Write ``config.json`` from ``self.cfg`` (main process); a recipe that settles a setting from its data
        (brain_mri's ``in_channels`` 0) calls it again, so evaluate and predict read the value the run used."""
        if self.accelerator.is_main_process:
            save_json(self.run_dir / "config.json", {"recipe": self.recipe, **self.cfg.__dict__})
        tracking.update_config(self.accelerator, self.cfg)  # before start_tracking (in __init__): nothing yet

    # ------------------------------------------------------------------ checks
    def _check_budget(self, model: torch.nn.Module, budget: int | None) -> None:
        n = count_parameters(model)
        if budget is not None and n > budget:
            raise ParameterBudgetError(
                f"{self.recipe}: {type(model).__name__} has {n:,} trainable parameters, "
                f"over the recipe's budget of {budget:,}; make the model smaller")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, objective: Objective, loader, metrics: Sequence) -> tuple[dict, StepOutput | None]:
        """Mean loss and every metric over ``loader`` (a prepared DataLoader), each sample counted once
        (:func:`~toolkit.loop.evaluate_loader`). Returns (results, first batch of the main process for figures)."""
        return evaluate_loader(self.accelerator, model, objective, loader, metrics, FIGURE_SAMPLES)

    def evaluate_dataset(self, model, objective: Objective, dataset: Dataset, metrics: Sequence) -> dict:
        """Evaluate ``model`` on ``dataset`` outside of :meth:`fit` (same gathering rules)."""
        objective.channels_last = self.cfg.channels_last
        acc = self.accelerator
        model = acc.prepare_model(model.to(memory_format=torch.channels_last) if self.cfg.channels_last else model,
                                  evaluation_mode=True)  # no DDP wrapper: nothing to synchronise
        loader = acc.prepare_data_loader(make_loader(dataset, self.cfg, acc, train=False))
        return self.evaluate(model, objective, loader, metrics)[0]

    def close(self) -> None:
        """End trackers and the process group after evaluation-only use (:meth:`fit` does this itself).

        Every process must call it: a process that exits while another still talks to it
        can abort in the collective backend's threads.
        """
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    # ------------------------------------------------------------------ training
    def fit(self, model: torch.nn.Module, objective: Objective, train_data: Dataset, val_data: Dataset | None,
            metrics: Sequence, monitor: str, mode: str = "max", *, param_budget: int | None,
            figures: FigureFn | None = None, callbacks: Sequence[Any] = (),
            lr_scales: Sequence[tuple[Sequence[torch.nn.Parameter], float]] = ()) -> list[dict]:
        """Train for ``cfg.epochs`` (or the ``max_minutes`` budget) and return the history.

        ``monitor`` names the validation result (``val_loss`` or a metric key) that
        picks ``best.pth``; ``mode`` is ``"max"`` or ``"min"``. ``val_data`` None: no validation (no
        validation results, no figures, no early stopping); ``best.pth`` is then the weights after the last
        epoch (``best_epoch`` that epoch, ``best_value`` None). ``param_budget``: the most
        trainable parameters the model may have (None: no limit). ``figures(sample)``
        returns ``{name: matplotlib Figure}`` for the first validation batch (a StepOutput of
        up to 16 samples on the CPU). ``callbacks``: hooks (see :mod:`toolkit.callbacks`),
        called on every process in list order. ``lr_scales``: (parameters of ``model``, factor) pairs that learn
        at factor x ``cfg.lr`` (:func:`~toolkit.optim.build_optimizer`).
        """
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        cfg, acc = self.cfg, self.accelerator
        if cfg.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 to train, got {cfg.epochs}")
        if val_data is not None and len(val_data) == 0:
            raise ValueError("the validation set holds no sample; pass val_data=None to train without validation")
        if val_data is None and cfg.patience:
            raise ConfigError(f"patience {cfg.patience} counts validations, and this run has no validation set "
                              "(brain_mri: --val-fraction 0): give one, or --patience 0")
        self._check_budget(model, param_budget)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        objective.channels_last = cfg.channels_last
        optimizer = build_optimizer(model, cfg, lr_scales)
        train_data = EpochSeeded(train_data, cfg.seed)
        loaders = [make_loader(train_data, cfg, acc, train=True)]
        if val_data is not None:
            loaders.append(make_loader(val_data, cfg, acc, train=False))
        model, optimizer, train_dl, *val_dl = acc.prepare(model, optimizer, *loaders)
        val_dl = val_dl[0] if val_dl else None
        steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum_steps)
        scheduler, schedule = build_scheduler(optimizer, cfg, steps_per_epoch * max(cfg.epochs, 1))
        ema = build_ema(acc, model, cfg.ema_decay)
        self.loop = loop = FitLoop(model, objective, optimizer, scheduler, schedule, train_dl, val_dl, train_data,
                                   val_data, metrics, monitor, mode, figures, [*callbacks, ModelArtifact()],
                                   steps_per_epoch, RunGuard(acc, cfg.log_every), ema)
        try:
            state = (restore_state(acc, self.run_dir, cfg, scheduler, schedule, steps_per_epoch, ema)
                     if self.resuming else TrainState(planned_epochs=cfg.epochs, steps_per_epoch=steps_per_epoch))
        except RuntimeError as err:  # e.g. "size mismatch": the state is of another model than configured now
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [""]
            why = next((ln for ln in lines if "mismatch" in ln or "key" in ln.lower()), lines[0])[:160]
            raise self.refuse_resume(
                f"its saved state does not load into the model as configured now ({why})") from None
        if state.more_epochs:  # the optimizer and schedule continue from the state: new values would not take effect
            self.keep_settings(stored_settings(cfg), "its optimizer and LR schedule continue from its state, which "
                                                     "holds the values it started with")
        ended = None  # the run's summary.json when a resume finds its fit-end steps done after its last epoch
        if self.resuming and not state.more_epochs:
            ended = fit_end_summary(self.run_dir, state.epoch)
            restore_config(acc, self.run_dir, self._before)
            acc.print(f"{self.run_dir}: nothing left to train (epoch {state.epoch} of its plan of "
                      f"{state.planned_epochs} done{'; ' + state.stop_reason if state.stop_reason else ''}); "
                      "its config.json stays as it trained" + ("; its fit-end steps ran then (summary.json), so "
                                                               "its outputs stay too" if ended is not None else ""))
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        acc.print(f"{self.recipe}: {trainable:,} trainable / {total:,} parameters, {acc.num_processes} process(es), "
                  f"mixed precision {acc.mixed_precision}, run folder {self.run_dir}")
        call_hook(loop.callbacks, "on_fit_start", self, state)
        UNSTARTED.discard(self)
        if state.more_epochs and acc.is_main_process:  # a resume that trains on: the last fit's summary is stale
            (self.run_dir / "summary.json").unlink(missing_ok=True)
        with loop.guard:
            self._epochs(state)
        if state.stop_reason:
            acc.print(f"stopped early after epoch {state.epoch}: {state.stop_reason}")
        elif state.planned_epochs < cfg.epochs:
            acc.print(f"the --max-minutes budget fitted {state.planned_epochs} of the {cfg.epochs} epochs asked for; "
                      "the LR schedule was fitted to them")
        if ended is None:  # a run killed during them finishes them now
            call_hook(loop.callbacks, "on_fit_end", self, state)
        launch = {"epochs_asked": cfg.epochs, "num_processes": acc.num_processes,
                  "mixed_precision": acc.mixed_precision}  # a launch that trained nothing: as the run trained
        launch = {k: ended.get(k, v) for k, v in launch.items()} if ended is not None else launch
        summary = state.summary(
            recipe=self.recipe, run_dir=str(self.run_dir), monitor=self.loop.monitor, mode=self.loop.mode,
            trainable_params=trainable, total_params=total, param_budget=param_budget, **launch)
        if acc.is_main_process:
            save_json(self.run_dir / "summary.json", json_safe(summary))  # undefined figures (NaN) as null
        tracking.set_summary(acc, summary)
        acc.wait_for_everyone()  # no process tears the process group down while another still writes or talks
        acc.end_training()
        return state.history
