"""Evaluation of a model on a held-out table: embeddings in batches, then retrieval and caption-ranking metrics."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from PIL import Image

from .data import Record
from .model import ContrastiveModel


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_images(model: ContrastiveModel, paths: list[str], preprocess: Callable, *, batch_size: int = 256,
                 device: torch.device | str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """(N, D) normalised image embeddings, fp32, computed in batches without grad (under autocast when asked)."""
    device = torch.device(device)
    out = []
    for i in range(0, len(paths), batch_size):
        pixels = []
        for p in paths[i : i + batch_size]:
            with Image.open(p) as img:
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
        tokens = tokenizer(texts[i : i + batch_size])
        tokens = {k: v.to(device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(device)
        with autocast_context(device, precision):
            out.append(model.encode_text(tokens).float())
    return torch.cat(out)


def caption_ranking_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor, captions: list[str],
                             image_captions: list[set[str]]) -> float:
    """Top-1 caption ranking: each image ranks the distinct captions of the set; a hit is one of its own captions.

    image_embeds (N, D); text_embeds (M, D) for `captions` (distinct strings); image_captions[i] the captions of
    image i. Chance is about 1 / M.
    """
    best = (image_embeds @ text_embeds.T).argmax(dim=1)  # (N,)
    hits = [captions[int(j)] in own for j, own in zip(best, image_captions)]
    return sum(hits) / max(len(hits), 1)


def evaluate_records(model: ContrastiveModel, records: list[Record], preprocess: Callable, tokenizer: Callable, *,
                     batch_size: int = 256, device: torch.device | str = "cpu", precision: str = "fp32") -> dict[str, float]:
    """Retrieval metrics (all captions of each image count) and top-1 caption ranking over distinct captions."""
    from .metrics import retrieval_metrics

    was_training = model.training
    model.eval()
    try:
        image_embeds = embed_images(model, [r.image for r in records], preprocess, batch_size=batch_size, device=device, precision=precision)
        texts, owners = [], []
        for i, r in enumerate(records):
            texts += r.captions
            owners += [i] * len(r.captions)
        text_embeds = embed_texts(model, texts, tokenizer, batch_size=batch_size, device=device, precision=precision)
        metrics = retrieval_metrics(image_embeds, text_embeds, torch.tensor(owners, device=text_embeds.device))
        distinct = sorted(set(texts))
        index = {t: i for i, t in enumerate(texts)}
        distinct_embeds = text_embeds[[index[t] for t in distinct]]
        metrics["caption_ranking_acc1"] = caption_ranking_accuracy(image_embeds, distinct_embeds, distinct, [set(r.captions) for r in records])
        metrics["caption_ranking_chance"] = 1.0 / len(distinct)
    finally:
        model.train(was_training)
    return metrics
