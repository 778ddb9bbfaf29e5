"""Vision Transformer in CLIP's form: patch embedding, class token, pre-norm blocks, class-token pooling."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_encoder
from .transformer import Encoder, init_transformer_


class VisionEmbeddings(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.num_positions = (image_size // patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, width)
        nn.init.normal_(self.position_embedding.weight, std=width**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, N + 1, C)
        return x + self.position_embedding.weight.to(x.dtype)


class VisionTransformer(nn.Module):
    """(B, 3, H, W) pixels -> (B, width) pooled features (post-norm of the class token).

    `fused_qkv`, `pooled_last_block` and `onednn_linear` are speed switches of the blocks (see `transformer.Encoder`):
    they change how the features are computed, never the parameters or the features."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 32,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        patch_dropout: float = 0.0,
        init: str = "clip",
        fused_qkv: bool = True,
        pooled_last_block: bool = True,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
        self.image_size, self.patch_size, self.width = image_size, patch_size, width
        self.patch_dropout = patch_dropout
        self.num_layers, self.heads, self.mlp_ratio, self.act = layers, heads, mlp_ratio, act
        self.embeddings = VisionEmbeddings(image_size, patch_size, width)
        self.pre_layrnorm = nn.LayerNorm(width, eps=1e-5)  # transformers' (misspelt) name, kept for weight mapping
        self.encoder = Encoder(width, layers, heads, mlp_ratio, act, fused_qkv, pooled_last_block, onednn_linear)
        self.post_layernorm = nn.LayerNorm(width, eps=1e-5)
        if init == "clip":
            init_transformer_(self.encoder, width)
        elif init == "torch":  # PyTorch's layer defaults; q/k/v as nn.MultiheadAttention sets them (xavier, zero bias)
            for block in self.encoder.layers:
                attn = block.self_attn
                bound = (6.0 / (width + 3 * width)) ** 0.5  # xavier-uniform of the stacked (3C, C) projection
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    nn.init.uniform_(proj.weight, -bound, bound)
                    nn.init.zeros_(proj.bias)
                nn.init.zeros_(attn.out_proj.bias)
        else:
            raise ValueError(f"init must be 'clip' or 'torch', got {init!r}")

    @property
    def output_dim(self) -> int:
        return self.width

    def keep_patches(self, x: torch.Tensor) -> torch.Tensor:
        """FLIP's patch dropout while training: (B, N + 1, C) -> (B, K + 1, C), the class token and a random
        K = round((1 - patch_dropout) * N) of the patches (their position embeddings already added)."""
        if not self.training or self.patch_dropout == 0.0:
            return x
        B, n = x.shape[0], x.shape[1] - 1
        k = max(1, round((1.0 - self.patch_dropout) * n))
        keep = torch.rand(B, n, device=x.device).argsort(dim=1)[:, :k] + 1  # (B, K) patch positions
        keep = torch.cat([torch.zeros(B, 1, dtype=keep.dtype, device=x.device), keep], dim=1)  # (B, K + 1)
        return x.gather(1, keep[..., None].expand(-1, -1, x.shape[2]))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.keep_patches(self.embeddings(pixels)))  # (B, N + 1, C), or (B, K + 1, C)
        x = self.encoder(x, pool=0)  # (B, C): the class token's output
        return self.post_layernorm(x)  # (B, C)


def _vit(**defaults):
    def build(**overrides) -> VisionTransformer:
        return VisionTransformer(**{**defaults, **overrides})

    return build


register_encoder("vit_tiny", "image", _vit(image_size=64, patch_size=8, width=192, layers=4, heads=3))
register_encoder("vit_small_p16", "image", _vit(image_size=224, patch_size=16, width=384, layers=12, heads=6))
register_encoder("vit_b32", "image", _vit(image_size=224, patch_size=32, width=768, layers=12, heads=12))
register_encoder("vit_b16", "image", _vit(image_size=224, patch_size=16, width=768, layers=12, heads=12))
register_encoder("vit_l14", "image", _vit(image_size=224, patch_size=14, width=1024, layers=24, heads=16))
