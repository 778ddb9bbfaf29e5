"""Build a model and its tokenizer from a model config (`create_model`), and put saved weights into a model
(`fit_weights`). The layer every loader stands on: it knows the encoders, never the formats they are saved in."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from .config import ModelConfig
from .encoders import create_encoder, encoder_modality
from .errors import CheckpointError, ConfigError
from .model import ContrastiveModel
from .tokenizer import build_tokenizer


def create_model(cfg: ModelConfig, tokenizer=None) -> tuple[ContrastiveModel, Callable]:
    """Build (model, tokenizer) from a model config. Built-in text towers take their vocabulary and special tokens
    from the tokenizer; built-in towers take the speed switches `model.fused_qkv` and `model.pooled_last_block`
    (unless their encoder arguments set them)."""
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
    for name, args in ((cfg.image_encoder, image_args), (cfg.text_encoder, text_args)):
        if encoder_modality(name) is not None:  # the built-in towers' speed switches (same weights, same features)
            args.setdefault("fused_qkv", cfg.fused_qkv)
            args.setdefault("pooled_last_block", cfg.pooled_last_block)
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


def copy_pretrained_projections(model: nn.Module) -> list[str]:
    """Copy projections that came with the towers (a CLIP directory's `visual_projection`) into the model where
    the shapes fit; returns the names of the projections copied. Others keep their fresh init (normal, std
    1/sqrt(width), which keeps embeddings at unit scale before normalisation)."""
    copied = []
    for tower, proj in (("image_encoder", "image_projection"), ("text_encoder", "text_projection")):
        weight = getattr(getattr(model, tower), "pretrained_projection", None)
        target = getattr(model, proj).weight
        if weight is not None and tuple(weight.shape) == tuple(target.shape):
            with torch.no_grad():
                target.copy_(weight)
            copied.append(proj)
    return copied


def fit_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str,
                device: str | torch.device | None = None, error: type[Exception] = CheckpointError) -> nn.Module:
    """Load `weights` into `model`, raising `error` (one line naming `source`) when names are missing or
    unexpected; with `device`, move the model there in eval mode. Returns the model."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise error(f"{source}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if device is not None:
        model.to(device).eval()
    return model
