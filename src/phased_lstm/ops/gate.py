"""The time gate of a whole sequence in one compiled pass, forward and backward.

:func:`phased_lstm.functional.time_gate` is the readable definition; in plain PyTorch it is a
dozen full-size float64 ops plus their autograd graph, which on a long sequence costs more than
the fused recurrence itself. The kernel (``csrc/time_gate.cpp``) computes each element once, in
double with the same floor-mod, writes ``k = 0`` on padded steps, and reduces its backward
straight into the ``(H,)`` gradients of period, shift and r_on.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..functional import time_gate
from . import fused, triton_backend

f64 = torch.float64


class _CompiledTimeGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, times, period, shift, r_on, leak, valid, dtype):
        ctx.save_for_backward(times, period, shift, r_on, valid)
        ctx.leak = leak
        return torch.ops.phased_lstm.time_gate_forward(
            times, period, shift, r_on, leak, valid, dtype
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_k):
        times, period, shift, r_on, valid = ctx.saved_tensors
        grads = torch.ops.phased_lstm.time_gate_backward(
            grad_k.contiguous(), times, period, shift, r_on, ctx.leak, valid
        )
        return (None, *grads, None, None, None)


def sequence_gate(
    times: Tensor,
    period: Tensor,
    shift: Tensor,
    r_on: Tensor,
    leak: float,
    valid: Tensor | None,
    dtype: torch.dtype,
    *,
    backend: str = "auto",
) -> Tensor:
    """k of shape ``(*times.shape, H)`` in ``dtype``, zero where ``valid`` is False.

    Every backend but ``"reference"`` uses the kernel once it is built (``"auto"`` warns once if
    it cannot be; an explicit compiled backend raises in the recurrence right after); on a GPU,
    ``"auto"`` and ``"triton"`` use the Triton kernel. Timestamps that need a gradient take the
    autograd path, which differentiates with respect to them too.
    """
    if triton_backend.gate_usable(times, dtype, backend):
        return triton_backend.sequence_gate(times, period, shift, r_on, leak, valid, dtype)
    compiled = (
        backend != "reference"
        and times.device.type == "cpu"
        and not times.requires_grad
        and fused.kernels_available(warn=backend == "auto")
    )
    if compiled:
        return _CompiledTimeGate.apply(
            times.to(f64).contiguous(),
            period.to(f64).contiguous(),
            shift.to(f64).contiguous(),
            r_on.to(f64).contiguous(),
            float(leak),
            None if valid is None else valid.contiguous(),
            dtype,
        )
    k = time_gate(times, period, shift, r_on, leak, dtype=dtype)
    if valid is not None:
        k = torch.where(valid.unsqueeze(-1), k, torch.zeros((), dtype=dtype))
    return k
