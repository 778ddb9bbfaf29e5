"""Distillation from a frozen teacher: KL between the teacher's and the student's softmax over a batch's logits.

For every image (row) the teacher's probabilities over the batch's texts are the targets of the student's, and the
same for every text over the images (OpenCLIP's `--distill-model` form, a soft cross-entropy with the teacher's
probabilities; here as KL, which differs from it by the teacher's entropy alone: equal gradients, 0 when the
student matches the teacher). With temperature τ both models' logits are divided by τ and the loss is multiplied by
τ² (Hinton et al.), so its gradients keep their size as τ changes.

Each model scores with its own features and its own learned `logit_scale`; the teacher gets no gradient. As for
the contrastive losses there is a plain form, an exact tiled form (`chunk_size`: never more than a chunk x chunk tile
of either model's logits; the forward streams log-sum-exps, the backward recomputes each tile), and one rank's share
(`distill_loss_local`), whose mean over ranks equals the loss of the gathered batch.

Per row i (logits S of the student and T of the teacher, both over τ; p = softmax(T_i), q = softmax(S_i)):
    KL_i = Σ_j p_ij (T_ij − S_ij) − LSE(T_i) + LSE(S_i),   d KL_i / d S_ij = q_ij − p_ij
which is what the tiled form sums after a first pass has found every LSE.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .logits import _tiles, check_chunk, out_dtype


class TeacherFeatures(NamedTuple):
    """A frozen teacher's view of a batch (no gradient)."""

    image: Tensor  # (B, Dt) L2-normalised image embeddings
    text: Tensor  # (B, Dt) L2-normalised text embeddings; text i pairs with image i
    logit_scale: Tensor  # 0-dim, already exponentiated


def _kl_rows(teacher: Tensor, student: Tensor) -> Tensor:
    """Σ over rows of KL(softmax(teacher_i) || softmax(student_i)); (m, n) logits each -> 0-dim."""
    t_log = teacher.float().log_softmax(dim=1)  # (m, n)
    return (t_log.exp() * (t_log - student.float().log_softmax(dim=1))).sum()


def distill_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    teacher: TeacherFeatures,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Mean of the image->text and text->image KL(teacher || student) over the batch's rows, times τ².

    Args:
        image_features, text_features: (B, D) the student's L2-normalised embeddings; text i pairs with image i.
        logit_scale: 0-dim, the student's exponentiated temperature (it gets a gradient).
        teacher: the teacher's (B, Dt) features and 0-dim scale of the same pairs (no gradient).
        temperature: τ > 0; both models' logits are divided by it.
        chunk_size: if set, compute exactly with (chunk_size, chunk_size) tiles instead of the (B, B) logits.

    Returns:
        0-dim loss.
    """
    check_chunk(chunk_size)
    bsz = image_features.shape[0]
    t_img, t_txt, t_scale = (x.detach() for x in teacher)
    if chunk_size is None:
        student = (logit_scale / temperature) * image_features @ text_features.T  # (B, B)
        target = (t_scale / temperature) * t_img @ t_txt.T  # (B, B)
        total = _kl_rows(target, student) + _kl_rows(target.T, student.T)
    else:
        total = TiledDistill.apply(image_features, text_features, logit_scale, t_img, t_txt, t_scale, temperature,
                                   chunk_size, True, True)
    return (total * temperature**2 / (2 * bsz)).to(out_dtype(image_features, logit_scale))


def distill_loss_local(
    local_image: Tensor,
    local_text: Tensor,
    all_image: Tensor,
    all_text: Tensor,
    logit_scale: Tensor,
    local_teacher: TeacherFeatures,
    all_teacher: TeacherFeatures,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """This rank's share of `distill_loss`: its b images against all N texts and its b texts against all N images.

    With equal b on every rank, the mean over ranks equals `distill_loss` on the gathered batch, while each rank
    holds only (b, N) logits of each model (or one tile of them with `chunk_size`).

    Args:
        local_image, local_text: (b, D) this rank's student features.
        all_image, all_text: (N, D) every rank's student features, gathered with autograd.
        logit_scale: 0-dim, as in `distill_loss`.
        local_teacher: the teacher's (b, Dt) features of this rank's pairs; all_teacher: (N, Dt) of every rank's.
        temperature, chunk_size: as in `distill_loss`.

    Returns:
        0-dim loss.
    """
    check_chunk(chunk_size)
    b = local_image.shape[0]
    t_scale = all_teacher.logit_scale.detach()
    total = 0
    for rows, cols, t_rows, t_cols in ((local_image, all_text, local_teacher.image, all_teacher.text),
                                       (local_text, all_image, local_teacher.text, all_teacher.image)):
        t_rows, t_cols = t_rows.detach(), t_cols.detach()
        if chunk_size is None:
            student = (logit_scale / temperature) * rows @ cols.T  # (b, N)
            total = total + _kl_rows((t_scale / temperature) * t_rows @ t_cols.T, student)
        else:
            total = total + TiledDistill.apply(rows, cols, logit_scale, t_rows, t_cols, t_scale, temperature,
                                               chunk_size, True, False)
    return (total * temperature**2 / (2 * b)).to(out_dtype(local_image, logit_scale))


# ----------------------------------------------------------------------------------------------------------------
# tiled


class _Tiles:
    """The student's and the teacher's logits (over τ) of one tile, in the accumulation dtype."""

    def __init__(self, a: Tensor, c: Tensor, s: Tensor, ta: Tensor, tc: Tensor, ts: Tensor) -> None:
        self.a, self.c, self.s, self.ta, self.tc, self.ts = a, c, s, ta, tc, ts

    def __call__(self, r0: int, r1: int, c0: int, c1: int) -> tuple[Tensor, Tensor]:
        acc = self.s.dtype
        student = (self.a[r0:r1] @ self.c[c0:c1].T).to(acc).mul_(self.s)  # (r, c)
        teacher = (self.ta[r0:r1] @ self.tc[c0:c1].T).to(acc).mul_(self.ts)  # (r, c)
        return student, teacher


class TiledDistill(torch.autograd.Function):
    """Σ_i KL_i over rows (if `rows`) + Σ_j KL_j over columns (if `cols`) of the student's logits
    S = scale · A Cᵀ / τ against the teacher's T = t_scale · TA TCᵀ / τ, over (chunk, chunk) tiles.

    Forward: one pass for the four log-sum-exps (student and teacher, rows and columns), one for Σ p (T − S).
    Backward: dS = (q − p) per direction, recomputed tile by tile; the teacher's inputs get no gradient.
    """

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, scale: Tensor, ta: Tensor, tc: Tensor, t_scale: Tensor,
                temperature: float, chunk: int, rows: bool, cols: bool) -> Tensor:
        with torch.autocast(a.device.type, enabled=False):  # tiles recomputed in the backward match the forward's
            dtype = torch.promote_types(a.dtype, c.dtype)
            acc = torch.promote_types(dtype, torch.float32)
            a, c = a.to(dtype), c.to(dtype)  # (m, D), (n, D)
            t_dtype = torch.promote_types(ta.dtype, tc.dtype)
            ta, tc = ta.to(t_dtype), tc.to(t_dtype)  # (m, Dt), (n, Dt)
            tiles = _Tiles(a, c, scale.to(acc) / temperature, ta, tc, t_scale.to(acc) / temperature)
            m, n = a.shape[0], c.shape[0]
            # running log-sum-exps: student rows, teacher rows (m,), student columns, teacher columns (n,)
            lse = [torch.full((size,), -torch.inf, dtype=acc, device=a.device) for size in (m, m, n, n)]
            for r0, r1 in _tiles(m, chunk):
                for c0, c1 in _tiles(n, chunk):
                    for k, logits in enumerate(tiles(r0, r1, c0, c1)):
                        if rows:
                            lse[k][r0:r1] = torch.logaddexp(lse[k][r0:r1], logits.logsumexp(dim=1))
                        if cols:
                            lse[2 + k][c0:c1] = torch.logaddexp(lse[2 + k][c0:c1], logits.logsumexp(dim=0))
            s_r, t_r, s_c, t_c = lse
            total = torch.zeros((), dtype=acc, device=a.device)
            if rows:
                total += s_r.sum() - t_r.sum()
            if cols:
                total += s_c.sum() - t_c.sum()
            for r0, r1 in _tiles(m, chunk):
                for c0, c1 in _tiles(n, chunk):
                    student, teacher = tiles(r0, r1, c0, c1)
                    gap = teacher - student  # (r, c)
                    if rows:
                        total += (torch.exp(teacher - t_r[r0:r1, None]) * gap).sum()
                    if cols:
                        total += (torch.exp(teacher - t_c[None, c0:c1]) * gap).sum()
        ctx.save_for_backward(a, c, scale, ta, tc, t_scale, *lse)
        ctx.temperature, ctx.chunk, ctx.rows, ctx.cols = temperature, chunk, rows, cols
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):
            a, c, scale, ta, tc, t_scale, s_r, t_r, s_c, t_c = ctx.saved_tensors
            acc = s_r.dtype
            tiles = _Tiles(a, c, scale.to(acc) / ctx.temperature, ta, tc, t_scale.to(acc) / ctx.temperature)
            grad_a = torch.zeros(a.shape, dtype=acc, device=a.device)  # (m, D) Σ_j dS_ij c_j
            grad_c = torch.zeros(c.shape, dtype=acc, device=c.device)  # (n, D) Σ_i dS_ij a_i
            for r0, r1 in _tiles(a.shape[0], ctx.chunk):
                for c0, c1 in _tiles(c.shape[0], ctx.chunk):
                    student, teacher = tiles(r0, r1, c0, c1)
                    d = torch.zeros_like(student)  # (r, c) d total / d S
                    if ctx.rows:
                        d += torch.exp(student - s_r[r0:r1, None]) - torch.exp(teacher - t_r[r0:r1, None])
                    if ctx.cols:
                        d += torch.exp(student - s_c[None, c0:c1]) - torch.exp(teacher - t_c[None, c0:c1])
                    d = d.to(a.dtype)
                    grad_a[r0:r1] += (d @ c[c0:c1]).to(acc)
                    grad_c[c0:c1] += (d.T @ a[r0:r1]).to(acc)
            g = grad.to(acc) / ctx.temperature  # S = scale · A Cᵀ / τ
            grad_scale = g * (a.to(acc) * grad_a).sum()
            gs = g * scale.to(acc)
            return (grad_a.mul_(gs).to(a.dtype), grad_c.mul_(gs).to(c.dtype),
                    grad_scale.to(scale.dtype).reshape(scale.shape), None, None, None, None, None, None, None)
