"""The modules' settings, derived gate values and what dir() shows: one dataclass, float64
values, names that an IDE and dir() can find, and the historical names still working."""

import dataclasses

import pytest
import torch

from phased_lstm import PhasedLSTM, PhasedLSTMCell
from phased_lstm.modules import TimeGateSettings

f64 = torch.float64


def test_defaults_are_the_constructors_and_the_repr_shows_what_differs():
    assert TimeGateSettings() == PhasedLSTM(2, 3).settings == PhasedLSTMCell(2, 3).settings
    settings = TimeGateSettings(r_on=0.2, leak=0.0, grad_clip=10.0, backend="reference")
    assert settings.repr_parts() == ["r_on=0.2", "leak=0.0", "grad_clip=10", "backend='reference'"]
    cell = PhasedLSTMCell(2, 3, r_on=0.2, leak=0.0, learn_shift=False)
    assert repr(cell) == "PhasedLSTMCell(2, 3, r_on=0.2, leak=0.0, learn_shift=False)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.leak = 0.5


def test_settings_validate_like_the_constructor():
    with pytest.raises(ValueError, match=r"r_on must lie in \(0, 1\], got 2.0"):
        TimeGateSettings(r_on=2.0)
    layer = PhasedLSTM(2, 3)
    with pytest.raises(ValueError, match=r"leak must lie in \[0, 1\), got 1.5"):
        layer.leak = 1.5
    with pytest.raises(AttributeError, match="peepholes is fixed at construction"):
        layer.peepholes = True
    layer.period_range = (1.0, 2.0)
    layer.reset_parameters()
    assert float(layer.time_gate_values().period.detach().max()) <= 2.0 + 1e-12


def test_time_gate_values_are_float64_and_match_the_stored_parameters():
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 5, 2, bidirectional=True, learn_r_on=True, r_on=0.3)
    period, shift, r_on = layer.time_gate_values(layer=1, reverse=True)
    assert period.dtype == shift.dtype == r_on.dtype == f64
    torch.testing.assert_close(period, layer.log_period_l1_reverse.detach().double().exp())
    torch.testing.assert_close(shift, layer.shift_l1_reverse.detach().double())
    torch.testing.assert_close(r_on, torch.full((5,), 0.3, dtype=f64))
    r_on.sum().backward()  # differentiable, to the stored logit
    assert layer.logit_r_on_l1_reverse.grad is not None
    # The historical names, in the parameters' dtype.
    assert layer.period_l1_reverse.dtype == torch.float32
    torch.testing.assert_close(layer.period_l1_reverse, period.float())
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\], got 2"):
        layer.time_gate_values(layer=2)
    with pytest.raises(ValueError, match="reverse must be a bool"):
        PhasedLSTM(2, 3).time_gate_values(reverse=True)


def test_derived_names_are_listed_by_dir_and_unknown_names_still_fail():
    layer = PhasedLSTM(2, 3, 2, bidirectional=True)
    names = dir(layer)
    for name in ("period_l0", "r_on_l1", "period_l1_reverse", "time_gate_values", "settings"):
        assert name in names
    assert "period_l2" not in names
    with pytest.raises(AttributeError):
        layer.period_l2  # noqa: B018
    cell = PhasedLSTMCell(2, 3)
    assert {"period", "r_on", "time_gate_values"} <= set(dir(cell))
    torch.testing.assert_close(cell.period.double(), cell.time_gate_values().period)
