"""Load a trained model from disk (`load`: a transformers directory or bundled HF checkpoint, a native checkpoint, or
a run directory, each recognised explicitly), and build (model, transforms, tokenizer) from a config. Model building
itself is `contrastive.model`, below this package."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..model import create_model, fit_weights
from ..errors import CheckpointError, ConfigError
from .checkpoint import load_weights, read_meta, resolve_checkpoint
from ..config import ModelConfig, config_from_dict
from ..data import build_transform
from ..text.tokenizer import load_tokenizer_file
from .hf_import import bundled_checkpoint, is_hf_dual_dir, load_bundled_checkpoint, load_hf_dir
from .pretrained import resolve_model_config

__all__ = ["create_model_and_transforms", "load"]


def create_model_and_transforms(cfg: ModelConfig, data_cfg=None):
    """(model, train transform, eval transform, tokenizer)."""
    cfg = resolve_model_config(cfg)
    model, tokenizer = create_model(cfg)
    return model, build_transform(cfg, data_cfg, train=True), build_transform(cfg, data_cfg, train=False), tokenizer


WEIGHTS = ("model", "ema")  # which weights of a checkpoint `load` takes: the trained ones or their moving average


def load(path: str | Path, device: str | torch.device = "cpu", weights: str = "model"):
    """`model, preprocess, tokenizer = load(run_dir_or_checkpoint)`.

    `preprocess(PIL.Image) -> (3, H, W)` tensor (eval transform); `tokenizer(list[str])` returns what
    `model.encode_text` accepts. The model is in eval mode on `device`. A checkpoint's own
    `model.trust_remote_code` is ignored: loading never imports code shipped with a model. `weights="ema"` takes
    the moving average of the weights that a run with `train.ema_decay` keeps. A model trained with LoRA comes back
    with its adapters (unmerged; `contrastive.encoders.lora.merge_lora` folds them in).
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    if is_hf_dual_dir(path) or bundled_checkpoint(Path(path)) is not None:  # transformers formats
        if weights != "model":
            raise CheckpointError(f"{path} is not a checkpoint of this toolkit: it has no EMA weights")
        return (load_hf_dir if is_hf_dual_dir(path) else load_bundled_checkpoint)(Path(path), device)
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    run_cfg = config_from_dict(meta["config"])
    cfg = dataclasses.replace(run_cfg.model, init_from="", trust_remote_code=False)
    tokenizer_file = ckpt / "tokenizer.json"
    tokenizer = load_tokenizer_file(tokenizer_file, cfg.context_length) if tokenizer_file.is_file() else None
    model, tokenizer = create_model(cfg, tokenizer)
    from ..encoders.lora import apply_lora_to_model, lora_enabled

    if lora_enabled(run_cfg.finetune):
        apply_lora_to_model(model, run_cfg.finetune)
    fit_weights(model, load_weights(ckpt, weights), str(ckpt), device)
    return model, build_transform(cfg, None, train=False), tokenizer


def init_from(model: nn.Module, source: str | Path, setting: str = "model.init_from") -> None:
    """Put the weights of `source` (a run, a native checkpoint or a transformers directory) into `model`, a model
    built here from the same model config. The weights are read directly (no second model, tokenizer or transform):
    a transformers directory's through their name mapping; a LoRA-trained checkpoint's adapters are put on `model`
    and folded in (peft's merge), so the model comes back plain. Raises ConfigError naming `setting`."""
    from ..encoders.hf import load_dual_model
    from ..encoders.lora import apply_lora_to_model, lora_enabled, merge_lora
    from .hf_import import hf_state_dict

    where = f"{setting}={source}"
    if is_hf_dual_dir(source):
        fit_weights(model, hf_state_dict(load_dual_model(source), model), where, error=ConfigError)
        return
    try:
        ckpt = resolve_checkpoint(source)
        finetune = config_from_dict(read_meta(ckpt)["config"]).finetune
    except CheckpointError as e:
        raise ConfigError(f"{where}: {e}") from None
    if lora_enabled(finetune):
        apply_lora_to_model(model, finetune)
    fit_weights(model, load_weights(ckpt), where, error=ConfigError)
    if lora_enabled(finetune):
        merge_lora(model)
