"""What a run carries from step to step and into its checkpoints: progress, RNG states, optimizer / scaler / data
state, and the states of model-state hooks (such as a moving average of the weights).

A checkpoint's `meta.json` holds `asdict(progress)` (plus samples seen, the config and the format version);
`state.pt` holds the optimizer, scaler, RNG and data-loader states and, when the run has hooks, `hooks`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..interop.checkpoint import load_state, load_weights, read_meta
from ..config import Config, config_to_dict
from ..data import TrainData
from ..distributed import full_state_dicts, is_sharded, load_full_state_dicts
from ..errors import CheckpointError, error_line
from .step import unwrap

FORMAT_VERSION = 1


@dataclasses.dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # global batches of this epoch already consumed
    best_metric: float = -math.inf
    best_checkpoint: str = ""
    nonfinite_steps: int = 0  # steps skipped for a NaN/inf loss or gradient
    nonfinite_streak: int = 0  # of which in a row, up to `step`
    run_id: str = ""  # names the run in its checkpoints, so rotation deletes only its own ("": not yet named)

    def advance(self, steps_per_epoch: int) -> None:
        """Count one optimizer step, moving to the next epoch after its last batch."""
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


class ModelStateHook(Protocol):
    """State kept beside the weights (e.g. an exponential moving average of them): updated after every optimizer
    step, saved in each checkpoint's `state.pt` and restored on resume."""

    def update(self, model: nn.Module, step: int) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():  # this process's device only: a resume may see a different number of GPUs
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"])


def checkpoint_meta(progress: Progress, cfg: Config) -> dict[str, Any]:
    """`meta.json`: the progress, the samples seen, the resolved config and the format version."""
    meta = dataclasses.asdict(progress)
    meta["best_metric"] = progress.best_metric if math.isfinite(progress.best_metric) else None  # JSON has no inf
    meta["samples_seen"] = progress.step * cfg.train.batch_size
    return {**meta, "config": config_to_dict(cfg), "format_version": FORMAT_VERSION}


def progress_from_meta(meta: dict[str, Any]) -> Progress:
    """The Progress a checkpoint's meta describes (fields it lacks or holds as null keep their defaults)."""
    names = {f.name for f in dataclasses.fields(Progress)}
    return Progress(**{k: v for k, v in meta.items() if k in names and v is not None})


def gather_model_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts to save. For a sharded model a collective (every rank calls it; whole on
    rank 0's CPU); otherwise the live state dicts of the unwrapped model."""
    if is_sharded(model):
        return full_state_dicts(model, optimizer)
    return unwrap(model).state_dict(), optimizer.state_dict()


def training_state(optimizer_state: dict, scaler: torch.amp.GradScaler, train_data: TrainData | None,
                   hooks: dict[str, ModelStateHook]) -> dict[str, Any]:
    """`state.pt`: optimizer, scaler, RNG, data-loader and hook states (tensors and plain containers only)."""
    state: dict[str, Any] = {"optimizer": optimizer_state, "scaler": scaler.state_dict(), "rng": rng_state()}
    if train_data is not None:
        state["data"] = train_data.state_dict()
    if hooks:
        state["hooks"] = {name: hook.state_dict() for name, hook in hooks.items()}
    return state


def first_mismatch(model: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """The first tensor, in the model's order, that the checkpoint lacks or holds in another shape, with both
    shapes; else the first one only the checkpoint has; "" when names and shapes agree."""
    for name, tensor in model.items():
        if name not in saved:
            return f"{name!r} {tuple(tensor.shape)} of this run's model is not in the checkpoint"
        if saved[name].shape != tensor.shape:
            return f"{name!r} is {tuple(saved[name].shape)} in the checkpoint and {tuple(tensor.shape)} in this run's model"
    extra = next((name for name in saved if name not in model), None)
    return f"the checkpoint's {extra!r} {tuple(saved[extra].shape)} is not in this run's model" if extra else ""


def restore(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            train_data: TrainData | None = None, hooks: dict[str, ModelStateHook] | None = None) -> Progress:
    """Load a checkpoint into the run's model, optimizer, scaler, RNG, data loader and hooks; returns its progress.
    A hook the checkpoint has no state for keeps its fresh state."""
    meta, state = read_meta(ckpt), load_state(ckpt)
    weights = load_weights(ckpt)
    if not is_sharded(model) and (mismatch := first_mismatch(unwrap(model).state_dict(), weights)):
        raise CheckpointError(f"cannot resume from {ckpt}: it does not fit this run's model ({mismatch}); resume "
                              "with the config it was saved with")
    try:
        if is_sharded(model):
            load_full_state_dicts(model, optimizer, weights, state["optimizer"])
        else:
            model.load_state_dict(weights)
            optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        for name, hook in (hooks or {}).items():
            if name in state.get("hooks", {}):
                hook.load_state_dict(state["hooks"][name])
    except (RuntimeError, ValueError, KeyError) as e:  # another model, optimizer layout or precision
        raise CheckpointError(f"cannot resume from {ckpt}: it does not fit this run's model, optimizer or "
                              f"precision ({error_line(e) or type(e).__name__}); resume with the config it was "
                              "saved with") from None
    set_rng_state(state["rng"])
    if train_data is not None and "data" in state:
        train_data.load_state_dict(state["data"])
    return progress_from_meta(meta)
