"""Encoder towers: built-in ViT and text Transformer presets, and external sources by prefix."""

from . import text, vit  # noqa: F401  (register the built-in presets)
from . import backbones, hf  # noqa: F401  (register the hf:, timm:, torchvision: sources; imports stay lazy)
from .registry import create_encoder, encoder_modality, list_encoders, register_encoder, register_source
from .text import TextTransformer
from .vit import VisionTransformer

__all__ = [
    "create_encoder",
    "encoder_modality",
    "list_encoders",
    "register_encoder",
    "register_source",
    "TextTransformer",
    "VisionTransformer",
]
