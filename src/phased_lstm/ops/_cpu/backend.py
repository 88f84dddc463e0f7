"""The compiled CPU backends: ``"fused"`` for training, ``"sparse"`` for inference.

Both run the loop over time steps in C++ (``csrc/train.cpp``, ``csrc/infer.cpp``), one call per
layer and direction, on CPU float32/float64 tensors.

* ``"fused"``: forward and a hand-written backward (BPTT). The forward keeps only what the
  backward needs, the gate activations and the cell state of every step; the backward does one
  matrix product per step and the gradient of ``weight_hh`` as one product over all steps. It is
  first-order only: for double backward use ``backend="reference"``. With ``batch_sizes`` (a
  batch sorted by length, longest first) each step computes only its valid rows: the step's
  matrix products and elementwise work shrink to them and the padding rows are copied (the
  gradient of ``weight_hh`` stays one product over all rows, zeros included). Modules call its
  ``direction`` (:func:`fused_direction`), which writes the input projection of all steps into
  the activations' buffer itself.
* ``"sparse"``: inference without gradients. A neuron whose time gate is exactly closed
  (``k == 0``: eval mode, where the leak is 0, or padding) is not computed at all: no row of
  ``weight_hh`` is read, no nonlinearity evaluated, and its ``h`` and ``c`` are kept bit for
  bit. A step where every neuron of every sample is closed is a copy. Each sample has its own
  open neurons, and only the open (sample, neuron) pairs are computed, as dot products, neuron
  by neuron so that a neuron's rows of the weights are read once for all the samples open
  there; when the share of open pairs of a step is high enough for a dense matrix product to be
  cheaper (see :func:`_dense_above`), that step runs dense. In training mode the leak opens
  every neuron a little, every step is dense and the result is that of ``"fused"``.

  Modules call its ``direction`` (:func:`sparse_direction`) rather than its gate and
  recurrence: one call per layer-direction that computes the time gate and, for the open pairs
  only, the input projection ``x W_ih^T + b``, so that neither exists for all steps, and memory
  holds the outputs and little else. :func:`phased_lstm.ops.recurrence` with
  ``backend="sparse"`` takes the projections and the gate as given. What it saves grows as fewer
  neurons are open. Measured figures are in docs/speed.md (``phased-lstm bench``).

Both bring the compiled time gate (``csrc/time_gate.cpp``), and ``"sparse"`` the streaming
step (``csrc/stream.cpp``) that runs one event through every layer in one call. The C++ source
is compiled on first use (:mod:`.kernels`; ahead of time with ``python -m
phased_lstm.ops.build``). If the build fails, ``backend="auto"`` warns once and uses the
reference loop; an explicit ``"fused"`` or ``"sparse"`` raises.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._gate_op import call_time_gate
from .._planner import Backend, needs_grad, plan
from ..reference import reference_recurrence, valid_rows_of
from .kernels import build_error, build_fix, kernel_module, kernels_available

f64 = torch.float64
# The dtypes the kernels compute in.
DTYPES = (torch.float32, f64)


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.contiguous() for t in tensors]


def fused_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"fused"``; see :func:`phased_lstm.ops.recurrence` for the contract."""
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    plan("fused", tensors=tensors, packed=gates_x.dim() == 2)  # raises if it cannot run
    if gates_x.shape[0] == 0:
        return reference_recurrence(*tensors)
    tensors = _contiguous(*tensors)
    if needs_grad(*tensors):
        # An op with a fake implementation and a registered backward (:mod:`.library`).
        h, h_n, c_n, _, _ = torch.ops.phased_lstm.forward_train(*tensors, batch_sizes, grad_clip)
        return h, h_n, c_n
    # Without gradients nothing needs saving; every step with an open neuron runs dense.
    return torch.ops.phased_lstm.forward_infer(*_inference_args(tensors, batch_sizes), 0.0)


def _inference_args(tensors, batch_sizes):
    """The inference kernel's tensors and batch_sizes. It skips neurons with k == 0: in the
    padded layout the padding rows get k = 0, so that their state is held as ``batch_sizes``
    says, and skipped; the packed layout has no padding and needs ``batch_sizes`` itself."""
    gates_x, k, *rest = tensors
    if batch_sizes is None or gates_x.dim() == 2:
        return (*tensors, batch_sizes)
    valid = valid_rows_of(batch_sizes, gates_x)
    return (gates_x, k.masked_fill(~valid, 0), *rest, None)


def _dense_above(batch: int) -> float:
    """Share of open (sample, neuron) pairs above which a step of "sparse" runs dense.

    A sparse step reads the rows of the weights of each open neuron once per step, for all the
    samples open there, and does dot products per open pair; a dense one is a matrix product,
    which reuses each row for every sample. Up to 8 samples a step never gains from dense; in a
    larger batch the crossover, measured at H = 512 on a 2-core x86 machine (one thread), falls
    from ~0.8-0.9 (32 samples) towards ~0.75 (128).
    """
    return min(1.0, 0.75 + 2.0 / batch)


def sparse_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"sparse"``; see :func:`phased_lstm.ops.recurrence` for the contract.

    ``grad_clip`` is accepted for the common signature; without gradients it changes nothing.
    """
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    plan("sparse", tensors=tensors, packed=gates_x.dim() == 2)  # raises if it cannot run
    if gates_x.shape[0] == 0:
        return reference_recurrence(*tensors)
    dense_above = _dense_above(h0.shape[0])
    args = _inference_args(_contiguous(*tensors), batch_sizes)
    return torch.ops.phased_lstm.forward_infer(*args, dense_above)


def _infer_direction(args, dense_above: float):
    """``forward_infer_input`` of a direction's arguments (those of :class:`Backend`'s
    ``direction``, without ``grad_clip`` and ``batch_sizes``), contiguous and in float64 where
    the gate wants it."""
    x, times, weight_ih, bias, weight_hh, weight_ch, period, shift, r_on, leak, valid, h0, c0 = args
    return (
        *_contiguous(x, times.to(f64), weight_ih, bias, weight_hh, weight_ch),
        *_contiguous(period.to(f64), shift.to(f64), r_on.to(f64)),
        float(leak),
        None if valid is None else valid.contiguous(),
        *_contiguous(h0, c0),
    ), dense_above


def fused_direction(
    x,
    times,
    weight_ih,
    bias,
    weight_hh,
    weight_ch,
    period,
    shift,
    r_on,
    leak,
    valid,
    h0,
    c0,
    grad_clip=math.inf,
    batch_sizes=None,
):
    """The ``direction`` of ``"fused"``; see :class:`phased_lstm.ops.Backend` for the contract.

    With gradients: the compiled gate (an op with its own backward), then ``forward_train_input``,
    which writes the input projection of all steps, one product, straight into the buffer of
    the activations (its backward, :mod:`.library`, gives x, W_ih and the bias their gradients
    as products over all steps). Without: ``forward_infer_input`` with every step that has an
    open neuron dense, as :func:`fused_recurrence` runs them.
    """
    tensors = (x, weight_ih, bias, weight_hh, weight_ch, h0, c0)
    plan("fused", tensors=tensors, packed=x.dim() == 2)  # raises if it cannot run
    args = (x, times, weight_ih, bias, weight_hh, weight_ch, period, shift, r_on, leak, valid)
    if not needs_grad(*tensors, period, shift, r_on):
        inputs, dense_above = _infer_direction((*args, h0, c0), 0.0)
        return torch.ops.phased_lstm.forward_infer_input(*inputs, batch_sizes, dense_above)
    if x.shape[0] == 0:
        return x.new_empty((*x.shape[:-1], weight_hh.shape[1])), h0, c0
    k = time_gate(times, period, shift, r_on, leak, valid, x.dtype)
    inputs = _contiguous(x, weight_ih, bias, k, weight_hh, weight_ch, h0, c0)
    h, h_n, c_n, _, _ = torch.ops.phased_lstm.forward_train_input(*inputs, batch_sizes, grad_clip)
    return h, h_n, c_n


def sparse_direction(
    x,
    times,
    weight_ih,
    bias,
    weight_hh,
    weight_ch,
    period,
    shift,
    r_on,
    leak,
    valid,
    h0,
    c0,
    grad_clip=math.inf,
    batch_sizes=None,
):
    """The ``direction`` of ``"sparse"``: one layer-direction without gradients from its input,
    the gate and the input projection computed for the open pairs only; see
    :class:`phased_lstm.ops.Backend` for the contract. ``grad_clip`` changes nothing here."""
    tensors = (x, weight_ih, bias, weight_hh, weight_ch, h0, c0)
    plan("sparse", tensors=tensors, packed=x.dim() == 2)  # raises if it cannot run
    args = (x, times, weight_ih, bias, weight_hh, weight_ch, period, shift, r_on, leak, valid)
    inputs, dense_above = _infer_direction((*args, h0, c0), _dense_above(h0.shape[0]))
    return torch.ops.phased_lstm.forward_infer_input(*inputs, batch_sizes, dense_above)


def time_gate(times, period, shift, r_on, leak, valid, dtype) -> Tensor:
    """The compiled gate of both backends; see :func:`phased_lstm.ops.sequence_gate`.

    An op with a fake implementation and a registered backward (:mod:`.library`) that
    differentiates with respect to period, shift and r_on (not the timestamps).
    """
    return call_time_gate("phased_lstm", times, period, shift, r_on, leak, valid, dtype)


def stream(w_ih, w_hh, bias, w_ch, period, shift, r_on, tensors, batch_first):
    """The streaming step of ``"sparse"`` (``csrc/stream.cpp``); see
    :class:`phased_lstm.ops.Backend` for its contract."""
    return kernel_module().Stream(w_ih, w_hh, bias, w_ch, period, shift, r_on, tensors, batch_first)


def _unavailable() -> str | None:
    error = build_error()
    if error is None:
        return None
    return f"it needs the C++ kernels, which could not be built ({error}). To fix it, {build_fix()}"


def _warn_passed_over() -> None:
    kernels_available(warn=True)


_COMMON = {
    "gate": time_gate,
    "devices": ("cpu",),
    "dtypes": DTYPES,
    "packed": True,
    "unavailable": _unavailable,
    "passed_over": _warn_passed_over,
}
FUSED = Backend(
    "fused", fused_recurrence, direction=fused_direction, gradients=True, priority=10, **_COMMON
)
SPARSE = Backend(
    "sparse",
    sparse_recurrence,
    stream=stream,
    direction=sparse_direction,
    gradients=False,
    priority=20,
    **_COMMON,
)

__all__ = [
    "FUSED",
    "SPARSE",
    "build_error",
    "fused_direction",
    "fused_recurrence",
    "sparse_direction",
    "sparse_recurrence",
]
