"""SIGTERM and Ctrl-C during training: finish the current step, save a state, exit cleanly.

The handler only sets a flag; the Trainer looks at it at each optimizer-step boundary,
saves a resumable state there and leaves with :class:`TrainingStopped`, a ``SystemExit``
whose code is 0 after SIGTERM (a scheduler asked the job to stop; the work is saved) and
130 after Ctrl-C (the shell convention for SIGINT). A second Ctrl-C while the flag is
already set stops at once with ``KeyboardInterrupt`` (the previous state stays intact).
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals", "TrainingStopped", "EXIT_CODES"]

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}  # process exit status after the state is saved


class TrainingStopped(SystemExit):
    """Raised by the Trainer after it saved a state on SIGTERM/SIGINT; ``code`` is the exit status."""


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into a flag (``received``: the signal number or None).

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
