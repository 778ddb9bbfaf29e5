"""Linear layers whose fp32 products on the CPU run on oneDNN's GEMM.

PyTorch's `F.linear` on fp32 CPU tensors calls MKL's sgemm, which on AMD CPUs takes its AVX2 code path even where
the CPU has AVX-512 (an AMD EPYC Zen 5: about 95 GFLOP/s a core against oneDNN's 200 at the towers' shapes).
oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`, the kernel inductor calls on the CPU) uses the widest vector
unit the CPU has. Both compute fp32 products with fp32 accumulation; only the kernel, and so the summation order
within a dot product, differs. Forward and backward (the input and weight gradients are the same kind of product)
take the oneDNN kernel; anything else (autocast, other dtypes or devices, tracing, compilation, export) goes
through `F.linear` unchanged.

`stacked_linear` runs several layers of one input as one product (fused q/k/v) on weights concatenated at run
time; on oneDNN it keeps the layers' own weights for the backward and concatenates them again there, instead of
holding the concatenated copy from the forward until then (a (3C, C) matrix per block less in memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_KERNEL = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(..., K) @ (N, K)^T + (N,) -> (..., N) on oneDNN; strided views (transposes) are read without a copy."""
    return _KERNEL(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _gemm(x, weight, bias)  # (..., N)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors  # (..., K), (N, K)
        g = grad.reshape(-1, grad.shape[-1])  # (M, N)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(g, weight.t(), None).view(x.shape)  # (M, N) @ (N, K) -> (..., K)
        if ctx.needs_input_grad[1]:
            grad_w = _gemm(g.t(), x.reshape(-1, x.shape[-1]).t(), None)  # (N, M) @ (M, K) -> (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)  # (N,)
        return grad_x, grad_w, grad_b


class _OneDnnStackedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, *weights_and_biases: torch.Tensor) -> torch.Tensor:
        weights, biases = weights_and_biases[:n], weights_and_biases[n:]
        ctx.save_for_backward(x, *weights)
        return _gemm(x, torch.cat(weights), torch.cat(biases))  # (..., sum N_i)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, *weights = ctx.saved_tensors  # (..., K), n x (N_i, K)
        sizes = [w.shape[0] for w in weights]
        g = grad.reshape(-1, grad.shape[-1])  # (M, sum N_i)
        grad_x, grad_w, grad_b = None, [None] * len(sizes), [None] * len(sizes)
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(g, torch.cat(weights).t(), None).view(x.shape)  # (..., K)
        if any(ctx.needs_input_grad[2:]):  # not for a frozen tower
            grad_w = _gemm(g.t(), x.reshape(-1, x.shape[-1]).t(), None).split(sizes)  # n x (N_i, K)
            grad_b = g.sum(0).split(sizes)  # n x (N_i,)
        return (grad_x, None, *grad_w, *grad_b)


def takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x, weight, ...)` runs on oneDNN: fp32 CPU tensors in eager mode, autocast off."""
    return (_KERNEL is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           onednn: bool = True) -> torch.Tensor:
    """`F.linear` (x (..., K), weight (N, K), bias (N,) -> (..., N)), on oneDNN where `takes_onednn` says so."""
    if onednn and takes_onednn(x, weight):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def stacked_linear(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                   onednn: bool = True) -> torch.Tensor:
    """Several linear layers of one input as one product: x (..., K), weights n x (N_i, K), biases n x (N_i,) ->
    (..., sum N_i), the layers' outputs side by side."""
    if onednn and takes_onednn(x, weights[0]):
        return _OneDnnStackedLinear.apply(x, len(weights), *weights, *biases)
    return F.linear(x, torch.cat(weights), torch.cat(biases))


class Linear(nn.Linear):
    """`nn.Linear` (the same parameters, names and initialisation) whose fp32 CPU product runs on oneDNN when
    `onednn` is on (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, onednn: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.onednn = onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.onednn)
