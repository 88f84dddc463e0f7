"""The Triton kernels as torch.library custom ops, with fake implementations and autograd.

The counterpart of :mod:`phased_lstm.ops._cpu.library` for the ``"triton"`` backend, in the
namespace ``phased_lstm_triton`` with the CPU ops' names and arguments, plus ``plan``, the tiles
of :class:`.launch.LaunchPlan` as a list of ints (empty: :func:`.launch.default_plan`, chosen
inside the op from the shapes and the dtype):

* ``time_gate_forward`` and ``time_gate_backward`` (:mod:`.gate`);
* ``forward_train`` (saves what ``backward`` needs), ``forward_infer`` (no gradient; skips blocks
  of closed neurons) and ``backward`` (:mod:`.launch`). The recurrence ops return their states
  in the compute dtype (float32 for bfloat16/float16 inputs, which the backward needs);
  :func:`recurrence` returns them in the inputs' dtype.

Each op has a fake implementation, which gives the shapes and dtypes of its outputs without
data, so that the ops trace into torch.compile graphs and run on the meta device; the two
differentiable ops, ``time_gate_forward`` and ``forward_train``, have their hand-written backward
registered, first order only as ``once_differentiable`` says. The kernels are registered for CUDA
(and the CPU in a process that interprets them). Importing this module defines the ops; only
:mod:`.backend` imports it, on the first call that needs Triton.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._gate_op import call_time_gate, time_gate_autograd
from .._planner import needs_grad
from . import gate, launch
from .launch import LaunchPlan, compute_dtype
from .loops import INTERPRETED

_NAMESPACE = "phased_lstm_triton"
# The interpreter runs the kernels on CPU tensors; compiled, they take CUDA tensors only.
DEVICE_TYPES = ("cuda", "cpu") if INTERPRETED else ("cuda",)
f64 = torch.float64


def _define(name: str, schema: str):
    return torch.library.custom_op(
        f"{_NAMESPACE}::{name}", mutates_args=(), device_types=DEVICE_TYPES, schema=schema
    )


_STATE = "Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, Tensor c0"


# ------------------------------------------------------------------------------------ the ops
@_define(
    "time_gate_forward",
    "(Tensor times, Tensor period, Tensor shift, Tensor r_on, float leak, Tensor? valid, "
    "ScalarType dtype) -> Tensor",
)
def _time_gate_forward(times, period, shift, r_on, leak, valid, dtype):
    return gate.forward(times, period, shift, r_on, leak, valid, dtype)


@_define(
    "time_gate_backward",
    "(Tensor grad_k, Tensor times, Tensor period, Tensor shift, Tensor r_on, float leak, "
    "Tensor? valid) -> (Tensor, Tensor, Tensor)",
)
def _time_gate_backward(grad_k, times, period, shift, r_on, leak, valid):
    return gate.backward(grad_k, times, period, shift, r_on, leak, valid)


def _launch_plan(plan, gates_x) -> LaunchPlan:
    length, batch, four_h = gates_x.shape
    if length == 0 or batch == 0:
        raise ValueError(
            "gates_x must have at least one step and one sample for the Triton kernels, got "
            f"shape {tuple(gates_x.shape)}"
        )
    return launch.plan_of(plan, batch, four_h // 4, gates_x.dtype)


@_define(
    "forward_train",
    f"({_STATE}, Tensor? batch_sizes, float grad_clip, int[] plan) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _forward_train(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip, plan):
    tiles = _launch_plan(plan, gates_x)
    h, c, acts = launch.forward(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, tiles, True)
    return h, h[-1].clone(), c[-1].clone(), c, acts


@_define(
    "forward_infer",
    f"({_STATE}, Tensor? batch_sizes, int[] plan) -> (Tensor, Tensor, Tensor)",
)
def _forward_infer(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, plan):
    tiles = _launch_plan(plan, gates_x)
    h, c, _ = launch.forward(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, tiles, False)
    return h, h[-1].clone(), c[(gates_x.shape[0] - 1) % 2].clone()


@_define(
    "backward",
    "(Tensor grad_h, Tensor grad_h_n, Tensor grad_c_n, Tensor k, Tensor weight_hh, "
    "Tensor? weight_ch, Tensor h0, Tensor c0, Tensor h, Tensor c, Tensor acts, "
    "bool weight_hh_grad, float grad_clip, Tensor? batch_sizes, int[] plan) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _backward(grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts,
              weight_hh_grad, grad_clip, batch_sizes, plan):  # fmt: skip
    tiles = launch.plan_of(plan, h.shape[1], h.shape[2], k.dtype)
    d_gates_x, d_k, d_weight_hh, d_weight_ch, d_h0, d_c0 = launch.backward(
        grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts, grad_clip,
        batch_sizes, tiles, weight_hh_grad,
    )  # fmt: skip
    # A gradient not asked for (weight_hh) or of absent peepholes: an empty tensor, as on the CPU.
    if d_weight_hh is None:
        d_weight_hh = weight_hh.new_empty((0,))
    if d_weight_ch is None:
        d_weight_ch = k.new_empty((0,))
    return d_gates_x, d_k, d_weight_hh, d_weight_ch, d_h0, d_c0


# ------------------------------------------------------------------------ fake implementations
@_time_gate_forward.register_fake
def _(times, period, shift, r_on, leak, valid, dtype):
    return times.new_empty((*times.shape, period.shape[0]), dtype=dtype)


@_time_gate_backward.register_fake
def _(grad_k, times, period, shift, r_on, leak, valid):
    return period.new_empty(period.shape), shift.new_empty(shift.shape), r_on.new_empty(r_on.shape)


def _fake_states(gates_x, k, h0, c0):
    """h, h_n and c_n, in the compute dtype."""
    ct = compute_dtype(gates_x.dtype)
    return tuple(t.new_empty(t.shape, dtype=ct) for t in (k, h0, c0))


@_forward_train.register_fake
def _(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip, plan):
    ct = compute_dtype(gates_x.dtype)
    cell = k.new_empty(k.shape, dtype=ct)
    acts = gates_x.new_empty(gates_x.shape, dtype=ct)
    return (*_fake_states(gates_x, k, h0, c0), cell, acts)


@_forward_infer.register_fake
def _(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, plan):
    return _fake_states(gates_x, k, h0, c0)


@_backward.register_fake
def _(grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts, weight_hh_grad,
      grad_clip, batch_sizes, plan):  # fmt: skip
    return (
        acts.new_empty(acts.shape, dtype=k.dtype),
        k.new_empty(k.shape),
        weight_hh.new_empty(weight_hh.shape if weight_hh_grad else (0,)),
        k.new_empty((0,)) if weight_ch is None else weight_ch.new_empty(weight_ch.shape),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
    )


# ------------------------------------------------------------------------------- autograd
def _setup_forward_train(ctx, inputs, output):
    gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip, plan = inputs
    h, _, _, c, acts = output
    ctx.save_for_backward(k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes)
    ctx.grad_clip = grad_clip
    ctx.plan = plan
    # c and acts are what backward needs, not outputs anyone differentiates; without
    # materialised gradients, no zero tensors of their size are made for them.
    ctx.mark_non_differentiable(c, acts)
    ctx.set_materialize_grads(False)


@once_differentiable
def _backward_forward_train(ctx, grad_h, grad_h_n, grad_c_n, _grad_c, _grad_acts):
    k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes = ctx.saved_tensors
    grad_h = torch.zeros_like(h) if grad_h is None else grad_h.contiguous()
    grad_h_n = torch.zeros_like(h[0]) if grad_h_n is None else grad_h_n.contiguous()
    grad_c_n = torch.zeros_like(h[0]) if grad_c_n is None else grad_c_n.contiguous()
    weight_hh_grad = ctx.needs_input_grad[2]
    d_gates_x, d_k, d_weight_hh, d_weight_ch, d_h0, d_c0 = torch.ops.phased_lstm_triton.backward(
        grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts, weight_hh_grad,
        ctx.grad_clip, batch_sizes, ctx.plan,
    )  # fmt: skip
    return (
        d_gates_x,
        d_k,
        d_weight_hh if weight_hh_grad else None,
        d_weight_ch if weight_ch is not None else None,
        d_h0,
        d_c0,
        None,
        None,
        None,
    )


_gate_backward, _gate_setup = time_gate_autograd(_NAMESPACE)
_time_gate_forward.register_autograd(_gate_backward, setup_context=_gate_setup)
_forward_train.register_autograd(_backward_forward_train, setup_context=_setup_forward_train)


# --------------------------------------------------------------------------- the entry points
def recurrence(gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None,
               *, plan: LaunchPlan | None = None):  # fmt: skip
    """The recurrence on these ops, in the padded layout with at least one step and one sample,
    the tensors contiguous as the planner admitted them; ``(h, h_n, c_n)`` in their dtype.
    ``plan`` overrides :func:`.launch.default_plan` (for tests and benchmarks)."""
    tiles = [] if plan is None else plan.to_ints()
    ops = torch.ops.phased_lstm_triton
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    if needs_grad(*tensors):
        h, h_n, c_n, _, _ = ops.forward_train(*tensors, batch_sizes, grad_clip, tiles)
    else:
        h, h_n, c_n = ops.forward_infer(*tensors, batch_sizes, tiles)
    dtype = gates_x.dtype
    return h.to(dtype), h_n.to(dtype), c_n.to(dtype)


def time_gate(times, period, shift, r_on, leak, valid, dtype) -> Tensor:
    """k of shape ``(*times.shape, H)`` in ``dtype``, zero where ``valid`` is False; the
    arguments of :func:`phased_lstm.ops.sequence_gate`. It differentiates with respect to
    period, shift and r_on, not the timestamps."""
    return call_time_gate(_NAMESPACE, times, period, shift, r_on, leak, valid, dtype)
