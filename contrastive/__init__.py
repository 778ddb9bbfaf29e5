"""contrastive: CLIP-style contrastive training of dual encoders.

    import contrastive
    model, preprocess, tokenizer = contrastive.load("runs/<run>")
    probs = (model.logit_scale.exp() * model.encode_image(x) @ model.encode_text(tokenizer(captions)).T).softmax(-1)
"""

from .config import Config, ConfigError, load_config
from .encoders import create_encoder, list_encoders
from .builder import create_model
from .interop import create_model_and_transforms, export_hf, load
from .losses import clip_loss, siglip_loss
from .model import ContrastiveModel, ContrastiveOutput

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "ContrastiveModel",
    "ContrastiveOutput",
    "clip_loss",
    "create_encoder",
    "create_model",
    "create_model_and_transforms",
    "export_hf",
    "list_encoders",
    "load",
    "load_config",
    "siglip_loss",
]
