"""Which pairs of a batch are positives: content ids, and sums over each row's positives in O((m + n)·D).

Pair (image i, text j) is a positive when i == j, or text i and text j are the same caption, or image i and image j
are the same image (ids from `content_ids`), so that a batch holding one caption twice is not taught to push the
two apart.
"""

from __future__ import annotations

import torch
from torch import Tensor


def content_ids(strings: list[str]) -> Tensor:
    """Stable int64 id per distinct string: equal strings get equal ids, in order of first appearance.

    Returns a (len(strings),) int64 tensor, e.g. ["a", "b", "a"] -> [0, 1, 0].
    """
    first: dict[str, int] = {}
    return torch.tensor([first.setdefault(s, len(first)) for s in strings], dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# Positive pairs


class Positives:
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
        dense = [dense_ids(ids) for ids in (text_ids, image_ids) if ids is not None]
        self._diagonal_only = not dense
        if not dense:  # only the pair itself: group = column index
            groups = [(1, torch.arange(n, device=device), n)]
        elif len(dense) == 1:
            groups = [(1, *dense[0])]
        else:
            (text_group, num_text), (image_group, num_image) = dense
            groups = [(1, text_group, num_text), (1, image_group, num_image),
                      (-1, *dense_ids(text_group * num_image + image_group))]
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


def dense_ids(ids: Tensor) -> tuple[Tensor, int]:
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


def find_positives(
    m: int,
    n: int,
    offset: int,
    image_ids: Tensor | None,
    text_ids: Tensor | None,
    all_image_ids: Tensor | None,
    all_text_ids: Tensor | None,
    device: torch.device,
) -> Positives:
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
    return Positives(offset, m, n, *[None if i is None else i.to(device) for i in full_ids], device)


def positive_logits(rows: Tensor, cols: Tensor, scale: Tensor, bias: Tensor | None, pos: Positives,
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
