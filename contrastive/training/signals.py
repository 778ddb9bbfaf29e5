"""Graceful stop on SIGINT/SIGTERM.

The first signal only sets a flag: the trainer finishes the step it is in, writes a checkpoint and raises
`Interrupted` (the CLI exits with 128 + signal number, as a shell does). A second signal exits at once: checkpoints are
written atomically, so the worst case is losing the steps since the last one.

Slurm, `timeout(1)` and Ctrl-C signal the whole process group. DataLoader workers ignore SIGINT/SIGTERM (their
`worker_init_fn`, `data.loader.init_worker`; torch's own worker handler would otherwise die of SIGTERM and
end the run with "DataLoader worker ... is killed by signal") and leave the decision to the main process; they exit
by themselves when it is gone. Catching the worker's death in the loop instead would not do: torch reports it from
a SIGCHLD handler, anywhere in the main thread, mid-optimizer-step included.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import torch

from ..distributed import DistInfo

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class GracefulStop:
    """Context manager: while active, SIGINT/SIGTERM request a stop instead of killing the process.

    Outside the main thread (where Python cannot install handlers) it does nothing and `requested` stays False.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._owner = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:  # a forked worker: the main process decides
            return
        name = signal.Signals(signum).name
        if self.signum is not None:
            sys.stderr.write(f"\n{name} again: exiting now without saving (the last checkpoint is intact)\n")
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        sys.stderr.write(f"\n{name}: finishing the current step and saving a checkpoint "
                         f"(send it again to exit at once)\n")
        sys.stderr.flush()

    def any_rank(self, info: DistInfo, device: torch.device) -> bool:
        """Whether any process was asked to stop (collective: every rank must call it at the same step)."""
        if not info.enabled:
            return self.requested
        import torch.distributed as dist

        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.signum is None:
            self.signum = signal.SIGTERM  # another rank got it; stop the same way
        return flag.item() > 0
