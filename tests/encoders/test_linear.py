"""oneDNN linear layers compute what `F.linear` computes, forward and backward, and step aside where they must."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastive.encoders.linear import Linear, linear, stacked_linear, takes_onednn
from contrastive.encoders.text import TextTransformer
from contrastive.encoders.vit import VisionTransformer
from tests.helpers.grads import assert_grads_close

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not takes_onednn(torch.ones(1, 1), torch.ones(1, 1)), reason="no oneDNN in this torch")]


def _linear_and_grads(fn, x, w, b, dtype, out_perm=None):
    """fn's output and the gradients of x, w, b under a fixed random cotangent, computed in `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
    y = fn(*leaves)
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    if out_perm is not None:  # the output used through a transpose: its gradient arrives non-contiguous
        y, cotangent = y.permute(*out_perm), cotangent.permute(*out_perm)
    (y * cotangent).sum().backward()
    return y, [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("shape,strided_input,out_perm", [((5, 32), False, None), ((2, 7, 32), False, None),
                                                          ((2, 7, 32), True, None), ((2, 7, 32), False, (1, 0, 2)),
                                                          ((3, 4, 5, 32), False, None)])
def test_onednn_linear_matches_a_float64_reference(shape, strided_input, out_perm):
    x = torch.randn(*shape, dtype=torch.float64)
    if strided_input:  # e.g. the rows of a transposed activation
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    w, b = torch.randn(48, shape[-1], dtype=torch.float64), torch.randn(48, dtype=torch.float64)
    _, ref = _linear_and_grads(F.linear, x, w, b, torch.float64, out_perm)
    y, got = _linear_and_grads(linear, x, w, b, torch.float32, out_perm)
    assert "OneDnnLinear" in type(y.grad_fn).__name__ or "OneDnnLinear" in type(y.grad_fn.next_functions[0][0]).__name__
    _, mkl = _linear_and_grads(F.linear, x, w, b, torch.float32, out_perm)
    for name, g, r, m in zip(("output", "x", "weight", "bias"), got, ref, mkl):
        assert g.shape == r.shape and g.dtype == torch.float32, name
        # fp32 rounding of sums of 32 products: as close to float64 as PyTorch's own fp32 kernel is
        err, mkl_err = (g.double() - r).abs().max().item(), (m.double() - r).abs().max().item()
        assert err <= 4 * mkl_err + 1e-6 * r.abs().max().item(), (name, err, mkl_err)


def test_onednn_linear_without_bias_and_without_input_gradient():
    x, w = torch.randn(6, 16), torch.randn(8, 16, requires_grad=True)
    y = linear(x, w)
    y.sum().backward()
    torch.testing.assert_close(y, F.linear(x, w))
    torch.testing.assert_close(w.grad, torch.ones(6, 8).t() @ x)


def test_the_kernel_is_chosen_only_for_fp32_eager_cpu():
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8)
    assert takes_onednn(x, w)
    assert not takes_onednn(x.double(), w.double())
    assert not takes_onednn(x[0], w)  # a single vector: F.linear's business
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes_onednn(x, w)
        y = linear(x, w)
    assert y.dtype == torch.bfloat16 and "OneDnn" not in type(y.grad_fn).__name__
    assert "OneDnn" not in type(linear(x, w, onednn=False).grad_fn).__name__
    layer = Linear(8, 3, onednn=False)
    assert "OneDnn" not in type(layer(x).grad_fn).__name__
    assert "OneDnn" in type(Linear(8, 3)(x).grad_fn).__name__


def test_linear_keeps_nn_linear_parameters_and_init():
    torch.manual_seed(0)
    ours = Linear(8, 3)
    torch.manual_seed(0)
    theirs = nn.Linear(8, 3)
    assert isinstance(ours, nn.Linear)  # adapters (peft's LoRA) and `isinstance` checks see a linear layer
    torch.testing.assert_close(ours.state_dict(), theirs.state_dict(), rtol=0, atol=0)


def _tower_grads(tower: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    y = tower(inputs)  # (B, C)
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    return y.detach(), {n: p.grad for n, p in tower.named_parameters()}


def _ops_run(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("fused_qkv", [False, True])
def test_towers_compute_the_same_with_onednn(fused_qkv):
    pixels, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 40, (4, 10))
    for build, inputs in ((lambda **s: VisionTransformer(32, 8, 48, 3, 4, **s), pixels),
                          (lambda **s: TextTransformer(41, 10, 48, 3, 4, **s), tokens)):
        torch.manual_seed(0)
        mkl = build(fused_qkv=fused_qkv, onednn_linear=False).double()
        ref_y, ref_g = _tower_grads(mkl, inputs.double() if inputs.is_floating_point() else inputs)
        ref_g = {k: v.clone() for k, v in ref_g.items()}  # `float()` below converts the gradients in place
        mkl.float().zero_grad()
        torch.manual_seed(0)
        fast = build(fused_qkv=fused_qkv)
        assert all(m.onednn for m in fast.modules() if isinstance(m, Linear))
        assert len([m for m in fast.modules() if isinstance(m, Linear)]) == 3 * 6  # q, k, v, out, fc1, fc2
        ops = _ops_run(lambda: _tower_grads(fast, inputs))
        fast.zero_grad()
        assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops  # every block GEMM on oneDNN
        y, g = _tower_grads(fast, inputs)
        mkl_y, mkl_g = _tower_grads(mkl, inputs)
        # against the float64 reference, oneDNN's fp32 is within fp32 rounding, as MKL's is
        torch.testing.assert_close(y.double(), ref_y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mkl_y.double(), ref_y, rtol=1e-5, atol=1e-5)
        assert_grads_close({k: v.double() for k, v in g.items()}, ref_g, rtol=1e-4, what="oneDNN")
        assert_grads_close({k: v.double() for k, v in mkl_g.items()}, ref_g, rtol=1e-4, what="MKL")


def test_stacked_linear_equals_one_concatenated_layer_and_keeps_no_copy():
    x = torch.randn(2, 5, 16, requires_grad=True)
    weights = [torch.randn(16, 16, requires_grad=True) for _ in range(3)]
    biases = [torch.randn(16, requires_grad=True) for _ in range(3)]
    grads = {}
    for onednn in (False, True):
        for t in (x, *weights, *biases):
            t.grad = None
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            saved: list[torch.Tensor] = []
            y = stacked_linear(x, weights, biases, onednn)  # (2, 5, 48)
        (y * torch.arange(48.0)).sum().backward()
        grads[onednn] = [y.detach()] + [t.grad for t in (x, *weights, *biases)]
        # what the backward holds: the input and the layers' own weights on oneDNN, a concatenated copy otherwise
        held_copy = any(t.numel() == 48 * 16 for t in saved)  # (48, 16) or its transpose
        assert held_copy != onednn and (not onednn or all(any(t is w for t in saved) for w in weights))
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_stacked_linear_skips_weight_gradients_of_a_frozen_layer():
    x = torch.randn(4, 8, requires_grad=True)
    weights, biases = [torch.randn(8, 8) for _ in range(2)], [torch.randn(8) for _ in range(2)]
    stacked_linear(x, weights, biases).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4, 16) @ torch.cat(weights))
    assert all(w.grad is None for w in weights)
