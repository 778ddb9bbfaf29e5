"""Stopping a loop over a loader on SIGINT/SIGTERM at a point of the caller's choosing.

Slurm, `timeout(1)` and Ctrl-C signal the whole process group. Loader workers ignore the signals
(`loader.ignore_stop_signals`); the main process, inside `StopRequest`, only records the first one, and the loop
checks `requested` where stopping loses nothing (the trainer after a step, `embed` after a batch). A second signal
exits at once, as a user pressing Ctrl-C twice expects.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set `signum` instead of killing the process.

    `finishing` says what the loop does before it stops ("finishing the current step and saving a checkpoint"),
    `kept` what survives an immediate exit on a second signal ("the last checkpoint is intact"). Outside the main
    thread (where Python cannot install handlers) it does nothing and `requested` stays False.
    """

    def __init__(self, finishing: str, kept: str, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.finishing, self.kept, self.signals = finishing, kept, signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._owner = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a worker forked before its init ran: the main process decides
            return
        name = signal.Signals(signum).name
        if self.signum is not None:
            sys.stderr.write(f"\n{name} again: exiting now ({self.kept})\n")
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        sys.stderr.write(f"\n{name}: {self.finishing} (send it again to exit at once)\n")
        sys.stderr.flush()
