"""nn.Linear whose CPU float32 products can run on oneDNN instead of MKL.

PyTorch sends a float32 `F.linear` on the CPU to MKL's sgemm. For the seed model's small
products (batch 64, widths 256-784) on the 2-core AMD host, oneDNN's matmul, which PyTorch
ships and inductor calls for frozen inference (`torch.ops.mkldnn._linear_pointwise`), is
much less slowed than MKL when the host is busy: the seed model's training steps were 14-17%
faster in busy minutes and even in quiet ones (benchmarks/README.md, `ab_step.py --variants
aten,base`). For the weight gradient oneDNN was slower, so that product stays on MKL (`mm`).

oneDNN costs ~12 us more per call, so small products lose: the IWAE paper's model (batch 20,
widths 200) took 1.96 instead of 1.53 ms a step with every product there. Products below
ONEDNN_MIN_MACS (rows x in x out) therefore stay on F.linear; on this host oneDNN won from
about 16 x 784 x 512 (6.4 M) up, and 64 x 256 x 512 (8.4 M) was even.

It is the same float32 arithmetic summed in another order: outputs agree with MKL's to
float rounding (~1e-7 relative), like a change of thread count. Everything off that path
(GPU, other dtypes, autocast, torch.compile, a torch without the op) uses F.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

try:
    _onednn_linear = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):  # a torch built without oneDNN
    _onednn_linear = None
HAVE_ONEDNN = _onednn_linear is not None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x w^T + b on oneDNN (no fused activation: "none", no scalars, no algorithm)."""
    return _onednn_linear(x, weight, bias, "none", [], "")

IMPLS = ("aten", "onednn")
ONEDNN_MIN_MACS = 4_000_000


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


class _OneDnnLinearFn(torch.autograd.Function):
    """y = x w^T + b on oneDNN; grad x = g w on oneDNN, grad w = g^T x and grad b on ATen."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    @once_differentiable  # no second derivative through oneDNN: a clear error, not a wrong one
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = onednn_linear(g, weight.t())
        g2 = g.reshape(-1, g.shape[-1])  # (k, B, out) inputs, e.g. IWAE samples, as rows
        if ctx.needs_input_grad[1]:
            gw = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state_dict and init) with impl='onednn' on CPU float32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, impl: str = "aten") -> None:
        super().__init__(in_features, out_features, bias=bias)
        if impl not in IMPLS:
            raise ValueError(f"linear impl '{impl}': allowed: {', '.join(IMPLS)}")
        self.impl = impl

    def _use_onednn(self, x: torch.Tensor) -> bool:
        return (self.impl == "onednn" and HAVE_ONEDNN and x.device.type == "cpu"
                and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.numel() * self.out_features >= ONEDNN_MIN_MACS  # rows x in x out
                and not _autocast_on() and not _compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_onednn(x):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled():  # the Function computes only the gradients asked for
            return _OneDnnLinearFn.apply(x, self.weight, self.bias)
        return onednn_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", impl={self.impl}" if self.impl != "aten" else "")
