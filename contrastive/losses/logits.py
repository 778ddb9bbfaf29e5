"""Logits of a batch: plain (the whole (m, n) matrix) and tiled (never more than a chunk x chunk tile)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows (or None for the plain loss), "
                         f"got {chunk_size}")


def scaled_logits(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    logits = scale * rows @ cols.T  # (m, n)
    return logits if bias is None else logits + bias


def out_dtype(features: Tensor, scale: Tensor) -> torch.dtype:
    """The dtype the plain loss would return, so chunking never changes the result's type."""
    return torch.promote_types(features.dtype, scale.dtype)


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


class TiledLogitReduction(torch.autograd.Function):
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
            return TiledLogitReduction._forward(ctx, a, c, scale, bias, chunk, kind, rows, cols)

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
            return TiledLogitReduction._backward(ctx, grad)

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
