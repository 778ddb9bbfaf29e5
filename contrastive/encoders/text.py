"""Text Transformer in CLIP's form: token + position embeddings, causal pre-norm blocks, end-of-text pooling."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_encoder
from .transformer import Encoder, init_transformer_


class TextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context_length, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        return self.token_embedding(tokens) + self.position_embedding.weight[:T]  # (B, T, C)


class TextTransformer(nn.Module):
    """(B, T) token ids -> (B, width) features at the first end-of-text token (after the final norm).

    `fused_qkv`, `pooled_last_block` and `onednn_linear` are speed switches of the blocks (see `transformer.Encoder`):
    they change how the features are computed, never the parameters or the features."""

    def __init__(
        self,
        vocab_size: int = 49408,
        context_length: int = 77,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        eot_token_id: int | None = None,
        pad_token_id: int = 0,
        fused_qkv: bool = True,
        pooled_last_block: bool = True,
        onednn_linear: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.context_length, self.width = vocab_size, context_length, width
        self.num_layers, self.heads, self.mlp_ratio, self.act = layers, heads, mlp_ratio, act
        # default: the highest id is end-of-text (as in CLIP's vocabulary)
        self.eot_token_id = vocab_size - 1 if eot_token_id is None else eot_token_id
        self.pad_token_id = pad_token_id
        self.embeddings = TextEmbeddings(vocab_size, context_length, width)
        self.encoder = Encoder(width, layers, heads, mlp_ratio, act, fused_qkv, pooled_last_block, onednn_linear)
        self.final_layer_norm = nn.LayerNorm(width, eps=1e-5)
        init_transformer_(self.encoder, width)

    @property
    def output_dim(self) -> int:
        return self.width

    def forward(self, tokens: torch.Tensor | dict) -> torch.Tensor:
        if isinstance(tokens, dict) or hasattr(tokens, "keys"):
            tokens = tokens["input_ids"]
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {self.context_length}")
        # first end-of-text position; a row without one (over-long input cut by hand) pools at its last token
        is_eot = tokens == self.eot_token_id
        pos = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(tokens[:, 0], tokens.shape[1] - 1))
        x = self.encoder(self.embeddings(tokens), causal=True, pool=pos)  # (B, C) at each row's end-of-text
        return self.final_layer_norm(x)  # (B, C)


def _text(**defaults):
    def build(**overrides) -> TextTransformer:
        return TextTransformer(**{**defaults, **overrides})

    return build


register_encoder("text_tiny", "text", _text(vocab_size=259, context_length=64, width=192, layers=4, heads=3))
register_encoder("text_small", "text", _text(context_length=77, width=384, layers=12, heads=6))
register_encoder("text_b", "text", _text(context_length=77, width=512, layers=12, heads=8))
register_encoder("text_l", "text", _text(context_length=77, width=768, layers=12, heads=12))
