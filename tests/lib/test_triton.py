"""The "triton" backend against the reference loop: outputs, final states and every gradient, for
the op and through the layer; its time gate; and the errors when it cannot run.

Without a GPU this file runs itself again in a child process that interprets the kernels (see
:mod:`tests.lib.triton_support`); test ids carry the device, so ``-k cuda`` selects the GPU runs.
"""

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from phased_lstm import PhasedLSTM
from phased_lstm.functional import time_gate
from phased_lstm.ops import _resolve, recurrence, reference_recurrence, sequence_gate
from phased_lstm.ops._planner import _REGISTRY, get_backend
from phased_lstm.ops._triton import backend as triton_backend
from tests.lib.triton_support import (
    CUDA,
    HALF_TOL,
    INTERPRETING,
    TOL,
    assert_near,
    bf16,
    f32,
    f64,
    on_device,
    op_inputs,
    run_interpreted,
    run_op,
)

pytest.importorskip("triton", reason="the triton backend needs Triton (pip install '.[gpu]')")

# What the interpreter cannot run: real skips, with their reason, wherever there is no GPU.
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (GPU-sized shapes, TF32)")


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="with a GPU the tests run compiled, in this process")
def test_interpreted_kernels_in_a_child_process():
    run_interpreted(__file__)


test_interpreted_kernels_in_a_child_process.__test__ = not INTERPRETING  # the child itself


@pytest.fixture(scope="module")
def kernels():
    """The kernels' torch.library module: compiled on a GPU, else interpreted."""
    library = triton_backend._kernels()
    assert library.INTERPRETED == (not CUDA)
    return library


def with_plan(kernels, plan):
    """A context in which the ops use ``plan`` instead of their default."""
    launch = kernels.launch
    original = launch.default_plan

    class _Use:
        def __enter__(self):
            launch.default_plan = lambda *args: plan

        def __exit__(self, *exc):
            launch.default_plan = original

    return _Use()


# ------------------------------------------------------------------------------- the op
OP_CASES = {
    # id: (length, batch, hidden, peepholes, options)
    "B3-T5-H12": (5, 3, 12, False, {}),
    "B3-T5-H12-peep-clip-lengths": (
        5, 3, 12, True, {"grad_clip": 0.05, "batch_sizes": torch.tensor([3, 3, 2, 1, 1])},
    ),
    "B4-T4-H9-peep-sparsek-lengths": (
        4, 4, 9, True, {"batch_sizes": torch.tensor([4, 2, 2, 0])},
    ),
}  # fmt: skip


@on_device
@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", OP_CASES, ids=list(OP_CASES))
def test_op_matches_reference(case, dtype, device):
    length, batch, hidden, peepholes, options = OP_CASES[case]
    gate = "sparse" if "sparsek" in case else "train"
    inputs = op_inputs(length, batch, hidden, dtype, device, peepholes=peepholes, gate=gate)
    want = run_op("reference", inputs, **options)
    got = run_op("triton", inputs, **options)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == dtype, name
        assert_near(got[name], want[name], TOL[dtype], name)


@on_device
@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
def test_packed_layout_matches_the_reference(dtype, device):
    # A PackedSequence's data: every output and gradient against the reference in the packed
    # layout, and the outputs against the padded reference too.
    lengths = torch.tensor([5, 4, 4, 2])
    padded = op_inputs(5, 4, 6, dtype, device, peepholes=True)
    batch_sizes = pack_padded_sequence(padded["k"], lengths).batch_sizes

    def packed_inputs():
        inputs = {n: None if t is None else t.detach() for n, t in padded.items()}
        for name in ("gates_x", "k"):
            inputs[name] = pack_padded_sequence(inputs[name], lengths).data
        return {n: None if t is None else t.requires_grad_() for n, t in inputs.items()}

    options = {"grad_clip": 0.1, "batch_sizes": batch_sizes}
    want = run_op("reference", packed_inputs(), **options)
    got = run_op("triton", packed_inputs(), **options)
    for name in want:
        assert_near(got[name], want[name], TOL[dtype], name)
    with torch.no_grad():
        h, h_n, c_n = reference_recurrence(*padded.values(), batch_sizes=batch_sizes)
    assert_near(got["h"], pack_padded_sequence(h, lengths).data, TOL[dtype], "padded h")
    assert_near(got["h_n"], h_n, TOL[dtype], "padded h_n")
    assert_near(got["c_n"], c_n, TOL[dtype], "padded c_n")


def _plans(kernels):
    """Each way of running the loops, with tiles that make several programs and blocks."""
    plan = kernels.launch.LaunchPlan
    tile = 16 if CUDA else 8  # a GPU's tl.dot needs a reduction tile of 16
    return {
        "persistent-dot": plan(False, 2, tile, tile, True, num_stages=2),
        "persistent-broadcast": plan(False, 2, tile, tile, False, unroll=False),
        "stepwise": plan(True, 2, tile, 0, False),
    }


@on_device
@pytest.mark.parametrize("mode", ["persistent-broadcast", "stepwise", "persistent-dot"])
def test_every_plan_matches_reference(kernels, mode, device):
    plans = _plans(kernels)
    hidden = 20 if CUDA else 12  # two blocks of hidden units either way
    options = {"grad_clip": 0.05, "batch_sizes": torch.tensor([3, 3, 2, 1])}
    inputs = op_inputs(4, 3, hidden, f32, device, peepholes=True)
    want = run_op("reference", inputs, **options)
    with with_plan(kernels, plans[mode]):
        got = run_op("triton", inputs, **options)
    for name in want:
        assert_near(got[name], want[name], TOL[f32], name)


@on_device
@pytest.mark.parametrize("mode", ["default", "stepwise"])
def test_inference_holds_closed_neurons_exactly(kernels, mode, device):
    # Without gradients the kernel skips blocks of neurons closed for all rows of a program.
    inputs = op_inputs(6, 3, 12, f64, device, peepholes=True, gate="sparse", seed=2)
    with torch.no_grad():
        inputs["k"][2, :, :8] = 0  # a block closed for every row: skipped, not computed
        lengths = torch.tensor([3, 3, 3, 2, 2, 1])  # batch_sizes of lengths 6, 5, 3
        want = reference_recurrence(*inputs.values(), batch_sizes=lengths)
        if mode == "default":
            got = recurrence(*inputs.values(), batch_sizes=lengths, backend="triton")
        else:
            with with_plan(kernels, _plans(kernels)["stepwise"]):
                got = recurrence(*inputs.values(), batch_sizes=lengths, backend="triton")
    for name, g, w in zip(("h", "h_n", "c_n"), got, want, strict=True):
        assert_near(g, w, TOL[f64], name)
    h = got[0]
    h_prev = torch.cat([inputs["h0"].detach().unsqueeze(0), h[:-1]])
    closed = inputs["k"].detach() == 0
    assert torch.equal(h[closed], h_prev[closed])


@on_device
@pytest.mark.parametrize("dtype", [bf16, torch.float16], ids=["bf16", "f16"])
def test_half_precision_against_float32_reference(dtype, device):
    inputs = op_inputs(5, 3, 12, dtype, device, peepholes=True)
    options = {"grad_clip": 0.5, "batch_sizes": torch.tensor([3, 3, 2, 2, 1])}
    upcast = {n: None if t is None else t.detach().float().requires_grad_() for n, t in
              inputs.items()}  # fmt: skip
    want = run_op("reference", upcast, **options)
    got = run_op("triton", inputs, **options)
    for name in want:
        assert got[name].dtype == dtype, name
        assert_near(got[name], want[name], HALF_TOL, name)


@on_device
def test_empty_sequence_and_first_order_only(device):
    inputs = op_inputs(0, 2, 3, f32, device, peepholes=False)
    h, h_n, c_n = recurrence(*inputs.values(), backend="triton")
    assert h.shape == (0, 2, 3)
    assert torch.equal(h_n, inputs["h0"]) and torch.equal(c_n, inputs["c0"])
    inputs = op_inputs(3, 2, 4, f64, device, peepholes=False)
    h, _, _ = recurrence(*inputs.values(), backend="triton")
    (grad,) = torch.autograd.grad(h.square().sum(), inputs["weight_hh"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        grad.sum().backward()


# ---------------------------------------------------------------------------- the layer
def twin_layers(hidden, device, seed):
    """A float64 bidirectional layer with peepholes and grad_clip on "reference" and the same
    weights on "triton"."""
    torch.manual_seed(seed)
    layers = {
        backend: PhasedLSTM(2, hidden, bidirectional=True, peepholes=True, grad_clip=1.0,
                            backend=backend).to(device, f64)
        for backend in ("reference", "triton")
    }  # fmt: skip
    layers["triton"].load_state_dict(layers["reference"].state_dict())
    return layers


@on_device
def test_layer_trains_and_evaluates_like_the_reference(device):
    # Unsorted lengths (the layer sorts and passes batch_sizes), bidirectional, the time gate
    # on the Triton kernel (its gradients reach period and shift), then eval mode.
    layers = twin_layers(6, device, seed=0)
    x = torch.randn(5, 3, 2, dtype=f64, device=device)
    times = torch.rand(5, 3, dtype=f64, device=device).mul(3).cumsum(0)
    lengths = torch.tensor([3, 5, 2])
    results = {}
    for backend, layer in layers.items():
        out, (h_n, c_n) = layer(x, times, lengths=lengths)
        (out.sum() + h_n.square().sum() + c_n.sum()).backward()
        layer.eval()
        with torch.no_grad():
            evaluated = layer(x, times, lengths=lengths)[0]
        grads = {n: p.grad for n, p in layer.named_parameters()}
        results[backend] = {"out": out, "h_n": h_n, "c_n": c_n, "eval": evaluated} | grads
    for name, want in results["reference"].items():
        assert_near(results["triton"][name], want, TOL[f64], name)


@on_device
def test_layer_on_a_packed_sequence_like_the_reference(device):
    # An unsorted PackedSequence goes to the backend in the packed layout, both directions.
    layers = twin_layers(5, device, seed=1)
    x = torch.randn(6, 3, 2, dtype=f64, device=device)
    times = torch.rand(6, 3, dtype=f64, device=device).mul(3).cumsum(0)
    lengths = torch.tensor([3, 6, 2])
    results = {}
    for backend, layer in layers.items():
        packed_x = pack_padded_sequence(x, lengths, enforce_sorted=False)
        packed_t = pack_padded_sequence(times, lengths, enforce_sorted=False)
        out, (h_n, c_n) = layer(packed_x, packed_t)
        (out.data.sum() + h_n.square().sum() + c_n.sum()).backward()
        grads = {n: p.grad for n, p in layer.named_parameters()}
        results[backend] = {"out": out.data, "h_n": h_n, "c_n": c_n} | grads
    for name, want in results["reference"].items():
        assert_near(results["triton"][name], want, TOL[f64], name)


# ----------------------------------------------------------------------------- the gate
@on_device
@pytest.mark.parametrize("dtype", [f32, f64, bf16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["t0", "t1e6"])
def test_gate_kernel_matches_time_gate(dtype, offset, device):
    gen = torch.Generator().manual_seed(0)
    times = (offset + torch.rand(30, 3, generator=gen, dtype=f64) * 200).to(device)
    period = (torch.rand(37, generator=gen, dtype=f64) * 20 + 0.5).to(device).requires_grad_()
    shift = (torch.rand(37, generator=gen, dtype=f64) * 30 - 10).to(device).requires_grad_()
    r_on = (torch.rand(37, generator=gen, dtype=f64) * 0.5 + 0.05).to(device).requires_grad_()
    valid = (torch.rand(30, 3, generator=gen) < 0.7).to(device)
    weights = torch.randn(30, 3, 37, generator=gen, dtype=f64).to(device, dtype)

    def run(backend):
        for p in (period, shift, r_on):
            p.grad = None
        k = sequence_gate(times, period, shift, r_on, 0.01, valid, dtype, backend=backend)
        (k * weights).sum().backward()
        return k.detach(), [p.grad.clone() for p in (period, shift, r_on)]

    k, grads = run("triton")
    k_ref, grads_ref = run("reference")
    expected = time_gate(times, period, shift, r_on, 0.01, dtype=dtype) * valid.unsqueeze(-1)
    torch.testing.assert_close(k_ref, expected.detach(), rtol=0, atol=0)
    assert k.dtype == dtype
    atol = {f64: 1e-12, f32: 1e-6, bf16: 1e-2}[dtype]
    torch.testing.assert_close(k, k_ref, rtol=0, atol=atol)
    for name, got, want in zip(("period", "shift", "r_on"), grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)


# ------------------------------------------------------------------ choice and errors
@on_device
def test_auto_takes_triton_for_cuda_tensors_only(device):
    # Registered for CUDA (and the CPU only where the kernels are interpreted), above the
    # reference and below the CPU kernels, so that on the CPU "auto" keeps its choice.
    triton = get_backend("triton")
    assert triton.devices == (("cuda", "cpu") if INTERPRETING else ("cuda",))
    priorities = {name: get_backend(name).priority for name in ("reference", "fused", "sparse")}
    assert (
        priorities["reference"] < triton.priority < min(priorities["fused"], priorities["sparse"])
    )
    if CUDA:
        cuda = tuple(op_inputs(2, 2, 3, f32, "cuda", peepholes=False).values())
        assert _resolve("auto", cuda) is triton_backend.triton_recurrence


@on_device
def test_explicit_triton_says_how_to_fix_what_it_cannot_run(monkeypatch, device):
    # The planner alone decides, for ops.recurrence and for a direct call of the backend.
    inputs = op_inputs(2, 2, 3, f32, device, peepholes=False)
    mixed = dict(inputs, k=inputs["k"].detach().double())
    for run in (
        lambda tensors: recurrence(*tensors, backend="triton"),
        lambda tensors: triton_backend.triton_recurrence(*tensors),
    ):
        with pytest.raises(RuntimeError, match="float16 tensors of one dtype, got torch.float32"):
            run(mixed.values())
    # A process that does not interpret the kernels takes CUDA tensors only.
    cpu = op_inputs(2, 2, 3, f32, "cpu", peepholes=False)
    cuda_only_backend = dataclasses.replace(triton_backend.TRITON, devices=("cuda",))
    monkeypatch.setitem(_REGISTRY, "triton", cuda_only_backend)
    with pytest.raises(RuntimeError, match="CUDA devices, got a tensor on cpu.*TRITON_INTERPRET"):
        triton_backend.triton_recurrence(*cpu.values())
    monkeypatch.setattr(triton_backend, "import_error", lambda: "ModuleNotFoundError: triton")
    with pytest.raises(RuntimeError, match=r"pip install 'phased-lstm\[gpu\]'"):
        recurrence(*cpu.values(), backend="triton")


def test_library_imports_without_triton():
    # The backend's kernels load on first use only: a plain import never touches Triton.
    code = "import sys, phased_lstm; sys.exit('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------ GPU shapes
@cuda_only
@pytest.mark.parametrize("device", ["cuda"])
@pytest.mark.parametrize("mode", ["default", "persistent-broadcast", "stepwise", "tf32", "bf16"])
@pytest.mark.parametrize("hidden", [110, 300], ids=["H110", "H300"])
def test_gpu_shapes_against_float64(kernels, mode, hidden, device):
    # Many programs and blocks, and H past the stepwise threshold: what races between the
    # threads of a program would break. The float32 kernel against a float64 reference on
    # the same values (64 steps of float32 rounding, TF32 and bfloat16 looser).
    inputs = op_inputs(64, 37, hidden, f64, device, peepholes=True)
    options = {"grad_clip": 1.0, "batch_sizes": torch.arange(37, 5, -0.5).long()[:64]}
    want = run_op("reference", inputs, **options)
    dtype = bf16 if mode == "bf16" else f32
    low = {n: None if t is None else t.detach().to(dtype).requires_grad_() for n, t in
           inputs.items()}  # fmt: skip
    plans = _plans(kernels) | {"default": None, "tf32": None, "bf16": None}
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if mode == "tf32" else "highest")
    try:
        if plans[mode] is None:
            got = run_op("triton", low, **options)
        else:
            with with_plan(kernels, plans[mode]):
                got = run_op("triton", low, **options)
    finally:
        torch.set_float32_matmul_precision(precision)
    tol = {"bf16": HALF_TOL, "tf32": 1e-2}.get(mode, 1e-4)
    for name in want:
        assert_near(got[name], want[name], tol, name)


# The child process leaves these to its parent, which reports them skipped without a GPU.
test_gpu_shapes_against_float64.__test__ = not INTERPRETING
