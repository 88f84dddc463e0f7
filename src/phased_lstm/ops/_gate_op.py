"""What the compiled time-gate ops of the CPU and Triton backends share.

Both backends define ``time_gate_forward`` and ``time_gate_backward`` with the same arguments,
each in its own torch.library namespace (``phased_lstm`` and ``phased_lstm_triton``). The call in
the ops' layout (float64 times and parameters, contiguous) and the autograd formula are the same
for both; here they are written once, for a namespace.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

f64 = torch.float64


def call_time_gate(namespace: str, times, period, shift, r_on, leak, valid, dtype) -> Tensor:
    """k of shape ``(*times.shape, H)`` in ``dtype`` from the namespace's gate op, zero where
    ``valid`` is False; the arguments of :func:`phased_lstm.ops.sequence_gate`."""
    return getattr(torch.ops, namespace).time_gate_forward(
        times.to(f64).contiguous(),
        period.to(f64).contiguous(),
        shift.to(f64).contiguous(),
        r_on.to(f64).contiguous(),
        float(leak),
        None if valid is None else valid.contiguous(),
        dtype,
    )


def time_gate_autograd(namespace: str):
    """``(backward, setup_context)`` for the namespace's ``time_gate_forward``: gradients for
    period, shift and r_on from its ``time_gate_backward``, first order only."""

    def setup_context(ctx, inputs, output):
        times, period, shift, r_on, leak, valid, _ = inputs
        ctx.save_for_backward(times, period, shift, r_on, valid)
        ctx.leak = leak

    @once_differentiable
    def backward(ctx, grad_k):
        times, period, shift, r_on, valid = ctx.saved_tensors
        grads = getattr(torch.ops, namespace).time_gate_backward(
            grad_k.contiguous(), times, period, shift, r_on, ctx.leak, valid
        )
        # No gradient for the timestamps: the planner sends timestamps that need one to the
        # readable gate (phased_lstm.functional.time_gate), which has it.
        return (None, *grads, None, None, None)

    return backward, setup_context
