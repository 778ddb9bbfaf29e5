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

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOCAL_LOSSES",
    "LOSSES",
    "clip_loss",
    "clip_loss_local",
    "content_ids",
    "siglip_loss",
    "siglip_loss_local",
]


def content_ids(strings: list[str]) -> Tensor:
    """Stable int64 id per distinct string: equal strings get equal ids, in order of first appearance.

    Returns a (len(strings),) int64 tensor, e.g. ["a", "b", "a"] -> [0, 1, 0].
    """
    first: dict[str, int] = {}
    return torch.tensor([first.setdefault(s, len(first)) for s in strings], dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# Positive pairs


class _Positives:
    """Which (row, column) pairs are positives, for rows offset..offset+m-1 against columns 0..n-1.

    Rows and columns are pair indices (image i and text i form pair i). Ids are per pair: rows carry the ids of
    their own pairs, columns those of all pairs. Computes boolean tiles on demand so the (m, n) mask is never
    held unless a caller asks for all of it.
    """

    def __init__(
        self,
        offset: int,
        row_text_ids: Tensor | None,  # (m,)
        row_image_ids: Tensor | None,  # (m,)
        col_text_ids: Tensor | None,  # (n,)
        col_image_ids: Tensor | None,  # (n,)
    ) -> None:
        self.offset = offset
        self.row_text_ids, self.col_text_ids = row_text_ids, col_text_ids
        self.row_image_ids, self.col_image_ids = row_image_ids, col_image_ids
        self.has_ids = row_text_ids is not None or row_image_ids is not None

    def tile(self, r0: int, r1: int, c0: int, c1: int, device: torch.device) -> Tensor | None:
        """(r1-r0, c1-c0) bool mask for local rows r0:r1 and columns c0:c1, or None when the tile has no positive."""
        g0, g1 = self.offset + r0, self.offset + r1  # global pair indices of these rows
        diagonal_hits = g0 < c1 and c0 < g1
        if not self.has_ids and not diagonal_hits:
            return None
        rows = torch.arange(g0, g1, device=device)[:, None]  # (r, 1)
        cols = torch.arange(c0, c1, device=device)[None, :]  # (1, c)
        mask = rows == cols  # (r, c)
        for row_ids, col_ids in ((self.row_text_ids, self.col_text_ids), (self.row_image_ids, self.col_image_ids)):
            if row_ids is not None:
                mask |= row_ids[r0:r1, None] == col_ids[None, c0:c1]
        return mask


def _positives(
    m: int,
    n: int,
    offset: int,
    image_ids: Tensor | None,
    text_ids: Tensor | None,
    all_image_ids: Tensor | None,
    all_text_ids: Tensor | None,
) -> _Positives:
    """Validate ids and build the positive-pair description for m local rows against n columns."""
    if not 0 <= offset <= n - m:
        raise ValueError(f"offset={offset} puts {m} local rows outside the {n} gathered columns")
    pairs = []
    for name, local, full in (("text_ids", text_ids, all_text_ids), ("image_ids", image_ids, all_image_ids)):
        if full is None and local is not None and m == n:
            full = local  # global loss: the local rows are all rows
        if full is None:
            if local is not None:
                raise ValueError(f"{name} given without all_{name}: pass the ids of every gathered pair too")
            pairs.append((None, None))
            continue
        if local is None:
            local = full[offset : offset + m]
        if local.shape != (m,) or full.shape != (n,):
            raise ValueError(f"{name} must have shape ({m},) and all_{name} ({n},), got {tuple(local.shape)} "
                             f"and {tuple(full.shape)}")
        pairs.append((local, full))
    (row_t, col_t), (row_i, col_i) = pairs
    return _Positives(offset, row_t, row_i, col_t, col_i)


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows (or None for the plain loss), got {chunk_size}")


# ----------------------------------------------------------------------------------------------------------------
# Plain losses (hold the logits)


def _soft_ce(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over rows of CE with targets uniform over each row's positives; mask None means the diagonal."""
    if mask is None:  # (m, n) with m == n
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
    targets = mask.to(logits.dtype)  # (m, n)
    return F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True))


def _full_mask(pos: _Positives, m: int, n: int, device: torch.device) -> Tensor | None:
    return pos.tile(0, m, 0, n, device) if pos.has_ids else None


def _plain_clip(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives) -> Tensor:
    logits = scale * image @ text.T  # (B, B)
    if bias is not None:
        logits = logits + bias
    mask = _full_mask(pos, *logits.shape, logits.device)
    return (_soft_ce(logits, mask) + _soft_ce(logits.T, None if mask is None else mask.T)) / 2


def _plain_sigmoid(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives) -> Tensor:
    """Sum over all (row, column) pairs of -log σ(z·logit), z = +1 on positives and -1 elsewhere."""
    logits = scale * rows @ cols.T  # (m, n)
    if bias is not None:
        logits = logits + bias
    m, n = logits.shape
    mask = pos.tile(0, m, 0, n, logits.device)  # (m, n); never None here since it includes the diagonal
    z = 2 * mask.to(logits.dtype) - 1 if mask is not None else -torch.ones_like(logits)
    return -F.logsigmoid(z * logits).sum()


# ----------------------------------------------------------------------------------------------------------------
# Tiled exact losses (never hold more than a chunk x chunk tile of logits)


def _tiles(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


class _TiledSoftmaxCE(torch.autograd.Function):
    """Σ_i CE over rows (and/or Σ_j CE over columns) of logits = scale · A @ Cᵀ + bias with soft targets.

    For rows: Σ_i [LSE_j(L_ij) − Σ_j P_ij L_ij / n_i] with n_i = Σ_j P_ij; columns likewise over i. The caller
    divides by the number of terms. dLoss/dL_ij = softmax_row_ij + softmax_col_ij − P_ij (1/n_i + 1/n_j), which
    the backward recomputes per tile from the saved LSEs and positive counts.
    """

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives, chunk: int,
                do_rows: bool, do_cols: bool) -> Tensor:
        dtype = torch.promote_types(a.dtype, c.dtype)
        a, c = a.to(dtype), c.to(dtype)  # (m, D), (n, D)
        m, n = a.shape[0], c.shape[0]
        s = scale.float()
        b = bias.float() if bias is not None else None
        acc = dict(device=a.device, dtype=torch.float32)
        lse_r, lse_c = torch.full((m,), -torch.inf, **acc), torch.full((n,), -torch.inf, **acc)
        pos_sum_r, pos_sum_c = torch.zeros(m, **acc), torch.zeros(n, **acc)  # Σ of positive logits
        cnt_r, cnt_c = torch.zeros(m, **acc), torch.zeros(n, **acc)  # number of positives
        for r0, r1 in _tiles(m, chunk):
            for c0, c1 in _tiles(n, chunk):
                logits = s * (a[r0:r1] @ c[c0:c1].T).float()  # (r, c)
                if b is not None:
                    logits = logits + b
                if do_rows:
                    lse_r[r0:r1] = torch.logaddexp(lse_r[r0:r1], logits.logsumexp(dim=1))
                if do_cols:
                    lse_c[c0:c1] = torch.logaddexp(lse_c[c0:c1], logits.logsumexp(dim=0))
                mask = pos.tile(r0, r1, c0, c1, a.device)  # (r, c) or None
                if mask is not None:
                    pos_logits = torch.where(mask, logits, 0.0)
                    pos_sum_r[r0:r1] += pos_logits.sum(dim=1)
                    pos_sum_c[c0:c1] += pos_logits.sum(dim=0)
                    cnt_r[r0:r1] += mask.sum(dim=1)
                    cnt_c[c0:c1] += mask.sum(dim=0)
        loss = torch.zeros((), **acc)
        if do_rows:
            loss = loss + (lse_r - pos_sum_r / cnt_r).sum()
        if do_cols:
            loss = loss + (lse_c - pos_sum_c / cnt_c).sum()
        ctx.save_for_backward(a, c, scale, bias, lse_r, lse_c, cnt_r, cnt_c)
        ctx.pos, ctx.chunk, ctx.do_rows, ctx.do_cols = pos, chunk, do_rows, do_cols
        ctx.in_dtypes = (ctx.saved_tensors[0].dtype,)  # only to keep the Function's state explicit
        return loss.to(scale.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, c, scale, bias, lse_r, lse_c, cnt_r, cnt_c = ctx.saved_tensors
        pos, chunk = ctx.pos, ctx.chunk
        m, n = a.shape[0], c.shape[0]
        g, s = grad.float(), scale.float()
        b = bias.float() if bias is not None else None
        inv_r, inv_c = 1.0 / cnt_r, 1.0 / cnt_c  # (m,), (n,)
        grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)  # (m, D)
        grad_c = torch.zeros(c.shape, dtype=torch.float32, device=c.device)  # (n, D)
        grad_s = torch.zeros((), dtype=torch.float32, device=a.device)
        grad_b = torch.zeros((), dtype=torch.float32, device=a.device)
        for r0, r1 in _tiles(m, chunk):
            for c0, c1 in _tiles(n, chunk):
                cos = (a[r0:r1] @ c[c0:c1].T).float()  # (r, c)
                logits = s * cos if b is None else s * cos + b
                dl = torch.zeros_like(logits)  # dLoss/dlogits, (r, c)
                if ctx.do_rows:
                    dl += torch.exp(logits - lse_r[r0:r1, None])
                if ctx.do_cols:
                    dl += torch.exp(logits - lse_c[None, c0:c1])
                mask = pos.tile(r0, r1, c0, c1, a.device)
                if mask is not None:
                    weight = torch.zeros_like(logits)
                    if ctx.do_rows:
                        weight += inv_r[r0:r1, None]
                    if ctx.do_cols:
                        weight += inv_c[None, c0:c1]
                    dl -= torch.where(mask, weight, 0.0)
                dl *= g
                grad_s += (dl * cos).sum()
                grad_b += dl.sum()
                dl_lo = dl.to(a.dtype)
                grad_a[r0:r1] += (dl_lo @ c[c0:c1]).float()
                grad_c[c0:c1] += (dl_lo.T @ a[r0:r1]).float()
        grad_a, grad_c = grad_a * s, grad_c * s
        return (grad_a.to(a.dtype), grad_c.to(c.dtype), grad_s.to(scale.dtype),
                grad_b.to(bias.dtype) if bias is not None else None, None, None, None, None)


class _TiledSigmoid(torch.autograd.Function):
    """Σ_ij −log σ(z_ij · L_ij) over all (row, column) pairs, L = scale · A @ Cᵀ + bias, computed tile by tile."""

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives, chunk: int) -> Tensor:
        dtype = torch.promote_types(a.dtype, c.dtype)
        a, c = a.to(dtype), c.to(dtype)  # (m, D), (n, D)
        s = scale.float()
        b = bias.float() if bias is not None else None
        loss = torch.zeros((), dtype=torch.float32, device=a.device)
        for r0, r1 in _tiles(a.shape[0], chunk):
            for c0, c1 in _tiles(c.shape[0], chunk):
                logits = s * (a[r0:r1] @ c[c0:c1].T).float()  # (r, c)
                if b is not None:
                    logits = logits + b
                loss -= F.logsigmoid(_signs(pos, r0, r1, c0, c1, logits) * logits).sum()
        ctx.save_for_backward(a, c, scale, bias)
        ctx.pos, ctx.chunk = pos, chunk
        return loss.to(scale.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, c, scale, bias = ctx.saved_tensors
        g, s = grad.float(), scale.float()
        b = bias.float() if bias is not None else None
        grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)  # (m, D)
        grad_c = torch.zeros(c.shape, dtype=torch.float32, device=c.device)  # (n, D)
        grad_s = torch.zeros((), dtype=torch.float32, device=a.device)
        grad_b = torch.zeros((), dtype=torch.float32, device=a.device)
        for r0, r1 in _tiles(a.shape[0], ctx.chunk):
            for c0, c1 in _tiles(c.shape[0], ctx.chunk):
                cos = (a[r0:r1] @ c[c0:c1].T).float()  # (r, c)
                logits = s * cos if b is None else s * cos + b
                z = _signs(ctx.pos, r0, r1, c0, c1, logits)
                dl = -g * z * torch.sigmoid(-z * logits)  # d(−log σ(z·L))/dL, (r, c)
                grad_s += (dl * cos).sum()
                grad_b += dl.sum()
                dl_lo = dl.to(a.dtype)
                grad_a[r0:r1] += (dl_lo @ c[c0:c1]).float()
                grad_c[c0:c1] += (dl_lo.T @ a[r0:r1]).float()
        grad_a, grad_c = grad_a * s, grad_c * s
        return (grad_a.to(a.dtype), grad_c.to(c.dtype), grad_s.to(scale.dtype),
                grad_b.to(bias.dtype) if bias is not None else None, None, None)


def _signs(pos: _Positives, r0: int, r1: int, c0: int, c1: int, logits: Tensor) -> Tensor:
    """(r, c) labels z: +1 on positive pairs, −1 elsewhere."""
    mask = pos.tile(r0, r1, c0, c1, logits.device)
    if mask is None:
        return torch.full_like(logits, -1.0)
    return 2 * mask.to(logits.dtype) - 1


# ----------------------------------------------------------------------------------------------------------------
# Public losses


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
    _check_chunk(chunk_size)
    bsz = image_features.shape[0]
    pos = _positives(bsz, bsz, 0, image_ids, text_ids, None, None)
    if chunk_size is None:
        return _plain_clip(image_features, text_features, logit_scale, logit_bias, pos)
    total = _TiledSoftmaxCE.apply(image_features, text_features, logit_scale, logit_bias, pos, chunk_size,
                                  True, True)
    return total / (2 * bsz)


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
    _check_chunk(chunk_size)
    bsz = image_features.shape[0]
    pos = _positives(bsz, bsz, 0, image_ids, text_ids, None, None)
    if chunk_size is None:
        total = _plain_sigmoid(image_features, text_features, logit_scale, logit_bias, pos)
    else:
        total = _TiledSigmoid.apply(image_features, text_features, logit_scale, logit_bias, pos, chunk_size)
    return total / bsz


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
    batch, and holds only (b, N) logits (or a tile of them with `chunk_size`).

    Args:
        local_image, local_text: (b, D) this rank's features (rows offset..offset+b-1 of the gathered batch).
        all_image, all_text: (N, D) gathered features of every rank, gathered with autograd.
        logit_scale, logit_bias: 0-dim, as in `clip_loss`.
        offset: index of this rank's first pair in the gathered batch.
        image_ids, text_ids: (b,) local content ids; sliced from the gathered ids when omitted.
        all_image_ids, all_text_ids: (N,) gathered content ids.
        chunk_size: as in `clip_loss`.

    Returns:
        0-dim loss.
    """
    _check_chunk(chunk_size)
    b, n = local_image.shape[0], all_text.shape[0]
    pos = _positives(b, n, offset, image_ids, text_ids, all_image_ids, all_text_ids)
    if chunk_size is None:
        mask = _full_mask(pos, b, n, local_image.device)  # (b, N); None means labels offset + arange(b)
        per_image = logit_scale * local_image @ all_text.T  # (b, N)
        per_text = logit_scale * local_text @ all_image.T  # (b, N)
        if logit_bias is not None:
            per_image, per_text = per_image + logit_bias, per_text + logit_bias
        if mask is None:
            labels = torch.arange(offset, offset + b, device=local_image.device)
            return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
        return (_soft_ce(per_image, mask) + _soft_ce(per_text, mask)) / 2
    total = (_TiledSoftmaxCE.apply(local_image, all_text, logit_scale, logit_bias, pos, chunk_size, True, False)
             + _TiledSoftmaxCE.apply(local_text, all_image, logit_scale, logit_bias, pos, chunk_size, True, False))
    return total / (2 * b)


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
    can pick either from `LOCAL_LOSSES`. Shapes as in `clip_loss_local`.

    Returns:
        0-dim loss.
    """
    del local_text, all_image  # each pair is covered by the image rows alone
    _check_chunk(chunk_size)
    b, n = local_image.shape[0], all_text.shape[0]
    pos = _positives(b, n, offset, image_ids, text_ids, all_image_ids, all_text_ids)
    if chunk_size is None:
        total = _plain_sigmoid(local_image, all_text, logit_scale, logit_bias, pos)
    else:
        total = _TiledSigmoid.apply(local_image, all_text, logit_scale, logit_bias, pos, chunk_size)
    return total / b


LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss, "siglip": siglip_loss}
LOCAL_LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss_local, "siglip": siglip_loss_local}
