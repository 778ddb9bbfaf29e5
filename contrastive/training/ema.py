"""An exponential moving average of a model's weights (the EMA copy evaluated, checkpointed and exported beside the
trained weights).

Every floating-point tensor of the state dict (parameters and buffers such as BatchNorm statistics) is averaged;
integer buffers are copied. The decay warms up as in TensorFlow's `ExponentialMovingAverage(num_updates=...)`:

    decay_n = min(decay, (1 + n) / (10 + n))        n = updates done so far

so the first updates follow the weights closely (0.1, 0.18, 0.25, ...) and the configured decay takes over after
about `1 / (1 - decay)` updates; without warm-up the average would be stuck near the initial weights for that long.
An update runs every `every` optimizer steps, so the decay is per update, not per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def warmup_decay(decay: float, updates: int, warmup: bool = True) -> float:
    """The decay applied at update number `updates` (0-based)."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


class EMA:
    """`ema = EMA(model, decay=0.999)`; after each optimizer step `ema.update(model, step)`; evaluate with
    `with ema.applied_to(model): ...` or take `ema.state_dict_for_model()` as weights."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"EMA update period must be >= 1, got {every}")
        self.decay, self.every, self.warmup = decay, every, warmup
        self.updates = 0
        # fp32 shadows on the model's device; detached copies, never parameters
        self.shadow: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _averaged(self) -> list[str]:
        return [k for k, v in self.shadow.items() if v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> bool:
        """Fold the model's current weights into the average when `step` (optimizer steps done) is a multiple of
        the update period (always when `step` is None); returns whether it did."""
        if step is not None and step % self.every:
            return False
        d = warmup_decay(self.decay, self.updates, self.warmup)
        current = model.state_dict()
        keys = self._averaged()
        # shadow += (1 - d) * (current - shadow), all tensors in one multi-tensor kernel
        torch._foreach_lerp_([self.shadow[k] for k in keys], [current[k].detach() for k in keys], 1.0 - d)
        for k, v in self.shadow.items():
            if not v.is_floating_point():
                v.copy_(current[k])
        self.updates += 1
        return True

    def state_dict_for_model(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's state-dict names (what `model.load_state_dict` takes)."""
        return dict(self.shadow)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the shadows, the update count and the settings."""
        return {"shadow": self.state_dict_for_model(), "updates": self.updates, "decay": self.decay,
                "every": self.every, "warmup": self.warmup}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not fit the model (e.g. {sorted(missing)[0]})")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        self.updates = int(state["updates"])

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run the block with the averaged weights in `model`, then put the trained weights back bitwise."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(saved)
