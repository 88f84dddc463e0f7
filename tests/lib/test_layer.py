"""PhasedLSTM and PhasedLSTMCell against references: nn.LSTM, a float64 paper transcription,
one sample at a time, the cell stepped by hand."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import phased_lstm.nn._base
import phased_lstm.ops._cpu.backend
from phased_lstm import PhasedLSTM, PhasedLSTMCell
from tests.lib import paper_reference as ref

f64 = torch.float64


def irregular_times(length, batch, *, seed=0, scale=50.0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    steps = torch.rand(length, batch, generator=gen, dtype=f64) * scale / length
    return offset + steps.cumsum(0)


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- nn.LSTM parity
@pytest.fixture
def gate_open(monkeypatch):
    """Force k = 1 everywhere: the Phased LSTM must then be exactly an LSTM. The layer's gate
    of the general path and the compiled gate that "fused" computes inside its direction (with
    gradients, as these tests run) are both replaced."""

    def ones(times, period, shift, r_on, leak, valid, dtype, *, backend="auto"):
        k = torch.ones(*times.shape, period.shape[0], dtype=dtype)
        return k if valid is None else k * valid.unsqueeze(-1)

    monkeypatch.setattr(phased_lstm.nn._base, "sequence_gate", ones)
    monkeypatch.setattr(phased_lstm.ops._cpu.backend, "time_gate", ones)


@pytest.mark.parametrize("num_layers", [1, 2], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_open_gate_equals_nn_lstm(gate_open, num_layers, bidirectional):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, num_layers, bidirectional=bidirectional).double()
    layer = PhasedLSTM(3, 5, num_layers, bidirectional=bidirectional).double()
    result = layer.load_state_dict(lstm.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith(("log_period", "shift", "logit_r_on")) for k in result.missing_keys)
    x = torch.randn(7, 4, 3, dtype=f64)
    d = 2 if bidirectional else 1
    h0 = torch.randn(d * num_layers, 4, 5, dtype=f64)
    c0 = torch.randn(d * num_layers, 4, 5, dtype=f64)
    out_ref, (h_ref, c_ref) = lstm(x, (h0, c0))
    out, (h, c) = layer(x, irregular_times(7, 4), (h0, c0))
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    loss_weights = torch.randn_like(out)
    ((out_ref * loss_weights).sum() + h_ref.sum() + c_ref.sum()).backward()
    ((out * loss_weights).sum() + h.sum() + c.sum()).backward()
    expected = grads(lstm)
    got = grads(layer)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, msg=name)


# ----------------------------------------------------------- the float64 paper transcription
def paper_check(layer, x, times, lengths, *, h0=None, c0=None, tol):
    """Compare outputs, final states and every parameter gradient with the paper reference."""
    params = {
        name: tensor.detach().double().requires_grad_(isinstance(tensor, nn.Parameter))
        for name, tensor in layer.state_dict(keep_vars=True).items()
    }
    leak = layer.leak if layer.training else 0.0
    directions = 2 if layer.bidirectional else 1
    out_ref, h_ref, c_ref = ref.phased_lstm(
        params,
        x.double(),
        times,
        lengths,
        layer.num_layers,
        layer.bidirectional,
        leak,
        None if h0 is None else h0.double(),
        None if c0 is None else c0.double(),
    )
    hx = None if h0 is None else (h0, c0)
    out, (h, c) = layer(x, times, hx, lengths=lengths)
    assert out.shape == (x.shape[0], x.shape[1], directions * layer.hidden_size)
    for got, want, what in ((out, out_ref, "output"), (h, h_ref, "h_n"), (c, c_ref, "c_n")):
        assert ref.relative_error(got, want) < tol, what
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=gen, dtype=f64)
    w_h = torch.randn(h.shape, generator=gen, dtype=f64)
    ((out_ref * w_out).sum() + (h_ref * w_h).sum() + c_ref.sum()).backward()
    ((out * w_out.to(out.dtype)).sum() + (h * w_h.to(h.dtype)).sum() + c.sum()).backward()
    checked = 0
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        err = ref.relative_error(param.grad, params[name].grad)
        assert err < tol, f"gradient of {name}: relative error {err:.2e}"
        checked += 1
    assert checked == len(list(layer.parameters()))


PAPER_CASES = {
    # id: (num_layers, bidirectional, peepholes, time offset)
    "L1-uni": (1, False, False, 0.0),
    "L2-bi-peep-neg": (2, True, True, -500.0),
    "L2-uni-peep-1e6": (2, False, True, 1e6),
    "L1-bi-1e6": (1, True, False, 1e6),
}


@pytest.mark.parametrize("case", PAPER_CASES, ids=list(PAPER_CASES))
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [f64, torch.float32], ids=["f64", "f32"])
def test_layer_matches_paper_equations(case, mode, dtype, busy_layer):
    num_layers, bidirectional, peepholes, offset = PAPER_CASES[case]
    torch.manual_seed(3)
    layer = busy_layer(
        2, 4, num_layers, bidirectional=bidirectional, peepholes=peepholes, dtype=dtype
    )
    layer.train(mode == "train")
    length, batch = 9, 3
    x = torch.randn(length, batch, 2, dtype=dtype)
    times = irregular_times(length, batch, seed=5, scale=40.0, offset=offset)
    lengths = torch.tensor([9, 4, 6])
    d = 2 if bidirectional else 1
    h0 = torch.randn(d * num_layers, batch, 4, dtype=dtype) * 0.5
    c0 = torch.randn(d * num_layers, batch, 4, dtype=dtype) * 0.5
    tol = 1e-9 if dtype == f64 else 1e-3
    paper_check(layer, x, times, lengths, h0=h0, c0=c0, tol=tol)


def test_layer_gradcheck_float64(busy_layer):
    torch.manual_seed(0)
    layer = busy_layer(2, 3, 2, bidirectional=True, r_on=0.4, period_range=(2.0, 6.0))
    x = torch.randn(6, 2, 2, dtype=f64)
    times = irregular_times(6, 2, seed=2, scale=20.0)
    lengths = torch.tensor([6, 4])
    names = [n for n, _ in layer.named_parameters()]
    assert {"log_period_l0", "shift_l0", "logit_r_on_l1_reverse"} <= set(names)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def run(x, *values):
        out, (h, c) = torch.func.functional_call(
            layer, dict(zip(names, values, strict=True)), (x, times), {"lengths": lengths}
        )
        return out.sum() + h.sum() + c.sum()

    assert torch.autograd.gradcheck(run, (x.requires_grad_(), *params))


# ------------------------------------------------------------------------ cell and chunking
def cell_from_layer(layer):
    cell = PhasedLSTMCell(
        layer.input_size, layer.hidden_size, peepholes=layer.peepholes, leak=layer.leak
    ).to(layer.weight_ih_l0.dtype)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in layer.state_dict().items()})
    return cell


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cell_stepped_by_hand_equals_layer(mode):
    torch.manual_seed(0)
    layer = PhasedLSTM(3, 6, peepholes=True, r_on=0.3, period_range=(1.0, 5.0)).double()
    cell = cell_from_layer(layer)
    layer.train(mode == "train")
    cell.train(mode == "train")
    x = torch.randn(12, 2, 3, dtype=f64)
    times = irregular_times(12, 2, scale=30.0)
    out, (h_n, c_n) = layer(x, times)
    h = c = torch.zeros(2, 6, dtype=f64)
    for step in range(12):
        h, c = cell(x[step], times[step], (h, c))
        torch.testing.assert_close(h, out[step])
    torch.testing.assert_close(h, h_n[0])
    torch.testing.assert_close(c, c_n[0])


def test_cell_unbatched_and_scalar_time():
    torch.manual_seed(0)
    cell = PhasedLSTMCell(3, 4, r_on=1.0).double()
    x = torch.randn(3, dtype=f64)
    h, c = cell(x, 0.7)
    hb, cb = cell(x.unsqueeze(0), torch.tensor([0.7], dtype=f64))
    assert h.shape == (4,)
    torch.testing.assert_close(h, hb[0])
    torch.testing.assert_close(c, cb[0])


def test_chunks_with_state_carried_equal_one_call():
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 5, 2, bidirectional=False, peepholes=True, r_on=0.3).double().eval()
    x = torch.randn(20, 3, 2, dtype=f64)
    times = irregular_times(20, 3, scale=60.0)
    out, (h, c) = layer(x, times)
    out1, state = layer(x[:8], times[:8])
    out2, (h2, c2) = layer(x[8:], times[8:], state)
    torch.testing.assert_close(torch.cat([out1, out2]), out)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)


# ------------------------------------------------------------------ padding and PackedSequence
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lengths_equal_each_sample_alone(bidirectional):
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, 2, bidirectional=bidirectional, r_on=0.3).double()
    x = torch.randn(10, 3, 2, dtype=f64)
    times = irregular_times(10, 3, scale=40.0)
    lengths = torch.tensor([10, 3, 7])
    # Garbage in the padding must change nothing.
    x_padded = x.clone()
    times_padded = times.clone()
    for n, n_len in enumerate(lengths.tolist()):
        x_padded[n_len:, n] = 1e3
        times_padded[n_len:, n] = -123.0
    out, (h, c) = layer(x_padded, times_padded, lengths=lengths)
    for n, n_len in enumerate(lengths.tolist()):
        out_n, (h_n, c_n) = layer(x[:n_len, n : n + 1], times[:n_len, n : n + 1])
        torch.testing.assert_close(out[:n_len, n], out_n[:, 0])
        assert torch.all(out[n_len:, n] == 0)
        torch.testing.assert_close(h[:, n], h_n[:, 0])
        torch.testing.assert_close(c[:, n], c_n[:, 0])


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_equals_padded(enforce_sorted):
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, bidirectional=True, r_on=0.3).double()
    x = torch.randn(8, 3, 2, dtype=f64)
    times = irregular_times(8, 3, scale=40.0)
    lengths = torch.tensor([8, 6, 2]) if enforce_sorted else torch.tensor([2, 8, 6])
    packed_x = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    packed_t = pack_padded_sequence(times, lengths, enforce_sorted=enforce_sorted)
    packed_out, (h, c) = layer(packed_x, packed_t)
    out, (h_ref, c_ref) = layer(x, times, lengths=lengths)
    assert torch.equal(packed_out.batch_sizes, packed_x.batch_sizes)
    unpacked, out_lengths = pad_packed_sequence(packed_out)
    assert out_lengths.tolist() == lengths.tolist()
    torch.testing.assert_close(unpacked, out[: unpacked.shape[0]])
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)


# ------------------------------------------------------------------------- layouts and modes
def test_batch_first_unbatched_and_shared_times():
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, batch_first=True).double()
    x = torch.randn(3, 6, 2, dtype=f64)
    times = irregular_times(6, 3).t().contiguous()
    out, (h, c) = layer(x, times)
    assert out.shape == (3, 6, 4) and h.shape == (1, 3, 4)
    single, (h1, _) = layer(x[1], times[1])
    assert single.shape == (6, 4) and h1.shape == (1, 4)
    torch.testing.assert_close(single, out[1])
    shared, _ = layer(x, times[0])
    for n in range(3):
        alone, _ = layer(x[n], times[0])
        torch.testing.assert_close(shared[n], alone)


def test_eval_holds_closed_neurons_bit_for_bit():
    torch.manual_seed(0)
    layer = PhasedLSTM(3, 32, r_on=0.05, period_range=(5.0, 50.0)).eval()
    cell = cell_from_layer(layer).eval()
    x = torch.randn(50, 2, 3)
    times = irregular_times(50, 2, scale=200.0)
    k = phased_lstm.functional.time_gate(times, layer.period_l0, layer.shift_l0, layer.r_on_l0)
    closed = k == 0
    assert 0.5 < float(closed.float().mean()) < 1.0
    h = c = torch.zeros(2, 32)
    for step in range(50):
        h_new, c_new = cell(x[step], times[step], (h, c))
        assert torch.equal(h_new[closed[step]], h[closed[step]])
        assert torch.equal(c_new[closed[step]], c[closed[step]])
        h, c = h_new, c_new
    # In training mode the leak moves them a little.
    cell.train()
    h_train, _ = cell(x[1], times[1], (h, c))
    assert not torch.equal(h_train[closed[1]], h[closed[1]])


def test_update_fraction_counts_open_neuron_steps():
    torch.manual_seed(0)
    layer = PhasedLSTM(1, 50, 2, bidirectional=True, r_on=0.1, period_range=(3.0, 30.0))
    times = irregular_times(400, 4, scale=1000.0)
    lengths = torch.tensor([400, 100, 250, 1])
    opened, total = 0, 0
    for name in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        period = getattr(layer, "period" + name).double()
        shift = getattr(layer, "shift" + name).double()
        r_on = getattr(layer, "r_on" + name).double()
        for n, n_len in enumerate(lengths.tolist()):
            for s in range(n_len):
                k = ref.gate(times[s, n], period, shift, r_on, 0.0)
                opened += int((k > 0).sum())
                total += 50
    fraction = layer.update_fraction(times, lengths)
    assert fraction == pytest.approx(opened / total, abs=1e-12)
    assert 0.07 < fraction < 0.13  # about r_on


def test_dropout_between_layers():
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, 2, dropout=1.0, r_on=0.5).double()
    x = torch.randn(5, 2, 2, dtype=f64)
    times = irregular_times(5, 2)
    out, _ = layer(x, times)
    # With every first-layer output dropped, layer 2 sees zeros.
    single = PhasedLSTM(4, 4, r_on=0.5).double()
    single.load_state_dict(
        {k.replace("_l1", "_l0"): v for k, v in layer.state_dict().items() if "_l1" in k}
    )
    expected, _ = single(torch.zeros(5, 2, 4, dtype=f64), times)
    torch.testing.assert_close(out, expected)
    layer.eval()
    out_eval, _ = layer(x, times)
    assert not torch.allclose(out_eval, expected)


# ------------------------------------------------------------------- parameters and contract
def test_parameter_names_shapes_and_init():
    torch.manual_seed(0)
    layer = PhasedLSTM(3, 200, 2, bidirectional=True, peepholes=True, period_range=(2.0, 40.0))
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes["weight_ih_l0"] == (800, 3)
    assert shapes["weight_ih_l1_reverse"] == (800, 400)
    assert shapes["weight_hh_l1"] == (800, 200)
    assert shapes["bias_ih_l0"] == (800,) and shapes["bias_hh_l0_reverse"] == (800,)
    assert shapes["weight_ch_l1_reverse"] == (600,)
    assert shapes["shift_l0"] == (200,) and shapes["log_period_l1"] == (200,)
    # r_on is not learnt by default: a buffer, still saved.
    assert "logit_r_on_l0" in layer.state_dict() and "logit_r_on_l0" not in shapes
    period = layer.period_l1_reverse.detach()
    assert period.shape == (200,)
    assert float(period.min()) >= 2.0 and float(period.max()) <= 40.0
    log_p = period.log()
    # log-uniform: the mean of log(period) sits in the middle of the log range.
    assert float(log_p.mean()) == pytest.approx((math.log(2) + math.log(40)) / 2, abs=0.2)
    shift = layer.shift_l0
    assert bool(((shift >= 0) & (shift < layer.period_l0)).all())
    torch.testing.assert_close(layer.r_on_l1, torch.full((200,), 0.05))


def test_parametrisation_keeps_period_and_r_on_in_domain():
    layer = PhasedLSTM(1, 3, learn_r_on=True)
    with torch.no_grad():
        layer.log_period_l0.fill_(-30.0)
        layer.logit_r_on_l0.copy_(torch.tensor([-40.0, 0.0, 40.0]))
    assert bool((layer.period_l0 > 0).all())
    r_on = layer.r_on_l0
    assert bool(((r_on > 0) & (r_on <= 1)).all())
    out, _ = layer(torch.randn(4, 2, 1), irregular_times(4, 2))
    out.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in layer.parameters())


def test_attributes_and_repr():
    layer = PhasedLSTM(
        3,
        4,
        2,
        batch_first=True,
        dropout=0.1,
        bidirectional=True,
        peepholes=True,
        leak=0.0,
        r_on=0.1,
    )
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (3, 4, 2)
    assert layer.batch_first and layer.bidirectional and layer.peepholes and layer.bias
    assert layer.dropout == 0.1 and layer.leak == 0.0
    text = repr(layer)
    for part in (
        "3, 4",
        "num_layers=2",
        "batch_first=True",
        "dropout=0.1",
        "bidirectional=True",
        "peepholes=True",
        "r_on=0.1",
        "leak=0.0",
    ):
        assert part in text
    assert repr(PhasedLSTM(3, 4)) == "PhasedLSTM(3, 4)"


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, peepholes=True, learn_r_on=True)
    path = tmp_path / "layer.pt"
    torch.save(layer.state_dict(), path)
    other = PhasedLSTM(2, 4, peepholes=True, learn_r_on=True)
    other.load_state_dict(torch.load(path))
    x, times = torch.randn(5, 2, 2), irregular_times(5, 2)
    torch.testing.assert_close(other(x, times)[0], layer(x, times)[0])


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_inference_in_time_chunks_equals_one_pass(backend):
    # Without autograd the layer runs long sequences in chunks of steps to bound its memory.
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 6, 2, bidirectional=True, r_on=0.2, backend=backend).eval()
    length = 3 * phased_lstm.nn._base.EVAL_CHUNK + 17
    x = torch.randn(length, 3, 2)
    times = irregular_times(length, 3, scale=4000.0)
    lengths = torch.tensor([length, length - 300, 40])
    out, (h, c) = layer(x, times, lengths=lengths)  # parameters need grad: one pass
    with torch.no_grad():
        out_chunked, (h_chunked, c_chunked) = layer(x, times, lengths=lengths)
    torch.testing.assert_close(out_chunked, out.detach())
    torch.testing.assert_close(h_chunked, h.detach())
    torch.testing.assert_close(c_chunked, c.detach())
