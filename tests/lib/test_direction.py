"""A layer-direction from the layer input, the backends' ``direction`` (the gate and the input
projection computed inside the kernels), against the float64 reference loop: "sparse"'s
inference, which computes only the open pairs (op and layer), "fused"'s training, values and
every gradient; and the training kernels with their work split over two threads."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from phased_lstm import PhasedLSTM
from phased_lstm.ops import recurrence, reference_recurrence
from phased_lstm.ops._cpu import backend as cpu
from phased_lstm.ops._cpu import kernels
from phased_lstm.ops.reference import reference_gate

f32, f64, bf16 = torch.float32, torch.float64, torch.bfloat16
DTYPES = {"f32": f32, "f64": f64}
TOL = {f32: 2e-5, f64: 1e-10}

pytestmark = pytest.mark.skipif(
    kernels.build_error() is not None, reason=f"C++ kernels unavailable: {kernels.build_error()}"
)


@pytest.fixture(autouse=True)
def threads(request):
    """One thread unless a test asks for more (the work-splitting tests ask for two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request, "param", 1))
    yield
    torch.set_num_threads(before)


two_threads = pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])


def assert_near(got, want, dtype, what):
    got, want = got.detach(), want.detach().to(got.dtype)
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale, msg=what)


def infer_inputs(length, batch, inputs, hidden, dtype, *, r_on, peepholes, bias=True, seed=0):
    """Arguments of sparse_direction but leak, valid and batch_sizes: weights, state, and
    timestamps of unit-rate Poisson processes under periods of 2 to 8."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale).to(dtype)

    return {
        "x": randn(length, batch, inputs),
        "times": torch.empty(length, batch, dtype=f64).exponential_(1.0, generator=gen).cumsum(0),
        "weight_ih": randn(4 * hidden, inputs, scale=inputs**-0.5),
        "bias": randn(4 * hidden, scale=0.5) if bias else None,
        "weight_hh": randn(4 * hidden, hidden, scale=hidden**-0.5),
        "weight_ch": randn(3 * hidden, scale=0.5) if peepholes else None,
        "period": torch.rand(hidden, generator=gen, dtype=f64) * 6 + 2,
        "shift": torch.rand(hidden, generator=gen, dtype=f64) * 8,
        "r_on": torch.full((hidden,), r_on, dtype=f64),
        "h0": randn(batch, hidden, scale=0.5),
        "c0": randn(batch, hidden),
    }


def reference_of(a, leak, valid=None, batch_sizes=None, grad_clip=None):
    """The same computation in float64 by the readable gate, F.linear and the reference loop
    (differentiable with respect to ``a``'s tensors)."""
    d = {n: None if t is None else t.to(f64) for n, t in a.items()}
    k = reference_gate(d["times"], d["period"], d["shift"], d["r_on"], leak, valid, f64)
    gates_x = F.linear(d["x"], d["weight_ih"], d["bias"])
    return reference_recurrence(
        gates_x,
        k,
        d["weight_hh"],
        d["weight_ch"],
        d["h0"],
        d["c0"],
        batch_sizes=batch_sizes,
        grad_clip=grad_clip,
    )


def run_infer(a, leak, valid=None, batch_sizes=None):
    with torch.no_grad():
        return cpu.sparse_direction(
            a["x"],
            a["times"],
            a["weight_ih"],
            a["bias"],
            a["weight_hh"],
            a["weight_ch"],
            a["period"],
            a["shift"],
            a["r_on"],
            leak,
            valid,
            a["h0"],
            a["c0"],
            batch_sizes=batch_sizes,
        )


def assert_closed_pairs_held(a, h, leak, valid=None):
    """Where the compiled gate is exactly 0, h is the previous step's bit for bit."""
    k = cpu.time_gate(a["times"], a["period"], a["shift"], a["r_on"], leak, valid, h.dtype)
    previous = torch.cat([a["h0"].unsqueeze(0), h[:-1]])
    closed = k == 0
    assert closed.any()
    assert torch.equal(h[closed], previous[closed])


# ------------------------------------------------------------------------------- the op
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
@pytest.mark.parametrize("batch", [1, 6], ids=["B1", "B6"])
@pytest.mark.parametrize("dense_above", [0.0, 0.3, 1.0], ids=["dense", "mixed", "sparse"])
def test_infer_input_matches_reference(monkeypatch, dtype, peepholes, batch, dense_above):
    # dense_above 0 runs every step with an open pair dense, 1 every step sparse, 0.3 both.
    monkeypatch.setattr(cpu, "_dense_above", lambda batch: dense_above)
    a = infer_inputs(40, batch, 3, 9, dtype, r_on=0.3, peepholes=peepholes)
    want = reference_of(a, 0.0)
    got = run_infer(a, 0.0)
    for name, g, w in zip(("h", "h_n", "c_n"), got, want, strict=True):
        assert g.dtype == dtype, name
        assert_near(g, w, dtype, name)
    assert_closed_pairs_held(a, got[0], 0.0)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_infer_input_with_a_leak_and_without_bias(dtype):
    # Training mode without gradients: the leak opens every pair a little, every step is dense.
    a = infer_inputs(20, 3, 4, 7, dtype, r_on=0.2, peepholes=True, bias=False, seed=1)
    want = reference_of(a, 0.05)
    got = run_infer(a, 0.05)
    for name, g, w in zip(("h", "h_n", "c_n"), got, want, strict=True):
        assert_near(g, w, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_infer_input_with_lengths(dtype, layout):
    # Samples sorted longest first; the padding's x and times are junk that must not matter.
    lengths = [30, 30, 17, 4, 1]
    a = infer_inputs(30, 5, 3, 8, dtype, r_on=0.4, peepholes=True, seed=2)
    valid = torch.arange(30).unsqueeze(1) < torch.tensor(lengths)
    batch_sizes = valid.sum(1)
    want = reference_of(a, 0.0, valid=valid, batch_sizes=batch_sizes)
    with torch.no_grad():
        a["x"][~valid] = 50.0
        a["times"][~valid] = -3.0
    if layout == "padded":
        got = run_infer(a, 0.0, valid=valid, batch_sizes=batch_sizes)
        h = got[0]
        for n, length in enumerate(lengths):  # the padding holds the last state bit for bit
            assert torch.equal(h[length:, n], h[length - 1, n].expand(30 - length, -1))
    else:
        packed = dict(a)
        for name in ("x", "times"):
            packed[name] = pack_padded_sequence(a[name], torch.tensor(lengths)).data
        got = run_infer(packed, 0.0, batch_sizes=batch_sizes)
        h = torch.zeros_like(want[0]).to(dtype)
        h[valid] = got[0]
    assert_near(h[valid], want[0][valid], dtype, "h")
    assert_near(got[1], want[1], dtype, "h_n")
    assert_near(got[2], want[2], dtype, "c_n")


@two_threads
@pytest.mark.parametrize("dense_above", [0.0, 1.0], ids=["dense", "sparse"])
@pytest.mark.parametrize(
    "batch, hidden, r_on, dtype",
    [(16, 70, 0.5, f64), (2, 140, 0.9, f32)],
    ids=["batch", "few-samples-float32"],
)
def test_infer_input_with_work_split_over_threads(
    threads, monkeypatch, dense_above, batch, hidden, r_on, dtype
):
    # Enough open pairs per step for the sparse steps to split the neurons over two threads;
    # H = 70 is no multiple of the blocks' alignment. Steps of a few samples split in a plain
    # OpenMP region, of more in ATen's; float32 takes the vectorised dot products that fetch
    # the next open neuron's rows.
    monkeypatch.setattr(cpu, "_dense_above", lambda batch: dense_above)
    a = infer_inputs(12, batch, 5, hidden, dtype, r_on=r_on, peepholes=True, seed=3)
    want = reference_of(a, 0.0)
    got = run_infer(a, 0.0)
    for name, g, w in zip(("h", "h_n", "c_n"), got, want, strict=True):
        assert_near(g, w, dtype, name)
    assert_closed_pairs_held(a, got[0], 0.0)


def test_infer_input_of_an_empty_sequence_returns_the_initial_state():
    a = infer_inputs(0, 2, 3, 4, f32, r_on=0.3, peepholes=False)
    h, h_n, c_n = run_infer(a, 0.0)
    assert h.shape == (0, 2, 4)
    assert torch.equal(h_n, a["h0"]) and torch.equal(c_n, a["c0"])


def test_infer_input_rejects_what_it_cannot_run():
    a = infer_inputs(3, 2, 3, 4, f32, r_on=0.3, peepholes=False)
    with pytest.raises(RuntimeError, match="weight_ih must be \\(4H, I\\) = \\(16, 3\\)"):
        run_infer(dict(a, weight_ih=a["weight_ih"][:, :2]), 0.0)
    with pytest.raises(RuntimeError, match="period, shift and r_on must be .* \\(H,\\) = \\(4,\\)"):
        run_infer(dict(a, period=a["period"][:3]), 0.0)
    with pytest.raises(RuntimeError, match="valid must be a contiguous bool tensor"):
        run_infer(a, 0.0, valid=torch.ones(3, 2))
    with pytest.raises(RuntimeError, match="of one dtype, got torch.float32, torch.float64"):
        run_infer(dict(a, h0=a["h0"].double()), 0.0)


# ------------------------------------------------------------------- the op, training
def direction_grads(run, a, valid=None, seed=1):
    """Outputs of ``run()`` and the gradients of every tensor of ``a`` that requires grad, for
    a random linear loss on (h, h_n, c_n); ``valid`` (L, N) leaves h's padding out of it."""
    h, h_n, c_n = run()
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=gen, dtype=f64) for t in (h, h_n, c_n)]
    if valid is not None:
        weights[0] = weights[0] * valid.unsqueeze(-1)
    loss = sum((t.double() * w).sum() for t, w in zip((h, h_n, c_n), weights, strict=True))
    names = [n for n, t in a.items() if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, [a[n] for n in names])
    return {"h": h, "h_n": h_n, "c_n": c_n} | {
        f"grad {n}": g for n, g in zip(names, grads, strict=True)
    }


def trainable(a):
    return {
        n: t if t is None or n == "times" else t.detach().clone().requires_grad_()
        for n, t in a.items()
    }


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["full", "lengths", "packed"])
def test_fused_direction_matches_reference(dtype, bias, layout):
    lengths = [16, 16, 9, 3] if layout != "full" else [16] * 4
    a = trainable(infer_inputs(16, 4, 3, 6, dtype, r_on=0.3, peepholes=True, bias=bias, seed=4))
    valid = torch.arange(16).unsqueeze(1) < torch.tensor(lengths)
    batch_sizes = valid.sum(1) if layout != "full" else None
    mask = valid if layout != "full" else None
    want = direction_grads(
        lambda: reference_of(a, 0.05, mask, batch_sizes, grad_clip=0.7), a, valid
    )
    given = dict(a)
    if layout == "packed":
        for name in ("x", "times"):
            given[name] = pack_padded_sequence(a[name], torch.tensor(lengths)).data
        mask = None

    def run():
        h, h_n, c_n = cpu.fused_direction(
            *(given[n] for n in ("x", "times", "weight_ih", "bias", "weight_hh", "weight_ch")),
            *(given[n] for n in ("period", "shift", "r_on")),
            0.05,
            mask,
            given["h0"],
            given["c0"],
            0.7,
            batch_sizes,
        )
        if layout == "packed":  # the packed output back into the padded layout
            padded = h.new_zeros(16, 4, h.shape[-1])
            padded[valid] = h
            h = padded
        return h, h_n, c_n

    assert "phased_lstm::forward_train_input" in ops_run(lambda: run())
    got = direction_grads(run, a, valid)
    assert got.keys() == want.keys()
    gate = ("grad period", "grad shift", "grad r_on")  # float64 whatever the dtype
    for name in want:
        assert got[name].dtype == (f64 if name in gate else dtype), name
        if name == "h":
            assert_near(got[name][valid], want[name][valid], dtype, name)
        else:
            assert_near(got[name], want[name], dtype, name)


# ---------------------------------------------------------------------------- the layer
def layer_and_inputs(dtype, bidirectional, seed=0):
    torch.manual_seed(seed)
    layer = PhasedLSTM(3, 16, 2, bidirectional=bidirectional, peepholes=True, r_on=0.2)
    layer = layer.to(dtype).eval()
    x = torch.randn(60, 4, 3).to(dtype)
    times = torch.empty(60, 4, dtype=f64).exponential_(1.0).cumsum(0)
    return layer, x, times


def run_layer(layer, backend, *args, **kwargs):
    layer.backend = backend
    with torch.no_grad():
        return layer(*args, **kwargs)


def ops_run(fn):
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("phased_lstm::")}


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_layer_eval_through_infer_matches_reference(dtype, bidirectional):
    layer, x, times = layer_and_inputs(dtype, bidirectional)
    lengths = torch.tensor([60, 13, 41, 1])
    want, (h_want, c_want) = run_layer(layer, "reference", x, times, lengths=lengths)
    ran = ops_run(lambda: run_layer(layer, "sparse", x, times, lengths=lengths))
    assert "phased_lstm::forward_infer_input" in ran  # and no gate or projection of all steps
    assert "phased_lstm::time_gate_forward" not in ran
    got, (h, c) = run_layer(layer, "sparse", x, times, lengths=lengths)
    for name, g, w in (("output", got, want), ("h_n", h, h_want), ("c_n", c, c_want)):
        assert_near(g, w, dtype, name)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_eval_of_a_packed_sequence_through_infer(bidirectional):
    layer, x, times = layer_and_inputs(f64, bidirectional, seed=1)
    lengths = torch.tensor([60, 41, 13, 1])
    packed_x = pack_padded_sequence(x, lengths)
    packed_t = pack_padded_sequence(times, lengths)
    want, (h_want, c_want) = run_layer(layer, "reference", packed_x, packed_t)
    got, (h, c) = run_layer(layer, "sparse", packed_x, packed_t)
    assert torch.equal(got.batch_sizes, want.batch_sizes)
    for name, g, w in (("output", got.data, want.data), ("h_n", h, h_want), ("c_n", c, c_want)):
        assert_near(g, w, f64, name)


def test_layer_eval_in_bfloat16_through_infer():
    # The recurrence runs in float32 (the planner's compute dtype); against the float32 layer
    # with the same rounded weights, within the bfloat16 tolerance the docstring documents.
    layer, x, times = layer_and_inputs(f32, True, seed=2)
    half = PhasedLSTM(3, 16, 2, bidirectional=True, peepholes=True, r_on=0.2).to(bf16).eval()
    half.load_state_dict({k: v.to(bf16) for k, v in layer.state_dict().items()})
    layer.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    x = x.to(bf16)
    want, (h_want, _) = run_layer(layer, "reference", x.float(), times)
    got, (h, _) = run_layer(half, "sparse", x, times)
    assert got.dtype == h.dtype == bf16
    assert float((got.float() - want).abs().max()) < 1e-2
    assert float((h.float() - h_want).abs().max()) < 1e-2


# ----------------------------------------------------- training, work split over threads
def op_inputs(length, batch, hidden, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale).to(dtype)

    inputs = {
        "gates_x": randn(length, batch, 4 * hidden),
        "k": torch.rand(length, batch, hidden, generator=gen, dtype=f64).to(dtype),
        "weight_hh": randn(4 * hidden, hidden, scale=hidden**-0.5),
        "weight_ch": randn(3 * hidden, scale=0.5),
        "h0": randn(batch, hidden, scale=0.5),
        "c0": randn(batch, hidden),
    }
    return {n: t.requires_grad_() for n, t in inputs.items()}


def run_op(backend, inputs, **options):
    h, h_n, c_n = recurrence(*inputs.values(), backend=backend, **options)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=f64).to(t.dtype) for t in (h, h_n, c_n)]
    loss = sum((t * w).sum() for t, w in zip((h, h_n, c_n), weights, strict=True))
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return {"h": h, "h_n": h_n, "c_n": c_n} | {
        f"grad {n}": g for n, g in zip(inputs, grads, strict=True)
    }


@two_threads
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", ["full", "batch_sizes", "packed"])
def test_training_with_work_split_over_threads(threads, dtype, layout):
    # H = 70 splits into blocks of 40 and 30 neurons; batch_sizes make some steps' products
    # cover fewer rows than the step before (the partial sums of dh_prev must follow).
    inputs = op_inputs(9, 24, 70, dtype)
    options = {"grad_clip": 0.5}
    lengths = torch.tensor([9] * 10 + [6] * 8 + [2] * 5 + [1])
    batch_sizes = (torch.arange(9).unsqueeze(1) < lengths).sum(1)
    if layout != "full":
        options["batch_sizes"] = batch_sizes
    if layout == "packed":
        for name in ("gates_x", "k"):
            data = pack_padded_sequence(inputs[name].detach(), lengths).data
            inputs[name] = data.requires_grad_()
    want = run_op("reference", inputs, **options)
    got = run_op("fused", inputs, **options)
    for name in want:
        assert_near(got[name], want[name], dtype, name)
