"""Embedding loops: many images (by path) or captions through a model in batches, without grad, under autocast
when asked. Evaluation, caption ranking and the search collection's text queries share them."""

from __future__ import annotations

from typing import Callable

import torch

from ..data.bad import BadSample
from ..data.images import decode_image
from ..data.samples import trim_padding
from ..errors import DataError
from ..model import ContrastiveModel, autocast_context


@torch.no_grad()
def embed_images(model: ContrastiveModel, paths: list[str], preprocess: Callable, *, batch_size: int = 256,
                 device: torch.device | str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """(N, D) normalised image embeddings, fp32, computed in batches without grad (under autocast when asked)."""
    device = torch.device(device)
    out = []
    for i in range(0, len(paths), batch_size):
        pixels = []
        for p in paths[i : i + batch_size]:
            try:  # decoded as training decodes: EXIF orientation, RGB, the same pixel-count guard
                img = decode_image(p)
            except BadSample as e:
                raise DataError(f"evaluation image {p}: {e}") from None
            with img:
                pixels.append(preprocess(img))
        with autocast_context(device, precision):
            out.append(model.encode_image(torch.stack(pixels).to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: ContrastiveModel, texts: list[str], tokenizer: Callable, *, batch_size: int = 256,
                device: torch.device | str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """(N, D) normalised text embeddings, fp32."""
    device = torch.device(device)
    out = []
    for i in range(0, len(texts), batch_size):
        # padding every caption of the chunk shares is cut (the features are the same; see data.loader.trim_padding)
        tokens = trim_padding(tokenizer(texts[i : i + batch_size]), getattr(tokenizer, "pad_token_id", None))
        tokens = {k: v.to(device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(device)
        with autocast_context(device, precision):
            out.append(model.encode_text(tokens).float())
    return torch.cat(out)
