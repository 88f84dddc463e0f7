"""merge_streams and merge_stream_batch against hand-built cases and a plain Python merge."""

import doctest
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phased_lstm.data.streams
from phased_lstm import PhasedLSTM
from phased_lstm.data import merge_stream_batch, merge_streams


def reference_merge(streams, hold):
    """Event by event in plain Python: sort by (time, stream, position), then write each row
    with the latest value of every stream seen so far. Values must be 2-D arrays."""
    widths = [values.shape[1] for _, values in streams]
    events = sorted(
        (float(t), s, k) for s, (times, _) in enumerate(streams) for k, t in enumerate(times)
    )
    latest = [None] * len(streams)
    times, rows = [], []
    for t, s, k in events:
        latest[s] = [float(x) for x in streams[s][1][k]]
        row = []
        for other, width in enumerate(widths):
            fresh = latest[other] is not None and (hold or other == s)
            row += latest[other] if fresh else [0.0] * width
        row += [1.0 if other == s else 0.0 for other in range(len(streams))]
        times.append(t)
        rows.append(row)
    return times, rows


def test_docstring_examples():
    result = doctest.testmod(phased_lstm.data.streams)
    assert result.attempted > 0 and result.failed == 0


def test_two_rates_with_an_offset_hold_and_no_hold():
    audio_values = torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0], [4.0, -4.0]])
    audio = (torch.tensor([0.0, 10.0, 20.0, 30.0]), audio_values)
    video = (torch.tensor([5.0, 25.0]), torch.tensor([7.0, 9.0]))  # 1-D: one feature
    times, values = merge_streams([audio, video])
    assert times.dtype == torch.float64 and values.dtype == torch.float32
    assert times.tolist() == [0.0, 5.0, 10.0, 20.0, 25.0, 30.0]
    assert values.tolist() == [
        # audio slot, video slot, indicators (audio, video)
        [1.0, -1.0, 0.0, 1.0, 0.0],
        [1.0, -1.0, 7.0, 0.0, 1.0],
        [2.0, -2.0, 7.0, 1.0, 0.0],
        [3.0, -3.0, 7.0, 1.0, 0.0],
        [3.0, -3.0, 9.0, 0.0, 1.0],
        [4.0, -4.0, 9.0, 1.0, 0.0],
    ]
    times, values = merge_streams([audio, video], hold=False)
    assert values.tolist() == [
        [1.0, -1.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 7.0, 0.0, 1.0],
        [2.0, -2.0, 0.0, 1.0, 0.0],
        [3.0, -3.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 9.0, 0.0, 1.0],
        [4.0, -4.0, 0.0, 1.0, 0.0],
    ]


def test_ties_stay_separate_rows_in_stream_order():
    first = ([1.0, 2.0, 2.0], [[10.0], [11.0], [12.0]])
    second = ([2.0], [[20.0]])
    third = ([0.0, 2.0], [[30.0], [31.0]])
    times, values = merge_streams([first, second, third])
    assert times.tolist() == [0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert values.tolist() == [
        [0.0, 0.0, 30.0, 0.0, 0.0, 1.0],
        [10.0, 0.0, 30.0, 1.0, 0.0, 0.0],
        [11.0, 0.0, 30.0, 1.0, 0.0, 0.0],
        [12.0, 0.0, 30.0, 1.0, 0.0, 0.0],
        [12.0, 20.0, 30.0, 0.0, 1.0, 0.0],
        [12.0, 20.0, 31.0, 0.0, 0.0, 1.0],
    ]


def test_empty_streams_keep_their_slot_at_zero():
    empty = (np.zeros(0), np.zeros((0, 2)))
    one = (np.array([3.0, 4.0]), np.array([[5.0], [6.0]]))
    times, values = merge_streams([empty, one, (torch.zeros(0), torch.zeros(0))])
    assert times.tolist() == [3.0, 4.0]
    # Slots of widths 2, 1 and 1 (1-D values), then three indicators.
    assert values.tolist() == [[0.0, 0.0, 5.0, 0.0, 0.0, 1.0, 0.0],
                               [0.0, 0.0, 6.0, 0.0, 0.0, 1.0, 0.0]]  # fmt: skip
    times, values = merge_streams([empty, empty])
    assert times.shape == (0,) and values.shape == (0, 6)


def test_numpy_torch_and_list_inputs_agree_and_float64_times_are_kept():
    rng = np.random.default_rng(0)
    t_a = 1e6 + np.cumsum(rng.uniform(0.0, 1e-6, 7))  # float32 could not hold these apart
    t_b = np.sort(rng.uniform(t_a[0], t_a[-1], 3))
    v_a, v_b = rng.normal(size=(7, 3)), rng.normal(size=(3, 2)).astype(np.float32)
    from_numpy = merge_streams([(t_a, v_a), (t_b, v_b)])
    from_torch = merge_streams([(torch.from_numpy(t_a), torch.from_numpy(v_a)),
                                (torch.from_numpy(t_b), torch.from_numpy(v_b))])  # fmt: skip
    from_lists = merge_streams([(t_a.tolist(), v_a.tolist()), (list(t_b), v_b.tolist())])
    for other in (from_torch, from_lists):
        assert torch.equal(other[0], from_numpy[0]) and torch.equal(other[1], from_numpy[1])
    assert sorted(from_numpy[0].tolist()) == sorted([*t_a, *t_b])  # bit for bit
    # Integer (microsecond) timestamps and float32 ones become float64.
    times, _ = merge_streams([(np.array([2, 1_000_000_001], dtype=np.int64), [1.0, 2.0])])
    assert times.dtype == torch.float64 and times.tolist() == [2.0, 1_000_000_001.0]
    times, _ = merge_streams([(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 2.0]))])
    assert times.dtype == torch.float64


@settings(max_examples=60, deadline=None)
@given(data=st.data(), hold=st.booleans())
def test_matches_a_plain_python_merge(data, hold):
    n_streams = data.draw(st.integers(1, 4))
    streams = []
    for _ in range(n_streams):
        n = data.draw(st.integers(0, 6))
        width = data.draw(st.integers(1, 3))
        # Few distinct times, so that ties across and within streams are common.
        times = sorted(data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
        values = np.arange(n * width, dtype=float).reshape(n, width) + 100 * len(streams) + 1
        streams.append((np.array(times, dtype=float), values))
    times, values = merge_streams(streams, hold=hold)
    ref_times, ref_rows = reference_merge(streams, hold)
    assert times.tolist() == ref_times
    assert values.shape == (len(ref_times), sum(v.shape[1] for _, v in streams) + n_streams)
    assert values.tolist() == ref_rows


@pytest.mark.parametrize(
    "streams, error, message",
    [
        ([], ValueError, r"streams must hold at least one \(times, values\) stream, got none"),
        ("ab", TypeError, r"streams must be a sequence of \(times, values\) pairs, got str"),
        ([([0.0], [1.0]), [0.0]], TypeError, r"streams\[1\] must be a \(times, values\) pair"),
        ([([[0.0, 1.0]], [1.0])], ValueError, r"streams\[0\] times must be 1-D, \(n,\), got "
         r"shape \(1, 2\)"),
        ([([0.0], [1.0]), ([0.0], np.zeros((1, 2, 2)))], ValueError,
         r"streams\[1\] values must have shape \(n, d\) or \(n,\), got \(1, 2, 2\)"),
        ([([0.0, 1.0, 2.0], np.zeros((2, 4)))], ValueError,
         r"streams\[0\] values must have one row per timestamp: 3 times, got 2 rows"),
        ([([0.0], [1.0]), ([0.0, np.nan], [1.0, 2.0])], ValueError,
         r"streams\[1\] times must be finite, got nan at event 1"),
        ([([0.0, np.inf], [1.0, 2.0])], ValueError, r"streams\[0\] times must be finite, got inf"),
        ([([0.0], [1.0]), ([0.0], [1.0]), ([1.0, 3.0, 2.0], [1.0, 2.0, 3.0])], ValueError,
         r"streams\[2\] times must be non-decreasing \(sorted\), got times\[2\] = 2.0 after "
         r"times\[1\] = 3.0"),
        ([(torch.tensor([0j]), [1.0])], TypeError, r"streams\[0\] times must hold real numbers"),
        ([([0.0], np.array([True]))], TypeError, r"streams\[0\] values must hold real numbers"),
        ([([0.0, 1.0], [[1.0], [1.0, 2.0]])], TypeError,
         r"streams\[0\] values must be an array of real numbers"),
    ],
)  # fmt: skip
def test_errors_name_the_stream_and_the_problem(streams, error, message):
    with pytest.raises(error, match=message):
        merge_streams(streams)


def test_hold_must_be_a_bool():
    with pytest.raises(TypeError, match="hold must be a bool, got int"):
        merge_streams([([0.0], [1.0])], hold=1)


# Batches -------------------------------------------------------------------------------------


def test_batch_of_unequal_lengths_is_padded_like_the_rest_of_phased_lstm_data():
    sample_a = [(np.array([0.0, 10.0, 20.0]), np.array([[1.0], [2.0], [3.0]])),
                (np.array([15.0]), np.array([[5.0, 6.0]]))]  # fmt: skip
    sample_b = [(torch.tensor([7.0]), torch.tensor([[4.0]])), (torch.zeros(0), torch.zeros(0, 2))]
    sample_c = [([], np.zeros((0, 1))), ([], np.zeros((0, 2)))]
    values, times, lengths = merge_stream_batch([sample_a, sample_b, sample_c], hold=False)
    assert values.dtype == torch.float32 and times.dtype == torch.float64
    assert lengths.dtype == torch.int64 and lengths.tolist() == [4, 1, 0]
    assert values.shape == (3, 4, 5) and times.shape == (3, 4)
    assert times.tolist() == [[0.0, 10.0, 15.0, 20.0], [7.0] * 4, [0.0] * 4]
    assert values[0].tolist() == [
        [1.0, 0.0, 0.0, 1.0, 0.0],
        [2.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 5.0, 6.0, 0.0, 1.0],
        [3.0, 0.0, 0.0, 1.0, 0.0],
    ]
    assert values[1].tolist() == [[4.0, 0.0, 0.0, 1.0, 0.0]] + [[0.0] * 5] * 3
    assert not values[2].any()


def test_batch_rows_equal_merge_streams_of_each_sample():
    rng = np.random.default_rng(1)
    samples = []
    for n_a, n_b in ((5, 2), (9, 0), (1, 3)):
        samples.append([(np.sort(rng.uniform(0, 50, n_a)), rng.normal(size=(n_a, 3))),
                        (np.sort(rng.uniform(0, 50, n_b)), rng.normal(size=(n_b, 2)))])  # fmt: skip
    values, times, lengths = merge_stream_batch(samples)
    for row, sample in enumerate(samples):
        alone_times, alone_values = merge_streams(sample)
        n = int(lengths[row])
        assert torch.equal(times[row, :n], alone_times)
        assert torch.equal(values[row, :n], alone_values)


def test_batch_feeds_the_phased_lstm_as_each_sample_alone():
    rng = np.random.default_rng(2)
    samples = [[(np.arange(n) * 10.0, rng.normal(size=(n, 3))),
                (np.arange(m) * 40.0 + 3.0, rng.normal(size=(m, 2)))]
               for n, m in ((12, 3), (5, 2), (8, 0))]  # fmt: skip
    values, times, lengths = merge_stream_batch(samples)
    torch.manual_seed(0)
    layer = PhasedLSTM(values.shape[-1], 6, batch_first=True, period_range=(20.0, 80.0)).eval()
    with torch.no_grad():
        _, (h_n, _) = layer(values, times, lengths=lengths)
        for row, sample in enumerate(samples):
            alone_times, alone_values = merge_streams(sample)
            _, (h_alone, _) = layer(alone_values[None], alone_times[None])
            torch.testing.assert_close(h_n[:, row], h_alone[:, 0])


@pytest.mark.parametrize(
    "samples, error, message",
    [
        ([], ValueError, "samples must be a non-empty sequence of samples"),
        ([[([0.0], [1.0])], [([0.0], [[1.0, 2.0]])]], ValueError,
         r"samples\[1\] must have streams of the same widths as samples\[0\]: features per "
         r"stream \[1\], got \[2\]"),
        ([[([0.0], [1.0])], [([0.0], [1.0]), ([0.0], [1.0])]], ValueError,
         r"samples\[1\] must have streams of the same widths"),
        ([[([0.0], [1.0])], [([1.0, 0.0], [1.0, 2.0])]], ValueError,
         r"samples\[1\]\[0\] times must be non-decreasing"),
        ([[([0.0], [1.0])], []], ValueError, r"samples\[1\] must hold at least one"),
    ],
)  # fmt: skip
def test_batch_errors_name_the_sample(samples, error, message):
    with pytest.raises(error, match=message):
        merge_stream_batch(samples)


def test_readme_example_runs_and_prints_what_it_says(capsys):
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Several sensors at their own rates") :]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    exec(compile(block, "README sensor fusion example", "exec"), {})
    claimed = re.search(r"print\(.*\)  # (.*)\n", block).group(1)
    assert capsys.readouterr().out.strip() == claimed
