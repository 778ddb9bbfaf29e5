"""Embedding loops: many images (by path) or captions through a model in batches, without grad, under autocast
when asked. Evaluation, caption ranking and the search collection's text queries share them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..data.bad import BadSample
from ..data.images import decode_image
from ..data.samples import trim_padding
from ..errors import DataError
from ..model import ContrastiveModel, autocast_context


@dataclass
class Throughput:
    """Where the time of embedding went: reading and decoding images (with their preprocessing) vs forward passes
    (the device synchronised before each clock read, so queued GPU work is counted where it ran)."""

    images: int = 0
    decode_s: float = 0.0  # read, decode, preprocess
    image_forward_s: float = 0.0
    texts: int = 0
    text_s: float = 0.0  # tokenize + forward

    def report(self, wall_s: float) -> dict[str, float]:
        """The figures an `eval` result carries, images/s over the whole evaluation's `wall_s`."""
        return {"images": self.images, "images_per_s": round(self.images / max(wall_s, 1e-9), 1),
                "decode_s": round(self.decode_s, 2), "image_forward_s": round(self.image_forward_s, 2),
                "texts": self.texts, "text_s": round(self.text_s, 2), "wall_s": round(wall_s, 2)}


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def embed_images(model: ContrastiveModel, paths: list[str], preprocess: Callable, *, batch_size: int = 256,
                 device: torch.device | str = "cpu", precision: str = "fp32",
                 timing: Throughput | None = None) -> torch.Tensor:
    """(N, D) normalised image embeddings, fp32, computed in batches without grad (under autocast when asked); only
    one batch of pixels exists at a time. `timing` adds up where the time went."""
    device = torch.device(device)
    timing = timing if timing is not None else Throughput()
    out = []
    for i in range(0, len(paths), batch_size):
        t0 = time.perf_counter()
        pixels = []
        for p in paths[i : i + batch_size]:
            try:  # decoded as training decodes: EXIF orientation, RGB, the same pixel-count guard
                img = decode_image(p)
            except BadSample as e:
                raise DataError(f"evaluation image {p}: {e}") from None
            with img:
                pixels.append(preprocess(img))
        t1 = _clock(device)
        with autocast_context(device, precision):
            out.append(model.encode_image(torch.stack(pixels).to(device)).float())
        t2 = _clock(device)
        timing.images, timing.decode_s, timing.image_forward_s = (
            timing.images + len(pixels), timing.decode_s + t1 - t0, timing.image_forward_s + t2 - t1)
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: ContrastiveModel, texts: list[str], tokenizer: Callable, *, batch_size: int = 256,
                device: torch.device | str = "cpu", precision: str = "fp32",
                timing: Throughput | None = None) -> torch.Tensor:
    """(N, D) normalised text embeddings, fp32."""
    device = torch.device(device)
    out = []
    t0 = _clock(device)
    for i in range(0, len(texts), batch_size):
        # padding every caption of the chunk shares is cut (the features are the same; see data.loader.trim_padding)
        tokens = trim_padding(tokenizer(texts[i : i + batch_size]), getattr(tokenizer, "pad_token_id", None))
        tokens = {k: v.to(device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(device)
        with autocast_context(device, precision):
            out.append(model.encode_text(tokens).float())
    if timing is not None:
        timing.texts, timing.text_s = timing.texts + len(texts), timing.text_s + _clock(device) - t0
    return torch.cat(out)
