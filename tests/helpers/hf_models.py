"""Tiny transformers models saved to directories (no hub): the stand-ins for pretrained towers in tests."""

from __future__ import annotations

from pathlib import Path

import torch

from contrastive.text.tokenizer import EOT, PAD, SOT, byte_level_tokenizer

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
VISION = {
    "vit": ("ViTConfig", dict(TINY, image_size=32, patch_size=8)),
    "dinov2": ("Dinov2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)),
    "siglip": ("SiglipVisionConfig", dict(TINY, image_size=32, patch_size=8)),
    "clip": ("CLIPVisionConfig", dict(TINY, image_size=32, patch_size=8)),
    "convnext": ("ConvNextConfig", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)),
}
TEXT = {
    "bert": ("BertConfig", dict(TINY, vocab_size=259, max_position_embeddings=64)),
    "roberta": ("RobertaConfig", dict(TINY, vocab_size=259, max_position_embeddings=70, pad_token_id=1)),
    "clip_text": ("CLIPTextConfig", dict(TINY, vocab_size=259, max_position_embeddings=64, eos_token_id=258,
                                         bos_token_id=257, pad_token_id=256)),
}


def byte_hf_tokenizer(context_length: int = 64):
    """The toolkit's byte tokenizer as a transformers fast tokenizer (end-of-text = highest id, 258)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer(), bos_token=SOT, eos_token=EOT,
                                   pad_token=PAD, model_max_length=context_length)


def image_processor(size: int = 32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])


def save_tower(kind: str, directory: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny HF model of `kind` (a key of VISION or TEXT) with its preprocessing files."""
    import transformers

    torch.manual_seed(seed)
    cls_name, kwargs = {**VISION, **TEXT}[kind]
    model = transformers.AutoModel.from_config(getattr(transformers, cls_name)(**kwargs))
    model.save_pretrained(str(directory))
    if kind in VISION:
        image_processor().save_pretrained(str(directory))
    else:
        byte_hf_tokenizer().save_pretrained(str(directory))
    return directory


def save_clip(directory: Path, seed: int = 0, act: str = "quick_gelu") -> Path:
    """A tiny CLIPModel (byte vocabulary) with a CLIPProcessor, as `save_pretrained` writes it."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=dict(TEXT["clip_text"][1], hidden_act=act),
                        vision_config=dict(VISION["clip"][1], hidden_act=act), projection_dim=16,
                        logit_scale_init_value=3.0)
    CLIPModel(config).save_pretrained(str(directory))
    CLIPProcessor(image_processor=image_processor(), tokenizer=byte_hf_tokenizer()).save_pretrained(str(directory))
    return directory


def save_dual_encoder(directory: Path, vision: str = "vit", text: str = "bert", seed: int = 0) -> Path:
    """A tiny VisionTextDualEncoderModel with its processor."""
    import transformers
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    torch.manual_seed(seed)
    vc = getattr(transformers, VISION[vision][0])(**VISION[vision][1])
    tc = getattr(transformers, TEXT[text][0])(**TEXT[text][1])
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vc, tc, projection_dim=16)
    VisionTextDualEncoderModel(config).save_pretrained(str(directory))
    VisionTextDualEncoderProcessor(image_processor=image_processor(), tokenizer=byte_hf_tokenizer()).save_pretrained(str(directory))
    return directory
