"""Graceful stop on SIGINT/SIGTERM.

The first signal only sets a flag: the trainer finishes the step it is in, writes a checkpoint and raises
`Interrupted` (the CLI exits with 128 + signal number, as a shell does). A second signal exits at once: checkpoints are
written atomically, so the worst case is losing the steps since the last one.

Slurm, `timeout(1)` and Ctrl-C signal the whole process group (the handler: `data.stopping.StopRequest`).
DataLoader workers ignore SIGINT/SIGTERM (their `worker_init_fn`, `data.loader.init_worker`; torch's own worker
handler would otherwise die of SIGTERM and end the run with "DataLoader worker ... is killed by signal") and leave the
decision to the main process; they exit by themselves when it is gone. Catching the worker's death in the loop
instead would not do: torch reports it from a SIGCHLD handler, anywhere in the main thread, mid-optimizer-step
included.
"""

from __future__ import annotations

import signal

import torch

from ..data.stopping import StopRequest
from ..distributed import DistInfo


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class GracefulStop(StopRequest):
    """The trainer's `StopRequest`: the step in flight finishes and a checkpoint is saved; across ranks, any rank's
    request stops them all at the same step (`any_rank`)."""

    def __init__(self) -> None:
        super().__init__("finishing the current step and saving a checkpoint",
                         "without saving; the last checkpoint is intact")

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
