"""Readable reference of the Phased LSTM's ops: the recurrence as a plain PyTorch loop under
autograd, and the time gate of a sequence from :func:`phased_lstm.functional.time_gate`.

They are the ground truth the fast kernels are tested against, so they stay a literal
transcription of the paper's equations, with no tricks; the planner pairs them with every
backend that brings no gate of its own, and with any backend when the timestamps need a
gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..functional import time_gate


def reference_gate(
    times: Tensor,
    period: Tensor,
    shift: Tensor,
    r_on: Tensor,
    leak: float,
    valid: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """k of shape ``(*times.shape, H)`` in ``dtype``, zero where ``valid`` is False, through
    autograd (gradients for the timestamps too)."""
    k = time_gate(times, period, shift, r_on, leak, dtype=dtype)
    if valid is not None:
        k = torch.where(valid.unsqueeze(-1), k, torch.zeros((), dtype=dtype, device=k.device))
    return k


class _ClipGradient(torch.autograd.Function):
    """Identity forward; the gradient passing back through it is clamped to ``[-clip, clip]``.

    First order only: a clamped gradient is not the derivative of anything, and a second
    derivative taken through this graph would clamp some of its own paths as well.
    """

    @staticmethod
    def forward(ctx, x: Tensor, clip: float) -> Tensor:
        ctx.clip = clip
        return x.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.clamp(-ctx.clip, ctx.clip), None


def valid_rows_of(batch_sizes: Tensor, gates_x: Tensor) -> Tensor:
    """(L, N, 1) bool on the device of ``gates_x``: True for the rows that step t computes (the
    first ``batch_sizes[t]``); the other rows are padding and hold their state."""
    rows = torch.arange(gates_x.shape[1], device=gates_x.device)
    return (rows < batch_sizes.to(gates_x.device).unsqueeze(1)).unsqueeze(-1)


def reference_recurrence(
    gates_x: Tensor,
    k: Tensor,
    weight_hh: Tensor,
    weight_ch: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    grad_clip: float = math.inf,
    batch_sizes: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the gated LSTM recurrence over precomputed input projections and time-gate values.

    See :func:`phased_lstm.ops.recurrence` for the contract.
    """
    if gates_x.dim() == 2:
        return _packed(gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip, batch_sizes)
    h, c = h0, c0
    hs = []
    valid_rows = None if batch_sizes is None else valid_rows_of(batch_sizes, gates_x)
    # unbind, not gates_x[step]: the backward of an index writes a full-size gradient per step,
    # which would make the loop quadratic in the sequence length.
    for step, (gates_xt, kt) in enumerate(zip(gates_x.unbind(0), k.unbind(0), strict=True)):
        h_next, c_next = _step(gates_xt, kt, weight_hh, weight_ch, h, c, grad_clip)
        if valid_rows is not None:
            c_next = torch.where(valid_rows[step], c_next, c)
            h_next = torch.where(valid_rows[step], h_next, h)
        c, h = c_next, h_next
        hs.append(h)
    if hs:
        return torch.stack(hs), h, c
    return gates_x.new_empty((0,) + h0.shape), h0, c0


def _packed(gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip, batch_sizes):
    """The packed layout: step t is the next ``batch_sizes[t]`` rows of ``gates_x`` and ``k``,
    for the samples 0 .. batch_sizes[t] - 1; the others have ended and keep their state."""
    h, c = h0, c0
    hs = []
    sizes = batch_sizes.tolist()
    for gates_xt, kt, size in zip(gates_x.split(sizes), k.split(sizes), sizes, strict=True):
        h_next, c_next = _step(gates_xt, kt, weight_hh, weight_ch, h[:size], c[:size], grad_clip)
        h = torch.cat([h_next, h[size:]])
        c = torch.cat([c_next, c[size:]])
        hs.append(h_next)
    if hs:
        return torch.cat(hs), h, c
    return gates_x.new_empty((0, h0.shape[1])), h0, c0


def _step(gates_xt, kt, weight_hh, weight_ch, h, c, grad_clip):
    """One step of the paper's equations for the rows of ``h`` and ``c``."""
    gates = gates_xt + h @ weight_hh.t()
    if grad_clip != math.inf:
        # Lasagne's grad_clipping: before the peephole terms are added.
        gates = _ClipGradient.apply(gates, grad_clip)
    i, f, g, o = gates.chunk(4, dim=-1)
    if weight_ch is not None:
        # Diagonal peepholes: input and forget gates look at the previous cell state.
        w_ci, w_cf, w_co = weight_ch.chunk(3)
        i = i + w_ci * c
        f = f + w_cf * c
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if weight_ch is not None:
        # ...while the output gate looks at the new proposal.
        o = o + w_co * c_new
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    # Written as in the paper so that k = 0 keeps the state bit for bit and k = 1 is nn.LSTM.
    return kt * h_new + (1 - kt) * h, kt * c_new + (1 - kt) * c
