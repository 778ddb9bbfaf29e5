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

    Rows and columns are pair indices (image i and text i form pair i); ids are per pair. Besides the explicit
    mask (plain losses), it sums any per-column quantity over each row's positives in O((m + n)·D) through group
    sums: positives of row i = {same text} ∪ {same image} ∪ {itself}, and by inclusion-exclusion
    Σ_{j∈P_i} v_j = Σ_{same text} v_j + Σ_{same image} v_j − Σ_{same text and image} v_j. This is what lets the
    tiled losses handle duplicates without touching the tiles.
    """

    def __init__(self, offset: int, m: int, n: int, text_ids: Tensor | None, image_ids: Tensor | None,
                 device: torch.device) -> None:
        self.offset, self.m, self.n = offset, m, n
        self.text_ids, self.image_ids = text_ids, image_ids  # (n,) each, ids of every column's pair
        self.has_ids = text_ids is not None or image_ids is not None
        dense = [_dense_ids(ids) for ids in (text_ids, image_ids) if ids is not None]
        self._diagonal_only = not dense
        if not dense:  # only the pair itself: group = column index
            groups = [(1, torch.arange(n, device=device), n)]
        elif len(dense) == 1:
            groups = [(1, *dense[0])]
        else:
            (text_group, num_text), (image_group, num_image) = dense
            groups = [(1, text_group, num_text), (1, image_group, num_image),
                      (-1, *_dense_ids(text_group * num_image + image_group))]
        # (sign, group of each column (n,), number of groups)
        self._groups = groups

    def mask(self, device: torch.device) -> Tensor:
        """(m, n) bool mask of positive pairs."""
        rows = torch.arange(self.offset, self.offset + self.m, device=device)  # (m,)
        mask = rows[:, None] == torch.arange(self.n, device=device)[None, :]  # (m, n)
        for ids in (self.text_ids, self.image_ids):
            if ids is not None:
                mask |= ids[self.offset : self.offset + self.m, None] == ids[None, :]
        return mask

    def sum_over_columns(self, values: Tensor) -> Tensor:
        """(n, ...) -> (m, ...): out_i = Σ_j P_ij values_j."""
        if self._diagonal_only:
            return values[self.offset : self.offset + self.m]
        out = 0
        for sign, group, num in self._groups:
            per_group = values.new_zeros((num, *values.shape[1:])).index_add_(0, group, values)  # (num, ...)
            out = out + sign * per_group[group[self.offset : self.offset + self.m]]
        return out


def _dense_ids(ids: Tensor) -> tuple[Tensor, int]:
    """Arbitrary int ids (n,) -> (ids relabelled into 0..n-1, n): equal ids share a label.

    Sort-based and of static size, so it never reads a count back to the host (torch.unique would: a GPU sync
    every step); the n bound only sizes the group-sum buffers, whose unused rows stay zero.
    """
    n = ids.shape[0]
    sorted_ids, order = torch.sort(ids)  # (n,), (n,)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)  # (n,) True where a new id begins
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    labels = torch.cumsum(starts, 0) - 1  # (n,) label of each sorted position
    return torch.empty_like(labels).scatter_(0, order, labels), n


def _positives(
    m: int,
    n: int,
    offset: int,
    image_ids: Tensor | None,
    text_ids: Tensor | None,
    all_image_ids: Tensor | None,
    all_text_ids: Tensor | None,
    device: torch.device,
) -> _Positives:
    """Validate ids and describe the positives of m local rows (pairs offset..offset+m-1) among n columns."""
    if not 0 <= offset <= n - m:
        raise ValueError(f"offset={offset} puts {m} local rows outside the {n} gathered columns")
    full_ids = []
    for name, local, full in (("text_ids", text_ids, all_text_ids), ("image_ids", image_ids, all_image_ids)):
        full_name = f"all_{name}"
        if full is None and local is not None:
            if m != n:
                raise ValueError(f"{name} given without {full_name}: pass the ids of every gathered pair too")
            full, full_name = local, name  # global loss: the local rows are all rows
        if full is not None and full.shape != (n,):
            raise ValueError(f"{full_name} must have shape ({n},), got {tuple(full.shape)}")
        # a consistency check for callers of the local losses; skipped for device tensors (it would be a host sync)
        if local is not None and local is not full and local.device.type == "cpu" \
                and not torch.equal(local, full[offset : offset + m].to(local.device)):
            raise ValueError(f"{name} must equal all_{name}[offset:offset + {m}] (got shape {tuple(local.shape)})")
        full_ids.append(full)
    return _Positives(offset, m, n, *[None if i is None else i.to(device) for i in full_ids], device)


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows (or None for the plain loss), "
                         f"got {chunk_size}")


# ----------------------------------------------------------------------------------------------------------------
# Plain losses (hold the logits)


def _soft_ce(logits: Tensor, mask: Tensor | None, offset: int = 0) -> Tensor:
    """Mean over rows of CE, targets uniform over each row's positives; mask None: target of row i is offset + i."""
    if mask is None:  # (m, n)
        labels = torch.arange(offset, offset + logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, labels)
    targets = mask.to(logits.dtype)  # (m, n)
    return F.cross_entropy(logits, targets / targets.sum(dim=1, keepdim=True))


def _logits(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    logits = scale * rows @ cols.T  # (m, n)
    return logits if bias is None else logits + bias


def _plain_sigmoid(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives) -> Tensor:
    """Σ over all (row, column) pairs of −log σ(z·logit), z = +1 on positives and −1 elsewhere."""
    logits = _logits(rows, cols, scale, bias)  # (m, n)
    signs = 2 * pos.mask(logits.device).to(logits.dtype) - 1  # (m, n)
    return -F.logsigmoid(signs * logits).sum()


# ----------------------------------------------------------------------------------------------------------------
# Tiled exact losses (never hold more than a chunk x chunk tile of logits)
#
# Both losses split into a part that needs every logit but no labels, and a label part that is linear in the
# logits and so reduces to O(B·D) sums over positives:
#   CLIP rows:  Σ_i CE_i = Σ_i LSE_j(L_ij) − Σ_i mean_{j∈P_i} L_ij             (columns alike)
#   SigLIP:     Σ_ij −log σ(z_ij L_ij) = Σ_ij softplus(L_ij) − Σ_{ij∈P} L_ij
#               (softplus(x) = −log σ(−x) and softplus(x) − x = −log σ(x))
# The autograd Functions below compute the label-free part tile by tile; the positive part is ordinary autograd.


def _tiles(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def _tile_logits(a: Tensor, c: Tensor, s: Tensor, b: Tensor | None, acc_dtype: torch.dtype) -> Tensor:
    """(r, D), (c, D) -> (r, c) logits in the accumulation dtype, scaled after the matmul so bf16 keeps s exact."""
    logits = (a @ c.T).to(acc_dtype).mul_(s)
    return logits if b is None else logits.add_(b)


class _TiledLogitReduction(torch.autograd.Function):
    """Σ of a label-free reduction of L = scale · A @ Cᵀ + bias, computed over (chunk, chunk) tiles.

    kind "softmax": Σ_i LSE_j(L_ij) (if rows) + Σ_j LSE_i(L_ij) (if cols); dL = softmax_rows + softmax_cols.
    kind "sigmoid": Σ_ij softplus(L_ij); dL = σ(L).
    The forward keeps only O(m + n) statistics; the backward recomputes each tile.
    """

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, chunk: int, kind: str,
                rows: bool, cols: bool) -> Tensor:
        # Forward and backward both run outside autocast, in the features' own dtype, so the tiles the backward
        # recomputes match the saved log-sum-exp exactly.
        with torch.autocast(a.device.type, enabled=False):
            return _TiledLogitReduction._forward(ctx, a, c, scale, bias, chunk, kind, rows, cols)

    @staticmethod
    def _forward(ctx, a: Tensor, c: Tensor, scale: Tensor, bias: Tensor | None, chunk: int, kind: str,
                 rows: bool, cols: bool) -> Tensor:
        dtype = torch.promote_types(a.dtype, c.dtype)
        a, c = a.to(dtype), c.to(dtype)  # (m, D), (n, D)
        acc_dtype = torch.promote_types(dtype, torch.float32)  # low-precision inputs accumulate in fp32
        s, b = scale.to(acc_dtype), None if bias is None else bias.to(acc_dtype)
        m, n = a.shape[0], c.shape[0]
        lse_r = torch.full((m,), -torch.inf, dtype=acc_dtype, device=a.device)  # running LSE per row
        lse_c = torch.full((n,), -torch.inf, dtype=acc_dtype, device=a.device)  # running LSE per column
        total = torch.zeros((), dtype=acc_dtype, device=a.device)
        for r0, r1 in _tiles(m, chunk):
            for c0, c1 in _tiles(n, chunk):
                logits = _tile_logits(a[r0:r1], c[c0:c1], s, b, acc_dtype)  # (r, c)
                if kind == "sigmoid":
                    total += F.softplus(logits).sum()
                    continue
                if rows:
                    lse_r[r0:r1] = torch.logaddexp(lse_r[r0:r1], logits.logsumexp(dim=1))
                if cols:
                    lse_c[c0:c1] = torch.logaddexp(lse_c[c0:c1], logits.logsumexp(dim=0))
        if kind == "softmax":
            total = (lse_r.sum() if rows else 0) + (lse_c.sum() if cols else 0) + total
        ctx.save_for_backward(a, c, scale, bias, lse_r, lse_c)
        ctx.chunk, ctx.kind, ctx.rows, ctx.cols = chunk, kind, rows, cols
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):
            return _TiledLogitReduction._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        a, c, scale, bias, lse_r, lse_c = ctx.saved_tensors
        acc_dtype = lse_r.dtype
        s, b = scale.to(acc_dtype), None if bias is None else bias.to(acc_dtype)
        m, n = a.shape[0], c.shape[0]
        # Σ_j dL_ij c_j and Σ_i dL_ij a_i, before the factor scale: d scale reuses them as Σ_i a_i·(Σ_j dL_ij c_j).
        grad_a = torch.zeros(a.shape, dtype=acc_dtype, device=a.device)  # (m, D)
        grad_c = torch.zeros(c.shape, dtype=acc_dtype, device=c.device)  # (n, D)
        sum_dl = torch.zeros((), dtype=acc_dtype, device=a.device)  # Σ_ij dL_ij, needed for sigmoid's d bias
        for r0, r1 in _tiles(m, ctx.chunk):
            for c0, c1 in _tiles(n, ctx.chunk):
                logits = _tile_logits(a[r0:r1], c[c0:c1], s, b, acc_dtype)  # (r, c)
                if ctx.kind == "sigmoid":
                    dl = logits.sigmoid_()
                    if bias is not None:
                        sum_dl += dl.sum()
                elif ctx.rows and ctx.cols:
                    dl = torch.exp(logits - lse_r[r0:r1, None]).add_(logits.sub_(lse_c[None, c0:c1]).exp_())
                elif ctx.rows:
                    dl = logits.sub_(lse_r[r0:r1, None]).exp_()
                else:
                    dl = logits.sub_(lse_c[None, c0:c1]).exp_()
                dl = dl.to(a.dtype)
                grad_a[r0:r1] += (dl @ c[c0:c1]).to(acc_dtype)
                grad_c[c0:c1] += (dl.T @ a[r0:r1]).to(acc_dtype)
        g = grad.to(acc_dtype)
        grad_scale = g * (a.to(acc_dtype) * grad_a).sum()
        grad_bias = None
        if bias is not None:
            # Σ_ij dL_ij is known without the tiles: each softmax row (column) sums to one.
            if ctx.kind == "sigmoid":
                grad_bias = g * sum_dl
            else:
                grad_bias = g * ((m if ctx.rows else 0) + (n if ctx.cols else 0))
            grad_bias = grad_bias.to(bias.dtype).reshape(bias.shape)
        gs = g * s
        return (grad_a.mul_(gs).to(a.dtype), grad_c.mul_(gs).to(c.dtype),
                grad_scale.to(scale.dtype).reshape(scale.shape), grad_bias, None, None, None, None)


def _positive_logits(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives,
                     mean_per_row: bool) -> Tensor:
    """Σ_i Σ_{j∈P_i} L_ij, or Σ_i mean_{j∈P_i} L_ij, in O((m + n)·D) via group sums.

    rows (m, D) and cols (n, D) are the two towers' features; returns a 0-dim tensor in the accumulation dtype.
    """
    acc_dtype = torch.promote_types(torch.promote_types(rows.dtype, cols.dtype), torch.float32)
    rows, cols = rows.to(acc_dtype), cols.to(acc_dtype)
    counts = pos.sum_over_columns(torch.ones(cols.shape[0], dtype=acc_dtype, device=cols.device))  # (m,) |P_i|
    dots = (rows * pos.sum_over_columns(cols)).sum(dim=1)  # (m,) Σ_{j∈P_i} rows_i·cols_j
    if mean_per_row:
        dots, counts = dots / counts, torch.ones_like(counts)
    total = scale.to(acc_dtype) * dots.sum()
    return total if bias is None else total + bias.to(acc_dtype) * counts.sum()


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
    pos = _positives(bsz, bsz, 0, image_ids, text_ids, None, None, image_features.device)
    if chunk_size is None:
        logits = _logits(image_features, text_features, logit_scale, logit_bias)  # (B, B)
        mask = pos.mask(logits.device) if pos.has_ids else None  # (B, B), symmetric
        return (_soft_ce(logits, mask) + _soft_ce(logits.T, mask)) / 2
    lse = _TiledLogitReduction.apply(image_features, text_features, logit_scale, logit_bias, chunk_size,
                                     "softmax", True, True)
    positives = (_positive_logits(image_features, text_features, logit_scale, logit_bias, pos, True)
                 + _positive_logits(text_features, image_features, logit_scale, logit_bias, pos, True))
    return ((lse - positives) / (2 * bsz)).to(_out_dtype(image_features, logit_scale))


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
    pos = _positives(bsz, bsz, 0, image_ids, text_ids, None, None, image_features.device)
    return _sigmoid_total(image_features, text_features, logit_scale, logit_bias, pos, chunk_size) / bsz


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
    _check_chunk(chunk_size)
    b, n = local_image.shape[0], all_text.shape[0]
    pos = _positives(b, n, offset, image_ids, text_ids, all_image_ids, all_text_ids, local_image.device)
    if chunk_size is None:
        mask = pos.mask(local_image.device) if pos.has_ids else None  # (b, N)
        per_image = _logits(local_image, all_text, logit_scale, logit_bias)  # (b, N)
        per_text = _logits(local_text, all_image, logit_scale, logit_bias)  # (b, N)
        return (_soft_ce(per_image, mask, offset) + _soft_ce(per_text, mask, offset)) / 2
    total = 0
    for rows, cols in ((local_image, all_text), (local_text, all_image)):
        lse = _TiledLogitReduction.apply(rows, cols, logit_scale, logit_bias, chunk_size, "softmax", True, False)
        total = total + lse - _positive_logits(rows, cols, logit_scale, logit_bias, pos, True)
    return (total / (2 * b)).to(_out_dtype(local_image, logit_scale))


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
    _check_chunk(chunk_size)
    b, n = local_image.shape[0], all_text.shape[0]
    pos = _positives(b, n, offset, image_ids, text_ids, all_image_ids, all_text_ids, local_image.device)
    return _sigmoid_total(local_image, all_text, logit_scale, logit_bias, pos, chunk_size) / b


def _sigmoid_total(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: _Positives,
                   chunk_size: int | None) -> Tensor:
    if chunk_size is None:
        return _plain_sigmoid(rows, cols, scale, bias, pos)
    softplus = _TiledLogitReduction.apply(rows, cols, scale, bias, chunk_size, "sigmoid", True, True)
    return (softplus - _positive_logits(rows, cols, scale, bias, pos, False)).to(_out_dtype(rows, scale))


def _out_dtype(features: Tensor, scale: Tensor) -> torch.dtype:
    """The dtype the plain loss would return, so chunking never changes the result's type."""
    return torch.promote_types(features.dtype, scale.dtype)


LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss, "siglip": siglip_loss}
LOCAL_LOSSES: dict[str, Callable[..., Tensor]] = {"clip": clip_loss_local, "siglip": siglip_loss_local}
