"""CLIP's loss: symmetric softmax cross-entropy over the batch (InfoNCE), plain, tiled and per rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .logits import TiledLogitReduction, check_chunk, out_dtype, scaled_logits
from .positives import find_positives, positive_logits


def _soft_ce(logits: Tensor, mask: Tensor | None, offset: int = 0) -> Tensor:
    """Mean over rows of CE, targets uniform over each row's positives; mask None: target of row i is offset + i."""
    if mask is None:  # (m, n)
        labels = torch.arange(offset, offset + logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, labels)
    targets = mask.to(logits.dtype)  # (m, n)
    return F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True))


def clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor | None = None,
    *,
    image_ids: Tensor | None = None,
    text_ids: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Symmetric InfoNCE: mean of CE(logits_per_image) and CE(logits_per_text).

    Args:
        image_features: (B, D) L2-normalised image embeddings.
        text_features: (B, D) L2-normalised text embeddings; text i pairs with image i.
        logit_scale: 0-dim, already exponentiated temperature.
        logit_bias: 0-dim or None, added to every logit.
        image_ids, text_ids: (B,) int64 content ids; pairs sharing a caption or an image count as positives.
        chunk_size: if set, compute exactly with (chunk_size, chunk_size) tiles instead of the (B, B) logits.

    Returns:
        0-dim loss.
    """
    check_chunk(chunk_size)
    bsz = image_features.shape[0]
    pos = find_positives(bsz, bsz, 0, image_ids, text_ids, None, None, image_features.device)
    if chunk_size is None:
        logits = scaled_logits(image_features, text_features, logit_scale, logit_bias)  # (B, B)
        mask = pos.mask(logits.device) if pos.has_ids else None  # (B, B), symmetric
        return (_soft_ce(logits, mask) + _soft_ce(logits.T, mask)) / 2
    lse = TiledLogitReduction.apply(image_features, text_features, logit_scale, logit_bias, chunk_size,
                                     "softmax", True, True)
    positives = (positive_logits(image_features, text_features, logit_scale, logit_bias, pos, True)
                 + positive_logits(text_features, image_features, logit_scale, logit_bias, pos, True))
    return ((lse - positives) / (2 * bsz)).to(out_dtype(image_features, logit_scale))


def clip_loss_local(
    local_image: Tensor,
    local_text: Tensor,
    all_image: Tensor,
    all_text: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor | None = None,
    *,
    offset: int,
    image_ids: Tensor | None = None,
    text_ids: Tensor | None = None,
    all_image_ids: Tensor | None = None,
    all_text_ids: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """This rank's share of `clip_loss`: its b images against all N texts and its b texts against all N images.

    With equal b on every rank and offset = rank · b, the mean over ranks equals `clip_loss` on the gathered
    batch, while each rank holds only (b, N) logits (or one tile of them with `chunk_size`).

    Args:
        local_image, local_text: (b, D) this rank's features, pairs offset..offset+b-1 of the gathered batch.
        all_image, all_text: (N, D) features of every rank, gathered with autograd.
        logit_scale, logit_bias: 0-dim, as in `clip_loss`.
        offset: index of this rank's first pair in the gathered batch.
        image_ids, text_ids: (b,) local content ids; optional, must equal all_*_ids[offset:offset + b].
        all_image_ids, all_text_ids: (N,) gathered content ids.
        chunk_size: as in `clip_loss`.

    Returns:
        0-dim loss.
    """
    check_chunk(chunk_size)
    b, n = local_image.shape[0], all_text.shape[0]
    pos = find_positives(b, n, offset, image_ids, text_ids, all_image_ids, all_text_ids, local_image.device)
    if chunk_size is None:
        mask = pos.mask(local_image.device) if pos.has_ids else None  # (b, N)
        per_image = scaled_logits(local_image, all_text, logit_scale, logit_bias)  # (b, N)
        per_text = scaled_logits(local_text, all_image, logit_scale, logit_bias)  # (b, N)
        return (_soft_ce(per_image, mask, offset) + _soft_ce(per_text, mask, offset)) / 2
    total = 0
    for rows, cols in ((local_image, all_text), (local_text, all_image)):
        lse = TiledLogitReduction.apply(rows, cols, logit_scale, logit_bias, chunk_size, "softmax", True, False)
        total = total + lse - positive_logits(rows, cols, logit_scale, logit_bias, pos, True)
    return (total / (2 * b)).to(out_dtype(local_image, logit_scale))
