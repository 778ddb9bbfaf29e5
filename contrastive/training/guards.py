"""Guards for the ways a long run goes wrong: non-finite steps, failed checkpoint writes, inputs that cannot work.

- `step_if_finite` replaces `scaler.step(optimizer)`: a step whose loss or gradient norm is NaN/inf changes neither
  the weights nor the optimizer state. With a fused optimizer (AdamW `fused=True`, the default on CUDA) the skip
  happens on the device, without a host sync; otherwise it costs one scalar `.item()` per step, which GradScaler
  already pays in fp16 and which costs nothing on the CPU.
- `NonFiniteGuard` counts skipped steps on the device and is read only when the trainer syncs anyway (logging,
  checkpoints), so N skipped steps in a row stop the run at the next such point.
- `save_or_report` turns a failed checkpoint write into one line, then stops or continues as configured.
- `check_inputs` runs the file-system checks that config validation cannot, before a run directory is created.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from ..interop.checkpoint import latest_checkpoint
from ..config import Config
from ..model import check_encoder_settings
from ..errors import CheckpointError, CheckpointWriteError, ConfigError, DataError


def step_if_finite(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor,
                   grad_norm: torch.Tensor) -> torch.Tensor:
    """`scaler.step(optimizer); scaler.update()`, skipped when the loss or the (unscaled) gradient norm is not finite.

    Call after `scaler.unscale_(optimizer)`. Returns the finite flag, a 0-dim bool tensor on the loss's device.
    """
    finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.detach())  # ()
    if not scaler.is_enabled() and getattr(optimizer, "_step_supports_amp_scaling", False):
        # fused kernels read `found_inf` on the device: they skip the update and undo the step count themselves
        optimizer.found_inf = (~finite).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif finite.item():
        scaler.step(optimizer)
    # after unscale_ the scaler has its own inf check recorded, so update() is valid even when the step was skipped:
    # an fp16 overflow lowers the scale as usual, a NaN loss with finite gradients leaves it alone
    scaler.update()
    return finite


class NonFiniteGuard:
    """Counts skipped (non-finite) steps on the device; `check` syncs and reports a run of `max_in_row` of them."""

    def __init__(self, max_in_row: int, device: torch.device, total: int = 0, streak: int = 0) -> None:
        self.max_in_row = max_in_row
        self.total = torch.tensor(total, device=device)  # skipped steps in the whole run
        self.streak = torch.tensor(streak, device=device)  # skipped steps in a row, up to now
        self.tripped_at = torch.tensor(0, device=device)  # first step at which the streak reached max_in_row

    def record(self, finite: torch.Tensor, step: int) -> None:
        """`finite`: the flag of the step just taken (numbered `step`, 1-based). No host sync."""
        bad = (~finite).long()
        self.total += bad
        self.streak.add_(1).mul_(bad)
        hit = (self.streak >= self.max_in_row) & (self.tripped_at == 0)
        self.tripped_at = torch.where(hit, torch.full_like(self.tripped_at, step), self.tripped_at)

    def counts(self) -> tuple[int, int]:
        """(total skipped, current streak): a host sync."""
        return int(self.total.item()), int(self.streak.item())

    def failure(self, last_good: Path | None) -> str | None:
        """The message that stops the run, or None (a host sync)."""
        step = int(self.tripped_at.item())
        if step == 0:
            return None
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written before it"
        return (f"{self.max_in_row} steps in a row had a NaN/inf loss or gradient (steps {step - self.max_in_row + 1}-"
                f"{step}, skipped); {where}; lower optim.lr, check the data or use train.precision=fp32/bf16, then "
                f"resume (train.resume=true) or raise train.max_nan_steps")


def save_or_report(write: Callable[[], Path], step: int, checkpoint_dir: Path, on_error: str, final: bool) -> Path | None:
    """Run `write()` (a checkpoint save). On a failed write: one line naming the intact previous checkpoint, then
    raise CheckpointError (`on_error == "stop"`, or the final checkpoint) or warn and return None (`"continue"`)."""
    try:
        return write()
    except CheckpointWriteError as e:
        previous = latest_checkpoint(checkpoint_dir)
        intact = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        msg = f"step {step}: {e}; {intact}"
        if on_error == "stop" or final:
            raise CheckpointError(f"{msg}; free space or fix permissions, then rerun with train.resume=true") from None
        print(f"warning: {msg}; training continues (train.on_checkpoint_error=continue)", file=sys.stderr, flush=True)
        return None


def parse_device(spec: str, key: str = "train.device") -> torch.device:
    """`cpu`, `cuda` or `cuda:N` (a GPU that exists) as a torch.device; anything else is a ConfigError naming `key`.
    (`auto` is resolved by the caller.)"""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ConfigError(f"{key}={spec!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={spec} asks for CUDA but no GPU is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={spec}: there is no GPU {device.index} ({torch.cuda.device_count()} visible)")
    return device


_TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".json", ".parquet")


def check_inputs(cfg: Config) -> None:
    """Local data tables must exist; other sources (hub ids, shard patterns, HF dirs) are checked by their loaders."""
    sources = [("data.train", s) for s in cfg.data.train_sources()] + [("data.val", cfg.data.val_source())]
    for key, source in sources:
        if source is None:
            continue
        path, fmt = source.path, source.format
        local = fmt in ("csv", "tsv", "jsonl", "parquet") or (fmt == "" and path.lower().endswith(_TABLE_SUFFIXES))
        if path and local and "://" not in path and not Path(path).exists():
            raise DataError(f"{key}: file not found: {path} (paths are relative to the working directory)")
    check_encoder_settings(cfg.model)
