"""Low-rank adapters (LoRA) on the towers, through the `peft` library.

`finetune.<tower>.lora.rank > 0` replaces the tower's targeted linear layers by peft's LoRA layers
(`W x + (alpha / rank) * B A x`, with A (rank, in) and B (out, rank), B starting at zero so training starts from the
unchanged model) and freezes every other weight of the tower; the projections and the temperature outside the
towers stay trainable. The state dict then holds peft's names (`...q_proj.base_layer.weight`,
`...q_proj.lora_A.default.weight`), so a checkpoint is rebuilt by building the model, applying the same LoRA
settings (they are in its saved config) and loading the weights. `merge_lora` folds the adapters into plain
weights under the original names, which is what exports write.

Default targets: the attention projections the tower has, by name: `q_proj k_proj v_proj out_proj` (the built-in
towers, CLIP, SigLIP), `query key value` (BERT, MiniLM, ViT, DINOv2) or `qkv` (timm ViTs).
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

TOWERS = ("image", "text")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "query", "key", "value", "qkv")


def lora_enabled(finetune_cfg) -> bool:
    """Whether either tower of a `FinetuneConfig` asks for adapters."""
    return any(getattr(finetune_cfg, t).lora.rank > 0 for t in TOWERS)


def target_modules(tower: nn.Module, lora_cfg) -> list[str]:
    """Module names (suffixes, peft's matching) the adapters go on: `lora_cfg.target_modules`, or the attention
    projections found in the tower. ConfigError when nothing in the tower matches."""
    names = {name.rsplit(".", 1)[-1] for name, m in tower.named_modules() if isinstance(m, nn.Linear)}
    wanted = list(lora_cfg.target_modules) or [n for n in ATTENTION_PROJECTIONS if n in names]
    every = {name.rsplit(".", 1)[-1] for name, _ in tower.named_modules()}
    missing = [n for n in wanted if n not in every]
    if not wanted or missing:
        linear = ", ".join(sorted(names)[:8])
        what = f"no module named {missing[0]!r}" if missing else "no attention projection found by name"
        raise ConfigError(f"lora on {type(tower).__name__}: {what}; set lora.target_modules to some of its linear "
                          f"layers ({linear})")
    return wanted


def apply_lora(tower: nn.Module, lora_cfg) -> int:
    """Put LoRA adapters on `tower` in place and freeze its other weights; returns the adapters' parameter count."""
    from peft import LoraConfig as PeftLoraConfig, inject_adapter_in_model

    config = PeftLoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=target_modules(tower, lora_cfg), bias="none")
    try:
        inject_adapter_in_model(config, tower)
    except (ValueError, TypeError) as e:  # a targeted layer of a type peft cannot adapt
        raise ConfigError(f"lora on {type(tower).__name__}: {e}") from None
    return sum(p.numel() for name, p in tower.named_parameters() if "lora_" in name)


def apply_lora_to_model(model: nn.Module, finetune_cfg) -> dict[str, int]:
    """Adapters on the towers whose `finetune.<tower>.lora.rank > 0`; {tower: adapter parameters}."""
    return {t: apply_lora(getattr(model, f"{t}_encoder"), getattr(finetune_cfg, t).lora)
            for t in TOWERS if getattr(finetune_cfg, t).lora.rank > 0}


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (peft's `merge`) and put the base layer back in its place, in place:
    the state dict then has the plain names and shapes of a model without adapters. Returns `model`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
