"""Gradient caching: the contrastive loss of a large batch with the activation memory of one micro-batch.

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
