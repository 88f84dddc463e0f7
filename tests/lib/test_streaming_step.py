"""The streaming step (one compiled call per event for the gate and the sparse update of every
layer) against the reference loop run over the whole sequence at once: outputs and states,
1-2 layers, peepholes, batches, float32 and float64, gates that open and close; and the cases
it must hand to the general path."""

import copy

import pytest
import torch
from torch import nn

from phased_lstm import PhasedLSTM, PhasedLSTMCell
from phased_lstm.ops._cpu import kernels

f32, f64 = torch.float32, torch.float64
TOL = {f32: dict(rtol=2e-5, atol=2e-6), f64: dict(rtol=1e-10, atol=1e-12)}

pytestmark = pytest.mark.skipif(
    kernels.build_error() is not None, reason=f"C++ kernels: {kernels.build_error()}"
)


def event_times(length, batch, seed=0):
    """Gaps of about one unit: with periods of 2-20 units every gate opens and closes often."""
    gen = torch.Generator().manual_seed(seed)
    return torch.empty(length, batch, dtype=f64).exponential_(1.0, generator=gen).cumsum(0)


def make_layer(num_layers, peepholes, dtype, **kwargs):
    torch.manual_seed(0)
    layer = PhasedLSTM(
        3, 16, num_layers, peepholes=peepholes, r_on=0.2, period_range=(2.0, 20.0), **kwargs
    )
    return layer.to(dtype).eval()


def reference_run(layer, x, times, hx=None):
    """The whole sequence in one call of the reference backend (no streaming step)."""
    backend = layer.backend
    layer.backend = "reference"
    try:
        with torch.no_grad():
            return layer(x, times, hx)
    finally:
        layer.backend = backend


class Spy:
    """Stands in for a module's prepared streaming step and records whether it answered."""

    def __init__(self, stream):
        self.stream = stream
        self.answered = []

    def __getattr__(self, name):
        method = getattr(self.stream, name)

        def call(*args):
            result = method(*args)
            self.answered.append(result is not None and result is not NotImplemented)
            return result

        return call


def spy_on(module):
    """Prepare the module's streaming step behind a Spy; None where it does not apply."""
    stream = module._make_stream()
    spy = Spy(stream) if stream is not False else False
    module.__dict__["_stream"] = spy
    return spy or None


def took_stream(spy):
    return spy is not None and len(spy.answered) > 0 and all(spy.answered)


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("peepholes", [False, True], ids=["plain", "peep"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
def test_layer_event_by_event_equals_the_whole_sequence(num_layers, peepholes, batch, dtype):
    layer = make_layer(num_layers, peepholes, dtype)
    x = torch.randn(40, batch, 3, dtype=dtype)
    times = event_times(40, batch)
    gen = torch.Generator().manual_seed(2)
    hx = tuple(torch.randn(num_layers, batch, 16, generator=gen, dtype=f64).to(dtype) for _ in "hc")
    want, (h_want, c_want) = reference_run(layer, x, times, hx)
    outputs, state = [], hx
    spy = spy_on(layer)
    with torch.inference_mode():
        for j in range(40):
            out, state = layer(x[j : j + 1], times[j : j + 1], state)
            outputs.append(out)
    assert took_stream(spy)
    torch.testing.assert_close(torch.cat(outputs), want, **TOL[dtype])
    torch.testing.assert_close(state[0], h_want, **TOL[dtype])
    torch.testing.assert_close(state[1], c_want, **TOL[dtype])
    # Closed neurons keep their state bit for bit: the update fraction is far below one.
    assert layer.update_fraction(times) < 0.5


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
def test_several_events_per_call_and_every_layout(dtype):
    layer = make_layer(2, True, dtype, batch_first=True)
    x = torch.randn(2, 30, 3, dtype=dtype)
    times = event_times(30, 2).t().contiguous()
    want, (h_want, _) = reference_run(layer, x, times)
    spy = spy_on(layer)
    with torch.no_grad():
        first, state = layer(x[:, :12], times[:, :12])
        second, (h, _) = layer(x[:, 12:], times[:, 12:], state)
    assert took_stream(spy)
    torch.testing.assert_close(torch.cat([first, second], 1), want, **TOL[dtype])
    torch.testing.assert_close(h, h_want, **TOL[dtype])
    # Unbatched input and timestamps shared by the batch.
    single, _ = reference_run(layer, x[1], times[1])
    spy = spy_on(layer)
    with torch.no_grad():
        torch.testing.assert_close(layer(x[1], times[1])[0], single, **TOL[dtype])
        shared, _ = layer(x, times[0])
    assert took_stream(spy) and len(spy.answered) == 2
    torch.testing.assert_close(shared, reference_run(layer, x, times[0])[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 4], ids=["B1", "B4"])
def test_cell_event_by_event_equals_the_layer(batch, dtype):
    layer = make_layer(1, True, dtype)
    cell = PhasedLSTMCell(3, 16, peepholes=True).to(dtype).eval()
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in layer.state_dict().items()})
    x = torch.randn(25, batch, 3, dtype=dtype)
    times = event_times(25, batch, seed=3)
    want, _ = reference_run(layer, x, times)
    h = c = torch.zeros(batch, 16, dtype=dtype)
    spy = spy_on(cell)
    with torch.inference_mode():
        for j in range(25):
            t = times[j] if j % 2 else float(times[j, 0]) if batch == 1 else times[j]
            h, c = cell(x[j], t, (h, c))
            torch.testing.assert_close(h, want[j], **TOL[dtype])
    assert took_stream(spy)
    with torch.no_grad():  # unbatched, hx omitted, a 0-dim timestamp
        h1, _ = cell(x[0, 0], times[0, 0])
    assert spy.answered[-1]
    torch.testing.assert_close(h1, want[0, 0], **TOL[dtype])


def test_parameter_changes_are_seen():
    layer = make_layer(2, False, f64)
    x, times = torch.randn(6, 1, 3, dtype=f64), event_times(6, 1)
    spy = spy_on(layer)
    with torch.no_grad():
        layer(x, times)
        assert took_stream(spy)
        layer.weight_hh_l1.mul_(1.5)  # an optimiser's in-place step
        layer.shift_l0.add_(0.3)
        torch.testing.assert_close(layer(x, times)[0], reference_run(layer, x, times)[0])
        other = make_layer(2, False, f64)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x, times)[0], reference_run(other, x, times)[0])
        layer.bias_ih_l0 = nn.Parameter(torch.randn(64, dtype=f64))  # replaced
        torch.testing.assert_close(layer(x, times)[0], reference_run(layer, x, times)[0])
        layer.float()  # converted
        out, _ = layer(x.float(), times)
    torch.testing.assert_close(out, reference_run(layer, x.float(), times)[0], **TOL[f32])


@pytest.mark.parametrize(
    "setup",
    [
        "bidirectional",
        "train-leak",
        "train-dropout",
        "reference-backend",
        "grad",
        "autocast",
        "long",
    ],
)
def test_what_the_streaming_step_does_not_take_runs_the_general_path(setup):
    kwargs = {"bidirectional": True} if setup == "bidirectional" else {}
    if setup == "train-dropout":
        kwargs = {"dropout": 0.5, "leak": 0.0}
    layer = make_layer(2, False, f32, **kwargs)
    if setup.startswith("train"):
        layer.train()
    if setup == "reference-backend":
        layer.backend = "reference"
    steps = 33 if setup == "long" else 8  # 66 (event, sample) pairs: the sequence kernels
    x, times = torch.randn(steps, 2, 3), event_times(steps, 2)
    torch.manual_seed(5)
    want = reference_run(layer, x, times)[0]
    spy = spy_on(layer)
    context = torch.enable_grad() if setup == "grad" else torch.no_grad()
    with context, torch.autocast("cpu", enabled=setup == "autocast"):
        torch.manual_seed(5)
        got = layer(x, times)[0]
    assert not took_stream(spy)
    if setup != "autocast":
        torch.testing.assert_close(got, want, **TOL[f32])


def test_bad_input_gets_the_general_paths_errors():
    layer = make_layer(1, False, f32)
    cell = PhasedLSTMCell(3, 4).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"input must have 3 features"):
            layer(torch.randn(1, 1, 5), torch.zeros(1, 1))
        with pytest.raises(ValueError, match=r"times must be finite"):
            layer(torch.randn(1, 1, 3), torch.full((1, 1), float("nan"), dtype=f64))
        with pytest.raises(ValueError, match=r"hx h_0 must have shape \(1, 1, 16\)"):
            layer(torch.randn(1, 1, 3), torch.zeros(1, 1), (torch.zeros(2, 1, 16),) * 2)
        with pytest.raises(TypeError, match=r"x must have the parameters' dtype"):
            cell(torch.randn(2, 3, dtype=f64), 0.5)
        with pytest.raises(ValueError, match=r"t must be finite"):
            cell(torch.randn(2, 3), float("inf"))


# ------------------------------------------------------------------------ PhasedLSTMStream
@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_stream_object_equals_the_whole_sequence(batch_first, dtype):
    layer = make_layer(2, True, dtype, batch_first=batch_first)
    x = torch.randn(30, 2, 3, dtype=dtype)
    times = event_times(30, 2, seed=4)
    gen = torch.Generator().manual_seed(6)
    hx = tuple(torch.randn(2, 2, 16, generator=gen, dtype=f64).to(dtype) for _ in "hc")
    seq_x = x.transpose(0, 1) if batch_first else x
    seq_t = times.t() if batch_first else times
    want, (h_want, c_want) = reference_run(layer, seq_x, seq_t, hx)
    want = want.transpose(0, 1) if batch_first else want
    stream = layer.stream(batch_size=2, hx=hx)
    spy = spy_on(layer)
    got = [stream(x[j], times[j]) for j in range(10)]  # grad mode on: it runs without
    got.append(stream(x[10:20], times[10:20]))  # several events per call
    got += [stream(x[j], times[j]) for j in range(20, 30)]
    assert took_stream(spy)
    got = torch.cat([g if g.dim() == 3 else g.unsqueeze(0) for g in got])
    assert not got.requires_grad
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(stream.state[0], h_want, **TOL[dtype])
    torch.testing.assert_close(stream.state[1], c_want, **TOL[dtype])
    stream.reset()
    assert not stream.state[0].any()


def test_stream_object_general_path_and_errors():
    layer = make_layer(1, False, f32)
    x, times = torch.randn(6, 1, 3), event_times(6, 1)
    want, _ = reference_run(layer, x, times)
    stream = layer.stream()
    # float32 timestamps over several events take the general path (which checks whether
    # float32 can resolve them): same results.
    first = stream(x[:3], times[:3].float())
    rest = [stream(x[j, 0], float(times[j, 0])) for j in range(3, 6)]
    torch.testing.assert_close(first, want[:3], **TOL[f32])
    torch.testing.assert_close(torch.stack(rest), want[3:, 0], **TOL[f32])
    with pytest.raises(ValueError, match="bidirectional PhasedLSTM cannot stream"):
        make_layer(1, False, f32, bidirectional=True).stream()
    with pytest.raises(ValueError, match=r"x must have shape \(N, H_in\) = \(2, H_in\)"):
        layer.stream(batch_size=2)(torch.randn(3), 0.0)
    with pytest.raises(ValueError, match=r"hx h_0 must have shape \(1, 3, 16\)"):
        layer.stream(batch_size=3, hx=(torch.zeros(1, 2, 16),) * 2)


def test_a_module_with_a_prepared_step_copies_and_saves(tmp_path):
    layer = make_layer(2, False, f32)
    x, times = torch.randn(1, 1, 3), event_times(1, 1)
    with torch.no_grad():
        want, _ = layer(x, times)  # prepares the streaming step
        twin = copy.deepcopy(layer)
        torch.save(layer, tmp_path / "layer.pt")
        loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
        assert torch.equal(twin(x, times)[0], want) and torch.equal(loaded(x, times)[0], want)
