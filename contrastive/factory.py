"""Load a trained model from disk (`load`: a run directory, a checkpoint, or a transformers directory, each
recognised explicitly), and build (model, transforms, tokenizer) from a config. Model building itself is `builder`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .builder import create_model, fit_weights
from .checkpoint import CheckpointError, load_weights, read_meta, resolve_checkpoint
from .config import ConfigError, ModelConfig, config_from_dict
from .data import build_transform
from .hf_import import bundled_checkpoint, is_hf_dual_dir, load_bundled_checkpoint, load_hf_dir
from .pretrained import resolve_model_config
from .tokenizer import load_tokenizer_file

__all__ = ["create_model", "create_model_and_transforms", "load", "resolve_checkpoint"]


def create_model_and_transforms(cfg: ModelConfig, data_cfg=None):
    """(model, train transform, eval transform, tokenizer)."""
    cfg = resolve_model_config(cfg)
    model, tokenizer = create_model(cfg)
    return model, build_transform(cfg, data_cfg, train=True), build_transform(cfg, data_cfg, train=False), tokenizer


def load(path: str | Path, device: str | torch.device = "cpu"):
    """`model, preprocess, tokenizer = load(run_dir_or_checkpoint)`.

    `preprocess(PIL.Image) -> (3, H, W)` tensor (eval transform); `tokenizer(list[str])` returns what
    `model.encode_text` accepts. The model is in eval mode on `device`. A checkpoint's own
    `model.trust_remote_code` is ignored: loading never imports code shipped with a model.
    """
    if is_hf_dual_dir(path) or bundled_checkpoint(Path(path)) is not None:  # transformers formats
        return (load_hf_dir if is_hf_dual_dir(path) else load_bundled_checkpoint)(Path(path), device)
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    cfg = config_from_dict(meta["config"]).model
    cfg = dataclasses.replace(cfg, init_from="", trust_remote_code=False)
    tokenizer_file = ckpt / "tokenizer.json"
    tokenizer = load_tokenizer_file(tokenizer_file, cfg.context_length) if tokenizer_file.is_file() else None
    model, tokenizer = create_model(cfg, tokenizer)
    fit_weights(model, load_weights(ckpt), str(ckpt), device)
    return model, build_transform(cfg, None, train=False), tokenizer


