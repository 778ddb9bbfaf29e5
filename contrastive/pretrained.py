"""The earlier import path of `contrastive.interop.pretrained`."""

from .interop.pretrained import resolve_model_config  # noqa: F401
