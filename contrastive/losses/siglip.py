"""SigLIP's loss: a sigmoid per (image, text) pair, plain, tiled and per rank."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .logits import TiledLogitReduction, check_chunk, out_dtype, scaled_logits
from .positives import Positives, find_positives, positive_logits


def _plain_sigmoid(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: Positives) -> Tensor:
    """Σ over all (row, column) pairs of −log σ(z·logit), z = +1 on positives and −1 elsewhere."""
    logits = scaled_logits(rows, cols, scale, bias)  # (m, n)
    signs = 2 * pos.mask(logits.device).to(logits.dtype) - 1  # (m, n)
    return -F.logsigmoid(signs * logits).sum()


def siglip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor | None,
    *,
    image_ids: Tensor | None = None,
    text_ids: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Pairwise sigmoid loss: −Σ_ij log σ(z_ij · logit_ij) / B, z = +1 on positive pairs and −1 elsewhere.

    Args and shapes as in `clip_loss`; `logit_bias` (0-dim) is part of the SigLIP model but may be None.

    Returns:
        0-dim loss.
    """
    check_chunk(chunk_size)
    bsz = image_features.shape[0]
    pos = find_positives(bsz, bsz, 0, image_ids, text_ids, None, None, image_features.device)
    return _sigmoid_total(image_features, text_features, logit_scale, logit_bias, pos, chunk_size) / bsz


def siglip_loss_local(
    local_image: Tensor,
    local_text: Tensor,
    all_image: Tensor,
    all_text: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor | None,
    *,
    offset: int,
    image_ids: Tensor | None = None,
    text_ids: Tensor | None = None,
    all_image_ids: Tensor | None = None,
    all_text_ids: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """This rank's share of `siglip_loss`: its b images against all N texts, divided by b.

    Every (image, text) pair is scored on exactly one rank, so the mean over ranks equals `siglip_loss` on the
    gathered batch. `local_text` and `all_image` are unused; the signature matches `clip_loss_local` so a trainer
    can take either from `LOCAL_LOSSES`. Shapes as in `clip_loss_local`.

    Returns:
        0-dim loss.
    """
    del local_text, all_image  # the image rows alone cover every pair once across ranks
    check_chunk(chunk_size)
    b, n = local_image.shape[0], all_text.shape[0]
    pos = find_positives(b, n, offset, image_ids, text_ids, all_image_ids, all_text_ids, local_image.device)
    return _sigmoid_total(local_image, all_text, logit_scale, logit_bias, pos, chunk_size) / b


def _sigmoid_total(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: Positives,
                   chunk_size: int | None) -> Tensor:
    if chunk_size is None:
        return _plain_sigmoid(rows, cols, scale, bias, pos)
    softplus = TiledLogitReduction.apply(rows, cols, scale, bias, chunk_size, "sigmoid", True, True)
    return (softplus - positive_logits(rows, cols, scale, bias, pos, False)).to(out_dtype(rows, scale))
