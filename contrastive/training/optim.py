"""AdamW with parameter groups, and the learning-rate schedule as a pure function."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig

# names of parameters that never get weight decay, besides every parameter with ndim <= 1
_NO_DECAY_NAMES = ("embedding", "class_embedding", "logit_scale", "logit_bias")


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or any(k in name for k in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two groups: matrices with weight decay; biases, norms, embeddings and temperature without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_weight_decay(name, p):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, groups: list[dict] | None = None) -> torch.optim.AdamW:
    groups = groups if groups is not None else param_groups(model, cfg)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = cfg.lr * g["lr_scale"]
    device = next(model.parameters()).device
    # on CPU the fused kernel is used for plain tensors only (sharded DTensor parameters take the foreach path)
    plain = all(type(p) in (torch.Tensor, nn.Parameter) for g in groups for p in g["params"])
    fused = cfg.fused and (device.type == "cuda" or (device.type == "cpu" and plain))
    # both implementations compute the same update; they differ in how many kernels run per step
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None,
                             foreach=None if fused else cfg.foreach)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine to cfg.lr * min_lr_ratio at total_steps."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / decay_steps, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
