"""The one training loop, on Hugging Face Accelerate.

The same code runs on the CPU, one GPU, many GPUs and many nodes: hardware and
precision (``no``/``fp16``/``bf16``) come from ``accelerate launch`` and its config.
A recipe builds the pieces and calls :meth:`Trainer.fit`.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import tracking
from .checkpoint import save_json, save_safetensors, save_weights
from .config import TrainConfig
from .figures import plot_history, save_figure
from .models.utils import count_parameters
from .objectives import Objective, StepOutput
from .optim import build_optimizer, build_scheduler
from .interrupts import StopSignals
from .resume import ResumeMixin
from .wandb_media import MediaLogger

__all__ = ["Trainer", "ParameterBudgetError"]

FigureFn = Callable[[StepOutput], dict]
FIGURE_SAMPLES = 16  # samples of the first validation batch handed to a recipe's figures()


class ParameterBudgetError(ValueError):
    """A model has more trainable parameters than its recipe allows."""


def _reseed(dataset, seed: int) -> None:
    """Call ``reseed(seed)`` on the dataset (or the dataset it wraps) so augmentation is reproducible."""
    while dataset is not None:
        if hasattr(dataset, "reseed"):
            dataset.reseed(seed)
            return
        dataset = getattr(dataset, "dataset", None)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    _reseed(info.dataset, info.seed % 2**32)


class Trainer(ResumeMixin):
    """Runs training for one recipe and leaves the run folder of the output contract.

    ``runs/<run-name>/``: ``config.json``, ``history.json`` (one record per epoch),
    ``summary.json``, ``best.pth`` and ``best.safetensors`` (state dict of the best epoch
    by ``monitor``), ``state/step-*/`` (resumable, newest ``keep_states`` kept, saved every
    epoch and every ``checkpoint_every`` steps), ``figures/`` and the W&B run in ``wandb/``.
    SIGTERM / Ctrl-C save a state and exit (status 0 / 130); a NaN/inf loss stops the run.
    """

    def __init__(self, cfg: TrainConfig, recipe: str) -> None:
        self.cfg, self.recipe = cfg, recipe
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum_steps,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
            **tracking.tracker_kwargs(cfg),
        )
        set_seed(cfg.seed, device_specific=True)
        self.run_dir = self._resolve_run_dir()
        self.figures_dir = self.run_dir / "figures"
        if self.accelerator.is_main_process:
            self.figures_dir.mkdir(parents=True, exist_ok=True)
            save_json(self.run_dir / "config.json", {"recipe": recipe, **cfg.__dict__})
        self.accelerator.wait_for_everyone()
        tracking.start_tracking(self.accelerator, cfg, recipe, self.run_dir)

    # ------------------------------------------------------------------ data
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        cfg = self.cfg
        batch = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
        return DataLoader(
            dataset, batch_size=batch, shuffle=train, num_workers=cfg.num_workers,
            drop_last=train and len(dataset) >= batch * self.accelerator.num_processes,
            pin_memory=self.accelerator.device.type == "cuda", worker_init_fn=_seed_worker,
            # own generator: creating an iterator draws nothing from the global RNG (exact mid-epoch resume)
            generator=torch.Generator().manual_seed(cfg.seed) if train else None,
        )

    def _check_budget(self, model: torch.nn.Module, budget: int | None) -> None:
        n = count_parameters(model)
        if budget is not None and n > budget:
            raise ParameterBudgetError(
                f"{self.recipe}: {type(model).__name__} has {n:,} trainable parameters, "
                f"over the recipe's budget of {budget:,}; make the model smaller")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model, objective: Objective, loader, metrics: Sequence) -> tuple[dict, StepOutput | None]:
        """Mean loss and every metric over ``loader`` (a prepared DataLoader), each sample counted once.

        Metrics see each sample exactly once (``gather_for_metrics`` drops the padding
        of the last batch); ``val_loss`` is the sample-weighted mean of batch losses.

        Returns (results, first batch of the main process for figures).
        """
        acc = self.accelerator
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
                k = FIGURE_SAMPLES
                sample = StepOutput(out.loss, out.preds[:k].cpu(), out.targets[:k].cpu(), out.inputs[:k].cpu())
        results = {"val_loss": loss_sum / max(count, 1), "val_samples": count}
        for metric in metrics:
            results.update(metric.compute())
        return results, sample

    def evaluate_dataset(self, model, objective: Objective, dataset: Dataset, metrics: Sequence) -> dict:
        """Evaluate ``model`` on ``dataset`` outside of :meth:`fit` (same gathering rules)."""
        objective.channels_last = self.cfg.channels_last
        acc = self.accelerator
        model = acc.prepare_model(model.to(memory_format=torch.channels_last) if self.cfg.channels_last else model,
                                  evaluation_mode=True)  # no DDP wrapper: nothing to synchronise
        loader = acc.prepare_data_loader(self._loader(dataset, train=False))
        return self.evaluate(model, objective, loader, metrics)[0]

    def close(self) -> None:
        """End trackers and the process group after evaluation-only use (:meth:`fit` does this itself).

        Every process must call it: a process that exits while another still talks to it
        can abort in the collective backend's threads.
        """
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    # ------------------------------------------------------------------ training
    def fit(self, model: torch.nn.Module, objective: Objective, train_data: Dataset, val_data: Dataset,
            metrics: Sequence, monitor: str, mode: str = "max", param_budget: int | None = 500_000,
            figures: FigureFn | None = None) -> list[dict]:
        """Train for ``cfg.epochs`` (or the ``max_minutes`` budget) and return the history.

        ``monitor`` names the validation result (``val_loss`` or a metric key) that
        picks ``best.pth``; ``mode`` is ``"max"`` or ``"min"``. ``figures(sample)``
        returns ``{name: matplotlib Figure}`` for the first validation batch.
        """
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        cfg, acc = self.cfg, self.accelerator
        self._check_budget(model, param_budget)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        objective.channels_last = cfg.channels_last
        optimizer = build_optimizer(model, cfg)
        model, optimizer, train_dl, val_dl = acc.prepare(
            model, optimizer, self._loader(train_data, True), self._loader(val_data, False))
        steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum_steps)
        scheduler = build_scheduler(optimizer, cfg, steps_per_epoch * max(cfg.epochs, 1))

        st = {"epoch": 0, "global_step": 0, "history": [], "best": None, "best_epoch": None,
              "train_time_s": 0.0, "wall_time_s": 0.0, "planned_epochs": cfg.epochs,
              "batch_in_epoch": 0, "partial": None, "skipped_steps": 0}
        self._bad = torch.tensor([-1.0, 0.0], device=acc.device)  # (first optimizer step with a NaN/inf loss, loss)
        if cfg.resume:
            self._restore(st, scheduler, steps_per_epoch)
        better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        trainable, total = count_parameters(model), count_parameters(model, trainable_only=False)
        acc.print(f"{self.recipe}: {trainable:,} trainable / {total:,} parameters, {acc.num_processes} process(es), "
                  f"mixed precision {acc.mixed_precision}, run folder {self.run_dir}")

        self._media = MediaLogger(acc, objective, metrics, val_data, enabled=cfg.wandb_mode != "disabled")
        with StopSignals() as self._signals:
            self._epochs(model, objective, optimizer, scheduler, train_dl, val_dl, train_data, metrics, monitor,
                         better, figures, steps_per_epoch, st)
        self._media.log_worst(model, val_dl, st["global_step"])  # W&B table of the lowest-Dice slices
        summary = self._summary(st, monitor, mode, trainable, total, param_budget)
        if acc.is_main_process:
            save_json(self.run_dir / "summary.json", summary)
        tracking.set_summary(acc, summary)
        acc.end_training()
        return st["history"]

    def _epochs(self, model, objective, optimizer, scheduler, train_dl, val_dl, train_data, metrics, monitor,
                better, figures, steps_per_epoch, st) -> None:
        acc = self.accelerator
        while st["epoch"] < st["planned_epochs"]:
            epoch, epoch_start = st["epoch"], time.perf_counter()
            record = self._train_epoch(model, objective, optimizer, scheduler, train_dl, train_data, st)
            results, sample = self.evaluate(model, objective, val_dl, metrics)
            if monitor not in results:
                raise KeyError(f"monitor {monitor!r} is not among the validation results: {sorted(results)}")
            record.update(results)
            st["history"].append(record)
            st["epoch"] = epoch + 1
            if st["best"] is None or better(record[monitor], st["best"]):
                st["best"], st["best_epoch"] = record[monitor], epoch + 1
                state_dict = acc.get_state_dict(model)
                if acc.is_main_process:
                    save_weights(self.run_dir / "best.pth", state_dict)
                    save_safetensors(self.run_dir / "best.safetensors", state_dict)
            acc.log({f"val/{k.removeprefix('val_')}": v for k, v in results.items()}
                    | {"train/epoch_loss": record["train_loss"], "epoch": epoch + 1}, step=st["global_step"])
            self._write_epoch_outputs(st, sample, figures, monitor)
            self._media.log_epoch(sample, st["global_step"])  # W&B mask overlays / reconstruction grid
            st["wall_time_s"] += time.perf_counter() - epoch_start
            self._fit_budget(st, scheduler, steps_per_epoch)
            self._save_state(st, scheduler)
            acc.print(f"epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and isinstance(v, float))
                + (f", {st['skipped_steps']} optimizer steps skipped by the fp16 grad scaler so far"
                   if st["skipped_steps"] else ""))
            signum = self._stop_requested()
            if signum and st["epoch"] < st["planned_epochs"]:
                self._stop(st, scheduler, signum, save=False)

    def _train_epoch(self, model, objective, optimizer, scheduler, train_dl, train_data, st) -> dict:
        cfg, acc = self.cfg, self.accelerator
        epoch, skip, partial = st["epoch"], st["batch_in_epoch"], st["partial"] or {}
        train_dl.set_epoch(epoch)  # the order of epoch e is a function of (seed, e) alone
        loader = train_dl
        if skip:  # resumed inside this epoch: the same order, without the batches already trained on
            loader = acc.skip_first_batches(train_dl, skip)
            loader.set_epoch(epoch)
            _reseed(train_data, (cfg.seed * 1_000_003 + epoch * 10_007 + skip) % 2**31)
        else:
            _reseed(train_data, int(torch.randint(0, 2**31 - 1, ())))  # used when num_workers == 0
        model.train()
        loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=acc.device)
        batches, seen, start = skip, partial.get("seen", 0), time.perf_counter() - partial.get("time_s", 0.0)
        bar = tqdm(total=len(train_dl), initial=skip, desc=f"epoch {epoch + 1}/{st['planned_epochs']}", leave=False,
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        for batch in loader:
            with acc.accumulate(model):
                out = objective(model, batch)
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if acc.sync_gradients and acc.optimizer_step_was_skipped:
                    st["skipped_steps"] += 1  # fp16: the grad scaler found inf/NaN gradients and skipped the step
                elif acc.sync_gradients:
                    scheduler.step()
                    st["global_step"] += 1
                    if st["global_step"] % cfg.log_every == 0:
                        self._log_step(out.loss, scheduler, st)
                optimizer.zero_grad(set_to_none=True)
            self._note_loss(out.loss, st)
            loss_sum += out.loss.detach()
            batches += 1
            seen += out.preds.shape[0] * acc.num_processes
            if acc.sync_gradients and batches < len(train_dl):
                self._step_boundary(st, scheduler, loss_sum, batches, seen, start)
            if batches % 10 == 1 and not bar.disable:  # .item() syncs the device: not every step
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{out.loss.item():.4f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        st["train_time_s"] += elapsed - partial.get("time_s", 0.0)
        st["batch_in_epoch"], st["partial"] = 0, None
        train_loss = acc.reduce(loss_sum / max(batches, 1), reduction="mean").item()
        self._check_finite(st)
        return {"epoch": epoch + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                "time_s": elapsed, "train_images_per_s": seen / elapsed}

    def _log_step(self, loss: torch.Tensor, scheduler, st: dict) -> None:
        self._check_finite(st)
        self.accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0],
                              "train/skipped_steps": st["skipped_steps"]}, step=st["global_step"])

    def _fit_budget(self, st: dict, scheduler, steps_per_epoch: int) -> None:
        """With ``max_minutes``, plan as many epochs as fit the budget and stretch the LR schedule to them."""
        budget_s = self.cfg.max_minutes * 60
        if budget_s <= 0:
            return
        if st["planned_epochs"] <= st["epoch"]:  # the schedule has run out: never restart it
            return
        walls = st.setdefault("epoch_end_walls", [])  # wall time at the end of each epoch, seconds
        walls.append(st["wall_time_s"])
        # the median duration of the last five epochs (training + evaluation) predicts the next ones: it follows a
        # lasting change of speed within three epochs, while one or two slow epochs (a passing load) move it little
        recent = walls[-6:]
        durations = [b - a for a, b in zip(recent, recent[1:])]
        per_epoch = statistics.median(durations) if durations else walls[0] / st["epoch"]
        left = int(max(0.0, budget_s - st["wall_time_s"]) / max(per_epoch, 1e-9))
        fit = max(st["epoch"], min(self.cfg.epochs, st["epoch"] + left))
        fit = int(broadcast_object_list([fit])[0])  # all processes stop together
        if fit != st["planned_epochs"]:
            st["planned_epochs"] = fit
            scheduler.lr_lambdas[0].refit(fit * steps_per_epoch, scheduler.last_epoch)

    def _write_epoch_outputs(self, st: dict, sample: StepOutput | None, figures: FigureFn | None, monitor: str):
        acc = self.accelerator
        if not acc.is_main_process:
            return
        save_json(self.run_dir / "history.json", st["history"])
        paths = {"history": save_figure(plot_history(st["history"]), self.figures_dir / "history.png")}
        if figures is not None and sample is not None:
            for name, fig in figures(sample).items():
                paths[name] = save_figure(fig, self.figures_dir / f"{name}_epoch{st['epoch']:03d}.png")
        tracking.log_images(acc, paths, st["global_step"])

    def _summary(self, st, monitor, mode, trainable, total, budget) -> dict:
        history = st["history"]
        return {
            "recipe": self.recipe, "run_dir": str(self.run_dir), "monitor": monitor, "mode": mode,
            "best_value": st["best"], "best_epoch": st["best_epoch"], "epochs_completed": st["epoch"],
            "trainable_params": trainable, "total_params": total, "param_budget": budget,
            "wall_time_s": st["wall_time_s"], "train_time_s": st["train_time_s"],
            "train_images_per_s": (sum(h["train_images_per_s"] for h in history) / len(history)) if history else None,
            "num_processes": self.accelerator.num_processes, "mixed_precision": self.accelerator.mixed_precision,
            "skipped_steps": st["skipped_steps"],
            "final": history[-1] if history else None,
        }
