"""The recurrence op behind every Phased LSTM module, and the registry of its backends.

Modules compute the input projection and the time gate of all steps outside the loop and hand
the recurrence to :func:`recurrence`; a backend is a function with exactly its signature,
registered with what it can run (:mod:`phased_lstm.ops.backends`).

Backends: ``"reference"`` (a readable autograd loop, any device and dtype, any order of
gradients), ``"fused"`` (C++ forward and hand-written backward, CPU), ``"sparse"`` (C++
inference that skips neurons whose time gate is closed, CPU, no gradients); see
:mod:`phased_lstm.ops.fused`; and ``"triton"`` (GPU kernels with the time loop inside,
training and inference, float32/float64 and bfloat16/float16 with float32 state; needs the
optional Triton), see :mod:`phased_lstm.ops.triton_backend`. ``"auto"`` takes ``"triton"`` for
CUDA tensors when Triton imports; on the CPU ``"sparse"`` when no gradient is needed and
``"fused"`` when one is, for float32/float64 inputs once the kernels are built; and the
reference otherwise. The compiled backends agree with the reference to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from . import triton_backend
from .backends import (
    Backend,
    RecurrenceFn,
    available_backends,
    call_of,
    check_backend,
    choose,
    register_backend,
)
from .fused import fused_recurrence, sparse_recurrence
from .kernels import build_kernels
from .reference import reference_recurrence
from .triton_backend import triton_recurrence

_CPU_FLOATS = (torch.float32, torch.float64)

register_backend(Backend("reference", reference_recurrence, packed=True, priority=0))
register_backend(
    Backend(
        "fused",
        fused_recurrence,
        devices=("cpu",),
        dtypes=_CPU_FLOATS,
        gradients=True,
        packed=True,
        needs_kernels=True,
        kernel_gate=True,
        priority=10,
    )
)
register_backend(
    Backend(
        "sparse",
        sparse_recurrence,
        devices=("cpu",),
        dtypes=_CPU_FLOATS,
        gradients=False,
        packed=True,
        needs_kernels=True,
        kernel_gate=True,
        priority=20,
    )
)


def _resolve(backend: str, tensors: tuple[Tensor | None, ...]) -> RecurrenceFn:
    """The recurrence function that runs these tensors for ``backend``."""
    return choose(backend, call_of(tensors)).recurrence


register_backend(
    Backend(
        "triton",
        triton_recurrence,
        devices=triton_backend.DEVICES,
        dtypes=triton_backend.DTYPES,
        gradients=True,
        packed=True,
        kernel_gate=True,  # its time gate is the Triton kernel (see ops/gate.py)
        # Above the reference, below the CPU kernels: on a GPU it competes with the reference
        # only; on the CPU (under the interpreter) "auto" keeps "fused" and "sparse".
        priority=5,
        unavailable=triton_backend.unavailable,
        fix=triton_backend.FIX,
    )
)


def recurrence(
    gates_x: Tensor,
    k: Tensor,
    weight_hh: Tensor,
    weight_ch: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    *,
    grad_clip: float | None = None,
    batch_sizes: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """The time-gated LSTM recurrence of one layer and direction.

    Two layouts: padded, ``gates_x`` ``(L, N, 4H)`` and ``k`` ``(L, N, H)``; or packed, the
    ``data`` of a PackedSequence, ``gates_x`` ``(S, 4H)`` and ``k`` ``(S, H)`` with
    ``batch_sizes``: step ``t`` is the next ``batch_sizes[t]`` rows, for the samples
    ``0 .. batch_sizes[t] - 1`` (sorted longest first); then ``h`` is ``(S, H)`` too, and
    ``h_n``, ``c_n`` are each sample's state after its last step.

    Args:
        gates_x: ``(L, N, 4H)`` input projections ``x W_ih^T + b_ih + b_hh``, gates (i, f, g, o),
            or ``(S, 4H)`` packed.
        k: ``(L, N, H)`` time-gate openness of every step (padded steps carry ``k = 0``), or
            ``(S, H)`` packed.
        weight_hh: ``(4H, H)`` recurrent weights.
        weight_ch: ``(3H,)`` peephole weights for (i, f, o) or ``None``.
        h0, c0: ``(N, H)`` initial states.
        grad_clip: ``None``, or a bound ``> 0`` on the gradient of the gate pre-activations
            ``gates_x + h_{t-1} W_hh^T`` at every step, applied elementwise during
            backpropagation (Lasagne's ``grad_clipping``, which the paper's authors trained
            with). The peephole terms are added after that point, so the gradients of the
            peepholes and of the cell state are not clipped. The forward pass is unchanged.
            With a bound, gradients are first order only.
        batch_sizes: required in the packed layout; in the padded one ``None``, or ``(L,)``
            int64 on the CPU, as a PackedSequence's: only the
            first ``batch_sizes[t]`` samples are valid at step ``t`` (sort the batch by length,
            longest first). The other rows are padding: their state is held whatever ``k``
            says, and their ``gates_x`` and ``k`` get zero gradient. The compiled backends
            skip them, so a batch of unequal lengths costs its valid steps only.
        backend: a name from :func:`available_backends`.

    Returns:
        ``(h, h_n, c_n)``: the hidden state after every step, ``(L, N, H)`` (or ``(S, H)``
        packed), and the final states ``(N, H)``.
    """
    clip = math.inf if grad_clip is None else _checks.check_grad_clip(grad_clip)
    packed = gates_x.dim() == 2
    if packed:
        batch_sizes = _checks.check_packed_batch_sizes(batch_sizes, gates_x.shape[0], h0.shape[0])
    elif batch_sizes is not None:
        batch_sizes = _checks.check_batch_sizes(batch_sizes, gates_x.shape[0], gates_x.shape[1])
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    call = call_of(tensors, packed=packed)
    return choose(check_backend(backend), call).recurrence(*tensors, clip, batch_sizes)


__all__ = [
    "Backend",
    "available_backends",
    "build_kernels",
    "check_backend",
    "fused_recurrence",
    "recurrence",
    "reference_recurrence",
    "register_backend",
    "sparse_recurrence",
    "triton_recurrence",
]
