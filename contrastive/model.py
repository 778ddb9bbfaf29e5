"""The dual encoder: two towers, linear projections into a shared space, a learnable temperature; `create_model`
builds one (and its tokenizer) from a model config, `fit_weights` puts saved weights into it. This layer knows the
encoders, never the formats models are saved in (those are `interop`'s)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .encoders import create_encoder, encoder_modality
from .encoders.registry import check_encoder_args
from .errors import CheckpointError, ConfigError
from .text.tokenizer import build_tokenizer

MAX_LOG_SCALE = math.log(100.0)


@dataclass
class ContrastiveOutput:
    """What `ContrastiveModel.forward` returns, always."""

    image_embeds: torch.Tensor  # (B_img, D), L2-normalised
    text_embeds: torch.Tensor  # (B_txt, D), L2-normalised
    logit_scale: torch.Tensor  # () exponentiated temperature scale
    logit_bias: torch.Tensor | None  # () or None

    @property
    def logits_per_image(self) -> torch.Tensor:
        """(B_img, B_txt) = scale * cos(image_i, text_j) (+ bias)."""
        logits = self.logit_scale * self.image_embeds @ self.text_embeds.T
        return logits if self.logit_bias is None else logits + self.logit_bias

    @property
    def logits_per_text(self) -> torch.Tensor:
        """(B_txt, B_img), the transpose of `logits_per_image`."""
        return self.logits_per_image.T


class ContrastiveModel(nn.Module):
    """`ContrastiveModel(image_encoder, text_encoder, embed_dim)`.

    Each encoder maps its input to pooled features of width `encoder.output_dim`; a bias-free linear projection
    maps them to `embed_dim`. `logit_scale` is stored as a log and kept in [0, log 100] by `clamp_logit_scale_`,
    which the trainer calls after every optimizer step.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embed_dim: int,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = embed_dim
        self.image_projection = nn.Linear(image_encoder.output_dim, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_encoder.output_dim, embed_dim, bias=False)
        nn.init.normal_(self.image_projection.weight, std=image_encoder.output_dim**-0.5)
        nn.init.normal_(self.text_projection.weight, std=text_encoder.output_dim**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim)."""
        x = self.image_projection(self.image_encoder(pixels))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor | dict, normalize: bool = True) -> torch.Tensor:
        """Token ids (B, T) (or a tokenizer's dict for HF towers) -> (B, embed_dim)."""
        x = self.text_projection(self.text_encoder(tokens))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor | None, texts: torch.Tensor | dict | None) -> ContrastiveOutput:
        return ContrastiveOutput(
            image_embeds=self.encode_image(images) if images is not None else None,
            text_embeds=self.encode_text(texts) if texts is not None else None,
            logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias,
        )

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        self.logit_scale.clamp_(0.0, MAX_LOG_SCALE)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in (self.image_encoder, self.text_encoder):
            for m in tower.modules():
                if hasattr(m, "grad_checkpointing"):
                    m.grad_checkpointing = enable
            if enable and hasattr(tower, "gradient_checkpointing_enable"):
                tower.gradient_checkpointing_enable()


def create_model(cfg: ModelConfig, tokenizer=None) -> tuple[ContrastiveModel, Callable]:
    """Build (model, tokenizer) from a model config. Built-in text towers take their vocabulary and special tokens
    from the tokenizer; built-in towers take the speed switches `model.fused_qkv`, `model.pooled_last_block` and
    `model.onednn_linear` (unless their encoder arguments set them)."""
    if tokenizer is None:
        if cfg.tokenizer == "auto":
            raise ConfigError("model.tokenizer=auto is learned from the training captions: build the tokenizer with "
                              "contrastive.text.vocab.prepare_text(model_cfg, data_cfg) and pass it, or name one "
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
            args.setdefault("onednn_linear", cfg.onednn_linear)
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


def check_encoder_settings(m: ModelConfig) -> None:
    """Encoder arguments that cannot build a tower (unknown names, wrong types, sizes out of range, combinations
    such as heads that do not divide the width) fail here, in one line, before any data is read (`contrastive
    config` and the start of a run call it)."""
    for tower, name, given in (("image", m.image_encoder, m.image_encoder_args), ("text", m.text_encoder, m.text_encoder_args)):
        args = dict(given)
        if encoder_modality(name) == "image":  # what create_model adds, so that combinations are checked too
            args.setdefault("image_size", m.image_size)
        if encoder_modality(name) == "text" and m.context_length > 0:
            tower_context = args.setdefault("context_length", m.context_length)
            if isinstance(tower_context, int) and 0 < tower_context < m.context_length:
                raise ConfigError(f"model.text_encoder_args: context_length={tower_context} is below "
                                  f"model.context_length={m.context_length} (the tokens per caption); drop one")
        try:
            check_encoder_args(name, args, build=True)
        except ValueError as e:
            raise ConfigError(f"model.{tower}_encoder_args: {e}") from None


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


def autocast_context(device: torch.device, precision: str):
    """Autocast to bf16 / fp16 on `device` for those precisions; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
