"""The task generators of phased_lstm.data: labels, period ranges, sampling, lengths, padding."""

import doctest

import numpy as np
import pytest
import torch

import phased_lstm.data.synthetic
from phased_lstm.data import FREQUENCY_CONDITIONS, adding_task, frequency_task, two_frequency_task


def valid_mask(lengths, steps):
    return torch.arange(steps) < lengths.unsqueeze(1)


def estimated_periods(values, times, lengths):
    """Period of each (single-sine) example from its mean spacing of zero crossings, or NaN
    when the window holds fewer than four crossings."""
    periods = []
    for v, t, n in zip(values[..., 0], times, lengths, strict=True):
        v, t = v[:n].double(), t[:n]
        sign = torch.sign(v)
        flips = torch.nonzero(sign[1:] * sign[:-1] < 0).squeeze(-1)
        if flips.numel() < 4:
            periods.append(float("nan"))
            continue
        # Linear interpolation of each crossing between its two samples.
        t0, t1, v0, v1 = t[flips], t[flips + 1], v[flips], v[flips + 1]
        crossing = t0 - v0 * (t1 - t0) / (v1 - v0)
        periods.append(2 * float((crossing[-1] - crossing[0]) / (crossing.numel() - 1)))
    return torch.tensor(periods)


def test_docstring_examples():
    result = doctest.testmod(phased_lstm.data.synthetic, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("condition", FREQUENCY_CONDITIONS)
def test_frequency_task_layout(condition):
    values, times, lengths, labels = frequency_task(64, condition, seed=0)
    n, steps = times.shape
    assert values.shape == (n, steps, 1) and n == 64
    assert values.dtype == torch.float32 and times.dtype == torch.float64
    assert lengths.dtype == torch.int64 and labels.dtype == torch.int64
    assert int(lengths.max()) == steps
    mask = valid_mask(lengths, steps)
    assert torch.all(values[~mask] == 0)
    # Padding repeats the last valid time, so every row is non-decreasing.
    last = times[torch.arange(n), lengths - 1]
    assert torch.all(torch.where(mask, times, last.unsqueeze(1)) == times)
    assert torch.all(times.diff(dim=1) >= 0)
    assert torch.all((times >= 0) & (times <= 125))
    assert torch.all(values[mask].abs() <= 1)


@pytest.mark.parametrize(
    "condition, step, low, high",
    [("standard", 1.0, 15, 125), ("highres", 0.1, 150, 1250)],
)
def test_regular_sampling(condition, step, low, high):
    values, times, lengths, _ = frequency_task(500, condition, seed=1)
    assert low <= int(lengths.min()) and int(lengths.max()) <= high
    mask = valid_mask(lengths, times.shape[1])[:, 1:]
    gaps = times.diff(dim=1)[mask]
    assert torch.allclose(gaps, torch.full_like(gaps, step), atol=1e-9)
    # The window of duration ~U(15, 125) holds ceil(duration / step) points.
    spans = times[torch.arange(500), lengths - 1] - times[:, 0]
    assert torch.all(spans < 125) and torch.all(spans >= 15 - step - 1e-9)


def test_async_sampling():
    _, times, lengths, _ = frequency_task(2000, "async", seed=2)
    assert int(lengths.min()) >= 15 and int(lengths.max()) <= 124
    # The number of points does not follow the window's duration, unlike regular sampling.
    spans = (times[torch.arange(2000), lengths - 1] - times[:, 0]).numpy()
    assert abs(np.corrcoef(spans, lengths.numpy())[0, 1]) < 0.1
    gaps = times.diff(dim=1)[valid_mask(lengths, times.shape[1])[:, 1:]]
    assert torch.all(gaps >= 0)
    assert float(gaps.std()) > 0.1  # irregular


def test_labels_follow_the_period():
    values, times, lengths, labels = frequency_task(400, "highres", seed=3)
    periods = estimated_periods(values, times, lengths)
    known = ~torch.isnan(periods)
    positive = periods[known & (labels == 1)]
    negative = periods[known & (labels == 0)]
    assert positive.numel() > 150
    assert torch.all((positive > 4.9) & (positive < 6.1))
    assert not torch.any((negative > 5.1) & (negative < 5.9))
    # Negatives are log-uniform in [1, 100] ms: short periods occur, none below 1 ms.
    assert float(negative.min()) > 0.95 and float(negative.min()) < 1.5
    # Half of the examples are forced into [5, 6]; a few more land there by chance.
    assert 0.5 <= float(labels.float().mean()) <= 0.58


def test_same_seed_same_waves_under_every_condition():
    standard = frequency_task(16, "standard", seed=4)
    highres = frequency_task(16, "highres", seed=4)
    assert torch.equal(standard[3], highres[3])
    for i in range(16):
        n = int(standard[2][i])
        fine = highres[0][i, : 10 * n : 10, 0]
        assert torch.allclose(standard[0][i, :n, 0], fine[:n], atol=1e-4)


def test_seed_and_generator():
    a = frequency_task(8, "async", seed=5)
    b = frequency_task(8, "async", seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    generator = np.random.default_rng(5)
    c = frequency_task(8, "async", generator=generator)
    d = frequency_task(8, "async", generator=generator)
    assert all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(c[1], d[1])  # the stream goes on


def test_two_frequency_task():
    values, times, lengths, labels = two_frequency_task(600, seed=6)
    assert values.shape[:2] == times.shape and values.shape[-1] == 1
    assert 100 <= int(lengths.min()) and int(lengths.max()) <= 999
    assert torch.all((times >= 0) & (times <= 100))
    assert 0.5 <= float(labels.float().mean()) <= 0.52
    mask = valid_mask(lengths, times.shape[1])
    assert torch.all(values[~mask] == 0) and torch.all(values[mask].abs() <= 2)


def test_adding_task():
    values, times, lengths, targets = adding_task(300, length_range=(40, 60), seed=7)
    assert values.shape == (300, int(lengths.max()), 2) and targets.dtype == torch.float32
    assert 40 <= int(lengths.min()) and int(lengths.max()) <= 60
    mask = valid_mask(lengths, values.shape[1])
    assert torch.all(values[~mask] == 0)
    assert torch.all(values[..., 0][mask].abs() <= 0.5)
    marker = values[..., 1]
    assert torch.all(marker.sum(dim=1) == 2)
    for i in range(300):
        first, second = torch.nonzero(marker[i]).squeeze(-1).tolist()
        n = int(lengths[i])
        assert first < max(1, n // 10) and n // 2 <= second < n
        expected = values[i, first, 0] + values[i, second, 0]
        assert torch.isclose(targets[i], expected, atol=1e-6)
    steps = torch.arange(values.shape[1], dtype=torch.float64)
    assert torch.equal(times[mask], steps.expand_as(times)[mask])


def test_adding_task_default_lengths():
    _, _, lengths, targets = adding_task(50, seed=8)
    assert 490 <= int(lengths.min()) and int(lengths.max()) <= 510
    assert float(targets.abs().max()) <= 1


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: frequency_task(4, "fast"), ValueError, "'standard', 'highres', 'async'"),
        (lambda: frequency_task(0, "async"), ValueError, "n must be >= 1"),
        (lambda: frequency_task(2.5, "async"), TypeError, "n must be an int"),
        (
            lambda: frequency_task(4, "async", seed=1, generator=np.random.default_rng()),
            ValueError,
            "either seed or generator",
        ),
        (lambda: frequency_task(4, "async", generator=1), TypeError, "numpy.random.Generator"),
        (lambda: two_frequency_task(4, seed=-1), ValueError, "seed must be >= 0"),
        (lambda: adding_task(4, length_range=(5, 3)), ValueError, "2 <= low <= high"),
        (lambda: adding_task(4, length_range=10), TypeError, "pair"),
    ],
    ids=[
        "condition",
        "n-zero",
        "n-float",
        "seed-and-generator",
        "generator-type",
        "seed",
        "length-order",
        "length-type",
    ],
)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
