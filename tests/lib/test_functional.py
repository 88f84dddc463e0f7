"""The time gate against hand-computed values, float64 gradcheck and its properties."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from phased_lstm.functional import time_gate

f64 = torch.float64


def gate1(t, period, shift, r_on, leak=0.0, dtype=f64, times_dtype=f64):
    k = time_gate(
        torch.tensor([t], dtype=times_dtype),
        torch.tensor([period], dtype=dtype),
        torch.tensor([shift], dtype=dtype),
        torch.tensor([r_on], dtype=dtype),
        leak,
    )
    return float(k.reshape(()))


# period 10, shift 2, r_on 0.2: the gate opens at t = 2, peaks at t = 3, closes at t = 4.
@pytest.mark.parametrize(
    "t, expected",
    [
        (2.0, 0.0),  # phase 0: start of the opening ramp
        (2.5, 0.5),  # phase 0.05
        (3.0, 1.0),  # phase 0.1 = r_on / 2: the peak, first point of the closing ramp
        (3.5, 0.5),  # phase 0.15
        (4.0, 0.2 * 1e-3),  # phase 0.2 = r_on: closed, the leak times the phase
        (9.0, 0.7 * 1e-3),  # phase 0.7
        (12.0, 0.0),  # one period later
        (-7.0, 1.0),  # t - s = -9: floor-mod gives 1, phase 0.1 (fmod would give -0.9)
        (-7.5, 0.5),  # t - s = -9.5: phase 0.05
        (-18.0, 0.0),  # t - s = -20: phase 0
    ],
)
def test_gate_hand_values(t, expected):
    assert gate1(t, 10.0, 2.0, 0.2, leak=1e-3) == pytest.approx(expected, abs=1e-12)


def test_gate_leak_zero_is_exactly_closed():
    assert gate1(9.0, 10.0, 2.0, 0.2, leak=0.0) == 0.0


def test_gate_phase_in_float64_for_large_times():
    # t = 1e6 + 0.3 with period 1 and r_on 0.8: phase 0.3, k = 0.6 / 0.8 = 0.75.
    # float32 arithmetic would round t to 1000000.3125 and give 0.78125.
    k = gate1(1e6 + 0.3, 1.0, 0.0, 0.8, dtype=torch.float32, times_dtype=f64)
    assert k == pytest.approx(0.75, abs=1e-6)
    assert time_gate(torch.tensor([1e6 + 0.3], dtype=f64), *(torch.ones(1),) * 3).dtype == (
        torch.float32
    )


def test_gate_large_negative_times():
    # t - s = -1e6 - 0.25, period 1: floor-mod gives 0.75.
    assert gate1(-1e6 - 0.25, 1.0, 0.0, 1.0) == pytest.approx(2 - 2 * 0.75, abs=1e-9)


def test_gate_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    times = (torch.rand(7, 3, generator=gen, dtype=f64) - 0.5) * 200
    period = (torch.rand(4, generator=gen, dtype=f64) * 5 + 1).requires_grad_()
    shift = (torch.randn(4, generator=gen, dtype=f64) * 3).requires_grad_()
    r_on = (torch.rand(4, generator=gen, dtype=f64) * 0.5 + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, s, r: time_gate(times, p, s, r, 1e-2), (period, shift, r_on)
    )


def test_gate_period_gradient_is_minus_floor():
    # Opening ramp: k = 2 phi / r_on with phi = (x - tau floor(x / tau)) / tau, x = t - s, so
    # dk/dtau = 2 / r_on * (-floor(x / tau) / tau - (x mod tau) / tau**2), dk/ds = -2 / (r_on tau).
    t, s, tau, r = 123.4, 0.2, 3.0, 0.5
    period = torch.tensor([tau], dtype=f64, requires_grad=True)
    shift = torch.tensor([s], dtype=f64, requires_grad=True)
    k = time_gate(torch.tensor(t, dtype=f64), period, shift, torch.tensor([r], dtype=f64))
    k.sum().backward()
    x = t - s
    mod = x - tau * math.floor(x / tau)
    assert mod / tau < r / 2  # the opening ramp
    assert float(period.grad) == pytest.approx(2 / r * (-math.floor(x / tau) / tau - mod / tau**2))
    assert float(shift.grad) == pytest.approx(-2 / (r * tau))


times_st = st.floats(-1e6, 1e6, allow_nan=False)
period_st = st.floats(0.01, 1000.0)
r_on_st = st.floats(0.001, 1.0)


@settings(max_examples=200, deadline=None)
@given(times_st, period_st, st.floats(-1e3, 1e3), r_on_st, st.floats(0.0, 0.999))
def test_gate_bounded(t, period, shift, r_on, leak):
    k = gate1(t, period, shift, r_on, leak)
    assert 0.0 <= k <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e3, 1e3), st.integers(-8, 8), st.floats(-1e3, 1e3), r_on_st, st.integers(-5, 5))
def test_gate_periodic(t, log2_period, shift, r_on, cycles):
    # A power-of-two period makes t + cycles * tau exact in float64 for these magnitudes.
    period = 2.0**log2_period
    x = t - shift
    phase = (x - period * math.floor(x / period)) / period
    # The gate jumps where the phase wraps (leak * phase to 0) and where it closes (0 to
    # leak * r_on at phase = r_on): rounding may fall on either side of both.
    assume(1e-6 < phase < 1 - 1e-6)
    assume(abs(phase - r_on) > 1e-6)
    a = gate1(t, period, shift, r_on, 1e-3)
    b = gate1(t + cycles * period, period, shift, r_on, 1e-3)
    assert a == pytest.approx(b, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(times_st, period_st, st.floats(-1e3, 1e3), r_on_st)
def test_gate_zero_outside_open_phase_at_eval(t, period, shift, r_on):
    x = t - shift
    phase = (x - period * math.floor(x / period)) / period
    k = gate1(t, period, shift, r_on, 0.0)
    # Away from the boundary (where float rounding decides), closed means exactly zero.
    if phase > r_on * (1 + 1e-9) and phase < 1 - 1e-9:
        assert k == 0.0
    if 1e-9 < phase < r_on * (1 - 1e-9):
        assert k > 0.0
