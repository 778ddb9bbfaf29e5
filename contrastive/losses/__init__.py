"""Contrastive losses: CLIP (symmetric softmax cross-entropy) and SigLIP (pairwise sigmoid).

Every loss takes L2-normalised features, the exponentiated temperature `logit_scale` (0-dim) and an optional
`logit_bias` (0-dim), and returns a 0-dim loss. Two options change what is computed or how:

- `image_ids` / `text_ids` (B,) int64 mark identical content (see `content_ids`). Pair (image i, text j) is a
  positive when i == j, or text i and text j are the same caption, or image i and image j are the same image, so
  that a batch holding one caption twice is not taught to push the two apart. CLIP spreads each row's (and
  column's) target uniformly over its positives; SigLIP labels every positive +1. All-distinct ids give exactly
  the plain losses.
- `chunk_size=N` computes the same value and gradients exactly while only ever holding an (N, N) tile of logits:
  the forward streams log-sum-exp over tiles, the backward recomputes each tile (custom autograd Functions), so
  memory is O(B·D + N²) instead of O(B²).

`clip_loss_local` / `siglip_loss_local` score one rank's rows against all gathered columns; their mean over ranks
equals the global loss on the gathered batch, which is what distributed training needs.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .clip import clip_loss, clip_loss_local
from .positives import content_ids
from .siglip import siglip_loss, siglip_loss_local

# the choice of loss by name (`loss.name`): the whole-batch form, and one rank's share of it
LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss, "siglip": siglip_loss}
LOCAL_LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss_local, "siglip": siglip_loss_local}

__all__ = [
    "LOCAL_LOSSES",
    "LOSSES",
    "clip_loss",
    "clip_loss_local",
    "content_ids",
    "siglip_loss",
    "siglip_loss_local",
]
