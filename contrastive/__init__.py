"""contrastive: CLIP-style contrastive training of dual encoders.

    import contrastive
    model, preprocess, tokenizer = contrastive.load("runs/<run>")
    probs = (model.logit_scale.exp() * model.encode_image(x) @ model.encode_text(tokenizer(captions)).T).softmax(-1)

The names below are loaded on first use (PEP 562), so `import contrastive` and `contrastive --help` do not import
torch; each lives in the module named beside it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Config": "contrastive.config",
    "load_config": "contrastive.config",
    "ConfigError": "contrastive.errors",
    "ContrastiveModel": "contrastive.model",
    "ContrastiveOutput": "contrastive.model",
    "create_model": "contrastive.model",
    "create_encoder": "contrastive.encoders",
    "list_encoders": "contrastive.encoders",
    "clip_loss": "contrastive.losses",
    "siglip_loss": "contrastive.losses",
    "load": "contrastive.interop.loading",
    "create_model_and_transforms": "contrastive.interop.loading",
    "export_hf": "contrastive.interop.hf_export",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names are loaded by __getattr__
    from .config import Config, load_config
    from .encoders import create_encoder, list_encoders
    from .errors import ConfigError
    from .interop.hf_export import export_hf
    from .interop.loading import create_model_and_transforms, load
    from .losses import clip_loss, siglip_loss
    from .model import ContrastiveModel, ContrastiveOutput, create_model


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'contrastive' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
