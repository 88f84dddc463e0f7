"""The compiled backends of the recurrence: ``"fused"`` for training, ``"sparse"`` for inference.

Both run the loop over time steps in C++ (``csrc/recurrence.cpp``), one call per layer and
direction, on CPU float32/float64 tensors.

* ``"fused"``: forward and a hand-written backward (BPTT). The forward keeps only what the
  backward needs, the gate activations and the cell state of every step; the backward does one
  matrix product per step and the gradient of ``weight_hh`` as one product over all steps. It is
  first-order only: for double backward use ``backend="reference"``. With ``batch_sizes`` (a
  batch sorted by length, longest first) each step computes only its valid rows: the step's
  matrix products and elementwise work shrink to them and the padding rows are copied (the
  gradient of ``weight_hh`` stays one product over all rows, zeros included).
* ``"sparse"``: inference without gradients. A neuron whose time gate is exactly closed
  (``k == 0``: eval mode, where the leak is 0, or padding) is not computed at all: no row of
  ``weight_hh`` is read, no nonlinearity evaluated, and its ``h`` and ``c`` are kept bit for
  bit. A step where every neuron of every sample is closed is a copy. Each sample has its own
  open neurons, and only the open (sample, neuron) pairs are computed, as dot products; when the
  share of open pairs of a step is high enough for a dense matrix product to be cheaper (see
  :func:`_dense_above`), that step runs dense. In training mode the leak opens every neuron a
  little, every step is dense and the result is that of ``"fused"``.

  What it saves grows as fewer neurons are open: one sequence reads each open neuron's rows of
  ``weight_hh`` once per step, so its work falls with the open share; a batch gains less than
  ``1 / r_on`` because the dense product reuses each row for every sample. The layer still
  computes the input projection and the time gate of every step. Measured figures are in the
  README's Speed section (``phased-lstm bench``).

The C++ source is compiled on first use (see :mod:`phased_lstm.ops.build`). If the build fails,
``backend="auto"`` warns once and uses the reference loop; an explicit ``"fused"`` or
``"sparse"`` raises.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .backends import call_of, require
from .kernels import build_error, kernels_available
from .reference import reference_recurrence, valid_rows_of


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will need gradients of any of these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.contiguous() for t in tensors]


def fused_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"fused"``; see :func:`phased_lstm.ops.recurrence` for the contract."""
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    require("fused", call_of(tensors, packed=gates_x.dim() == 2))
    if gates_x.shape[0] == 0:
        return reference_recurrence(*tensors)
    tensors = _contiguous(*tensors)
    if needs_grad(*tensors):
        # An op with a fake implementation and a registered backward (ops/library.py).
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

    A sparse step reads the rows of ``weight_hh`` of each open neuron once per step and does a
    dot product per open pair; a dense one is a matrix product, which reuses each row for every
    sample. One sequence never gains from dense; in a batch the crossover, measured at H = 512
    on a 2-core x86 machine, falls from ~0.85 (4 samples) to ~0.4 (32 and more).
    """
    return min(1.0, 0.35 + 2.0 / batch)


def sparse_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"sparse"``; see :func:`phased_lstm.ops.recurrence` for the contract.

    ``grad_clip`` is accepted for the common signature; without gradients it changes nothing.
    """
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    require("sparse", call_of(tensors, packed=gates_x.dim() == 2))
    if gates_x.shape[0] == 0:
        return reference_recurrence(*tensors)
    dense_above = _dense_above(h0.shape[0])
    args = _inference_args(_contiguous(*tensors), batch_sizes)
    return torch.ops.phased_lstm.forward_infer(*args, dense_above)


__all__ = ["build_error", "fused_recurrence", "kernels_available", "sparse_recurrence"]
