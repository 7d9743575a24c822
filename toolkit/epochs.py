"""The epochs of :meth:`Trainer.fit <toolkit.trainer.Trainer.fit>`: train the batches, save resumable states at
step boundaries and epoch ends, validate, keep the best weights, fit the plan to a time budget, write history and
figures.

:class:`EpochSteps` is the part of :class:`~toolkit.trainer.Trainer` that runs once its fit has prepared the
loop (``trainer.loop``, a :class:`~toolkit.loop.FitLoop`); the Trainer inherits it. Tensors: a batch is what the
recipe's objective takes; losses are scalars; the figures' sample is a StepOutput of up to 16 samples on the CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from . import tracking
from .callbacks import call_hook
from .checkpoint import json_safe, save_json, save_safetensors, save_weights
from .config import TrainConfig
from .figures import plot_history, save_figure
from .loop import FitLoop
from .objectives import StepOutput
from .runs import save_state
from .state import TrainState, note_patience, plan_epochs
from .state_folders import find_state

__all__ = ["EpochSteps", "HISTORY_EVERY"]

HISTORY_EVERY = 10  # epochs between redraws of figures/history.png (also drawn with the sample figures)


class EpochSteps:
    """The epoch loop of a fit, for the :class:`~toolkit.trainer.Trainer` that inherits it: it reads the Trainer's
    ``cfg``, ``accelerator``, ``loop``, ``run_dir``, ``figures_dir`` and ``evaluate``."""

    cfg: TrainConfig
    accelerator: Accelerator
    loop: FitLoop
    run_dir: Path
    figures_dir: Path

    def _epochs(self, state: TrainState) -> None:
        cfg, acc, loop = self.cfg, self.accelerator, self.loop
        while state.more_epochs:
            epoch, epoch_start = state.epoch, time.perf_counter()
            record = self._train_epoch(state)
            state.history.append(record)
            state.epoch = epoch + 1
            due = loop.val_dl is not None and (state.epoch % cfg.eval_every == 0
                                               or state.epoch >= state.planned_epochs)  # eval_every >= 1
            sample = self._validate(state, record) if due else None
            acc.log({"train/epoch_loss": record["train_loss"], "epoch": state.epoch}, step=state.global_step)
            drawn = due and (state.best_epoch == state.epoch or not state.more_epochs)  # a new best.pth, or the end
            self._write_epoch_outputs(state, sample if drawn else None, drawn or state.epoch % HISTORY_EVERY == 0)
            call_hook(loop.callbacks, "on_epoch_end", self, state, record, sample)
            state.wall_time_s += time.perf_counter() - epoch_start
            self._fit_budget(state)
            if not drawn and not state.more_epochs:  # the plan ends here (its end, or the time budget's): last figures
                late = time.perf_counter()
                if loop.val_dl is None:  # no validation: the last weights are the run's model
                    self._save_best(state)
                elif not due:
                    sample = self._validate(state, record)
                self._write_epoch_outputs(state, sample, True)
                state.wall_time_s += time.perf_counter() - late
            self._save(state)
            acc.print(f"epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and isinstance(v, float))
                + (f", {state.skipped_steps} optimizer steps skipped by the fp16 grad scaler so far"
                   if state.skipped_steps else ""))
            signum = loop.guard.stop_requested()
            if signum and state.more_epochs:
                self._stop(state, signum, save=False)

    def _validate(self, state: TrainState, record: dict) -> StepOutput | None:
        """Evaluate on the validation set after epoch ``state.epoch``: its results go into ``record``; a better
        monitored value saves best.pth; early stopping counts it. Returns the figures' sample."""
        acc, loop = self.accelerator, self.loop
        results, sample = self.evaluate(loop.eval_model, loop.objective, loop.val_dl, loop.metrics)
        if loop.monitor not in results:
            raise KeyError(f"monitor {loop.monitor!r} is not among the validation results: {sorted(results)}")
        record.update(results)
        if loop.better(record[loop.monitor], state.best):
            state.best = record[loop.monitor]
            self._save_best(state)
        note_patience(state, record[loop.monitor], loop.monitor, loop.mode, self.cfg.patience, self.cfg.min_delta)
        acc.log({f"val/{k.removeprefix('val_')}": v for k, v in results.items()}, step=state.global_step)
        return sample

    def _save_best(self, state: TrainState) -> None:
        """best.pth and best.safetensors: the weights after epoch ``state.epoch`` (the moving average where there
        is one), written atomically by the main process; ``state.best_epoch`` becomes that epoch."""
        acc, loop = self.accelerator, self.loop
        state.best_epoch = state.epoch
        state_dict = loop.ema.module.state_dict() if loop.ema else acc.get_state_dict(loop.model)
        if acc.is_main_process:
            save_weights(self.run_dir / "best.pth", state_dict)
            save_safetensors(self.run_dir / "best.safetensors", state_dict)

    def _train_epoch(self, state: TrainState) -> dict:
        cfg, acc, loop = self.cfg, self.accelerator, self.loop
        model, optimizer, scheduler, train_dl = loop.model, loop.optimizer, loop.scheduler, loop.train_dl
        epoch, skip, partial = state.epoch, state.batch_in_epoch, state.partial or {}
        train_dl.set_epoch(epoch)  # the order of epoch e is a function of (seed, e) alone
        loop.train_data.set_epoch(epoch)  # and so is each sample's augmentation
        loader = train_dl
        if skip:  # resumed inside this epoch: the same order and augmentation, without the batches already done
            loader = acc.skip_first_batches(train_dl, skip)
            loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=acc.device)
        batches, seen, start = skip, partial.get("seen", 0), time.perf_counter() - partial.get("time_s", 0.0)
        bar = tqdm(total=len(train_dl), initial=skip, desc=f"epoch {epoch + 1}/{state.planned_epochs}", leave=False,
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        for batch in loader:
            with acc.accumulate(model):
                out = loop.objective(model, batch)
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if acc.sync_gradients and acc.optimizer_step_was_skipped:
                    state.skipped_steps += 1  # fp16: the grad scaler found inf/NaN gradients and skipped the step
                elif acc.sync_gradients:
                    scheduler.step()
                    if loop.ema is not None:
                        loop.ema.update()
                    state.global_step += 1
                    if state.global_step % cfg.log_every == 0:
                        self._log_step(out.loss, state)
                optimizer.zero_grad(set_to_none=True)
            loop.guard.note_loss(out.loss, state.global_step)
            loss_sum += out.loss.detach()
            batches += 1
            seen += out.preds.shape[0] * acc.num_processes
            if acc.sync_gradients and batches < len(train_dl):
                self._step_boundary(state, loss_sum, batches, seen, start)
            if batches % 10 == 1 and not bar.disable:  # .item() syncs the device: not every step
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{out.loss.item():.4f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        state.train_time_s += elapsed - partial.get("time_s", 0.0)
        state.batch_in_epoch, state.partial = 0, None
        train_loss = acc.reduce(loss_sum / max(batches, 1), reduction="mean").item()
        loop.guard.check_finite(state, self.run_dir)
        return {"epoch": epoch + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                "time_s": elapsed, "train_images_per_s": seen / elapsed}

    def _log_step(self, loss: torch.Tensor, state: TrainState) -> None:
        """Every process: W&B's ``train/loss`` is the mean of the processes' last batch losses (scalar), so that
        it is the loss of the whole step's batch whatever the number of processes, not the main process's share."""
        self.loop.guard.check_finite(state, self.run_dir)
        loss = self.accelerator.reduce(loss.detach().float().reshape(()), reduction="mean")
        self.accelerator.log({"train/loss": loss.item(), "train/lr": self.loop.scheduler.get_last_lr()[0],
                              "train/skipped_steps": state.skipped_steps}, step=state.global_step)

    def _step_boundary(self, state: TrainState, loss_sum: torch.Tensor, batches: int, seen: int,
                       start: float) -> None:
        """Inside an epoch, after an optimizer step: save every ``checkpoint_every`` steps; obey SIGTERM/SIGINT."""
        every, signum = self.cfg.checkpoint_every, self.loop.guard.stop_requested(state.global_step)
        due = every > 0 and (state.global_step + state.skipped_steps) % every == 0
        if not (due or signum):
            return
        state.batch_in_epoch = batches
        state.partial = {"loss_sum": self.accelerator.reduce(loss_sum, reduction="mean").item(), "seen": seen,
                         "time_s": time.perf_counter() - start}
        if signum:
            self._stop(state, signum)
        self.loop.guard.check_finite(state, self.run_dir)  # never save a state after a NaN/inf loss
        self._save(state)

    def _save(self, state: TrainState) -> Path:
        return save_state(self.accelerator, self.run_dir, state, self.loop.scheduler, self.cfg.keep_states,
                          self.loop.ema)

    def _stop(self, state: TrainState, signum: int, save: bool = True) -> None:
        """Save a state at this step boundary (unless just saved) and leave with the signal's exit code."""
        self.loop.guard.check_finite(state, self.run_dir)
        path = self._save(state) if save else find_state(self.run_dir)
        self.loop.guard.leave(signum, path, state.global_step)

    def _fit_budget(self, state: TrainState) -> None:
        """With ``max_minutes``, plan as many epochs as fit the budget and stretch the LR schedule to them."""
        budget_s = self.cfg.max_minutes * 60
        if budget_s <= 0 or state.planned_epochs <= state.epoch:  # no budget, or the plan has run out
            return
        fit = int(broadcast_object_list([plan_epochs(state, self.cfg.epochs, budget_s)])[0])  # all stop together
        if fit != state.planned_epochs:
            state.planned_epochs = fit
            done = self.loop.scheduler.last_epoch  # steps so far (at another pace before a resume that changed it)
            self.loop.schedule.refit(done + (fit - state.epoch) * self.loop.steps_per_epoch, done)

    def _write_epoch_outputs(self, state: TrainState, sample: StepOutput | None, draw_history: bool) -> None:
        """history.json; history.png when ``draw_history``; the recipe's figures of ``sample`` unless None."""
        acc, figures = self.accelerator, self.loop.figures
        if not acc.is_main_process:
            return
        save_json(self.run_dir / "history.json", json_safe(state.history))  # the state keeps NaN (resume reads it)
        paths = {}
        if draw_history:
            paths["history"] = save_figure(plot_history(state.history), self.figures_dir / "history.png")
        if figures is not None and sample is not None:
            for name, fig in figures(sample).items():
                paths[name] = save_figure(fig, self.figures_dir / f"{name}_epoch{state.epoch:03d}.png")
        if paths:
            tracking.log_images(acc, paths, state.global_step)
