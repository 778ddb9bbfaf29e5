"""Build a model, its image transforms and tokenizer from a config; load a trained one from disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CheckpointError, is_checkpoint, latest_checkpoint, load_weights, read_meta
from .config import ConfigError, ModelConfig, config_from_dict
from .data import build_transform
from .encoders import create_encoder, encoder_modality
from .model import ContrastiveModel
from .pretrained import copy_pretrained_projections, resolve_model_config
from .tokenizer import build_tokenizer, load_tokenizer_file


def create_model(cfg: ModelConfig, tokenizer=None) -> tuple[ContrastiveModel, Callable]:
    """Build (model, tokenizer) from a model config. Built-in text towers take their vocabulary and special tokens
    from the tokenizer."""
    if tokenizer is None:
        if cfg.tokenizer == "auto":
            raise ConfigError("model.tokenizer=auto is learned from the training captions: build the tokenizer with "
                              "contrastive.vocab.prepare_text(model_cfg, data_cfg) and pass it, or name one "
                              "(byte, bpe:<file>, hf:<dir or id>)")
        # context 0 is fitted to the training captions when a run starts; without them: 77, or an HF tokenizer's limit
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.context_length, cfg.trust_remote_code)
    if cfg.context_length == 0:
        cfg = dataclasses.replace(cfg, context_length=tokenizer.context_length)
    image_args = dict(cfg.image_encoder_args)
    text_args = dict(cfg.text_encoder_args)
    if encoder_modality(cfg.image_encoder) == "image":
        image_args.setdefault("image_size", cfg.image_size)
        if cfg.patch_dropout:
            image_args.setdefault("patch_dropout", cfg.patch_dropout)
    elif cfg.patch_dropout:
        raise ConfigError(f"model.patch_dropout works with the built-in ViTs, not {cfg.image_encoder}")
    if encoder_modality(cfg.text_encoder) == "text":
        text_args.setdefault("vocab_size", tokenizer.vocab_size)
        text_args.setdefault("context_length", cfg.context_length)
        text_args.setdefault("eot_token_id", tokenizer.eot_token_id)
        text_args.setdefault("pad_token_id", tokenizer.pad_token_id)
    elif cfg.text_encoder.startswith("hf:"):
        text_args.setdefault("eot_token_id", tokenizer.eot_token_id)  # used by pooling "eot"
    for name, args in ((cfg.image_encoder, image_args), (cfg.text_encoder, text_args)):
        if name.startswith("hf:"):
            args.setdefault("trust_remote_code", cfg.trust_remote_code)
    try:
        image_encoder = create_encoder(cfg.image_encoder, modality="image", **image_args)
        text_encoder = create_encoder(cfg.text_encoder, modality="text", **text_args)
    except KeyError as e:
        raise ConfigError(str(e).strip("'\"")) from None
    model = ContrastiveModel(image_encoder, text_encoder, cfg.embed_dim, cfg.init_logit_scale, cfg.init_logit_bias)
    copy_pretrained_projections(model)
    return model, tokenizer


def create_model_and_transforms(cfg: ModelConfig, data_cfg=None):
    """(model, train transform, eval transform, tokenizer)."""
    cfg = resolve_model_config(cfg)
    model, tokenizer = create_model(cfg)
    return model, build_transform(cfg, data_cfg, train=True), build_transform(cfg, data_cfg, train=False), tokenizer


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (-> its latest checkpoint), a `checkpoints/` folder, or a checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {path}")
    if p.is_file() and p.name.endswith(".safetensors"):
        p = p.parent
    if is_checkpoint(p):
        return p
    for folder in (p / "checkpoints", p):
        found = latest_checkpoint(folder)
        if found is not None:
            return found
    raise CheckpointError(f"{path} holds no checkpoint (expected model.safetensors + meta.json, or a run directory)")


def load(path: str | Path, device: str | torch.device = "cpu"):
    """`model, preprocess, tokenizer = load(run_dir_or_checkpoint)`.

    `preprocess(PIL.Image) -> (3, H, W)` tensor (eval transform); `tokenizer(list[str])` returns what
    `model.encode_text` accepts. The model is in eval mode on `device`. A checkpoint's own
    `model.trust_remote_code` is ignored: loading never imports code shipped with a model.
    """
    loaders = [fn for fn in _EXTERNAL_LOADERS if fn[0](Path(path))]
    if loaders:
        return loaders[0][1](Path(path), device)
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    cfg = config_from_dict(meta["config"]).model
    cfg = dataclasses.replace(cfg, init_from="", trust_remote_code=False)
    tokenizer_file = ckpt / "tokenizer.json"
    tokenizer = load_tokenizer_file(tokenizer_file, cfg.context_length) if tokenizer_file.is_file() else None
    model, tokenizer = create_model(cfg, tokenizer)
    missing, unexpected = model.load_state_dict(load_weights(ckpt), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval()
    return model, build_transform(cfg, None, train=False), tokenizer


# (predicate(path) -> bool, loader(path, device)) pairs for other formats, e.g. transformers directories
_EXTERNAL_LOADERS: list[tuple[Callable[[Path], bool], Callable]] = []


def register_loader(predicate: Callable[[Path], bool], loader: Callable) -> None:
    _EXTERNAL_LOADERS.append((predicate, loader))


from . import hf_import  # noqa: E402,F401  (registers loaders for transformers directories; imports stay lazy)
