"""TimeGateAdam: Adam's step on the period and r_on in their own units, against Adam's formula."""

import copy

import pytest
import torch
from torch import nn

from phased_lstm import PhasedLSTM, PhasedLSTMCell
from phased_lstm.optim import TimeGateAdam


def padded_batch(n=6, steps=30, seed=0):
    """Random values and times with lengths from 1 to ``steps``."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(1, steps, n).round().long()
    values = torch.randn(steps, n, 1, generator=generator, dtype=torch.float64)
    times = torch.rand(steps, n, generator=generator, dtype=torch.float64).cumsum(0)
    return values, times, lengths


def first_adam_step(before, grad, lr):
    # Adam's first step, bias-corrected moments g and g^2: lr * g / (|g| + eps), eps = 1e-8.
    return before - lr * grad / (grad.abs() + 1e-8)


def backward(model, seed=0):
    values, times, lengths = padded_batch(seed=seed)
    out, _ = model(values, times, lengths=lengths)
    out.pow(2).sum().backward()


def test_time_gate_adam_steps_period_and_r_on_in_their_own_units():
    # TimeGateAdam takes Adam's first step, lr * sign(gradient), on the period and on r_on, as
    # the authors' code did; every other parameter moves as under torch.optim.Adam.
    torch.manual_seed(0)
    layer = PhasedLSTM(1, 6, r_on=0.05, learn_r_on=True, leak=0.05).double()
    reference = copy.deepcopy(layer)
    lr = 1e-2
    for model in (layer, reference):
        backward(model)
    period, r_on = layer.period_l0.detach().clone(), layer.r_on_l0.detach().clone()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    TimeGateAdam(layer.named_parameters(), lr=lr).step()
    torch.optim.Adam(reference.parameters(), lr=lr).step()
    # The gradient in the direct units: d loss / d period = d loss / d log_period / period.
    for now, before, grad in (
        (layer.period_l0, period, grads["log_period_l0"] / period),
        (layer.r_on_l0, r_on, grads["logit_r_on_l0"] / (r_on * (1 - r_on))),
    ):
        torch.testing.assert_close(now, first_adam_step(before, grad, lr))
    for name, param in layer.named_parameters():
        if not name.startswith(("log_period", "logit_r_on")):
            torch.testing.assert_close(param, getattr(reference, name), msg=name)
    # On the stored values the same step is relative: the period would move by lr * period.
    assert not torch.allclose(layer.period_l0, reference.period_l0)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.rnn = PhasedLSTM(
            1, 5, num_layers=2, bidirectional=True, learn_r_on=True, leak=0.05
        ).double()
        self.head = nn.Linear(10, 2).double()

    def forward(self, values, times, lengths=None):
        out, _ = self.encoder.rnn(values, times, lengths=lengths)
        return self.head(out), None


def test_groups_of_a_whole_model_find_every_layer_and_direction_by_name():
    torch.manual_seed(0)
    model = Classifier()
    reference = copy.deepcopy(model)
    named = list(model.named_parameters())
    gate = [(n, p) for n, p in named if n.rsplit(".", 1)[-1].startswith(("log_", "logit_"))]
    rest = [(n, p) for n, p in named if (n, p) not in gate]
    assert {n for n, _ in gate} >= {
        "encoder.rnn.log_period_l1_reverse",
        "encoder.rnn.logit_r_on_l0",
    }
    backward(model)
    backward(reference)
    rnn = model.encoder.rnn
    before = {
        s: (getattr(rnn, "period" + s).detach().clone(), getattr(rnn, "r_on" + s).detach().clone())
        for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse")
    }
    grads = {n: p.grad.clone() for n, p in named}
    optimizer = TimeGateAdam(
        [{"params": gate, "lr": 0.02}, {"params": rest, "weight_decay": 0.1}], lr=0.01
    )
    optimizer.step()
    torch.optim.Adam(
        [
            {"params": [p for n, p in reference.named_parameters() if n in dict(gate)], "lr": 0.02},
            {"params": [p for n, p in reference.named_parameters() if n in dict(rest)]},
        ],
        lr=0.01,
        weight_decay=0.1,
    ).step()
    for suffix, (period, r_on) in before.items():
        g_period = grads["encoder.rnn.log_period" + suffix] / period
        g_r_on = grads["encoder.rnn.logit_r_on" + suffix] / (r_on * (1 - r_on))
        torch.testing.assert_close(
            getattr(rnn, "period" + suffix), first_adam_step(period, g_period, 0.02)
        )
        torch.testing.assert_close(
            getattr(rnn, "r_on" + suffix), first_adam_step(r_on, g_r_on, 0.02)
        )
    ref = dict(reference.named_parameters())
    for name, param in rest:
        # The second group's weight decay and the default lr, as in torch.optim.Adam.
        torch.testing.assert_close(param, ref[name], msg=name)


def test_frozen_gate_parameters_stay_bit_for_bit():
    torch.manual_seed(0)
    layer = PhasedLSTM(1, 4, learn_period=False, learn_r_on=True, leak=0.05).double()
    assert "log_period_l0" in dict(layer.named_buffers())
    layer.logit_r_on_l0.requires_grad_(False)  # frozen by the user: no gradient, no step
    log_period = layer.log_period_l0.clone()
    logit = layer.logit_r_on_l0.detach().clone()
    shift = layer.shift_l0.detach().clone()
    optimizer = TimeGateAdam(layer.named_parameters(), lr=0.1)
    for seed in range(3):
        optimizer.zero_grad()
        backward(layer, seed)
        optimizer.step()
    # A log / exp round trip would move these by rounding: they must not move at all.
    assert torch.equal(layer.log_period_l0, log_period)
    assert torch.equal(layer.logit_r_on_l0, logit)
    assert not torch.equal(layer.shift_l0, shift)


def test_state_dict_round_trips_and_resumes_the_same_run():
    torch.manual_seed(0)
    model_a = PhasedLSTM(1, 4, learn_r_on=True, leak=0.05).double()
    optimizer = TimeGateAdam(model_a.named_parameters(), lr=0.01)
    for seed in range(2):
        optimizer.zero_grad()
        backward(model_a, seed)
        optimizer.step()
    state = copy.deepcopy(optimizer.state_dict())
    model_b = copy.deepcopy(model_a)
    resumed = TimeGateAdam(model_b.named_parameters(), lr=0.5)  # lr comes from the state
    resumed.load_state_dict(state)
    assert resumed.param_groups[0]["lr"] == 0.01
    for model, opt in ((model_a, optimizer), (model_b, resumed)):
        opt.zero_grad()
        backward(model, seed=5)
        opt.step()
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b), name
    # The moments are kept in the direct units: after one step exp_avg = (1 - beta1) g.
    layer = PhasedLSTM(1, 4).double()
    backward(layer)
    grad = layer.log_period_l0.grad / layer.period_l0.detach()
    opt = TimeGateAdam(layer.named_parameters())
    opt.step()
    torch.testing.assert_close(opt.state[layer.log_period_l0]["exp_avg"], 0.1 * grad)


def test_a_cell_closure_and_step_hooks():
    torch.manual_seed(0)
    cell = PhasedLSTMCell(1, 3, learn_r_on=True, leak=0.05).double()
    with torch.no_grad():  # open at t = 0 and 0.1: phases 0.001 and 0.011 < r_on / 2
        cell.log_period.fill_(torch.log(torch.tensor(10.0)))
        cell.shift.fill_(-0.01)
    torch.optim.Adam(nn.Linear(1, 1).parameters())  # hooks Adam.step too
    optimizer = TimeGateAdam(cell.named_parameters(), lr=0.01)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    r_on = cell.r_on.detach().clone()

    def closure():
        optimizer.zero_grad()
        h, c = cell(torch.ones(2, 1, dtype=torch.float64), torch.tensor([0.0, 0.1]))
        loss = (h + c).pow(2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert torch.is_tensor(loss) and calls == ["pre", "post"]
    torch.testing.assert_close((cell.r_on - r_on).abs(), torch.full_like(r_on, 0.01))


def test_a_step_past_the_domain_stays_finite():
    layer = PhasedLSTM(1, 4, learn_r_on=True, leak=0.05).double()
    optimizer = TimeGateAdam(layer.named_parameters(), lr=100.0)
    backward(layer)
    optimizer.step()
    for name in ("log_period_l0", "logit_r_on_l0"):
        assert bool(torch.isfinite(getattr(layer, name)).all()), name
    assert bool(((layer.r_on_l0 > 0) & (layer.r_on_l0 < 1)).all())


def test_plain_tensors_are_refused_with_the_reason():
    layer = PhasedLSTM(1, 4)
    with pytest.raises(TypeError, match=r"params must be \(name, parameter\) pairs"):
        TimeGateAdam(layer.parameters())
    with pytest.raises(TypeError, match="params must be"):
        TimeGateAdam([{"params": list(layer.parameters())}])


def test_the_experiments_name_is_the_library_class():
    from phased_lstm_experiments.optim import TimeGateAdam as FromExperiments

    assert FromExperiments is TimeGateAdam
