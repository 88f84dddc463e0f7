"""time_scales and suggest_period_range against values computed by hand."""

import math
import pathlib
import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from phased_lstm import TimeScales, suggest_period_range, time_scales


def test_regular_grid():
    times = torch.arange(100.0, dtype=torch.float64).unsqueeze(1).expand(100, 8)  # (L, N)
    assert time_scales(times) == TimeScales(duration=99.0, gap=1.0, events=100.0, sequences=8)
    # gap / r_on: the window r_on * tau spans one gap; the duration: one opening per sequence.
    assert suggest_period_range(times) == pytest.approx((20.0, 99.0), rel=1e-12)
    assert suggest_period_range(times, r_on=0.25) == pytest.approx((4.0, 99.0), rel=1e-12)
    # The units are those of the times: the same grid in milliseconds, read in seconds.
    low, high = suggest_period_range(times / 1000)
    assert (low, high) == pytest.approx((0.02, 0.099), rel=1e-12)


def test_medians_over_sequences_by_hand():
    # Sequence durations 4, 6, 0.4 and 3 events or more: gaps 4/3, 3, 0.1; medians 4, 4/3, 4.
    times = [
        [0.0, 0.5, 3.0, 4.0, 0.0],
        [1.0, 2.0, 7.0, 0.0, 0.0],
        [2.0, 2.1, 2.2, 2.3, 2.4],
    ]
    scales = time_scales(torch.tensor(times, dtype=torch.float64), [4, 3, 5], batch_first=True)
    assert scales.duration == pytest.approx(4.0)
    assert scales.gap == pytest.approx(4 / 3)
    assert scales.events == 4.0 and scales.sequences == 3
    # Two sequences: the median interpolates (torch.median would pick the lower one).
    scales = time_scales(torch.tensor(times[:2], dtype=torch.float64), [4, 3], batch_first=True)
    assert (scales.duration, scales.gap, scales.events) == pytest.approx((5.0, 13 / 6, 3.5))


def test_poisson_times_give_the_mean_waiting_time():
    generator = torch.Generator().manual_seed(0)
    rate, events = 4.0, 400
    waits = torch.empty(events, 64, dtype=torch.float64).exponential_(rate, generator=generator)
    scales = time_scales(waits.cumsum(0))
    # duration / (events - 1) averages 399 waits of mean 1 / rate (relative sd 5% / sqrt(399)).
    assert scales.gap == pytest.approx(1 / rate, rel=0.01)
    assert scales.duration == pytest.approx((events - 1) / rate, rel=0.01)
    low, high = suggest_period_range(waits.cumsum(0), r_on=0.1)
    assert low == pytest.approx(2.5, rel=0.01) and high == pytest.approx(99.75, rel=0.01)


def test_padding_is_never_read_and_time_must_run_forward():
    times = torch.tensor(
        [[0.0, 1.0, 3.0, math.nan], [0.0, 10.0, -1e9, math.inf], [5.0, 6.0, 7.0, 9.0]],
        dtype=torch.float64,
    )
    lengths = torch.tensor([3, 2, 4])
    # Spans 3, 10, 4 over 3, 2, 4 events: gaps 1.5, 10, 4/3.
    scales = time_scales(times, lengths, batch_first=True)
    assert (scales.duration, scales.gap, scales.events) == pytest.approx((4.0, 1.5, 3.0))
    # Sequences with fewer than two events, or all at one time, tell nothing about gaps.
    scales = time_scales(times, torch.tensor([3, 1, 0]), batch_first=True)
    assert scales.sequences == 1 and scales.duration == 3.0
    same = torch.tensor([[2.0, 2.0], [0.0, 8.0]], dtype=torch.float64)
    assert time_scales(same, batch_first=True).sequences == 1
    # Events out of time order within a sequence are refused (they were read as a span before).
    unsorted = torch.tensor([[3.0, 0.0, 1.0], [5.0, 6.0, 7.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="sample 0 goes back at step 1: 3 then 0"):
        time_scales(unsorted, batch_first=True)


def test_layouts_agree():
    generator = torch.Generator().manual_seed(1)
    times = torch.rand(7, 5, generator=generator, dtype=torch.float64).cumsum(0)  # (L, N)
    lengths = torch.tensor([7, 3, 5, 2, 6])
    expected = time_scales(times, lengths)
    assert time_scales(times.t(), lengths, batch_first=True) == expected
    packed = pack_padded_sequence(times, lengths, enforce_sorted=False)
    assert time_scales(packed) == expected
    single = time_scales(times[:, 0])
    assert single == time_scales(times[:, :1]) and single.sequences == 1
    assert time_scales(times.float(), lengths).gap == pytest.approx(expected.gap, rel=1e-6)
    integers = torch.arange(0, 30, 3).unsqueeze(1)
    assert time_scales(integers).gap == 3.0


def test_float64_timestamps_keep_their_gaps():
    # float32 cannot tell 1e9 from 1e9 + 1e-3; the helper reads float64 times as they are.
    times = 1e9 + 1e-3 * torch.arange(50, dtype=torch.float64)
    scales = time_scales(times)
    assert scales.gap == pytest.approx(1e-3, rel=1e-5)
    assert isinstance(scales.gap, float)
    low, high = suggest_period_range(times, r_on=0.5)
    assert (low, high) == pytest.approx((2e-3, 49e-3), rel=1e-5)


def test_too_few_events_for_r_on_says_how_far_to_raise_it():
    times = torch.arange(12.0) * 2  # 12 events 2 apart: gap / r_on = 40 > duration 22
    with pytest.raises(ValueError, match=r"r_on = 0.05 is too small.*r_on >= 0\.0909"):
        suggest_period_range(times)
    low, high = suggest_period_range(times, r_on=2 / 22)
    assert (low, high) == pytest.approx((22.0, 22.0))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"times": [0.0, 1.0]}, TypeError, "times must be a torch.Tensor, got list"),
        ({"times": torch.zeros(2, 3, 4)}, ValueError, r"times must have shape \(L, N\) or \(L,\)"),
        ({"times": torch.zeros(3, dtype=torch.complex64)}, TypeError, "times must be a real"),
        ({"times": torch.zeros(0, 2)}, ValueError, "at least one step"),
        ({"times": torch.ones(3, 2)}, ValueError, "two or more valid events at different times"),
        ({"times": torch.tensor([0.0, math.nan])}, ValueError, "times must be finite"),
        ({"times": torch.arange(3.0), "lengths": [3]}, ValueError, "lengths must be None"),
        ({"lengths": torch.tensor([3, 3])}, ValueError, r"lengths must have shape \(N,\) = \(3,\)"),
        ({"lengths": torch.tensor([1, 2, 99])}, ValueError, r"lengths must lie in \[0, L\]"),
        ({"lengths": torch.ones(3)}, TypeError, "lengths must be an integer tensor"),
        ({"batch_first": 1}, TypeError, "batch_first must be a bool"),
        ({"r_on": 0.0}, ValueError, r"r_on must lie in \(0, 1\]"),
        ({"r_on": "0.1"}, TypeError, "r_on must be a real number"),
    ],
    ids=[
        "times-list",
        "times-3d",
        "times-complex",
        "times-empty",
        "times-one-instant",
        "times-nan",
        "lengths-unbatched",
        "lengths-shape",
        "lengths-range",
        "lengths-float",
        "batch_first-int",
        "r_on-zero",
        "r_on-str",
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    arguments = {"times": torch.arange(30.0).unsqueeze(1).expand(30, 3), **kwargs}
    times = arguments.pop("times")
    lengths = arguments.pop("lengths", None)
    with pytest.raises(error, match=match):
        suggest_period_range(times, lengths, **arguments)


def test_the_readme_example_runs():
    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Choosing period_range and r_on", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope = {}
    exec(compile(block, "README: choosing period_range", "exec"), scope)
    scales, r_on, layer = scope["scales"], scope["r_on"], scope["layer"]
    assert r_on * scales.events >= 2 - 1e-12
    low, high = scope["period_range"]
    assert (low, high) == pytest.approx((scales.gap / r_on, scales.duration))
    period = layer.period_l0.detach().double()
    assert bool(((period >= low * (1 - 1e-6)) & (period <= high * (1 + 1e-6))).all())
    torch.testing.assert_close(layer.r_on_l0.detach(), torch.full((64,), r_on, dtype=torch.float32))
