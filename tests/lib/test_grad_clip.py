"""Clipping of the gate pre-activations' gradient inside the recurrence (``grad_clip``).

References: a one-step example worked by hand, and an autograd loop written here that clamps
the gradient with a tensor hook, as Lasagne's ``grad_clipping`` does; both backends of the op
and the layer are compared with them.
"""

import math

import pytest
import torch

from phased_lstm import PhasedLSTM, PhasedLSTMCell
from phased_lstm.ops import recurrence
from phased_lstm.ops._cpu import backend as fused

f64 = torch.float64
BACKENDS = ["reference", "fused"]

needs_kernels = pytest.mark.skipif(
    fused.build_error() is not None, reason=f"C++ kernels unavailable: {fused.build_error()}"
)


def backend_param(name):
    return pytest.param(name, marks=needs_kernels) if name == "fused" else name


BACKEND_PARAMS = [backend_param(name) for name in BACKENDS]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_one_step_by_hand():
    # One neuron, one step, gate open, no peepholes, h0 = 0: loss = h_1. Pre-activations
    # (i, f, g, o) = gates_x. By hand: c = i g (c0 = 0), h = o tanh(c), and
    # dL/d a_o = tanh(c) o (1 - o), dL/dc = o (1 - tanh(c)^2),
    # dL/d a_i = dL/dc g i (1 - i), dL/d a_g = dL/dc i (1 - g^2), dL/d a_f = dL/dc c0 f(1-f) = 0.
    a_i, a_f, a_g, a_o = 2.0, -1.0, 1.0, 0.5
    i, g, o = sigmoid(a_i), math.tanh(a_g), sigmoid(a_o)
    c = i * g
    dc = o * (1 - math.tanh(c) ** 2)
    unclipped = [dc * g * i * (1 - i), 0.0, dc * i * (1 - g * g), math.tanh(c) * o * (1 - o)]
    clip = 0.05
    # Two of the four exceed the bound; the others pass unchanged.
    assert sum(abs(v) > clip for v in unclipped) == 2
    want = torch.tensor([min(max(v, -clip), clip) for v in unclipped], dtype=f64)
    for backend in BACKENDS:
        if backend == "fused" and fused.build_error() is not None:
            continue
        gates_x = torch.tensor([[[a_i, a_f, a_g, a_o]]], dtype=f64, requires_grad=True)
        zeros = torch.zeros(1, 1, dtype=f64)
        h, _, _ = recurrence(
            gates_x,
            torch.ones(1, 1, 1, dtype=f64),
            torch.zeros(4, 1, dtype=f64),
            None,
            zeros,
            zeros,
            grad_clip=clip,
            backend=backend,
        )
        (grad,) = torch.autograd.grad(h.sum(), gates_x)
        torch.testing.assert_close(grad.flatten(), want, rtol=0, atol=1e-15, msg=backend)


def hooked_loop(gates_x, k, weight_hh, weight_ch, h0, c0, clip):
    """The recurrence as Lasagne writes it: the hook clamps the gradient of x W_ih + h W_hh
    before the peephole terms are added."""
    h, c, hs = h0, c0, []
    for t in range(gates_x.shape[0]):
        gates = gates_x[t] + h @ weight_hh.t()
        gates.register_hook(lambda grad: grad.clamp(-clip, clip))
        a_i, a_f, a_g, a_o = gates.chunk(4, dim=-1)
        if weight_ch is not None:
            w_i, w_f, w_o = weight_ch.chunk(3)
            a_i, a_f = a_i + w_i * c, a_f + w_f * c
        c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
        if weight_ch is not None:
            a_o = a_o + w_o * c_new
        h_new = torch.sigmoid(a_o) * torch.tanh(c_new)
        c = k[t] * c_new + (1 - k[t]) * c
        h = k[t] * h_new + (1 - k[t]) * h
        hs.append(h)
    return torch.stack(hs), h, c


def clip_inputs(peepholes, seed=0, length=12, batch=3, hidden=5):
    gen = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randn(length, batch, 4 * hidden, generator=gen, dtype=f64) * 2,
        torch.rand(length, batch, hidden, generator=gen, dtype=f64),
        torch.randn(4 * hidden, hidden, generator=gen, dtype=f64),
        torch.randn(3 * hidden, generator=gen, dtype=f64) if peepholes else None,
        torch.randn(batch, hidden, generator=gen, dtype=f64),
        torch.randn(batch, hidden, generator=gen, dtype=f64),
    ]
    return [None if t is None else t.requires_grad_() for t in inputs]


def grads_of(run, inputs, seed=1):
    h, h_n, c_n = run(*inputs)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=f64)).sum() for t in (h, h_n, c_n))
    used = [t for t in inputs if t is not None]
    return (h, h_n, c_n), torch.autograd.grad(loss, used)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
def test_op_matches_the_hooked_loop(backend, peepholes):
    clip = 0.2
    inputs = clip_inputs(peepholes)
    want_out, want = grads_of(lambda *a: hooked_loop(*a, clip), inputs)
    got_out, got = grads_of(lambda *a: recurrence(*a, grad_clip=clip, backend=backend), inputs)
    _, unclipped = grads_of(lambda *a: recurrence(*a, backend=backend), inputs)
    for got_t, want_t in zip(got_out, want_out, strict=True):
        torch.testing.assert_close(got_t, want_t, rtol=1e-12, atol=1e-12)  # forward unchanged
    names = ["gates_x", "k", "weight_hh", "weight_ch", "h0", "c0"]
    names = [n for n, t in zip(names, inputs, strict=True) if t is not None]
    for name, got_g, want_g in zip(names, got, want, strict=True):
        torch.testing.assert_close(got_g, want_g, rtol=1e-10, atol=1e-10, msg=name)
    # The bound was reached, so the test could tell clipping from none.
    assert got[0].abs().max() == pytest.approx(clip)
    assert not torch.allclose(got[0], unclipped[0])


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_one_step_clips_only_what_flows_into_the_gates(backend):
    # With a single step nothing flows back through a clipped gate into the peepholes, the
    # cell state or k, so their gradients are those of an unclipped run; gates_x and h0 (fed
    # through W_hh) are clipped.
    inputs = clip_inputs(True, seed=3, length=1)
    _, clipped = grads_of(lambda *a: recurrence(*a, grad_clip=0.01, backend=backend), inputs)
    _, unclipped = grads_of(lambda *a: recurrence(*a, backend=backend), inputs)
    d_gates, d_k, d_whh, d_wch, d_h0, d_c0 = clipped
    assert d_gates.abs().max() <= 0.01
    for name, got, want in (("k", d_k, unclipped[1]), ("weight_ch", d_wch, unclipped[3])):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=name)
    torch.testing.assert_close(d_c0, unclipped[5], rtol=1e-12, atol=1e-14)
    # h0 gets (1 - k) dh directly and the gate gradient through W_hh.
    weight_hh = inputs[2].detach()
    torch.testing.assert_close(
        d_h0 - d_gates[0] @ weight_hh,
        unclipped[4] - unclipped[0][0] @ weight_hh,
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_a_large_bound_changes_nothing(backend):
    inputs = clip_inputs(True, seed=5)
    _, loose = grads_of(lambda *a: recurrence(*a, grad_clip=1e30, backend=backend), inputs)
    _, none = grads_of(lambda *a: recurrence(*a, backend=backend), inputs)
    for got, want in zip(loose, none, strict=True):
        assert torch.equal(got, want)


@needs_kernels
def test_fused_clip_keeps_nan():
    # A NaN gradient must not be clamped into a finite number that hides the failure.
    inputs = clip_inputs(False, seed=6, length=3)
    with torch.no_grad():
        inputs[0][1, 0, 0] = math.nan
    _, grads = grads_of(lambda *a: recurrence(*a, grad_clip=1.0, backend="fused"), inputs)
    assert grads[0].isnan().any()


def test_clipped_gradients_are_first_order_only():
    # A clamped gradient has no derivative of its own: a second-order request must fail
    # loudly rather than return numbers that clamp some of their own paths.
    inputs = clip_inputs(False, seed=7, length=3, batch=2, hidden=2)
    h, _, _ = recurrence(*inputs, grad_clip=0.3, backend="reference")
    (grad,) = torch.autograd.grad(h.pow(2).sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_passes_the_bound_to_every_direction(backend, bidirectional):
    torch.manual_seed(0)
    # r_on = 1: the gates are open most of the time, so the gradients are large.
    layer = PhasedLSTM(2, 4, 2, bidirectional=bidirectional, peepholes=True, r_on=1.0)
    layer = layer.double()
    x = torch.randn(7, 3, 2, dtype=f64) * 3
    times = torch.arange(7, dtype=f64).unsqueeze(1).expand(7, 3)
    layer.backend = backend
    bound = 1e-3 * 7 * 3
    for clip in (None, 1e-3):
        layer.grad_clip = clip
        layer.zero_grad()
        out, _ = layer(x, times, lengths=torch.tensor([7, 5, 2]))
        out.pow(2).sum().mul(1e4).backward()
        # A bias gradient of a layer-direction sums its gate gradients over the steps and
        # samples, so with clipping it is at most 1e-3 * L * N.
        biggest = max(p.grad.abs().max() for n, p in layer.named_parameters() if "bias_ih" in n)
        assert biggest <= bound + 1e-15 if clip else biggest > bound
    assert "grad_clip=0.001" in repr(layer)


def test_cell_takes_the_bound():
    torch.manual_seed(0)
    x = torch.randn(4, 2, dtype=f64) * 10
    grads = {}
    for clip in (None, 0.5):
        torch.manual_seed(1)
        cell = PhasedLSTMCell(2, 3, r_on=1.0, grad_clip=clip).double()
        h, _ = cell(x, torch.tensor(0.3))
        h.sum().mul(1e3).backward()
        grads[clip] = cell.bias_ih.grad.abs().max()
    assert grads[0.5] <= 0.5 * 4 + 1e-15 < grads[None]
