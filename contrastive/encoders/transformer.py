"""Pre-norm transformer blocks shared by the built-in towers.

Module and parameter names follow transformers' CLIP layout (`self_attn.q_proj`, `layer_norm1`, `mlp.fc1`, ...)
so that built-in towers map one-to-one onto `CLIPModel` weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .linear import Linear, stacked_linear

Pool = int | torch.Tensor  # the pooled position: one index for every row, or a (B,) tensor of per-row indices


def select_rows(x: torch.Tensor, pool: Pool) -> torch.Tensor:
    """(B, T, C) -> (B, C): each row's token at `pool`."""
    if isinstance(pool, int):
        return x[:, pool]
    return x[torch.arange(x.shape[0], device=x.device), pool]


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (transformers' parameter names).

    With `fused_qkv` (the default) the three projections run as one (3C, C) matrix product on weights concatenated
    at run time: one GEMM instead of three, forward and backward, while the parameters, their names and the state
    dict stay those of three `nn.Linear`s. Projections replaced by other modules (adapters) run unfused.
    `onednn_linear` runs the projections' fp32 CPU products on oneDNN (see `linear`).
    """

    def __init__(self, width: int, heads: int, fused_qkv: bool = True, onednn_linear: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = Linear(width, width, onednn=onednn_linear)
        self.k_proj = Linear(width, width, onednn=onednn_linear)
        self.v_proj = Linear(width, width, onednn=onednn_linear)
        self.out_proj = Linear(width, width, onednn=onednn_linear)
        self.fused_qkv = fused_qkv

    def _heads(self, x: torch.Tensor, projections: tuple[nn.Module, ...]) -> tuple[torch.Tensor, ...]:
        """(B, T, C) -> each projection of x as (B, heads, T, C // heads); plain linear ones as one GEMM."""
        B, T, C = x.shape
        n = len(projections)
        if self.fused_qkv and all(type(p) in (nn.Linear, Linear) for p in projections):
            onednn = all(getattr(p, "onednn", False) for p in projections)
            out = stacked_linear(x, [p.weight for p in projections], [p.bias for p in projections], onednn)  # (B, T, n C)
            out = out.view(B, T, n, self.heads, C // self.heads)
            return out.permute(2, 0, 3, 1, 4).unbind(0)
        return tuple(p(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for p in projections)

    def forward(self, x: torch.Tensor, causal: bool = False, query: Pool | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `query`, only that position of each row attends: (B, T, C) -> (B, C)."""
        B, T, C = x.shape
        if query is None:
            q, k, v = self._heads(x, (self.q_proj, self.k_proj, self.v_proj))  # (B, heads, T, C // heads) each
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return self.out_proj(y.transpose(1, 2).reshape(B, T, C))
        k, v = self._heads(x, (self.k_proj, self.v_proj))  # (B, heads, T, C // heads) each
        q = self.q_proj(select_rows(x, query)).view(B, self.heads, 1, C // self.heads)
        mask = None
        if causal:  # the query at position p sees keys 0..p
            keys = torch.arange(T, device=x.device)
            mask = (keys <= query) if isinstance(query, int) else (keys[None] <= query[:, None]).view(B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, 1, C // heads)
        return self.out_proj(y.reshape(B, C))


ACTIVATIONS = ("gelu", "quick_gelu")  # quick_gelu: x * sigmoid(1.702 x), as in OpenAI's CLIP


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str = "gelu", onednn_linear: bool = True) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act '{act}' is not one of {', '.join(ACTIVATIONS)}")
        if hidden < 1:
            raise ValueError(f"the MLP of width {width} gets {hidden} hidden units; raise mlp_ratio")
        self.fc1 = Linear(width, hidden, onednn=onednn_linear)
        self.fc2 = Linear(hidden, width, onednn=onednn_linear)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.act == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-5,
                 fused_qkv: bool = True, onednn_linear: bool = True) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads, fused_qkv, onednn_linear)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act, onednn_linear)

    def forward(self, x: torch.Tensor, causal: bool = False, pool: Pool | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `pool`, only the pooled token's output: (B, T, C) -> (B, C)."""
        if pool is None:
            x = x + self.self_attn(self.layer_norm1(x), causal=causal)
        else:  # every token still serves as key and value; only the pooled one is a query and goes on
            x = select_rows(x, pool) + self.self_attn(self.layer_norm1(x), causal=causal, query=pool)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """A stack of blocks (`encoder.layers.N.*` in transformers' naming).

    Given `pool` (the position a tower pools at: the class token, each caption's end-of-text), the encoder returns
    only that token's output. With `pooled_last_block` (the default) the last block then computes just that token:
    its query, attention output, MLP and residuals for one row per sample instead of T (keys and values still come
    from every token), which gives the same features for about 1/layers less work. Off, the full sequence is computed
    and the pooled row selected afterwards. `fused_qkv` goes to every block's attention, `onednn_linear` to every
    linear layer (see `linear`).
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu",
                 fused_qkv: bool = True, pooled_last_block: bool = True, onednn_linear: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(width, heads, mlp_ratio, act, fused_qkv=fused_qkv, onednn_linear=onednn_linear)
                                     for _ in range(layers)])
        self.grad_checkpointing = False
        self.pooled_last_block = pooled_last_block

    def forward(self, x: torch.Tensor, causal: bool = False, pool: Pool | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, C) at `pool`."""
        n = len(self.layers)
        shortcut = pool is not None and self.pooled_last_block and n > 0
        for i, layer in enumerate(self.layers):
            layer_pool = pool if shortcut and i == n - 1 else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, causal, layer_pool, use_reentrant=False)
            else:
                x = layer(x, causal=causal, pool=layer_pool)
        if pool is not None and not shortcut:
            x = select_rows(x, pool)
        return x


def init_transformer_(encoder: Encoder, width: int) -> None:
    """Scaled normal init (as in CLIP): residual projections shrink with depth."""
    layers = len(encoder.layers)
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in encoder.layers:
        for p in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
            nn.init.normal_(p.weight, std=attn_std)
            nn.init.zeros_(p.bias)
        nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.self_attn.out_proj.bias)
        nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
        nn.init.zeros_(block.mlp.fc1.bias)
        nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        nn.init.zeros_(block.mlp.fc2.bias)
