"""Parameter gradients compared tensor by tensor (the gradient-caching and the distributed checks)."""

from __future__ import annotations

import torch

# softmax ignores a constant added to every score of a query, so a bias on the keys has a true gradient of zero
# (as has a logit bias under the softmax CLIP loss): what they get is rounding noise, which no relative tolerance
# can compare
ZERO_GRADIENT = ("k_proj.bias",)
ZERO_GRADIENT_CLIP = (*ZERO_GRADIENT, "logit_bias")


def assert_grads_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float = 1e-5,
                       what: str = "", zero: tuple[str, ...] = ZERO_GRADIENT) -> None:
    """Every gradient within `rtol` of the reference, relative to that tensor's own largest entry (one scale for the
    whole model would let a small gradient be wrong by more than its own size). A gradient that is zero in truth
    (a name ending in one of `zero`) must be rounding noise on both sides, far below the model's largest gradient;
    one exactly zero in the reference must be exactly zero here."""
    assert set(got) == set(ref), what
    noise = 1e-5 * max(g.abs().max() for g in ref.values()).item()
    for k in ref:
        if k.endswith(zero):
            worst = max(ref[k].abs().max().item(), got[k].abs().max().item())
            assert worst <= noise, f"{what} {k}: a zero gradient is {worst:.3g}, above rounding ({noise:.3g})"
            continue
        scale = ref[k].abs().max().item()
        if scale == 0:  # a parameter the loss never reaches
            assert not got[k].any(), f"{what} {k}: the reference gradient is zero, this one is not"
            continue
        torch.testing.assert_close(got[k], ref[k], rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what} {k}: {m}")
