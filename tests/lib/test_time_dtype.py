"""float32 timestamps too coarse for their spacing: one warning that says what and what to
do; nothing for float64 or for float32 times that resolve their gaps."""

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from phased_lstm import PhasedLSTM

f32, f64 = torch.float32, torch.float64


def spaced(length, batch, offset, gap=1.0, dtype=f32):
    steps = torch.full((length, batch), gap, dtype=f64).cumsum(0)
    return (offset + steps).to(dtype)


def test_float32_times_near_a_million_warn_once_with_the_facts_and_the_fix():
    layer = PhasedLSTM(2, 4)
    x = torch.randn(20, 2, 2)
    with pytest.warns(UserWarning) as record:
        layer(x, spaced(20, 2, 1e6))
    messages = [str(w.message) for w in record if "holds steps" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    for part in (
        "times is float32",
        "magnitudes up to 1e+06",
        "steps of 0.0625",
        "smallest gap between consecutive timestamps (1)",
        "float64",
        "subtract an offset",
    ):
        assert part in message, part
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x, spaced(20, 2, 1e6))  # once per module


def test_collapsed_timestamps_at_a_billion_are_reported():
    layer = PhasedLSTM(2, 4)
    with pytest.warns(UserWarning, match=r"up to 1e\+09, where float32 holds steps of 64"):
        layer(torch.randn(200, 1, 2), spaced(200, 1, 1e9))


@pytest.mark.parametrize(
    "times",
    [spaced(30, 2, 0.0, gap=0.5), spaced(30, 2, 1e9, dtype=f64), spaced(30, 2, 1e4, gap=5.0)],
    ids=["f32-small", "f64-1e9", "f32-1e4-gap5"],
)
def test_times_that_resolve_their_gaps_do_not_warn(times):
    layer = PhasedLSTM(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(30, 2, 2), times)


def test_padding_is_not_counted_and_packed_sequences_are_checked():
    layer = PhasedLSTM(2, 4)
    times = spaced(10, 2, 0.0)
    times[6:, 1] = 1e9  # garbage in the padding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(10, 2, 2), times, lengths=torch.tensor([10, 6]))
    lengths = torch.tensor([10, 6])
    packed_x = pack_padded_sequence(torch.randn(10, 2, 2), lengths)
    packed_t = pack_padded_sequence(spaced(10, 2, 3e6), lengths)
    with pytest.warns(UserWarning, match=r"times is float32 with magnitudes up to 3e\+06"):
        layer(packed_x, packed_t)
