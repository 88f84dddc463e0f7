"""Half precision, autocast, the meta device and device mismatches; the device tests run on
CUDA too where it is available (``DEVICES``)."""

import pytest
import torch

from phased_lstm import PhasedLSTM, PhasedLSTMCell, time_gate
from phased_lstm.ops import recurrence
from phased_lstm.ops._cpu import kernels
from tests.lib import paper_reference as ref

f32, f64 = torch.float32, torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
built = kernels.build_error() is None
# Documented in the PhasedLSTM docstring: a float16/bfloat16 layer against the float32 layer
# with the same (rounded) weights, outputs and states absolute (they lie in (-1, 1)), gradients
# relative to the largest of each parameter's.
HALF_TOL = {torch.bfloat16: (1e-2, 5e-2), torch.float16: (1e-3, 5e-3)}


def compiled_ops_run(fn):
    """The phased_lstm ops that ``fn`` ran, by the profiler's record."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("phased_lstm::")}


def twin_layers(dtype, mode):
    torch.manual_seed(0)
    kwargs = dict(peepholes=True, r_on=0.2, period_range=(2.0, 20.0), learn_r_on=True)
    half = PhasedLSTM(3, 16, 2, **kwargs).to(dtype).train(mode == "train")
    full = PhasedLSTM(3, 16, 2, **kwargs).train(mode == "train")
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    return half, full


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", HALF_TOL, ids=["bf16", "f16"])
def test_half_precision_layer_against_float32(dtype, mode, device):
    half, full = twin_layers(dtype, mode)
    half, full = half.to(device), full.to(device)
    x = torch.randn(60, 3, 3).to(dtype).to(device)
    times = torch.rand(60, 3, dtype=f64).mul(2).cumsum(0).to(device)
    lengths = torch.tensor([60, 41, 7])
    ran = {}

    def run():
        out, (h, c) = half(x, times, lengths=lengths)
        (out.float().square().sum() + h.float().sum()).backward()
        ran.update({"half": (out, h, c)})

    ops = compiled_ops_run(run)
    if built and device == "cpu":  # the compiled gate and recurrence, in float32
        assert {"phased_lstm::time_gate_forward", "phased_lstm::forward_train_input"} <= ops
    out, h, c = ran["half"]
    assert out.dtype == h.dtype == c.dtype == dtype
    want, (h_want, c_want) = full(x.float(), times, lengths=lengths)
    (want.square().sum() + h_want.sum()).backward()
    value_tol, grad_tol = HALF_TOL[dtype]
    for got, expected in ((out, want), (h, h_want), (c, c_want)):
        assert float((got.detach().float() - expected.detach()).abs().max()) < value_tol
    for (name, p_half), p_full in zip(half.named_parameters(), full.parameters(), strict=True):
        assert p_half.grad.dtype == dtype
        scale = float(p_full.grad.abs().max()) or 1.0
        assert float((p_half.grad.float() - p_full.grad).abs().max()) / scale < grad_tol, name


def test_half_precision_cell_and_eval_without_gradients():
    torch.manual_seed(0)
    cell = PhasedLSTMCell(3, 8, r_on=0.5).bfloat16().eval()
    full = PhasedLSTMCell(3, 8, r_on=0.5).eval()
    full.load_state_dict({k: v.float() for k, v in cell.state_dict().items()})
    x = torch.randn(4, 3).bfloat16()
    with torch.no_grad():
        h, c = cell(x, torch.tensor([0.1, 0.5, 2.0, 7.0], dtype=f64))
        h_want, _ = full(x.float(), torch.tensor([0.1, 0.5, 2.0, 7.0], dtype=f64))
    assert h.dtype == torch.bfloat16
    assert float((h.float() - h_want).abs().max()) < HALF_TOL[torch.bfloat16][0]


def test_autocast_runs_the_compiled_kernels_in_float32():
    torch.manual_seed(0)
    layer = PhasedLSTM(3, 16, 2, r_on=0.3, period_range=(2.0, 20.0))
    x = torch.randn(40, 2, 3)
    times = torch.rand(40, 2, dtype=f64).mul(2).cumsum(0)
    want, _ = layer(x, times)
    got = {}

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got["out"], _ = layer(x, times)
        got["out"].sum().backward()

    ops = compiled_ops_run(run)
    if built:
        assert {"phased_lstm::forward_train", "phased_lstm::backward"} <= ops
    # The input projections ran in bfloat16, the recurrence in float32.
    assert got["out"].dtype == f32
    assert float((got["out"] - want).detach().abs().max()) < HALF_TOL[torch.bfloat16][0]


# ------------------------------------------------------------------------------ meta device
def test_every_entry_point_runs_on_the_meta_device():
    meta = torch.device("meta")
    layer = PhasedLSTM(3, 8, 2, bidirectional=True, batch_first=True).to(meta)
    x = torch.randn(2, 5, 3, device=meta)
    times = torch.zeros(2, 5, dtype=f64, device=meta)
    out, (h, c) = layer(x, times, lengths=torch.tensor([5, 3]))
    assert out.shape == (2, 5, 16) and out.device == meta and h.shape == (4, 2, 8)
    out, _ = layer(x, times, lengths=torch.tensor([5, 3], device=meta))
    assert out.device == meta
    out, _ = layer(x[0], times[0], (torch.zeros(4, 8, device=meta),) * 2)
    assert out.shape == (5, 16)
    uni = PhasedLSTM(3, 8).to(meta).eval()
    with torch.no_grad():
        assert uni.stream()(torch.randn(3, device=meta), 1.5).device == meta
    cell = PhasedLSTMCell(3, 4).to(meta)
    h, c = cell(torch.randn(2, 3, device=meta), 0.5)  # a number: the timestamp goes to meta
    assert h.shape == (2, 4) and h.device == meta
    h, c = cell(torch.randn(3, device=meta), torch.tensor(0.5))  # a 0-dim CPU tensor too
    assert h.device == meta
    k = time_gate(times, *(torch.ones(8, device=meta),) * 3)
    assert k.shape == (2, 5, 8) and k.device == meta
    tensors = [torch.zeros(s, device=meta) for s in ((4, 2, 32), (4, 2, 8), (32, 8))]
    h_seq, _, _ = recurrence(
        *tensors, None, torch.zeros(2, 8, device=meta), torch.zeros(2, 8, device=meta)
    )
    assert h_seq.shape == (4, 2, 8)
    with pytest.raises(ValueError, match="update_fraction counts open gates.*meta"):
        layer.update_fraction(times)


def test_device_mismatches_are_named():
    layer = PhasedLSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"times must be on the device of input \(cpu\), got meta"):
        layer(x, torch.zeros(5, 2, device="meta"))
    hx = (torch.zeros(1, 2, 4, device="meta"), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match=r"hx must be on the device of input \(cpu\), got meta"):
        layer(x, torch.zeros(5, 2), hx)
    with pytest.raises(ValueError, match=r"the parameters must be on the device of input"):
        layer(x.to("meta"), torch.zeros(5, 2, device="meta"))
    cell = PhasedLSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"t must be on the device of input \(cpu\), got meta"):
        cell(torch.randn(2, 3), torch.zeros(2, device="meta"))


# --------------------------------------------------------------- every device available
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_on_each_device_matches_the_paper_equations(device, mode, busy_layer):
    torch.manual_seed(3)
    layer = busy_layer(2, 4, 2, bidirectional=True).train(mode == "train")
    x = torch.randn(9, 3, 2, dtype=f64)
    times = (torch.rand(9, 3, dtype=f64) * 40 / 9).cumsum(0) + 1e6
    lengths = torch.tensor([9, 4, 6])
    params = {
        n: t.detach().clone().requires_grad_(t.requires_grad)
        for n, t in layer.state_dict(keep_vars=True).items()
    }
    want, h_want, _ = ref.phased_lstm(
        params, x, times, lengths, 2, True, 0.05 if mode == "train" else 0.0, None, None
    )
    layer = layer.to(device)
    out, (h, c) = layer(x.to(device), times.to(device), lengths=lengths)
    assert out.device.type == device
    assert ref.relative_error(out.cpu(), want) < 1e-9
    assert ref.relative_error(h.cpu(), h_want) < 1e-9
    (out.sum() + h.sum()).backward()
    (want.sum() + h_want.sum()).backward()
    for name, param in layer.named_parameters():
        assert ref.relative_error(param.grad.cpu(), params[name].grad) < 1e-9, name
