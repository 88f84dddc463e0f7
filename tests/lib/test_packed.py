"""A PackedSequence runs in its own layout: the op's packed form against the padded reference
(values and every gradient, each backend), and the layer's against its padded path."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from phased_lstm import PhasedLSTM
from phased_lstm.ops import _planner as backends
from phased_lstm.ops import recurrence, reference_recurrence
from phased_lstm.ops._cpu import kernels

f32, f64 = torch.float32, torch.float64
TOL = {f32: dict(rtol=2e-5, atol=2e-5), f64: dict(rtol=1e-10, atol=1e-10)}
LENGTHS = [7, 7, 5, 2, 1]  # sorted longest first, as a PackedSequence holds them
built = kernels.build_error() is None
compiled = [
    pytest.param(b, marks=pytest.mark.skipif(not built, reason="no kernels"))
    for b in ("fused", "sparse")
]


def padded_inputs(dtype, peepholes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    steps, batch, hidden = max(LENGTHS), len(LENGTHS), 4

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale).to(dtype)

    return {
        "gates_x": randn(steps, batch, 4 * hidden),
        "k": torch.rand(steps, batch, hidden, generator=gen, dtype=f64).to(dtype),
        "weight_hh": randn(4 * hidden, hidden, scale=0.5),
        "weight_ch": randn(3 * hidden, scale=0.5) if peepholes else None,
        "h0": randn(batch, hidden, scale=0.5),
        "c0": randn(batch, hidden),
    }


def pack(tensor):
    return pack_padded_sequence(tensor, torch.tensor(LENGTHS)).data


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
@pytest.mark.parametrize("backend", ["reference", *compiled])
def test_packed_op_equals_the_padded_reference(backend, peepholes, dtype):
    padded = padded_inputs(dtype, peepholes)
    packed = dict(padded, gates_x=pack(padded["gates_x"]), k=pack(padded["k"]))
    batch_sizes = pack_padded_sequence(padded["k"], torch.tensor(LENGTHS)).batch_sizes
    grad = backend != "sparse"
    for tensors in (padded, packed):
        for t in tensors.values():
            if t is not None and grad:
                t.requires_grad_()
    with torch.set_grad_enabled(grad):
        # The padded reference: the padding's k is zero and batch_sizes holds the state.
        h, h_n, c_n = reference_recurrence(*padded.values(), batch_sizes=batch_sizes)
        got_h, got_h_n, got_c_n = recurrence(
            *packed.values(), batch_sizes=batch_sizes, backend=backend
        )
    assert got_h.shape == (sum(LENGTHS), 4)
    torch.testing.assert_close(got_h, pack(h), **TOL[dtype])
    torch.testing.assert_close(got_h_n, h_n, **TOL[dtype])
    torch.testing.assert_close(got_c_n, c_n, **TOL[dtype])
    if not grad:
        return
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=f64).to(dtype) for t in (got_h, h_n, c_n)]
    want = torch.autograd.grad(
        (pack(h) * weights[0]).sum() + (h_n * weights[1]).sum() + (c_n * weights[2]).sum(),
        [t for t in padded.values() if t is not None],
    )
    got = torch.autograd.grad(
        (got_h * weights[0]).sum() + (got_h_n * weights[1]).sum() + (got_c_n * weights[2]).sum(),
        [t for t in packed.values() if t is not None],
    )
    names = [n for n, t in padded.items() if t is not None]
    for name, g, w in zip(names, got, want, strict=True):
        if name in ("gates_x", "k"):
            w = pack(w)
        torch.testing.assert_close(g, w, **TOL[dtype], msg=name)


def test_packed_op_checks_batch_sizes():
    padded = padded_inputs(f64, False)
    packed = dict(padded, gates_x=pack(padded["gates_x"]), k=pack(padded["k"]))
    with pytest.raises(TypeError, match=r"batch_sizes must be an int64 torch.Tensor of shape"):
        recurrence(*packed.values())
    with pytest.raises(ValueError, match=r"batch_sizes must sum to the S = 22 rows"):
        recurrence(*packed.values(), batch_sizes=torch.tensor([5, 5, 4]))


@pytest.fixture
def spy_backend(monkeypatch):
    """A backend that records the layout it is handed and runs the reference."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    shapes = []

    def run(gates_x, *rest):
        shapes.append(tuple(gates_x.shape))
        return reference_recurrence(gates_x, *rest)

    backends.register_backend(backends.Backend("spy", run, packed=True, priority=-1))
    return shapes


@pytest.mark.parametrize("backend", ["spy", *compiled[:1]])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_takes_a_packed_sequence_as_it_is(spy_backend, backend, bidirectional):
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, 2, bidirectional=bidirectional, r_on=0.3).double()
    x = torch.randn(7, 5, 2, dtype=f64)
    times = torch.rand(7, 5, dtype=f64).mul(4).cumsum(0)
    lengths = torch.tensor([2, 7, 5, 1, 7])  # unsorted: the packed sequence keeps the order
    d = 2 if bidirectional else 1
    hx = tuple(torch.randn(2 * d, 5, 4, dtype=f64) for _ in "hc")
    packed_x = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed_t = pack_padded_sequence(times, lengths, enforce_sorted=False)
    layer.backend = backend
    out, (h, c) = layer(packed_x, packed_t, hx)
    if backend == "spy":
        assert spy_backend and all(len(shape) == 2 for shape in spy_backend)  # (S, 4H)
    layer.backend = "reference"
    want, (h_want, c_want) = layer(x, times, hx, lengths=lengths)
    assert torch.equal(out.batch_sizes, packed_x.batch_sizes)
    assert torch.equal(out.unsorted_indices, packed_x.unsorted_indices)
    unpacked, _ = pad_packed_sequence(out)
    torch.testing.assert_close(unpacked, want)
    torch.testing.assert_close(h, h_want)
    torch.testing.assert_close(c, c_want)
    # Gradients of every parameter: the packed run against the padded one.
    layer.backend = backend
    layer.zero_grad()
    (out.data.sum() + h.sum()).backward()
    got = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.backend = "reference"
    layer.zero_grad()
    want, (h_want, _) = layer(x, times, hx, lengths=lengths)
    (want.sum() + h_want.sum()).backward()
    for name, param in layer.named_parameters():
        torch.testing.assert_close(got[name], param.grad, msg=name)
