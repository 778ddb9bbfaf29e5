"""Batches onto the training device, the next one's copy overlapping the current step.

The training loop launches step i without waiting for the GPU, so when it asks for batch i+1 the GPU is still
busy with step i. A plain `.to(device, non_blocking=True)` would queue that copy on the compute stream behind step
i's kernels; `device_batches` issues it on a separate copy stream instead, so (from pinned host memory) it runs
while step i computes, and the compute stream waits for the copy only before step i+1. Tensors are marked as used on
the compute stream (`record_stream`) so the caching allocator does not hand their memory out early. Batches are
pulled from the source only when asked for, so bad-sample accounting and resume positions are as without it.
Elsewhere (CPU, or `side_stream=False`) each batch is a plain `.to(device, non_blocking=True)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor (also inside nested dicts) on `device`; other values as they are."""

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return {k: move(v) for k, v in batch.items()}


def _tensors(x) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def device_batches(batches: Iterable[dict[str, Any]], device: torch.device,
                   side_stream: bool = True) -> Iterator[dict[str, Any]]:
    """`batches` moved to `device`, each taken from `batches` only when asked for; on CUDA with `side_stream`, the
    copy is issued on a copy stream."""
    device = torch.device(device)
    if device.type != "cuda" or not side_stream:
        for batch in batches:
            yield to_device(batch, device)
        return
    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)
    for batch in batches:
        with torch.cuda.stream(copy_stream):
            batch = to_device(batch, device)
        compute_stream.wait_stream(copy_stream)  # the step's kernels start once its batch has landed
        for t in _tensors(batch):
            if t.device.type == "cuda":
                t.record_stream(compute_stream)
        yield batch
