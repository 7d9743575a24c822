"""Run-folder, checkpoint and resume logic of the :class:`~toolkit.trainer.Trainer` (a mixin).

States are saved every ``checkpoint_every`` optimizer steps and at the end of every
epoch into ``state/step-XXXXXXXX/`` (see :mod:`toolkit.checkpoint`); ``--resume`` loads
the newest one after refusing any file that carries code. A state saved inside an epoch
records how many batches of that epoch were done; the resumed run skips exactly those
(Accelerate's ``skip_first_batches`` over the same seeded per-epoch order).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from .checkpoint import STATE_MARKER, check_state_files, find_state, load_state_file, save_training_state
from .config import ConfigError
from .interrupts import EXIT_CODES, TrainingStopped

__all__ = ["ResumeMixin"]


class ResumeMixin:
    """Needs ``self.cfg``, ``self.recipe``, ``self.accelerator`` (and ``self.run_dir`` once resolved)."""

    # ------------------------------------------------------------------ run folder
    def _resolve_run_dir(self) -> Path:
        cfg, root = self.cfg, Path(self.cfg.output_dir)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"output_dir {root} exists and is not a folder")
        name = cfg.run_name
        if not name and cfg.resume:
            runs = sorted((p for p in root.glob(f"{self.recipe}-*") if find_state(p)), key=lambda p: p.name)
            if not runs:
                raise ConfigError(f"--resume: no run of {self.recipe!r} with a saved state under {root}/")
            name = runs[-1].name
        elif not name:
            name = f"{self.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        box = [name]
        broadcast_object_list(box)  # every process agrees on the main process's name
        run_dir = root / box[0]
        if cfg.resume and find_state(run_dir) is None:
            raise ConfigError(f"--resume: {run_dir} holds no complete state/ to resume from")
        if not cfg.resume and find_state(run_dir) is not None:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --run-name")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            if self.accelerator.is_main_process:  # prove it is writable before any training starts
                fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=run_dir)
                os.close(fd)
                os.unlink(probe)
        except OSError as err:
            raise ConfigError(f"output_dir: cannot create or write the run folder {run_dir}: {err}") from err
        return run_dir

    # ------------------------------------------------------------------ save / load
    def _save_state(self, st: dict, scheduler) -> Path:
        """Save a resumable state now (all processes); the newest ``keep_states`` are kept."""
        return save_training_state(self.accelerator, self.run_dir, st, extra={"scheduler": scheduler.state_dict()},
                                   keep=self.cfg.keep_states)

    def _restore(self, st: dict, scheduler, steps_per_epoch: int) -> None:
        """Load the newest state of the run into the prepared objects and ``st``."""
        cfg, acc = self.cfg, self.accelerator
        state_dir = find_state(self.run_dir)
        check_state_files(state_dir)  # refuses pickles that carry code before anything else reads them
        if (state_dir / "custom_checkpoint_0.pkl").is_file():  # a state of the older layout (checked above)
            acc.register_for_checkpointing(scheduler)
        acc.load_state(str(state_dir))
        if (state_dir / "scheduler.pt").is_file():
            scheduler.load_state_dict(load_state_file(state_dir / "scheduler.pt"))
        st.update(json.loads((state_dir / STATE_MARKER).read_text()))
        if cfg.max_minutes <= 0 and st["planned_epochs"] != cfg.epochs:  # --epochs changed: refit the schedule
            st["planned_epochs"] = cfg.epochs
            scheduler.lr_lambdas[0].refit(steps_per_epoch * max(cfg.epochs, 1), scheduler.last_epoch)
        where = f"after epoch {st['epoch']}"
        if st.get("batch_in_epoch"):
            where += f" and {st['batch_in_epoch']} batches of epoch {st['epoch'] + 1}"
        acc.print(f"resumed {self.run_dir} from {state_dir} {where} (optimizer step {st['global_step']})")

    def _step_boundary(self, st, scheduler, loss_sum, batches, seen, start) -> None:
        """Inside an epoch, after an optimizer step: save every ``checkpoint_every`` steps; obey SIGTERM/SIGINT."""
        every, signum = self.cfg.checkpoint_every, self._stop_requested(st)
        due = every > 0 and (st["global_step"] + st["skipped_steps"]) % every == 0
        if not (due or signum):
            return
        st["batch_in_epoch"] = batches
        st["partial"] = {"loss_sum": self.accelerator.reduce(loss_sum, reduction="mean").item(), "seen": seen,
                         "time_s": time.perf_counter() - start}
        if signum:
            self._stop(st, scheduler, signum)
        self._check_finite(st)  # never save a state after a NaN/inf loss
        self._save_state(st, scheduler)

    # ------------------------------------------------------------------ guards
    def _stop_requested(self, st: dict | None = None) -> int | None:
        """The signal every process agrees was received (SIGTERM/SIGINT), or None.

        With several processes this is a collective; inside an epoch (``st`` given) it runs only
        every ``log_every`` optimizer steps, so that it costs no device sync per step.
        """
        received = self._signals.received or 0
        if self.accelerator.num_processes > 1:
            if st is not None and st["global_step"] % self.cfg.log_every:
                return None
            received = int(self.accelerator.reduce(torch.tensor(received, device=self.accelerator.device),
                                                   reduction="sum").item() > 0) and (received or 15)
        return received or None

    def _stop(self, st: dict, scheduler, signum: int, save: bool = True) -> None:
        """Save a state at this step boundary (unless just saved) and leave with the signal's exit code."""
        self._check_finite(st)
        path = self._save_state(st, scheduler) if save else find_state(self.run_dir)
        code = EXIT_CODES.get(signum, 0)
        self.accelerator.print(f"received signal {signum}: saved {path} at optimizer step {st['global_step']}; "
                               f"exiting with status {code}. Continue with --resume.")
        self.accelerator.end_training()
        raise TrainingStopped(code)

    def _note_loss(self, loss: torch.Tensor, st: dict) -> None:
        """Remember (on the device, no sync) the first optimizer step whose loss was NaN/inf."""
        bad = self._bad
        now = torch.stack([torch.tensor(float(st["global_step"]), device=bad.device), loss.detach().float()])
        self._bad = torch.where(~torch.isfinite(now[1]) & (bad[0] < 0), now, bad)

    def _check_finite(self, st: dict) -> None:
        """Raise FloatingPointError when a loss so far was NaN/inf, naming the step and the last good state.

        All processes take part (so that all stop together); call at the same points on every process.
        """
        bad = self._bad
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.gather(bad[None])  # (processes, 2)
            hit = flags[flags[:, 0] >= 0]
            bad = hit[0] if len(hit) else bad
        step, value = bad.tolist()
        if step < 0:
            return
        last = find_state(self.run_dir)
        raise FloatingPointError(
            f"training loss became {value} at optimizer step {int(step)} (epoch {st['epoch'] + 1}); "
            f"the last good state is {last or 'none (no state saved yet)'} and was kept intact; "
            f"lower --lr or check the data, then continue from it with --resume")
