"""The ops behind every Phased LSTM module, and the registry of their backends.

Modules compute the input projection outside the loop, then ask the planner (:func:`plan`)
once per layer and direction who runs the time gate of all steps (:func:`sequence_gate`) and
the recurrence (:func:`recurrence`). A backend is a :class:`Backend`: a recurrence with the
signature of :func:`recurrence`, optionally its own gate and streaming step, and what it can
run; :func:`register_backend` adds one.

Backends: ``"reference"`` (a readable autograd loop, any device and dtype, any order of
gradients; :mod:`phased_lstm.ops.reference`), ``"fused"`` (C++ forward and hand-written
backward, CPU), ``"sparse"`` (C++ inference that skips neurons whose time gate is closed, CPU,
no gradients, and the streaming step); and ``"triton"`` (GPU kernels with the time loop inside,
training and inference, float32/float64 and bfloat16/float16 with float32 state; needs the
optional Triton). ``"auto"`` takes ``"triton"`` for CUDA tensors when Triton imports; on the CPU
``"sparse"`` when no gradient is needed and ``"fused"`` when one is, for float32/float64 inputs
once the kernels are built; and the reference otherwise. The compiled backends agree with the
reference to float rounding. Their code is private (``ops/_cpu``, ``ops/_triton``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from ._cpu.backend import FUSED, SPARSE, fused_recurrence, sparse_recurrence
from ._cpu.kernels import build_kernels
from ._planner import (
    Backend,
    Plan,
    RecurrenceFn,
    available_backends,
    check_backend,
    plan,
    register_backend,
)
from ._triton.backend import TRITON, triton_recurrence
from .reference import reference_recurrence

register_backend(Backend("reference", reference_recurrence, packed=True, priority=0))
register_backend(FUSED)
register_backend(SPARSE)
register_backend(TRITON)


def _resolve(backend: str, tensors: tuple[Tensor | None, ...]) -> RecurrenceFn:
    """The recurrence function that runs these tensors for ``backend``."""
    return plan(backend, tensors=tensors).backend.recurrence


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
    """The time gate of a whole sequence: k of shape ``(*times.shape, H)`` in ``dtype``, zero
    where ``valid`` is False.

    :func:`phased_lstm.functional.time_gate` is the readable definition; in plain PyTorch it is
    a dozen full-size float64 ops plus their autograd graph, which on a long sequence costs
    more than the fused recurrence itself. The compiled gates compute each element once, in
    double with the same floor-mod, write ``k = 0`` on padded steps, and reduce their backward
    straight into the ``(H,)`` gradients of period, shift and r_on.

    Args:
        times: ``(L, N)`` timestamps (any real dtype; the phase is computed in float64).
        period, shift, r_on: ``(H,)`` float64 time-gate values.
        leak: the slope of the closed gate (0 in eval mode).
        valid: ``(L, N)`` bool, or ``None`` when every step is valid.
        dtype: the dtype of k.
        backend: the :class:`Plan` of the layer-direction (the planner's choice, made once for
            the gate and the recurrence together), or a backend name to plan for. The chosen
            backend's own gate runs unless the timestamps need a gradient.
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
    return backend.gate(times, period, shift, r_on, leak, valid, dtype)


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
    chosen = plan(check_backend(backend), tensors=tensors, packed=packed)
    return chosen.backend.recurrence(*tensors, clip, batch_sizes)


__all__ = [
    "Backend",
    "Plan",
    "available_backends",
    "build_kernels",
    "check_backend",
    "fused_recurrence",
    "plan",
    "recurrence",
    "reference_recurrence",
    "register_backend",
    "sequence_gate",
    "sparse_recurrence",
    "triton_recurrence",
]
