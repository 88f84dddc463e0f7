"""The recurrence op behind every Phased LSTM module, and the registry of its backends.

Modules compute the input projection and the time gate of all steps outside the loop and hand
the recurrence to :func:`recurrence`; a backend is a function with exactly its signature.

Backends: ``"reference"`` (a readable autograd loop, any device and dtype, any order of
gradients), ``"fused"`` (C++ forward and hand-written backward, CPU), ``"sparse"`` (C++
inference that skips neurons whose time gate is closed, CPU, no gradients); see
:mod:`phased_lstm.ops.fused`; and ``"triton"`` (GPU kernels with the time loop inside, forward,
backward and inference, float32/float64 and bfloat16/float16 with float32 state; needs the
optional Triton); see :mod:`phased_lstm.ops.triton_backend`. ``"auto"`` takes ``"triton"`` for
CUDA tensors when Triton imports; on the CPU ``"fused"`` when a gradient is needed and
``"sparse"`` when none is, for float32/float64 inputs once the kernels are built; and the
reference otherwise. The compiled backends agree with the reference to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from .. import _checks
from . import fused, triton_backend
from .fused import fused_recurrence, sparse_recurrence
from .reference import reference_recurrence
from .triton_backend import triton_recurrence

RecurrenceFn = Callable[..., tuple[Tensor, Tensor, Tensor]]

# name -> function with the signature of `recurrence` (without `backend`).
_BACKENDS: dict[str, RecurrenceFn] = {
    "reference": reference_recurrence,
    "fused": fused_recurrence,
    "sparse": sparse_recurrence,
    "triton": triton_recurrence,
}


def available_backends() -> list[str]:
    """Names accepted by ``backend=``: ``"auto"`` and every registered backend."""
    return ["auto", *_BACKENDS]


def check_backend(backend: object) -> str:
    """Validate a ``backend`` choice and return it."""
    if not isinstance(backend, str) or backend not in available_backends():
        raise ValueError(f"backend must be one of {available_backends()}, got {backend!r}")
    return backend


def _resolve(backend: str, tensors: tuple[Tensor | None, ...]) -> RecurrenceFn:
    if backend != "auto":
        return _BACKENDS[check_backend(backend)]
    if triton_backend.auto_usable(tensors):
        return triton_recurrence
    if fused.unsupported(*tensors) is not None or not fused.kernels_available(warn=True):
        return reference_recurrence
    return fused_recurrence if fused.needs_grad(*tensors) else sparse_recurrence


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

    Args:
        gates_x: ``(L, N, 4H)`` input projections ``x W_ih^T + b_ih + b_hh``, gates (i, f, g, o).
        k: ``(L, N, H)`` time-gate openness of every step; padded steps carry ``k = 0``.
        weight_hh: ``(4H, H)`` recurrent weights.
        weight_ch: ``(3H,)`` peephole weights for (i, f, o) or ``None``.
        h0, c0: ``(N, H)`` initial states.
        grad_clip: ``None``, or a bound ``> 0`` on the gradient of the gate pre-activations
            ``gates_x + h_{t-1} W_hh^T`` at every step, applied elementwise during
            backpropagation (Lasagne's ``grad_clipping``, which the paper's authors trained
            with). The peephole terms are added after that point, so the gradients of the
            peepholes and of the cell state are not clipped. The forward pass is unchanged.
            With a bound, gradients are first order only.
        batch_sizes: ``None``, or ``(L,)`` int64 on the CPU, as a PackedSequence's: only the
            first ``batch_sizes[t]`` samples are valid at step ``t`` (sort the batch by length,
            longest first). The other rows are padding: their state is held whatever ``k``
            says, and their ``gates_x`` and ``k`` get zero gradient. The compiled backends
            skip them, so a batch of unequal lengths costs its valid steps only.
        backend: a name from :func:`available_backends`.

    Returns:
        ``(h, h_n, c_n)``: the hidden state after every step ``(L, N, H)`` and the final states.
    """
    clip = math.inf if grad_clip is None else _checks.check_grad_clip(grad_clip)
    if batch_sizes is not None:
        batch_sizes = _checks.check_batch_sizes(batch_sizes, gates_x.shape[0], gates_x.shape[1])
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    return _resolve(backend, tensors)(*tensors, clip, batch_sizes)


__all__ = [
    "available_backends",
    "check_backend",
    "fused_recurrence",
    "recurrence",
    "reference_recurrence",
    "sparse_recurrence",
    "triton_recurrence",
]
