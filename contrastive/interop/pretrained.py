"""Resolve a model config against the pretrained sources it names, before anything is built.

- `model.init_from` naming a transformers `CLIPModel` / `VisionTextDualEncoderModel` directory sets the towers,
  tokenizer, embedding width, temperature and preprocessing from that directory (the weights follow in training).
- A pretrained image tower (`hf:`, `timm:`, `torchvision:`) sets `image_size`, `image_mean`, `image_std` from its
  own image processor / pretrained config when `model.preprocess_from_tower` is true.

The resolved config is what a run saves, so loading a run later needs none of these lookups.
"""

from __future__ import annotations

import dataclasses

from ..config import ModelConfig


def tower_preprocessing(spec: str) -> tuple[int, list[float] | None, list[float] | None] | None:
    """(image size, mean, std) expected by a pretrained image tower spec, None for built-in towers or unknown."""
    if ":" not in spec:
        return None
    prefix, name = spec.split(":", 1)
    if prefix == "hf":
        from ..encoders.hf import hf_preprocessing

        return hf_preprocessing(name)
    if prefix in ("timm", "torchvision"):
        from ..encoders.backbones import zoo_preprocessing

        return zoo_preprocessing(prefix, name)
    return None


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """The config with what the pretrained sources decide filled in (see the module docstring)."""
    if cfg.init_from:
        from .hf_import import is_hf_dual_dir, model_config_from_hf

        if is_hf_dual_dir(cfg.init_from):
            imported = model_config_from_hf(cfg.init_from)
            taken = ("image_encoder", "text_encoder", "embed_dim", "tokenizer", "context_length", "init_logit_scale",
                     "image_encoder_args", "text_encoder_args", "image_size", "image_mean", "image_std")
            cfg = dataclasses.replace(cfg, **{k: getattr(imported, k) for k in taken})
    if cfg.preprocess_from_tower:
        found = tower_preprocessing(cfg.image_encoder)
        if found is not None:
            size, mean, std = found
            cfg = dataclasses.replace(cfg, image_size=int(size or cfg.image_size),
                                      image_mean=list(mean or cfg.image_mean), image_std=list(std or cfg.image_std))
    return cfg
