"""The compiled ops as torch.library custom ops: opcheck on every op, torch.compile of a
training step and of evaluation without graph breaks, torch.export of an eval model; each
against eager. Small on purpose: compiling is slow on a small machine."""

import math

import pytest
import torch

from phased_lstm import PhasedLSTM
from phased_lstm.ops._cpu import kernels

f64 = torch.float64
pytestmark = pytest.mark.skipif(
    kernels.build_error() is not None, reason=f"C++ kernels: {kernels.build_error()}"
)


def gate_args(gen, grad=True):
    times = torch.rand(5, 2, generator=gen, dtype=f64) * 20
    period, shift, r_on = (
        (torch.rand(3, generator=gen, dtype=f64) * scale + low).requires_grad_(grad)
        for scale, low in ((5.0, 1.0), (3.0, 0.0), (0.4, 0.2))
    )
    return times, period, shift, r_on


def recurrence_args(gen, packed):
    shape = (9,) if packed else (4, 2)
    tensors = [
        torch.randn(*shape, 12, generator=gen, dtype=f64),
        torch.rand(*shape, 3, generator=gen, dtype=f64),
        torch.randn(12, 3, generator=gen, dtype=f64) * 0.5,
        torch.randn(9, generator=gen, dtype=f64) * 0.5,
        torch.randn(3, 3, generator=gen, dtype=f64) * 0.5,
        torch.randn(3, 3, generator=gen, dtype=f64),
    ]
    if not packed:
        tensors[4:] = [t[:2] for t in tensors[4:]]
    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    return tensors, batch_sizes


def op_samples():
    gen = torch.Generator().manual_seed(0)
    ops = torch.ops.phased_lstm
    times, period, shift, r_on = gate_args(gen)
    valid = torch.rand(5, 2, generator=gen) < 0.7
    samples = [
        (ops.time_gate_forward.default, (times, period, shift, r_on, 0.01, valid, torch.float32)),
        (ops.time_gate_forward.default, (times, period, shift, r_on, 0.0, None, f64)),
        (
            ops.time_gate_backward.default,
            (
                torch.randn(5, 2, 3, generator=gen),
                times,
                *(t.detach() for t in (period, shift, r_on)),
                0.01,
                valid,
            ),
        ),
    ]
    for packed in (False, True):
        tensors, batch_sizes = recurrence_args(gen, packed)
        grad = [t.clone().requires_grad_() for t in tensors]
        samples.append((ops.forward_train.default, (*grad, batch_sizes, 0.5)))
        h, h_n, c_n, c, acts = ops.forward_train(*tensors, batch_sizes, math.inf)
        gradients = [torch.randn(t.shape, generator=gen, dtype=f64) for t in (h, h_n, c_n)]
        k, w_hh, w_ch, h0, c0 = tensors[1:]
        samples.append(
            (
                ops.backward.default,
                (*gradients, k, w_hh, w_ch, h0, c0, h, c, acts, True, 0.5, batch_sizes),
            )
        )
        sparse_k = tensors[1] * (torch.rand(tensors[1].shape, generator=gen) < 0.4)
        samples.append(
            (ops.forward_infer.default, (tensors[0], sparse_k, *tensors[2:], batch_sizes, 0.3))
        )
        # From the layer input: x (..., 2) with W_ih (12, 2) and a bias instead of gates_x.
        x = torch.randn(*tensors[0].shape[:-1], 2, generator=gen, dtype=f64)
        w_ih = torch.randn(12, 2, generator=gen, dtype=f64)
        bias = torch.randn(12, generator=gen, dtype=f64)
        grad = [t.clone().requires_grad_() for t in (x, w_ih, bias, *tensors[1:])]
        samples.append((ops.forward_train_input.default, (*grad, batch_sizes, 0.5)))
        t = torch.rand(x.shape[:-1], generator=gen, dtype=f64).mul(3).cumsum(0)
        gate = [p.detach() for p in (period, shift, r_on)]
        valid = None if packed else torch.rand(t.shape, generator=gen) < 0.8
        args = (x, t, w_ih, bias, w_hh, w_ch, *gate, 0.0, valid, h0, c0, batch_sizes, 0.5)
        samples.append((ops.forward_infer_input.default, args))
    return samples


@pytest.mark.parametrize("index", range(13))
def test_opcheck(index):
    op, args = op_samples()[index]
    torch.library.opcheck(op, args)


def test_forward_train_zeroes_the_activations_of_padding_rows():
    # Padded input with lengths: the saved activations of rows past batch_sizes[t] are zeros,
    # not what the allocator held (two calls on the same inputs then differed, and opcheck with
    # them). Memory of the size of acts, full of NaN and freed just before, shows an unwritten
    # element.
    gen = torch.Generator().manual_seed(1)
    tensors, _ = recurrence_args(gen, packed=False)
    batch_sizes = torch.tensor([2, 2, 1, 1])
    for _ in range(3):
        torch.full(tensors[0].shape, math.nan, dtype=f64)
        *_, acts = torch.ops.phased_lstm.forward_train(*tensors, batch_sizes, math.inf)
        assert torch.equal(acts[2:, 1:], torch.zeros_like(acts[2:, 1:]))
        assert torch.isfinite(acts).all()


def model_and_inputs():
    torch.manual_seed(0)
    model = PhasedLSTM(3, 8, 2, peepholes=True, r_on=0.3, period_range=(2.0, 10.0))
    x = torch.randn(12, 2, 3)
    times = torch.rand(12, 2, dtype=f64).mul(3).cumsum(0)
    return model, x, times


def test_compile_trains_and_evaluates_without_graph_breaks():
    model, x, times = model_and_inputs()
    for lengths in (None, torch.tensor([12, 7])):
        explanation = torch._dynamo.explain(model)(x, times, lengths=lengths)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, (h, c) = compiled(x, times)
    (out.square().sum() + h.sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want, (h_want, _) = model(x, times)
    (want.square().sum() + h_want.sum()).backward()
    torch.testing.assert_close(out, want)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, msg=name)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, times)[0], model(x, times)[0])


def test_export_of_an_eval_model_runs_like_eager():
    model, x, times = model_and_inputs()
    model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (x, times))
        names = {str(node.target) for node in program.graph.nodes}
        assert any("phased_lstm.forward_infer_input" in name for name in names), names
        want, (h_want, _) = model(x, times)
        got, (h, _) = program.module()(x, times)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(h, h_want)
