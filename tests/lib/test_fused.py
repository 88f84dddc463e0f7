"""The compiled backends ("fused", "sparse") against the reference loop: values, final states and
every gradient, for the op and through the whole layer; and the fallback when they cannot build."""

import itertools
import platform
import warnings

import pytest
import torch

from phased_lstm import PhasedLSTM, ops
from phased_lstm.ops import recurrence, reference_recurrence
from phased_lstm.ops._cpu import backend as fused
from phased_lstm.ops._cpu import kernels
from tests.lib.layers import make_busy_layer

f32, f64 = torch.float32, torch.float64
DTYPES = {"f32": f32, "f64": f64}
# Tolerance relative to the largest magnitude of the expected tensor: the kernels compute the
# same expressions in another order (and float32 exp/tanh to a few ulp).
TOL = {f32: 2e-5, f64: 1e-10}

needs_kernels = pytest.mark.skipif(
    fused.build_error() is not None, reason=f"C++ kernels unavailable: {fused.build_error()}"
)


@pytest.fixture(autouse=True)
def threads(request):
    """One thread, unless a test asks for more: these shapes are far too small to gain from a
    second thread, and on a loaded machine each parallel region can wait for a busy core. The
    tests of the kernels' own work splitting run with two threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request, "param", 1))
    yield
    torch.set_num_threads(before)


two_threads = pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])


def assert_near(got, want, dtype, what):
    scale = max(1.0, float(want.detach().abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale, msg=what)


def op_inputs(length, batch, hidden, dtype, *, peepholes, gate, seed=0):
    """Inputs of ops.recurrence, all requiring grad; `gate` picks what k looks like."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale).to(dtype)

    k = torch.rand(length, batch, hidden, generator=gen, dtype=f64).to(dtype)
    if gate == "sparse":  # eval mode: most gates exactly closed
        k = torch.where(torch.rand(k.shape, generator=gen) < 0.7, torch.zeros((), dtype=dtype), k)
    elif gate == "open":
        k = torch.ones_like(k)
    inputs = {
        "gates_x": randn(length, batch, 4 * hidden),
        "k": k,
        "weight_hh": randn(4 * hidden, hidden, scale=hidden**-0.5),
        "weight_ch": randn(3 * hidden, scale=0.5) if peepholes else None,
        "h0": randn(batch, hidden, scale=0.5),
        "c0": randn(batch, hidden),
    }
    return {n: None if t is None else t.requires_grad_() for n, t in inputs.items()}


def run_op(backend, inputs, seed=1):
    """Outputs of the op and the gradients of every input for a random linear loss."""
    return run_op_with(backend, inputs, seed=seed)


def run_op_with(backend, inputs, seed=1, **options):
    """:func:`run_op` with keyword options of the op (batch_sizes, grad_clip)."""
    h, h_n, c_n = recurrence(*inputs.values(), backend=backend, **options)
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=gen, dtype=f64).to(t.dtype) for t in (h, h_n, c_n)]
    loss = sum((t * w).sum() for t, w in zip((h, h_n, c_n), weights, strict=True))
    names = [n for n, t in inputs.items() if t is not None]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names])
    return {"h": h, "h_n": h_n, "c_n": c_n} | {
        f"grad {n}": g for n, g in zip(names, grads, strict=True)
    }


# ------------------------------------------------------------------------ the op, fused
OP_CASES = {
    # id: (length, batch, hidden, peepholes, gate)
    "T9-B3-H5": (9, 3, 5, False, "train"),
    "T9-B3-H5-peep": (9, 3, 5, True, "train"),
    "T12-B4-H7-peep-sparsek": (12, 4, 7, True, "sparse"),
    "T6-B2-H4-openk": (6, 2, 4, False, "open"),
    "T1-B1-H1-peep": (1, 1, 1, True, "train"),
    "T25-B2-H33": (25, 2, 33, False, "train"),
}


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", OP_CASES, ids=list(OP_CASES))
def test_fused_op_matches_reference(case, dtype):
    length, batch, hidden, peepholes, gate = OP_CASES[case]
    inputs = op_inputs(length, batch, hidden, dtype, peepholes=peepholes, gate=gate)
    want = run_op("reference", inputs)
    got = run_op("fused", inputs)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == dtype, name
        assert_near(got[name], want[name], dtype, name)


@needs_kernels
@two_threads
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_op_with_work_split_over_threads(threads, dtype):
    # Rows big enough for the elementwise passes to be split, peephole sums included.
    inputs = op_inputs(3, 64, 72, dtype, peepholes=True, gate="train")
    want = run_op("reference", inputs)
    got = run_op("fused", inputs)
    for name in want:
        assert_near(got[name], want[name], dtype, name)


@needs_kernels
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
def test_fused_op_gradcheck_float64(peepholes):
    inputs = op_inputs(5, 2, 3, f64, peepholes=peepholes, gate="sparse", seed=4)
    args = tuple(inputs.values())
    assert torch.autograd.gradcheck(lambda *a: recurrence(*a, backend="fused"), args)


@needs_kernels
def test_fused_op_noncontiguous_inputs_and_retained_graph():
    inputs = op_inputs(8, 3, 4, f64, peepholes=True, gate="train")
    # Transposed storage seen through a transposed view: the same values, non-contiguous.
    strided = {
        n: t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        if t.dim() > 1
        else t
        for n, t in inputs.items()
    }
    assert not strided["gates_x"].is_contiguous()
    want = run_op("reference", inputs)
    h, h_n, c_n = recurrence(*strided.values(), backend="fused")
    loss = h.sum() + h_n.sum() + c_n.sum()
    first = torch.autograd.grad(loss, strided["gates_x"], retain_graph=True)[0]
    second = torch.autograd.grad(loss, strided["gates_x"])[0]
    assert torch.equal(first, second)  # backward does not consume what it saved
    assert_near(h, want["h"], f64, "h")


@needs_kernels
def subnormals_flushed() -> bool:
    return float(torch.tensor([1e-39]) * 2) == 0.0


@needs_kernels
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="FTZ and DAZ are x86 modes"
)
@pytest.mark.parametrize("op", ["forward_train", "forward_infer"])
def test_kernels_flush_subnormals_inside_and_restore_the_callers_mode(op):
    # One step, k = 1, c0 = 0, W_hh = 0: c = i * g with i = sigmoid(-87) and g = tanh(0.5),
    # which PyTorch's own ops (the caller's mode: subnormals kept) make 7.6e-39, a subnormal
    # float32; the kernels compute it as 0.
    hidden = 4
    gates_x = torch.zeros(1, 1, 4 * hidden)
    gates_x[..., :hidden] = -87.0  # input gate (order i, f, g, o)
    gates_x[..., 2 * hidden : 3 * hidden] = 0.5  # candidate
    expected = torch.sigmoid(torch.tensor(-87.0)) * torch.tanh(torch.tensor(0.5))
    assert 0 < float(expected) < torch.finfo(torch.float32).tiny  # subnormal here
    args = (gates_x, torch.ones(1, 1, hidden), torch.zeros(4 * hidden, hidden), None)
    args += (torch.zeros(1, hidden), torch.zeros(1, hidden), None)
    if op == "forward_train":
        outputs = torch.ops.phased_lstm.forward_train(*args, float("inf"))
    else:
        outputs = torch.ops.phased_lstm.forward_infer(*args, 0.5)
    assert torch.equal(outputs[2], torch.zeros(1, hidden))  # c_n
    # The caller's mode is back: subnormals are kept again outside the kernel.
    assert not subnormals_flushed()


def test_fused_op_empty_sequence_returns_initial_state():
    inputs = op_inputs(0, 2, 3, f32, peepholes=False, gate="train")
    for backend in ("fused", "sparse", "auto"):
        with torch.no_grad():
            h, h_n, c_n = recurrence(*inputs.values(), backend=backend)
        assert h.shape == (0, 2, 3)
        assert torch.equal(h_n, inputs["h0"]) and torch.equal(c_n, inputs["c0"])


@needs_kernels
def test_fused_op_is_first_order_only():
    inputs = op_inputs(4, 2, 3, f64, peepholes=False, gate="train")
    h, _, _ = recurrence(*inputs.values(), backend="fused")
    (grad,) = torch.autograd.grad(h.square().sum(), inputs["weight_hh"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


# ------------------------------------------------------------------- the op, sparse
@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("batch", [1, 5], ids=["B1", "B5"])
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
@pytest.mark.parametrize("dense_above", [0.0, 0.3, 1.0], ids=["dense", "mixed", "sparse"])
def test_sparse_op_matches_dense(monkeypatch, dtype, batch, peepholes, dense_above):
    # The share of open pairs above which a step runs dense: 0 forces the dense product at every
    # step with an open neuron, 1 the sparse path at every step, 0.3 mixes both.
    monkeypatch.setattr(fused, "_dense_above", lambda batch: dense_above)
    inputs = op_inputs(30, batch, 9, dtype, peepholes=peepholes, gate="sparse", seed=2)
    with torch.no_grad():
        inputs["k"][5:8] = 0  # steps where every neuron of every sample is closed
        inputs["k"][20] = 1  # and one where all are open
        want = reference_recurrence(*inputs.values())
        got = recurrence(*inputs.values(), backend="sparse")
    for name, g, w in zip(("h", "h_n", "c_n"), got, want, strict=True):
        assert_near(g, w, dtype, name)
    # A closed neuron keeps its state bit for bit.
    h = got[0]
    h_prev = torch.cat([inputs["h0"].detach().unsqueeze(0), h[:-1]])
    closed = inputs["k"].detach() == 0
    assert torch.equal(h[closed], h_prev[closed])


@needs_kernels
@two_threads
def test_sparse_op_with_work_split_over_threads(threads, monkeypatch):
    monkeypatch.setattr(fused, "_dense_above", lambda batch: 1.0)
    inputs = op_inputs(4, 64, 64, f64, peepholes=True, gate="sparse", seed=6)
    with torch.no_grad():
        want = reference_recurrence(*inputs.values())
        got = recurrence(*inputs.values(), backend="sparse")
    for name, g, w in zip(("h", "h_n", "c_n"), got, want, strict=True):
        assert_near(g, w, f64, name)


@needs_kernels
def test_sparse_refuses_gradients_and_auto_picks_by_need_of_gradients():
    inputs = op_inputs(5, 2, 3, f32, peepholes=False, gate="sparse")
    with pytest.raises(RuntimeError, match="no_grad.*'fused' or 'auto'"):
        recurrence(*inputs.values(), backend="sparse")
    tensors = tuple(inputs.values())
    detached = tuple(None if t is None else t.detach() for t in tensors)
    assert ops._resolve("auto", tensors) is fused.fused_recurrence
    assert ops._resolve("auto", detached) is fused.sparse_recurrence
    with torch.no_grad():
        assert ops._resolve("auto", tensors) is fused.sparse_recurrence


@needs_kernels
def test_compiled_backends_reject_what_they_cannot_run():
    inputs = op_inputs(4, 2, 3, torch.float16, peepholes=False, gate="train")
    with pytest.raises(RuntimeError, match="float32 or float64 tensors of one dtype.*'reference'"):
        recurrence(*inputs.values(), backend="fused")
    # auto takes the reference instead, silently: the result is the reference's.
    want = reference_recurrence(*inputs.values())
    got = recurrence(*inputs.values(), backend="auto")
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


# ------------------------------------------------------------------- batch_sizes (padding)
BATCH_SIZES_LENGTHS = [9, 6, 6, 2, 0]


def batch_sizes_of(lengths, steps):
    return (torch.arange(steps).unsqueeze(1) < torch.tensor(lengths)).sum(1)


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("fused", marks=needs_kernels)], ids=str
)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
def test_batch_sizes_equal_each_sample_alone(backend, dtype, peepholes):
    # The reference is each sample run alone over its own steps, without batch_sizes: its
    # outputs, and after it the held state; its gradients, and zero for the padding's inputs.
    lengths = BATCH_SIZES_LENGTHS
    steps, batch = max(lengths), len(lengths)
    inputs = op_inputs(steps, batch, 5, dtype, peepholes=peepholes, gate="train", seed=2)
    # Junk in the padding's k and gates_x must not matter.
    with torch.no_grad():
        for n, length in enumerate(lengths):
            inputs["k"][length:, n] = 0.7
            inputs["gates_x"][length:, n] = 50.0
    got = run_op_with(backend, inputs, batch_sizes=batch_sizes_of(lengths, steps))
    for n, length in enumerate(lengths):
        alone = {
            name: None
            if t is None
            else t[:length, n : n + 1]
            if name in ("gates_x", "k")
            else t[n : n + 1]
            if name in ("h0", "c0")
            else t
            for name, t in inputs.items()
        }
        h, h_n, c_n = recurrence(*alone.values(), backend=backend)
        assert_near(got["h"][:length, n], h[:, 0], dtype, f"h {n}")
        held = got["h"][length - 1, n] if length else inputs["h0"][n]
        assert torch.equal(got["h"][length:, n], held.expand(steps - length, -1))  # bit for bit
        assert_near(got["h_n"][n], h_n[0], dtype, f"h_n {n}")
        assert_near(got["c_n"][n], c_n[0], dtype, f"c_n {n}")
    for name in ("grad gates_x", "grad k"):
        for n, length in enumerate(lengths):
            assert torch.all(got[name][length:, n] == 0), name
    # The gradients of the whole batch against a batch without padding rows: zero-padded
    # inputs that run with k = 0 there (the other way of holding the state).
    masked = {name: None if t is None else t.detach().clone() for name, t in inputs.items()}
    with torch.no_grad():
        for n, length in enumerate(lengths):
            masked["k"][length:, n] = 0
    masked = {n: None if t is None else t.requires_grad_() for n, t in masked.items()}
    want = run_op_with(backend, masked)
    for name in ("h", "h_n", "c_n", "grad weight_hh", "grad h0", "grad c0"):
        assert_near(got[name], want[name], dtype, name)
    if peepholes:
        assert_near(got["grad weight_ch"], want["grad weight_ch"], dtype, "grad weight_ch")


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_batch_sizes_fused_matches_reference(dtype):
    lengths = [12, 12, 8, 5, 1]
    inputs = op_inputs(12, 5, 7, dtype, peepholes=True, gate="train", seed=3)
    sizes = batch_sizes_of(lengths, 12)
    want = run_op_with("reference", inputs, batch_sizes=sizes, grad_clip=0.3)
    got = run_op_with("fused", inputs, batch_sizes=sizes, grad_clip=0.3)
    for name in want:
        assert_near(got[name], want[name], dtype, name)
    # Without gradients ("sparse", and "fused" under no_grad) the padding is held as well.
    with torch.no_grad():
        detached = [None if t is None else t.detach() for t in inputs.values()]
        for backend in ("sparse", "fused"):
            h, h_n, c_n = recurrence(*detached, batch_sizes=sizes, backend=backend)
            assert_near(h, want["h"], dtype, backend)
            assert_near(h_n, want["h_n"], dtype, backend)


@pytest.mark.parametrize(
    "batch_sizes, error, message",
    [
        ([3, 2, 1], TypeError, r"batch_sizes must be an int64 torch.Tensor, got list"),
        (torch.tensor([3.0, 2.0, 1.0, 1.0]), TypeError, r"int64 torch.Tensor, got torch.float32"),
        (torch.tensor([3, 2, 1]), ValueError, r"batch_sizes must have shape \(L,\) = \(4,\)"),
        (torch.tensor([4, 2, 1, 1]), ValueError, r"must lie in \[0, N\] = \[0, 3\], got values"),
        (torch.tensor([3, 1, 2, 1]), ValueError, r"must not increase from step to step"),
    ],
    ids=["list", "float", "shape", "range", "increasing"],
)
def test_batch_sizes_errors(batch_sizes, error, message):
    inputs = op_inputs(4, 3, 2, f64, peepholes=False, gate="train")
    with pytest.raises(error, match=message):
        recurrence(*inputs.values(), batch_sizes=batch_sizes, backend="reference")


# ------------------------------------------------------------------------- the layer
def layer_case_id(num_layers, bidirectional, peepholes, lengths, learn_r_on, dtype_name):
    parts = [f"L{num_layers}", "bi" if bidirectional else "uni"]
    parts += ["peep"] * peepholes + ["lengths"] * lengths + ["ron"] * learn_r_on + [dtype_name]
    return "-".join(parts)


LAYER_CASES = {}
for _structure in itertools.product([1, 2], [False, True], [False, True], [False, True]):
    # Every structure in both dtypes; r_on is learnt in the float64 runs.
    for _learn_r_on, _dtype_name in ((False, "f32"), (True, "f64")):
        _case = (*_structure, _learn_r_on, _dtype_name)
        LAYER_CASES[layer_case_id(*_case)] = _case


def make_layer(num_layers, bidirectional, peepholes, learn_r_on, dtype, seed=0):
    torch.manual_seed(seed)
    return make_busy_layer(
        3,
        6,
        num_layers,
        bidirectional=bidirectional,
        peepholes=peepholes,
        learn_r_on=learn_r_on,
        dtype=dtype,
    )


def layer_inputs(length, batch, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(length, batch, 3, generator=gen, dtype=f64).to(dtype)
    times = (torch.rand(length, batch, generator=gen, dtype=f64) * 3).cumsum(0) - 10
    return x, times


def run_layer(layer, backend, x, times, lengths, hx=None):
    layer.backend = backend
    layer.zero_grad(set_to_none=True)
    out, (h_n, c_n) = layer(x, times, hx, lengths=lengths)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=gen, dtype=f64).to(t.dtype) for t in (out, h_n)]
    ((out * weights[0]).sum() + (h_n * weights[1]).sum() + c_n.sum()).backward()
    result = {"output": out.detach(), "h_n": h_n.detach(), "c_n": c_n.detach()}
    for name, param in layer.named_parameters():
        result[f"grad {name}"] = param.grad
    return result


@needs_kernels
@pytest.mark.parametrize("case", LAYER_CASES, ids=list(LAYER_CASES))
def test_layer_fused_matches_reference(case):
    num_layers, bidirectional, peepholes, with_lengths, learn_r_on, dtype_name = LAYER_CASES[case]
    dtype = DTYPES[dtype_name]
    layer = make_layer(num_layers, bidirectional, peepholes, learn_r_on, dtype)
    x, times = layer_inputs(11, 4, dtype)
    lengths = torch.tensor([11, 7, 1, 4]) if with_lengths else None
    d = (2 if bidirectional else 1) * num_layers
    gen = torch.Generator().manual_seed(3)
    hx = tuple(torch.randn(d, 4, 6, generator=gen, dtype=f64).to(dtype) * 0.5 for _ in "hc")
    want = run_layer(layer, "reference", x, times, lengths, hx)
    got = run_layer(layer, "fused", x, times, lengths, hx)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] is not None, name
        assert_near(got[name], want[name], dtype, name)
    if learn_r_on:
        assert float(got["grad logit_r_on_l0"].abs().max()) > 0


@needs_kernels
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_layer_fused_lengths_equal_each_sample_alone(bidirectional, dtype):
    layer = make_layer(2, bidirectional, True, True, dtype)
    x, times = layer_inputs(10, 3, dtype)
    lengths = torch.tensor([10, 3, 6])
    batched = run_layer(layer, "fused", x, times, lengths)
    total = {name: torch.zeros_like(g) for name, g in batched.items() if name.startswith("grad")}
    for n, length in enumerate(lengths.tolist()):
        alone = run_layer(layer, "fused", x[:length, n : n + 1], times[:length, n : n + 1], None)
        assert_near(batched["output"][:length, n], alone["output"][:, 0], dtype, f"output {n}")
        assert torch.all(batched["output"][length:, n] == 0)
        for state in ("h_n", "c_n"):
            assert_near(batched[state][:, n], alone[state][:, 0], dtype, f"{state} {n}")
    # With a loss that is a sum over samples, the batch's gradients are the sum of each one's;
    # run the samples alone with the batch's loss weights to compare them.
    layer.backend = "fused"
    gen = torch.Generator().manual_seed(7)
    out_w = torch.randn((10, 3, batched["output"].shape[-1]), generator=gen, dtype=f64)
    h_w = torch.randn(batched["h_n"].shape, generator=gen, dtype=f64)
    for n, length in enumerate(lengths.tolist()):
        layer.zero_grad(set_to_none=True)
        out, (h_n, c_n) = layer(x[:length, n : n + 1], times[:length, n : n + 1])
        loss = (out[:, 0] * out_w[:length, n].to(dtype)).sum()
        loss = loss + (h_n[:, 0] * h_w[:, n].to(dtype)).sum() + c_n.sum()
        loss.backward()
        for name, param in layer.named_parameters():
            total[f"grad {name}"] += param.grad
    for name, grad in total.items():
        assert_near(batched[name], grad, dtype, name)


@needs_kernels
@pytest.mark.parametrize("batch", [1, 6], ids=["B1", "B6"])
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
def test_layer_sparse_eval_matches_dense(batch, peepholes):
    torch.manual_seed(0)
    layer = PhasedLSTM(3, 16, 2, bidirectional=True, peepholes=peepholes).eval()
    x = torch.randn(80, batch, 3)
    times = torch.empty(80, batch, dtype=f64).exponential_(1.0).cumsum(0)
    lengths = torch.randint(1, 81, (batch,))
    results = {}
    with torch.no_grad():
        for backend in ("reference", "sparse", "fused", "auto"):
            layer.backend = backend
            out, (h_n, c_n) = layer(x, times, lengths=lengths)
            results[backend] = {"output": out, "h_n": h_n, "c_n": c_n}
    assert 0 < layer.update_fraction(times, lengths) < 0.2  # really sparse
    for backend in ("sparse", "fused", "auto"):
        for name, want in results["reference"].items():
            assert_near(results[backend][name], want, f32, f"{backend} {name}")


# ------------------------------------------------------------------ build failure fallback
@pytest.fixture
def broken_build(monkeypatch):
    """The kernels' build fails as it does without a compiler; the real state is restored after."""

    def fail():
        raise RuntimeError(
            "Error building extension 'phased_lstm_kernels': c++: error: command not found"
        )

    monkeypatch.setattr(kernels, "_state", kernels.KernelBuild(loader=fail))


def test_auto_warns_once_and_uses_the_reference_when_the_build_fails(broken_build):
    inputs = op_inputs(6, 2, 3, f64, peepholes=True, gate="train")
    with pytest.warns(RuntimeWarning, match=r"could not be built.*reference.*g\+\+.*ninja"):
        got = recurrence(*inputs.values(), backend="auto")
    want = reference_recurrence(*inputs.values())
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    layer = PhasedLSTM(3, 4, peepholes=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, from the op or the layer
        recurrence(*inputs.values(), backend="auto")
        layer(torch.randn(5, 2, 3), torch.rand(5, 2, dtype=f64).cumsum(0))


def test_explicit_compiled_backend_raises_with_the_fix_when_the_build_fails(broken_build):
    inputs = op_inputs(6, 2, 3, f32, peepholes=False, gate="train")
    for backend in ("fused", "sparse"):
        with torch.no_grad(), pytest.raises(RuntimeError) as error:
            recurrence(*inputs.values(), backend=backend)
        message = str(error.value)
        assert f"backend={backend!r}" in message and "command not found" in message
        assert "g++" in message and "pip install ninja" in message and "'reference'" in message
