"""The dual encoder: two towers, linear projections into a shared space, a learnable temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
