"""What to train in pretrained towers: locking (LiT), unfreezing the last N blocks, frozen norms and BatchNorm
statistics, a learning rate per tower and layer-wise learning-rate decay; LP-FT's probe phase and a restarted
temperature.

Layers of a tower are numbered 0 (everything before the first block: embeddings, stem), 1..L (the blocks), L + 1
(everything after: final norm, pooler). Layer-wise decay gives layer l the scale `decay ** (L + 1 - l)`, so the top
keeps the tower's rate and each step down is `decay` times slower. Frozen parameters get `requires_grad=False` and
never reach the optimizer, so they stay bitwise unchanged (weight decay included).

LP-FT (Kumar et al., 2022, "Fine-tuning can distort pretrained features"): for the first `finetune.probe_steps`
steps only the head trains (the projections, the temperature and a logit bias), so the towers' features meet a
head fitted to the new data rather than a random or stale one; then everything the section allows trains, and the
learning-rate schedule starts again with its warm-up (`phase_lr`). The optimizer holds every parameter the section
allows from the start: in the probe phase the others have `requires_grad=False`, get no gradient, and AdamW leaves
them (and their moments) untouched, so the phase is a function of the step alone and a resume either side of the
switch continues exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import FinetuneConfig, OptimConfig, TowerTrainConfig
from .optim import lr_at, no_weight_decay

TOWERS = ("image", "text")


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The tower's repeated blocks, input to output: its own `blocks()` when it has one, else the longest ModuleList
    (`encoder.layers` of the built-in towers)."""
    if callable(getattr(tower, "blocks", None)):
        return list(tower.blocks())
    lists = [m for m in tower.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def layer_ids(tower: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: layer id}, number of blocks L); ids as in the module docstring."""
    blocks = tower_blocks(tower)
    block_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    ids: dict[str, int] = {}
    seen_block = False
    for name, p in tower.named_parameters():
        if id(p) in block_of:
            ids[name] = block_of[id(p)]
            seen_block = True
        else:
            # registration order: parameters before the first block are the input side, the rest the output side
            ids[name] = len(blocks) + 1 if seen_block else 0
    return ids, len(blocks)


def _force_eval(module: nn.Module, args) -> None:
    # runs before every forward, so the trainer's model.train() cannot switch dropout or BN statistics back on
    if module.training:
        module.eval()


def keep_in_eval_mode(module: nn.Module) -> None:
    if not getattr(module, "_kept_in_eval", False):
        module.register_forward_pre_hook(_force_eval)
        module._kept_in_eval = True


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or "Norm" in type(m).__name__


def configure_tower(tower: nn.Module, cfg: TowerTrainConfig) -> None:
    """Set requires_grad and eval-mode hooks on one tower as `cfg` asks."""
    if cfg.lock:
        tower.requires_grad_(False)
        keep_in_eval_mode(tower)
        return
    if cfg.unlocked_layers >= 0:
        ids, num_blocks = layer_ids(tower)
        for name, p in tower.named_parameters():
            if ids[name] <= num_blocks - cfg.unlocked_layers:
                p.requires_grad_(False)
    if cfg.freeze_norms:
        for m in tower.modules():
            if _is_norm(m):
                m.requires_grad_(False)
    if cfg.freeze_bn_stats:
        for m in tower.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                keep_in_eval_mode(m)


def apply_finetune(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Freeze what `cfg` says, in both towers of a ContrastiveModel (projections and temperature stay trainable),
    and put LoRA adapters where `finetune.<tower>.lora.rank > 0` (see `contrastive.encoders.lora`)."""
    from ..encoders.lora import apply_lora_to_model

    configure_tower(model.image_encoder, cfg.image)
    configure_tower(model.text_encoder, cfg.text)
    apply_lora_to_model(model, cfg)


def lr_scales(model: nn.Module, cfg: FinetuneConfig) -> dict[str, float]:
    """{parameter name: learning-rate multiplier} for every parameter of the model."""
    scales = {name: 1.0 for name, _ in model.named_parameters()}
    for tower_name in TOWERS:
        tc: TowerTrainConfig = getattr(cfg, tower_name)
        tower = getattr(model, f"{tower_name}_encoder")
        ids, num_blocks = layer_ids(tower)
        for name, layer in ids.items():
            scales[f"{tower_name}_encoder.{name}"] = tc.lr_scale * cfg.layer_decay ** (num_blocks + 1 - layer)
    return scales


def finetune_param_groups(model: nn.Module, optim_cfg: OptimConfig, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups by (weight decay, lr scale); the optimizer's lr for a group is `lr * group['lr_scale']`.

    With default fine-tuning settings this is exactly `optim.param_groups` (decay, no_decay)."""
    scales = lr_scales(model, cfg)
    groups: dict[tuple[bool, float], dict] = {
        (True, 1.0): {"params": [], "weight_decay": optim_cfg.weight_decay, "name": "decay", "lr_scale": 1.0},
        (False, 1.0): {"params": [], "weight_decay": 0.0, "name": "no_decay", "lr_scale": 1.0},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not no_weight_decay(name, p)
        key = (decay, round(scales[name], 12))
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": optim_cfg.weight_decay if decay else 0.0,
                           "name": f"{'decay' if decay else 'no_decay'}@{key[1]:.4g}", "lr_scale": key[1]}
        groups[key]["params"].append(p)
    return list(groups.values())


def count_trainable(model: nn.Module) -> dict[str, int]:
    """Trainable / total parameter counts per part (for logging)."""
    parts = {"image_encoder": model.image_encoder, "text_encoder": model.text_encoder}
    out = {}
    for part, module in parts.items():
        out[f"{part}_trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
        out[f"{part}_total"] = sum(p.numel() for p in module.parameters())
    return out


# ----------------------------------------------------------------------------------------------------------------------
# LP-FT and the temperature restart

HEAD = ("image_projection.", "text_projection.", "logit_scale", "logit_bias")  # what the probe phase trains


def is_head(name: str) -> bool:
    return name.startswith(HEAD)


class ProbePhase:
    """Switches a model between LP-FT's probe phase (the head only) and the fine-tune (what `apply_finetune` left
    trainable). Build it after `apply_finetune`: it remembers that choice."""

    def __init__(self, model: nn.Module, probe_steps: int) -> None:
        self.probe_steps = probe_steps
        self.trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        self.probing: bool | None = None

    def apply(self, model: nn.Module, step: int) -> bool:
        """Set requires_grad for the phase of `step` (the steps done); True when that changed what trains."""
        probing = step < self.probe_steps
        if probing == self.probing:
            return False
        for name, p in model.named_parameters():
            p.requires_grad_(self.trainable[name] and (is_head(name) or not probing))
        changed = self.probing is not None
        self.probing = probing
        return changed


def phase_lr(step: int, total_steps: int, optim_cfg: OptimConfig, probe_steps: int = 0) -> float:
    """The learning rate at `step`: one schedule (`lr_at`) over the probe phase, another over the steps after it."""
    if probe_steps <= 0:
        return lr_at(step, total_steps, optim_cfg)
    if step < probe_steps:
        return lr_at(step, probe_steps, optim_cfg)
    return lr_at(step - probe_steps, total_steps - probe_steps, optim_cfg)


def reset_logit_scale(model: nn.Module, scale: float) -> None:
    """Start at temperature scale `scale` (the factor; the model stores its log)."""
    with torch.no_grad():
        model.logit_scale.fill_(math.log(scale))
