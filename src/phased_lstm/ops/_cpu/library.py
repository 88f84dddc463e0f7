"""The compiled kernels as torch.library custom ops: fake implementations and autograd.

The C++ files define the ops (``torch.ops.phased_lstm.*``) and their CPU kernels. Here they
get what torch.compile, torch.export and autograd need:

* a fake implementation of each op, which computes the shapes and dtypes of its outputs
  without data, so that the ops trace into graphs (and run on the meta device);
* the autograd formulas of the three differentiable ops, ``time_gate_forward`` (its backward is
  ``time_gate_backward``), ``forward_train`` and ``forward_train_input`` (their backward is
  ``backward``; the second's adds the gradients of x, W_ih and the bias as products over all
  steps). The backward passes are hand-written and first order only, as ``once_differentiable``
  says.

``forward_infer`` and ``forward_infer_input`` compute no gradient (the sparse inference path);
the backward ops are not differentiated themselves. :func:`register` runs once, when the kernels
are loaded.
"""

from __future__ import annotations

import threading

import torch
from torch.autograd.function import once_differentiable

from .._gate_op import time_gate_autograd

_NAMESPACE = "phased_lstm"
_lock = threading.Lock()
_registered = False


def _op(name: str) -> str:
    return f"{_NAMESPACE}::{name}"


# ------------------------------------------------------------------------ fake implementations
def _fake_time_gate_forward(times, period, shift, r_on, leak, valid, dtype):
    return times.new_empty((*times.shape, period.shape[0]), dtype=dtype)


def _fake_time_gate_backward(grad_k, times, period, shift, r_on, leak, valid):
    return period.new_empty(period.shape), shift.new_empty(shift.shape), r_on.new_empty(r_on.shape)


def _fake_forward_train(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip):
    return (
        k.new_empty(k.shape),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        k.new_empty(k.shape),
        gates_x.new_empty(gates_x.shape),
    )


def _fake_forward_train_input(
    x, weight_ih, bias, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip
):
    acts_shape = (*x.shape[:-1], weight_ih.shape[0])
    return (
        k.new_empty(k.shape),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        k.new_empty(k.shape),
        x.new_empty(acts_shape),
    )


def _fake_backward(
    grad_h,
    grad_h_n,
    grad_c_n,
    k,
    weight_hh,
    weight_ch,
    h0,
    c0,
    h,
    c,
    acts,
    weight_hh_grad,
    grad_clip,
    batch_sizes,
):
    return (
        acts.new_empty(acts.shape),
        k.new_empty(k.shape),
        weight_hh.new_empty(weight_hh.shape if weight_hh_grad else (0,)),
        k.new_empty(weight_ch.shape if weight_ch is not None else (0,)),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
    )


def _fake_forward_infer(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, dense_above):
    return k.new_empty(k.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


def _fake_forward_infer_input(x, times, weight_ih, bias, weight_hh, weight_ch, *rest):
    h0, c0 = rest[5], rest[6]  # after period, shift, r_on, leak, valid
    shape = (*x.shape[:-1], weight_hh.shape[1])
    return x.new_empty(shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


# ------------------------------------------------------------------------------- autograd
def _setup_forward_train(ctx, inputs, output):
    gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip = inputs
    h, _, _, c, acts = output
    ctx.save_for_backward(k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes)
    ctx.grad_clip = grad_clip
    # c and acts are what backward needs, not outputs anyone differentiates; without
    # materialised gradients, no zero tensors of their size are made for them.
    ctx.mark_non_differentiable(c, acts)
    ctx.set_materialize_grads(False)


def _recurrence_backward(ctx, saved, grad_h, grad_h_n, grad_c_n, weight_hh_grad):
    """The ``backward`` op's gradients (gates, k, weight_hh, weight_ch, h0, c0) from the saved
    ``(k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes)``."""
    k, weight_hh, weight_ch, h0, c0, h = saved[:6]
    grad_h = torch.zeros_like(h) if grad_h is None else grad_h.contiguous()
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n.contiguous()
    grad_c_n = torch.zeros_like(c0) if grad_c_n is None else grad_c_n.contiguous()
    return torch.ops.phased_lstm.backward(
        grad_h, grad_h_n, grad_c_n, *saved[:8], weight_hh_grad, ctx.grad_clip, saved[8]
    )


@once_differentiable
def _backward_forward_train(ctx, grad_h, grad_h_n, grad_c_n, _grad_c, _grad_acts):
    saved = ctx.saved_tensors  # k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes
    weight_hh_grad = ctx.needs_input_grad[2]
    d_gates_x, d_k, d_weight_hh, d_weight_ch, d_h0, d_c0 = _recurrence_backward(
        ctx, saved, grad_h, grad_h_n, grad_c_n, weight_hh_grad
    )
    return (
        d_gates_x,
        d_k,
        d_weight_hh if weight_hh_grad else None,
        d_weight_ch if saved[2] is not None else None,
        d_h0,
        d_c0,
        None,
        None,
    )


def _setup_forward_train_input(ctx, inputs, output):
    x, weight_ih, bias, k, weight_hh, weight_ch, h0, c0, batch_sizes, grad_clip = inputs
    h, _, _, c, acts = output
    ctx.save_for_backward(k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes, x, weight_ih)
    ctx.grad_clip = grad_clip
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(c, acts)
    ctx.set_materialize_grads(False)


@once_differentiable
def _backward_forward_train_input(ctx, grad_h, grad_h_n, grad_c_n, _grad_c, _grad_acts):
    saved = ctx.saved_tensors  # those of forward_train, then x and weight_ih
    x, weight_ih = saved[9:]
    needs = ctx.needs_input_grad  # x, weight_ih, bias, k, weight_hh, weight_ch, h0, c0, ...
    d_gates, d_k, d_weight_hh, d_weight_ch, d_h0, d_c0 = _recurrence_backward(
        ctx, saved, grad_h, grad_h_n, grad_c_n, needs[4]
    )
    # The input projection's gradients, each one product over the rows of all steps (the
    # padding's rows of d_gates are zero).
    rows = d_gates.view(-1, d_gates.shape[-1])
    d_x = rows.mm(weight_ih).view(x.shape) if needs[0] else None
    d_weight_ih = rows.t().mm(x.reshape(-1, x.shape[-1])) if needs[1] else None
    d_bias = rows.sum(0) if ctx.has_bias and needs[2] else None
    return (
        d_x,
        d_weight_ih,
        d_bias,
        d_k,
        d_weight_hh if needs[4] else None,
        d_weight_ch if saved[2] is not None else None,
        d_h0,
        d_c0,
        None,
        None,
    )


def register() -> None:
    """Register the fake implementations and autograd formulas (once per process)."""
    global _registered
    with _lock:
        if _registered:
            return
        fakes = {
            "time_gate_forward": _fake_time_gate_forward,
            "time_gate_backward": _fake_time_gate_backward,
            "forward_train": _fake_forward_train,
            "forward_train_input": _fake_forward_train_input,
            "backward": _fake_backward,
            "forward_infer": _fake_forward_infer,
            "forward_infer_input": _fake_forward_infer_input,
        }
        for name, fake in fakes.items():
            torch.library.register_fake(_op(name), fake)
        backward, setup_context = time_gate_autograd(_NAMESPACE)
        torch.library.register_autograd(
            _op("time_gate_forward"), backward, setup_context=setup_context
        )
        torch.library.register_autograd(
            _op("forward_train"), _backward_forward_train, setup_context=_setup_forward_train
        )
        torch.library.register_autograd(
            _op("forward_train_input"),
            _backward_forward_train_input,
            setup_context=_setup_forward_train_input,
        )
        _registered = True
