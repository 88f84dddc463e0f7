"""Time runs forward: timestamps that decrease within a sequence are refused everywhere (layer,
packed input, update_fraction, the tuning helpers, the stream) with the sample and step named,
padding is never read, and the helpers say when the other layout would have run forward.
Integer timestamps are read as float64."""

import statistics

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from phased_lstm import PhasedLSTM, suggest_period_range, time_scales

f64 = torch.float64


def forward_times(length, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(length, batch, generator=gen, dtype=f64).mul(3).add(0.1).cumsum(0)


def test_layer_names_the_first_sample_and_step_where_time_goes_back():
    layer = PhasedLSTM(2, 4)
    times = forward_times(6, 3)
    times[4, 2] = times[3, 2] - 1.0  # sample 2 goes back at step 4
    times[5, 1] = times[4, 1] - 0.5  # sample 1 goes back at step 5: the first sample named
    with pytest.raises(ValueError, match=r"times must not decrease.*sample 1 goes back at step 5"):
        layer(torch.randn(6, 3, 2), times)
    # batch_first: the same sample and step, in the user's (N, L) terms.
    layer = PhasedLSTM(2, 4, batch_first=True)
    with pytest.raises(ValueError, match=r"sample 1 goes back at step 5: "):
        layer(torch.randn(3, 6, 2), times.T.contiguous())


def test_equal_times_and_going_back_in_padding_are_fine():
    layer = PhasedLSTM(2, 4)
    times = forward_times(5, 2)
    times[2, 0] = times[1, 0]  # equal is not going back
    times[4, 1] = -100.0  # padding of sample 1 (length 4)
    out, _ = layer(torch.randn(5, 2, 2), times, lengths=torch.tensor([5, 4]))
    assert torch.isfinite(out).all()
    # Inside the valid steps it counts.
    times[3, 1] = times[2, 1] - 1e-9
    with pytest.raises(ValueError, match="sample 1 goes back at step 3"):
        layer(torch.randn(5, 2, 2), times, lengths=torch.tensor([5, 4]))


def test_packed_times_are_checked_per_sequence():
    layer = PhasedLSTM(2, 4)
    lengths = torch.tensor([5, 3])
    times = forward_times(5, 2)
    times[4, 1] = -5.0  # padding
    x = torch.randn(5, 2, 2)
    packed_x = pack_padded_sequence(x, lengths)
    layer(packed_x, pack_padded_sequence(times, lengths))
    times[2, 1] = times[1, 1] - 0.25
    with pytest.raises(ValueError, match="sample 1 goes back at step 2"):
        layer(packed_x, pack_padded_sequence(times, lengths))


def test_update_fraction_hints_at_the_layout():
    layer = PhasedLSTM(2, 4).eval()
    times = forward_times(30, 5)  # (L, N), forward along L
    assert 0 <= layer.update_fraction(times) <= 1
    with pytest.raises(ValueError, match=r"laid out \(N, L\), pass batch_first=True"):
        layer.update_fraction(times.T.contiguous())


def test_suggest_period_range_refuses_the_wrong_layout_and_says_which_is_right():
    # The case: (N, L) timestamps of 45-event sequences, batch_first left out.
    gen = torch.Generator().manual_seed(3)
    gaps = torch.rand(8, 45, generator=gen, dtype=f64) * 2.0
    starts = torch.rand(8, 1, generator=gen, dtype=f64) * 50
    times = starts + gaps.cumsum(1)  # (N, L)
    with pytest.raises(ValueError, match=r"times must not decrease.*pass batch_first=True"):
        suggest_period_range(times)
    with pytest.raises(ValueError, match="pass batch_first=True"):
        time_scales(times)
    # Read right, the range comes from each sequence along its own time axis.
    durations = [float(row[-1] - row[0]) for row in times]
    mean_gaps = [d / 44 for d in durations]
    low, high = suggest_period_range(times, batch_first=True, r_on=0.05)
    assert high == pytest.approx(statistics.median(durations), rel=1e-12)
    assert low == pytest.approx(statistics.median(mean_gaps) / 0.05, rel=1e-12)


def test_helpers_without_the_hint_when_no_layout_runs_forward():
    times = torch.tensor([[0.0, -1.0], [1.0, -2.0], [2.0, -3.0]], dtype=f64)  # (L, N)
    with pytest.raises(ValueError, match="sample 1 goes back at step 1") as error:
        time_scales(times)
    assert "batch_first" not in str(error.value)


def test_stream_refuses_an_event_earlier_than_the_last():
    layer = PhasedLSTM(3, 4, num_layers=2).eval()
    stream = layer.stream(batch_size=2)
    stream(torch.randn(2, 3), 1.0)
    stream(torch.randn(2, 3), torch.tensor([1.0, 2.0], dtype=f64))
    state = [s.clone() for s in stream.state]
    with pytest.raises(
        ValueError, match=r"t must not go back in a stream.*sample 1 got 1.5 after 2"
    ):
        stream(torch.randn(2, 3), torch.tensor([1.5, 1.5], dtype=f64))
    going_back = r"t must not go back in a stream \(time runs forward\), got 1.9 after 2;"
    with pytest.raises(ValueError, match=going_back):
        stream(torch.randn(2, 3), 1.9)
    assert all(torch.equal(a, b) for a, b in zip(state, stream.state, strict=True))
    # Several events in one call: within the call too.
    steps = torch.tensor([[3.0, 3.0], [2.5, 4.0]], dtype=f64)
    with pytest.raises(ValueError, match="sample 0 goes back at step 1"):
        stream(torch.randn(2, 2, 3), steps)
    stream(torch.randn(2, 3), 2.0)  # equal to the latest: fine
    stream.reset()
    stream(torch.randn(2, 3), 0.0)  # a new sequence starts anywhere


def test_a_refused_call_does_not_move_the_streams_clock():
    layer = PhasedLSTM(3, 4).eval()
    stream = layer.stream()
    with pytest.raises(ValueError):
        stream(torch.randn(5), 10.0)  # wrong input size: refused after the time check
    stream(torch.randn(3), 1.0)  # so 1.0 is not "earlier than 10"


def test_integer_timestamps_read_as_float64():
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 4, period_range=(2.0, 20.0))
    x = torch.randn(7, 2, 2)
    times = torch.tensor([[0, 1], [3, 4], [4, 9], [10, 12], [15, 13], [21, 30], [22, 31]])
    out_int, (h_int, _) = layer(x, times)
    out_f64, (h_f64, _) = layer(x, times.to(f64))
    assert torch.equal(out_int, out_f64) and torch.equal(h_int, h_f64)
