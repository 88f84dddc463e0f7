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

from ..functional import time_gate
from . import triton_backend
from .backends import Plan, plan

f64 = torch.float64
# The dtypes the kernel writes k in.
KERNEL_DTYPES = (torch.float32, f64)


def sequence_gate(
    times: Tensor,
    period: Tensor,
    shift: Tensor,
    r_on: Tensor,
    leak: float,
    valid: Tensor | None,
    dtype: torch.dtype,
    *,
    backend: str | Plan = "auto",
) -> Tensor:
    """k of shape ``(*times.shape, H)`` in ``dtype``, zero where ``valid`` is False.

    ``backend`` is the :class:`~phased_lstm.ops.backends.Plan` of the layer-direction (the
    planner's choice, made once for the gate and the recurrence together), or a backend name
    to plan for. The compiled kernel runs when the plan pairs it with its backend: CPU
    timestamps that need no gradient (the kernel differentiates with respect to period, shift
    and r_on only); with the ``"triton"`` backend, the Triton kernel (any of its devices).
    """
    if isinstance(backend, str):
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in (period, shift, r_on))
        backend = plan(
            backend,
            device=times.device,
            dtype=dtype,
            needs_grad=grad,
            times_need_grad=torch.is_grad_enabled() and times.requires_grad,
        )
    if backend.kernel_gate and backend.backend.name == "triton":
        return triton_backend.sequence_gate(times, period, shift, r_on, leak, valid, dtype)
    if backend.kernel_gate and times.device.type == "cpu" and dtype in KERNEL_DTYPES:
        # An op with a fake implementation and a registered backward (ops/library.py).
        return torch.ops.phased_lstm.time_gate_forward(
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
        k = torch.where(valid.unsqueeze(-1), k, torch.zeros((), dtype=dtype, device=k.device))
    return k
