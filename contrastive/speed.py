"""Run-time switches that make the train step faster without changing what it computes.

Each switch has a config key and is measured on and off by `scripts/bench.py`:

- `train.fused_qkv`: q/k/v of the built-in towers as one GEMM (`set_fused_qkv`); parameter names are unchanged.
- `train.pooled_last_block`: the last block of the built-in towers computes only the pooled token
  (`set_pooled_last_block`); the features are the same.
- `train.compile`: `torch.compile` of the model forward and the loss together (`training.step.step_loss_fn`).
- `optim.fused` / `optim.foreach`: AdamW's fused kernel (CUDA and CPU) or its multi-tensor path (`training.optim`).
"""

from __future__ import annotations

from torch import nn

from .encoders.transformer import Attention, Encoder


def set_fused_qkv(model: nn.Module, enable: bool = True) -> int:
    """Switch every built-in attention layer of `model` to (or from) the fused q/k/v GEMM; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for m in layers:
        m.fused_qkv = enable
    return len(layers)


def set_pooled_last_block(model: nn.Module, enable: bool = True) -> int:
    """Let every built-in encoder of `model` compute only the pooled token in its last block (or the full
    sequence); returns how many encoders were switched."""
    encoders = [m for m in model.modules() if isinstance(m, Encoder)]
    for m in encoders:
        m.pooled_last_block = enable
    return len(encoders)
