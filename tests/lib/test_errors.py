"""Bad input gives a ValueError or TypeError naming the argument, the expectation and the value."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from phased_lstm import PhasedLSTM, PhasedLSTMCell
from phased_lstm.functional import time_gate


@pytest.fixture(scope="module")
def layer():
    return PhasedLSTM(3, 4, 2, bidirectional=True)


def x_and_times(length=6, batch=2):
    # Timestamps run forward within each sequence (the layer refuses them otherwise).
    return torch.randn(length, batch, 3), torch.rand(length, batch, dtype=torch.float64).cumsum(0)


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (
            lambda: (torch.randn(6, 2, 3, 1), None),
            ValueError,
            r"input must have shape \(L, N, H_in\) or \(L, H_in\), got \(6, 2, 3, 1\)",
        ),
        (
            lambda: (torch.randn(6, 2, 5), None),
            ValueError,
            r"input must have 3 features \(input_size\).*got 5",
        ),
        (
            lambda: (torch.randn(6, 2, 3, dtype=torch.float64), None),
            TypeError,
            r"input must have the parameters' dtype torch.float32, got torch.float64",
        ),
        (
            lambda: (None, torch.rand(5, 2)),
            ValueError,
            r"times must have shape \(L, N\) = \(6, 2\) like input, got \(5, 2\)",
        ),
        (
            lambda: (None, torch.rand(2, 6)),
            ValueError,
            r"times must have shape \(L, N\) = \(6, 2\) like input, got \(2, 6\)",
        ),
        (
            lambda: (None, torch.rand(5)),
            ValueError,
            r"times must have shape \(L,\) = \(6\) like input, got \(5\)",
        ),
        (lambda: (None, [0.0] * 6), TypeError, r"times must be a torch.Tensor, got list"),
        (
            lambda: (None, torch.zeros(6, 2, dtype=torch.complex64)),
            TypeError,
            r"times must be a real tensor",
        ),
        (
            lambda: (None, torch.tensor([[0.0, float("nan")]] * 6)),
            ValueError,
            r"times must be finite",
        ),
        (
            lambda: (None, torch.tensor([[0.0, float("inf")]] * 6)),
            ValueError,
            r"times must be finite",
        ),
    ],
    ids=[
        "input-rank",
        "input-features",
        "input-dtype",
        "times-length",
        "times-transposed",
        "times-shared-length",
        "times-list",
        "times-complex",
        "times-nan",
        "times-inf",
    ],
)
def test_bad_input_or_times(layer, make, error, pattern):
    x, times = x_and_times()
    bad_x, bad_times = make()
    with pytest.raises(error, match=pattern):
        layer(x if bad_x is None else bad_x, times if bad_times is None else bad_times)


@pytest.mark.parametrize(
    "lengths, error, pattern",
    [
        (torch.tensor([6, 7]), ValueError, r"lengths must lie in \[0, L\] = \[0, 6\], got .* 7"),
        (torch.tensor([-1, 3]), ValueError, r"lengths must lie in \[0, L\] = \[0, 6\], got .*-1"),
        (
            torch.tensor([6, 3, 2]),
            ValueError,
            r"lengths must have shape \(N,\) = \(2,\), got \(3\)",
        ),
        (
            torch.tensor([6.0, 3.0]),
            TypeError,
            r"lengths must be an integer tensor, got torch.float32",
        ),
        ("6,3", TypeError, r"lengths must be a torch.Tensor, got str"),
    ],
    ids=["too-long", "negative", "wrong-shape", "float", "string"],
)
def test_bad_lengths(layer, lengths, error, pattern):
    x, times = x_and_times()
    with pytest.raises(error, match=pattern):
        layer(x, times, lengths=lengths)


def test_nan_in_padding_is_allowed_but_not_in_valid_steps(layer):
    x, times = x_and_times()
    times[4:, 1] = float("nan")
    out, _ = layer(x, times, lengths=torch.tensor([6, 4]))
    assert bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="times must be finite"):
        layer(x, times, lengths=torch.tensor([6, 5]))


@pytest.mark.parametrize(
    "hx, error, pattern",
    [
        (torch.zeros(4, 2, 4), TypeError, r"hx must be a pair \(h_0, c_0\) of tensors, got Tensor"),
        (
            (torch.zeros(2, 2, 4), torch.zeros(4, 2, 4)),
            ValueError,
            r"hx h_0 must have shape \(4, 2, 4\), got \(2, 2, 4\)",
        ),
        (
            (torch.zeros(4, 2, 4), torch.zeros(4, 3, 4)),
            ValueError,
            r"hx c_0 must have shape \(4, 2, 4\), got \(4, 3, 4\)",
        ),
        (
            (torch.zeros(4, 2, 4, dtype=torch.float64), torch.zeros(4, 2, 4)),
            TypeError,
            r"hx h_0 must have dtype torch.float32 like input, got torch.float64",
        ),
    ],
    ids=["not-a-pair", "h0-shape", "c0-shape", "h0-dtype"],
)
def test_bad_hx(layer, hx, error, pattern):
    x, times = x_and_times()
    with pytest.raises(error, match=pattern):
        layer(x, times, hx)


def test_unbatched_with_lengths(layer):
    with pytest.raises(ValueError, match="lengths must be None for unbatched"):
        layer(torch.randn(6, 3), torch.rand(6), lengths=torch.tensor([3]))


def test_packed_times_must_match(layer):
    x, times = x_and_times()
    packed = pack_padded_sequence(x, torch.tensor([6, 4]))
    with pytest.raises(TypeError, match="times must be a PackedSequence packed like input"):
        layer(packed, times)
    other = pack_padded_sequence(times, torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="times must be packed exactly like input"):
        layer(packed, other)
    with pytest.raises(ValueError, match="lengths must be None when input is a PackedSequence"):
        layer(
            packed, pack_padded_sequence(times, torch.tensor([6, 4])), lengths=torch.tensor([6, 4])
        )


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"r_on": 0.0}, ValueError, r"r_on must lie in \(0, 1\], got 0.0"),
        ({"r_on": 1.5}, ValueError, r"r_on must lie in \(0, 1\], got 1.5"),
        ({"r_on": "0.05"}, TypeError, r"r_on must be a real number, got str"),
        ({"r_on": 1.0, "learn_r_on": True}, ValueError, r"r_on must be < 1 when learn_r_on=True"),
        (
            {"period_range": (0.0, 10.0)},
            ValueError,
            r"period_range must be positive: expected 0 < low <= high, got \(0.0, 10.0\)",
        ),
        ({"period_range": (-1.0, 10.0)}, ValueError, r"period_range must be positive"),
        (
            {"period_range": (10.0, 1.0)},
            ValueError,
            r"period_range must have low <= high, got \(10.0, 1.0\)",
        ),
        ({"period_range": 5.0}, TypeError, r"period_range must be a pair \(low, high\), got 5.0"),
        ({"shift_range": (3.0, 1.0)}, ValueError, r"shift_range must have low <= high"),
        ({"leak": -0.1}, ValueError, r"leak must lie in \[0, 1\), got -0.1"),
        ({"dropout": 2.0}, ValueError, r"dropout must lie in \[0, 1\], got 2.0"),
        ({"hidden_size": 0}, ValueError, r"hidden_size must be >= 1, got 0"),
        ({"num_layers": 1.5}, TypeError, r"num_layers must be an int, got float"),
        ({"backend": "cuda"}, ValueError, r"backend must be one of \['auto', 'reference'"),
        ({"peepholes": 1}, TypeError, r"peepholes must be a bool, got int"),
        ({"grad_clip": 0.0}, ValueError, r"grad_clip must be None or > 0, got 0.0"),
        ({"grad_clip": "10"}, TypeError, r"grad_clip must be a real number, got str"),
        ({"grad_clip": math.inf}, ValueError, r"grad_clip must be finite, got inf"),
    ],
    ids=lambda v: "-".join(f"{k}={val}" for k, val in v.items()) if isinstance(v, dict) else "",
)
def test_bad_constructor_arguments(kwargs, error, pattern):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(error, match=pattern):
        PhasedLSTM(**args)


def test_cell_bad_input():
    cell = PhasedLSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"x must have 3 features \(input_size\), got 2"):
        cell(torch.randn(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must have shape \(N,\) = \(2\) like input, got \(3\)"):
        cell(torch.randn(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"hx h_0 must have shape \(2, 4\), got \(1, 4\)"):
        cell(torch.randn(2, 3), torch.zeros(2), (torch.zeros(1, 4), torch.zeros(1, 4)))
    with pytest.raises(TypeError, match=r"t must be a real number, got str"):
        cell(torch.randn(2, 3), "now")
    with pytest.raises(ValueError, match=r"t must be finite"):
        cell(torch.randn(2, 3), float("nan"))


def test_time_gate_bad_arguments():
    with pytest.raises(TypeError, match="times must be a torch.Tensor, got list"):
        time_gate([1.0], torch.ones(1), torch.ones(1), torch.ones(1))
    with pytest.raises(TypeError, match="period must be a floating-point torch.Tensor, got float"):
        time_gate(torch.ones(1), 1.0, torch.ones(1), torch.ones(1))
