"""The earlier import path of `contrastive.interop.loading`."""

from .interop.loading import create_model, create_model_and_transforms, load, resolve_checkpoint  # noqa: F401
