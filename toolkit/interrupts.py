"""SIGTERM, SIGUSR1 and Ctrl-C during training: finish the current step, save a state, exit cleanly.

The handler only sets a flag; the Trainer looks at it at each optimizer-step boundary,
saves a resumable state there and leaves with :class:`TrainingStopped`, a ``SystemExit``
whose code is 0 after SIGTERM or SIGUSR1 (a scheduler asked the job to stop, or warns of its
time limit as SLURM's ``sbatch --signal=USR1@120`` does; the work is saved) and 130 after
Ctrl-C (the shell convention for SIGINT). A second Ctrl-C while the flag is already set
stops at once with ``KeyboardInterrupt`` (the previous state stays intact).
:class:`RunGuard` bundles these handlers with the NaN/inf loss check for one ``fit``.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from .state_folders import find_state
from .state import TrainState

__all__ = ["StopSignals", "RunGuard", "TrainingStopped", "EXIT_CODES"]

# process exit status after the state is saved (no SIGUSR1 on Windows)
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130} | ({signal.SIGUSR1: 0} if hasattr(signal, "SIGUSR1") else {})


class TrainingStopped(SystemExit):
    """Raised by the Trainer after it saved a state on SIGTERM/SIGUSR1/SIGINT; ``code`` is the exit status."""


class StopSignals:
    """Context manager that turns SIGTERM/SIGUSR1/SIGINT into a flag (``received``: the signal number or None).

    Installs handlers only in the main thread (Python allows no other); elsewhere it is inert.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, the last saved state is kept
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class RunGuard:
    """The watchdogs of one :meth:`~toolkit.trainer.Trainer.fit`: SIGTERM/SIGUSR1/SIGINT and NaN/inf losses.

    A context manager (the signal handlers live while it is entered). Call every method at the
    same points on every process: with several processes they are collectives.
    """

    def __init__(self, accelerator, log_every: int) -> None:
        self.accelerator, self.log_every = accelerator, log_every
        self.signals = StopSignals()
        # (first optimizer step with a NaN/inf loss, that loss); step -1 = none so far. Shape (2,), float32.
        self.bad = torch.tensor([-1.0, 0.0], device=accelerator.device)

    def __enter__(self) -> "RunGuard":
        self.signals.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.signals.__exit__(*exc)

    def stop_requested(self, global_step: int | None = None) -> int | None:
        """The signal every process agrees was received (SIGTERM/SIGUSR1/SIGINT), or None.

        With several processes this is a collective; inside an epoch (``global_step`` given) it runs
        only every ``log_every`` optimizer steps, so that it costs no device sync per step.
        """
        acc = self.accelerator
        received = self.signals.received or 0
        if acc.num_processes > 1:
            if global_step is not None and global_step % self.log_every:
                return None
            received = int(acc.reduce(torch.tensor(received, device=acc.device), reduction="sum").item() > 0) and (
                received or int(signal.SIGTERM))
        return received or None

    def note_loss(self, loss: torch.Tensor, global_step: int) -> None:
        """Remember (on the device, no sync) the first optimizer step whose loss was NaN/inf.

        loss: a scalar tensor (any float dtype, any value); global_step: the optimizer step it belongs to.
        """
        bad = self.bad
        # torch.full fills on the device; torch.tensor(x, device=cuda) would copy from the host and wait for the GPU
        step = torch.full((), float(global_step), device=bad.device)
        now = torch.stack([step, loss.detach().float().reshape(())])
        self.bad = torch.where(~torch.isfinite(now[1]) & (bad[0] < 0), now, bad)

    def check_finite(self, state: TrainState, run_dir: Path) -> None:
        """Raise FloatingPointError when a loss so far was NaN/inf, naming the step and the last good state.

        All processes take part (so that all stop together).
        """
        bad = self.bad
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.gather(bad[None])  # (processes, 2)
            hit = flags[flags[:, 0] >= 0]
            bad = hit[0] if len(hit) else bad
        step, value = bad.tolist()
        if step < 0:
            return
        last = find_state(run_dir)
        where = (f"the last good state is {last} and was kept intact; lower --lr or check the data, then continue "
                 "from it with --resume" if last else "no state was saved yet, so nothing can be resumed: lower "
                 "--lr or check the data, then start again (another --run-name, or delete the run folder)")
        raise FloatingPointError(
            f"training loss became {value} at optimizer step {int(step)} (epoch {state.epoch + 1}); {where}")

    def leave(self, signum: int, saved: Path | None, global_step: int) -> None:
        """After a state was saved (``saved``) on signal ``signum``: end training, raise :class:`TrainingStopped`."""
        code = EXIT_CODES.get(signum, 0)
        self.accelerator.print(f"received signal {signum}: saved {saved} at optimizer step {global_step}; "
                               f"exiting with status {code}. Continue with --resume.")
        self.accelerator.end_training()
        raise TrainingStopped(code)
