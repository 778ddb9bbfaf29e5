"""Zero-shot caption ranking: score candidate captions for each image with the model's own logits.

For image i and caption j: cosine_ij = img_i · txt_j (both normalised), logit_ij = scale · cosine_ij (+ bias), and
probability_ij = softmax over the candidate captions j of logit_ij. The bias (SigLIP-style models) shifts every
logit of a row equally, so it leaves the probabilities unchanged; it is reported in the logits all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .embedding import embed_images, embed_texts
from .metrics import rank_probabilities
from ..model import ContrastiveModel


@dataclass
class CaptionScore:
    caption: str
    probability: float  # softmax over this image's candidate captions
    cosine: float  # cosine similarity of the image and caption embeddings
    logit: float  # logit_scale * cosine (+ logit_bias)


@dataclass
class CaptionRanking:
    image: str
    captions: list[CaptionScore]  # best first (ties keep the order the captions were given in)


def check_images(paths: Sequence[str | Path]) -> list[str]:
    """The paths as strings, after checking each one is a readable image (DataError otherwise)."""
    out = []
    for p in paths:
        if Path(p).is_dir():
            raise DataError(f"{p} is a directory; give image files (a shell glob such as {Path(p) / '*.jpg'})")
        if not Path(p).is_file():
            raise DataError(f"image not found: {p}")
        try:
            with Image.open(p) as img:
                img.verify()
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p}: not a readable image ({e})") from None
        out.append(str(p))
    return out


@torch.no_grad()
def score_captions(model: ContrastiveModel, preprocess: Callable, tokenizer: Callable, images: Sequence[str | Path],
                   captions: Sequence[str], *, batch_size: int = 256, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> dict[str, torch.Tensor]:
    """{"cosine", "logit", "probability"}, each (N_img, N_txt) fp32 on the CPU; probability rows sum to 1."""
    if not images or not captions:
        raise DataError("caption ranking needs at least one image and one caption")
    was_training = model.training
    model.eval()
    try:
        image_embeds = embed_images(model, check_images(images), preprocess, batch_size=batch_size, device=device,
                                    precision=precision)  # (N_img, D)
        text_embeds = embed_texts(model, list(captions), tokenizer, batch_size=batch_size, device=device,
                                  precision=precision)  # (N_txt, D)
    finally:
        model.train(was_training)
    bias = None if model.logit_bias is None else model.logit_bias.float()
    scores = rank_probabilities(image_embeds, text_embeds, model.logit_scale.float().exp(), bias)
    return {k: v.float().cpu() for k, v in scores.items()}


def rank_captions(model: ContrastiveModel, preprocess: Callable, tokenizer: Callable, images: Sequence[str | Path],
                  captions: Sequence[str], *, top_k: int | None = None, batch_size: int = 256,
                  device: torch.device | str = "cpu", precision: str = "fp32") -> list[CaptionRanking]:
    """Per image, the captions sorted by probability (the `top_k` best when given)."""
    if top_k is not None and top_k < 1:
        raise DataError(f"top-k must be >= 1, got {top_k}")
    scores = score_captions(model, preprocess, tokenizer, images, captions, batch_size=batch_size, device=device,
                            precision=precision)
    return rankings_from_scores(images, captions, scores, top_k)


def rankings_from_scores(images: Sequence[str | Path], captions: Sequence[str], scores: dict[str, torch.Tensor],
                         top_k: int | None = None) -> list[CaptionRanking]:
    rankings = []
    for i, image in enumerate(images):
        order = torch.sort(scores["probability"][i], descending=True, stable=True).indices.tolist()
        rankings.append(CaptionRanking(str(image), [
            CaptionScore(captions[j], scores["probability"][i, j].item(), scores["cosine"][i, j].item(),
                         scores["logit"][i, j].item())
            for j in order[:top_k]
        ]))
    return rankings


def rankings_to_json(rankings: list[CaptionRanking]) -> list[dict[str, Any]]:
    """[{"image": path, "captions": [{"caption", "probability", "cosine", "logit"}, ...]}, ...], best first."""
    return [{"image": r.image, "captions": [asdict(c) for c in r.captions]} for r in rankings]


def format_rankings(rankings: list[CaptionRanking]) -> str:
    """A plain-text table per image: rank, probability, cosine, logit, caption."""
    lines = []
    for r in rankings:
        lines.append(r.image)
        lines.append(f"  {'rank':>4}  {'prob':>6}  {'cosine':>7}  {'logit':>7}  caption")
        for n, c in enumerate(r.captions, 1):
            lines.append(f"  {n:>4}  {c.probability:6.4f}  {c.cosine:7.4f}  {c.logit:7.3f}  {c.caption}")
    return "\n".join(lines)
