"""One optimizer step (`train_step`), and gradient caching: the contrastive loss of a large batch with the
activation memory of one micro-batch (`gradcache_backward`).

Gradient caching:

1. Embed the batch micro-batch by micro-batch without autograd, recording the RNG state before each one.
2. Compute the loss over the whole batch on the detached embeddings (and temperature/bias) as leaves, and
   back-propagate to them only: their gradients are the "cache".
3. Re-embed each micro-batch with autograd from its recorded RNG state (so dropout and any other random op draw
   the same numbers as in step 1) and back-propagate `Σ embeddings · cached gradient`, which by the chain rule
   adds exactly that micro-batch's share of the full-batch parameter gradients.

The cost is one extra forward pass of the towers. Under DDP (or FSDP) gradient synchronisation is skipped for all
but the last micro-batch; the temperature and bias terms ride on the last one so every parameter takes part in
the synchronised backward.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn

from ..distributed import (
    DistInfo,
    clip_sharded_grad_norm_,
    is_sharded,
    sync_replicated_grads,
)
from ..model import autocast_context, ContrastiveModel
from ..losses.batch import BatchLoss
from .guards import step_if_finite

# (image (B, D), text (B, D), logit_scale (), logit_bias () or None) -> 0-dim loss
LossFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def split_batch(x: Tensor | dict[str, Tensor], size: int) -> list[Any]:
    """Split a (B, ...) tensor, or a dict of them (a tokenizer's output), into micro-batches of `size` rows.

    The last micro-batch holds the remainder when `size` does not divide B.
    """
    if isinstance(x, dict):
        parts = {k: torch.split(v, size) for k, v in x.items()}
        return [{k: parts[k][i] for k in parts} for i in range(len(next(iter(parts.values()))))]
    return list(torch.split(x, size))


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside: backward passes synchronise gradients across ranks only if `enabled` (DDP `no_sync`, FSDP2
    `set_requires_gradient_sync`); a single-process model is unaffected."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def gradcache_backward(
    model: nn.Module,
    pixels: Tensor,
    tokens: Tensor | dict[str, Tensor],
    loss_fn: LossFn,
    micro_batch_size: int,
    *,
    autocast: Callable[[], ContextManager] = nullcontext,
    scale_loss: Callable[[Tensor], Tensor] = lambda loss: loss,
) -> Tensor:
    """Accumulate into `.grad` the gradients of `loss_fn` over the whole batch, embedding `micro_batch_size`
    rows at a time; returns the (detached) loss.

    Args:
        model: returns a `ContrastiveOutput` from `model(pixels, tokens)` (possibly wrapped in DDP or sharded).
        pixels: (B, 3, H, W) images; tokens: (B, T) token ids, or a dict of (B, T) tensors.
        loss_fn: the full-batch loss of (image (B, D), text (B, D), logit_scale (), logit_bias or None).
        micro_batch_size: rows per tower pass; the last micro-batch holds the remainder.
        autocast: factory of the mixed-precision context used for every forward and for the loss.
        scale_loss: applied to the loss before its backward (a GradScaler's `scale` for fp16); the cached
            gradients carry the scale, so the parameter gradients do too, as in a plain scaled backward.

    The RNG state after the call is the one after step 1, as if the towers had run once.
    """
    device = pixels.device
    micro_pixels, micro_tokens = split_batch(pixels, micro_batch_size), split_batch(tokens, micro_batch_size)
    states, images, texts = [], [], []
    with torch.no_grad():
        for px, tk in zip(micro_pixels, micro_tokens):
            states.append(_rng_state(device))
            with autocast():
                out = model(px, tk)
            images.append(out.image_embeds)  # (m, D)
            texts.append(out.text_embeds)  # (m, D)
    rng_after = _rng_state(device)

    image = torch.cat(images).requires_grad_()  # (B, D) leaf
    text = torch.cat(texts).requires_grad_()  # (B, D) leaf
    scale = out.logit_scale.detach().requires_grad_()  # ()
    bias = out.logit_bias.detach().requires_grad_() if out.logit_bias is not None else None
    with autocast():
        loss = loss_fn(image, text, scale, bias)
    scale_loss(loss).backward()
    del images, texts

    last = len(micro_pixels) - 1
    row = 0
    for i, (px, tk) in enumerate(zip(micro_pixels, micro_tokens)):
        rows = slice(row, row + px.shape[0])
        row += px.shape[0]
        _set_rng_state(states[i], device)
        with grad_sync(model, enabled=i == last):
            with autocast():
                out = model(px, tk)
            # fp32 sum: only its gradient matters, which is the cached gradient itself in the embeddings' dtype
            surrogate = (out.image_embeds.float() * image.grad[rows].float()).sum()
            surrogate = surrogate + (out.text_embeds.float() * text.grad[rows].float()).sum()
            if i == last:
                surrogate = surrogate + out.logit_scale * scale.grad
                if bias is not None:
                    surrogate = surrogate + out.logit_bias * bias.grad
            surrogate.backward()
    _set_rng_state(rng_after, device)
    return loss.detach()


# ----------------------------------------------------------------------------------------------------------------------
# one optimizer step


def compute_loss(model: nn.Module, batch: dict[str, Any], loss_fn: BatchLoss) -> Tensor:
    """Forward both towers on this rank's batch and return its loss over the global batch (0-dim)."""
    out = model(batch["pixels"], batch["tokens"])
    return loss_fn(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias, batch["image_ids"],
                   batch["text_ids"], teacher=batch.get("teacher"))


def step_loss_fn(loss_fn: Callable[..., Tensor], compile: bool, **compile_args: Any) -> Callable[..., Tensor]:
    """`compute_loss(model, batch, loss_fn)` as is, or compiled as one graph: both towers' forward and the loss.

    Compiling the function (not just the module) lets the compiler fuse the projection, normalisation and the
    logits / cross-entropy of the loss with the towers' last layers.
    """
    return torch.compile(loss_fn, **compile_args) if compile else loss_fn


def unwrap(model: nn.Module) -> ContrastiveModel:
    """The ContrastiveModel inside DDP and/or torch.compile wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, loss_fn: BatchLoss, device: torch.device, *, precision: str = "fp32",
               grad_clip: float = 0.0, micro_batch_size: int = 0, info: DistInfo = DistInfo(),
               forward: Callable[..., Tensor] = compute_loss, cudagraphs: bool = False) -> tuple[Tensor, Tensor]:
    """One optimizer step; returns (loss, grad norm) as 0-dim device tensors (no host sync).

    batch: "pixels" (b, 3, H, W), "tokens" (b, T) or a dict of them, "image_ids" / "text_ids" (b,), and with
    distillation "teacher" (the teacher's `TeacherFeatures` of the batch).
    micro_batch_size: 0 < m < b embeds m rows at a time (gradient caching); `forward` may be `compute_loss`
    compiled (see `step_loss_fn`); `cudagraphs` marks a new step for CUDA-graph replay (compile mode
    reduce-overhead). A NaN/inf loss or gradient leaves weights and optimizer state as they were.
    """
    if cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: CUDA-graph outputs of the last one may be reused
    if 0 < micro_batch_size < batch["pixels"].shape[0]:
        def batch_loss(image: Tensor, text: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
            return loss_fn(image, text, scale, bias, batch["image_ids"], batch["text_ids"], teacher=batch.get("teacher"))

        loss = gradcache_backward(model, batch["pixels"], batch["tokens"], batch_loss, micro_batch_size,
                                  autocast=lambda: autocast_context(device, precision), scale_loss=scaler.scale)
    else:
        with autocast_context(device, precision):
            loss = forward(model, batch, loss_fn)
        scaler.scale(loss).backward()
    grad_norm = _unscale_and_clip(model, optimizer, scaler, grad_clip, info)
    step_if_finite(optimizer, scaler, loss, grad_norm)
    optimizer.zero_grad(set_to_none=True)
    unwrap(model).clamp_logit_scale_()
    return loss.detach(), grad_norm.detach()


def _unscale_and_clip(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      grad_clip: float, info: DistInfo) -> Tensor:
    """The global gradient norm (0-dim) after unscaling, clipped to `grad_clip` when > 0."""
    sharded = is_sharded(unwrap(model))
    if sharded:
        sync_replicated_grads(model, info)
    scaler.unscale_(optimizer)
    if sharded:
        return clip_sharded_grad_norm_(model, grad_clip)
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
