"""The "triton" backend's kernels as torch.library ops: their fake implementations on the meta
device, opcheck on every op, and torch.compile of the gate and the recurrence (and of a layer)
in one graph, without graph breaks, against eager and the reference loop.

Without a GPU this file runs itself again in a child process that interprets the kernels (see
:mod:`tests.lib.triton_support`); the meta-device test runs in both, it needs no kernel.
"""

import math

import pytest
import torch

from phased_lstm import PhasedLSTM
from phased_lstm.ops import recurrence, sequence_gate
from phased_lstm.ops._triton import backend as triton_backend
from tests.lib.triton_support import (
    CUDA,
    INTERPRETING,
    TOL,
    assert_near,
    bf16,
    f32,
    f64,
    on_device,
    op_inputs,
    outputs_and_grads,
    run_interpreted,
)

pytest.importorskip("triton", reason="the triton backend needs Triton (pip install '.[gpu]')")

f16 = torch.float16


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="with a GPU the tests run compiled, in this process")
def test_interpreted_kernels_in_a_child_process():
    run_interpreted(__file__)


test_interpreted_kernels_in_a_child_process.__test__ = not INTERPRETING  # the child itself


@pytest.fixture(scope="module")
def triton_ops():
    triton_backend._kernels()  # defines the ops
    return torch.ops.phased_lstm_triton


def described(tensors):
    return [(tuple(t.shape), t.dtype, t.device.type) for t in tensors]


# ------------------------------------------------------------------------ the meta device
@pytest.mark.parametrize(
    "dtype, state", [(f32, f32), (f64, f64), (bf16, f32), (f16, f32)], ids=str
)  # state: the dtype of the states the recurrence ops return (float32 for half inputs)
def test_fake_implementations_give_shapes_and_dtypes_on_the_meta_device(triton_ops, dtype, state):
    length, batch, hidden = 5, 3, 4

    def meta(*shape, dtype=dtype):
        return torch.empty(*shape, dtype=dtype, device="meta")

    steps, rows = (length, batch, hidden), (batch, hidden)
    gates_x, k = meta(length, batch, 4 * hidden), meta(*steps)
    w_hh, w_ch = meta(4 * hidden, hidden), meta(3 * hidden)
    h0, c0 = meta(*rows), meta(*rows)
    trained = triton_ops.forward_train(gates_x, k, w_hh, w_ch, h0, c0, None, math.inf, [])
    assert described(trained) == [
        (steps, state, "meta"),
        (rows, state, "meta"),
        (rows, state, "meta"),
        (steps, state, "meta"),
        ((length, batch, 4 * hidden), state, "meta"),
    ]
    lengths = meta(length, dtype=torch.int64)
    inferred = triton_ops.forward_infer(gates_x, k, w_hh, w_ch, h0, c0, lengths, [])
    assert described(inferred) == [
        (steps, state, "meta"),
        (rows, state, "meta"),
        (rows, state, "meta"),
    ]
    h, h_n, c_n, c, acts = trained
    grads = triton_ops.backward(h, h_n, c_n, k, w_hh, w_ch, h0, c0, h, c, acts, True, 1.0, None, [])
    assert described(grads) == [
        ((length, batch, 4 * hidden), dtype, "meta"),
        (steps, dtype, "meta"),
        ((4 * hidden, hidden), dtype, "meta"),
        ((3 * hidden,), dtype, "meta"),
        (rows, dtype, "meta"),
        (rows, dtype, "meta"),
    ]
    # No gradient asked of weight_hh, no peepholes: empty tensors, as from the CPU ops.
    outputs = (h, h_n, c_n, k, w_hh, None, h0, c0, h, c, acts)
    grads = triton_ops.backward(*outputs, False, 1.0, None, [])
    assert described(grads[2:4]) == [((0,), dtype, "meta")] * 2
    # The entry point returns the states in the inputs' dtype.
    library = triton_backend._kernels()
    assert described(library.recurrence(gates_x, k, w_hh, w_ch, h0, c0)) == [
        (steps, dtype, "meta"),
        (rows, dtype, "meta"),
        (rows, dtype, "meta"),
    ]


def test_fake_time_gate_on_the_meta_device(triton_ops):
    times = torch.empty(6, 2, dtype=f64, device="meta")
    period = torch.empty(7, dtype=f64, device="meta")
    valid = torch.empty(6, 2, dtype=torch.bool, device="meta")
    k = triton_ops.time_gate_forward(times, period, period, period, 0.01, valid, bf16)
    assert described([k]) == [((6, 2, 7), bf16, "meta")]
    grads = triton_ops.time_gate_backward(k, times, period, period, period, 0.01, None)
    assert described(grads) == [((7,), f64, "meta")] * 3


# --------------------------------------------------------------------------------- opcheck
def op_samples(ops, device):
    """(op, args) of every op on tiny inputs, with and without the optional ones."""
    gen = torch.Generator().manual_seed(0)
    times = (torch.rand(4, 2, generator=gen, dtype=f64) * 20).to(device)
    period, shift, r_on = (
        (torch.rand(3, generator=gen, dtype=f64) * scale + low).to(device).requires_grad_()
        for scale, low in ((5.0, 1.0), (3.0, 0.0), (0.4, 0.2))
    )
    valid = (torch.rand(4, 2, generator=gen) < 0.7).to(device)
    gate = [t.detach() for t in (period, shift, r_on)]
    grad_k = torch.randn(4, 2, 3, generator=gen).to(device)
    state = list(op_inputs(3, 2, 4, f64, device, peepholes=True).values())
    plain = [t.detach() for t in state]
    batch_sizes = torch.tensor([2, 2, 1])
    # Not the default plan (persistent in the interpreter and for float64 on a GPU): stepwise.
    stepwise = triton_backend._kernels().launch.LaunchPlan(True, 2, 8, 0, False).to_ints()
    with torch.no_grad():
        h, h_n, c_n, c, acts = ops.forward_train(*plain, batch_sizes, math.inf, [])
    grads = [torch.randn(t.shape, generator=gen, dtype=f64).to(device) for t in (h, h_n, c_n)]
    return {
        "gate-valid": (
            ops.time_gate_forward.default,
            (times, period, shift, r_on, 0.01, valid, f32),
        ),
        "gate": (ops.time_gate_forward.default, (times, period, shift, r_on, 0.0, None, f64)),
        "gate-backward": (ops.time_gate_backward.default, (grad_k, times, *gate, 0.01, valid)),
        "train-lengths-clip": (ops.forward_train.default, (*state, batch_sizes, 0.5, [])),
        "train-stepwise": (ops.forward_train.default, (*state, None, math.inf, stepwise)),
        "backward": (
            ops.backward.default,
            (*grads, *plain[1:], h, c, acts, True, 0.5, batch_sizes, []),
        ),
        "infer": (ops.forward_infer.default, (*plain, batch_sizes, [])),
    }


OPCHECK_CASES = ["gate-valid", "gate", "gate-backward", "train-lengths-clip", "train-stepwise",
                 "backward", "infer"]  # fmt: skip


@on_device
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(triton_ops, case, device):
    # Schema, fake against real outputs, the autograd registration, and a trace through AOT
    # autograd with dynamic shapes.
    op, args = op_samples(triton_ops, device)[case]
    torch.library.opcheck(op, args)


@on_device
def test_forward_train_zeroes_the_activations_of_padding_rows(triton_ops, device):
    # Rows past batch_sizes[t] are padding: their saved activations are zeros, not whatever the
    # allocator held (then two calls on the same inputs differed, and opcheck's trace with them).
    state = [t.detach() for t in op_inputs(3, 2, 4, f64, device, peepholes=True).values()]
    batch_sizes = torch.tensor([2, 1, 1])
    for _ in range(3):
        # Memory of the size of acts, full of NaN and freed: an unwritten element shows it.
        torch.full((3, 2, 16), math.nan, dtype=f64, device=device)
        *_, acts = triton_ops.forward_train(*state, batch_sizes, math.inf, [])
        assert torch.equal(acts[1:, 1:], torch.zeros_like(acts[1:, 1:]))
        assert torch.isfinite(acts).all()


# ---------------------------------------------------------------------------- torch.compile
def gate_and_recurrence(backend):
    """A function of the time gate and the recurrence of one layer-direction on ``backend``
    (without ``batch_sizes``, whose checks in ops.recurrence read values: the layer test below
    has lengths)."""

    def run(times, valid, gates_x, weight_hh, weight_ch, h0, c0, period, shift, r_on):
        k = sequence_gate(times, period, shift, r_on, 0.01, valid, f64, backend=backend)
        return recurrence(gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=0.5, backend=backend)

    return run


def triton_ops_in(explanation) -> set[str]:
    return {
        str(node.target)
        for graph in explanation.graphs
        for node in graph.graph.nodes
        if "phased_lstm_triton" in str(node.target)
    }


@on_device
def test_compiled_gate_and_recurrence_match_eager_and_the_reference(device):
    gen = torch.Generator().manual_seed(3)
    times = (torch.rand(4, 3, generator=gen, dtype=f64) * 3).cumsum(0).to(device)
    valid = (torch.arange(3) < torch.tensor([3, 3, 2, 1])[:, None]).to(device)
    leaves = {n: t for n, t in op_inputs(4, 3, 5, f64, device, peepholes=True).items() if n != "k"}
    for name, scale, low in (("period", 4.0, 1.0), ("shift", 2.0, 0.0), ("r_on", 0.4, 0.2)):
        leaves[name] = (torch.rand(5, generator=gen, dtype=f64) * scale + low).to(device)
        leaves[name].requires_grad_()
    args = (times, valid, *leaves.values())
    triton_fn = gate_and_recurrence("triton")

    explanation = torch._dynamo.explain(triton_fn)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert triton_ops_in(explanation) == {
        "phased_lstm_triton.time_gate_forward",
        "phased_lstm_triton.forward_train",
    }
    compiled = torch.compile(triton_fn, fullgraph=True, backend="aot_eager")
    got = outputs_and_grads(compiled(*args), leaves)
    eager = outputs_and_grads(triton_fn(*args), leaves)
    want = outputs_and_grads(gate_and_recurrence("reference")(*args), leaves)
    assert got.keys() == want.keys()
    for name in want:
        assert_near(got[name], eager[name], TOL[f64], f"{name} against eager")
        assert_near(got[name], want[name], TOL[f64], f"{name} against the reference")

    with torch.no_grad():  # inference: the op that saves nothing, in the graph too
        explanation = torch._dynamo.explain(triton_fn)(*args)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert "phased_lstm_triton.forward_infer" in triton_ops_in(explanation)
        want = gate_and_recurrence("reference")(*args)
        for name, g, w in zip(("h", "h_n", "c_n"), compiled(*args), want, strict=True):
            assert_near(g, w, TOL[f64], f"inference {name}")


@on_device
def test_a_triton_layer_traces_without_graph_breaks(device):
    torch.manual_seed(0)
    layer = PhasedLSTM(3, 5, peepholes=True, r_on=0.3, backend="triton").to(device, f64)
    x = torch.randn(6, 2, 3, dtype=f64, device=device)
    times = torch.rand(6, 2, dtype=f64, device=device).mul(3).cumsum(0)
    for lengths in (None, torch.tensor([6, 4])):
        explanation = torch._dynamo.explain(layer)(x, times, lengths=lengths)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert triton_ops_in(explanation) == {
            "phased_lstm_triton.time_gate_forward",
            "phased_lstm_triton.forward_train",
        }
