"""random_rate and subsample_events(share=...): a random share of each sequence's steps, against
a plain-Python reference that makes the same draws; errors, determinism, identity, layouts."""

import numpy as np
import pytest
import torch

from phased_lstm import PhasedLSTM
from phased_lstm.data import EVENT_DTYPE, SubsampleEvents, random_rate, subsample_events

f64 = torch.float64


def batch(length=9, n=4, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(length, n, channels, generator=gen)
    times = torch.rand(length, n, generator=gen, dtype=f64).mul(7.3).cumsum(0) + 1e6
    return values, times


def reference(values, times, lengths, keep, seed):
    """The same draws as random_rate (a share per sequence, then a key per step), one sequence
    and one step at a time in Python."""
    gen = torch.Generator().manual_seed(seed)
    length, n = times.shape
    low, high = keep
    shares = (low + (high - low) * torch.rand(n, generator=gen)).tolist()
    keys = torch.rand(length, n, generator=gen).tolist()
    out_values = torch.zeros_like(values)
    out_times = torch.zeros_like(times)
    new_lengths = []
    for k in range(n):
        valid = int(lengths[k])
        kept = min(valid, max(1, int(torch.round(torch.tensor(shares[k], dtype=f64) * valid))))
        steps = sorted(sorted(range(valid), key=lambda t: keys[t][k])[:kept])
        for slot, step in enumerate(steps):
            out_values[slot, k] = values[step, k]
            out_times[slot, k] = times[step, k]
        for slot in range(kept, length):
            out_times[slot, k] = times[steps[-1], k] if steps else times[0, k]
        new_lengths.append(kept)
    return out_values, out_times, torch.tensor(new_lengths)


@pytest.mark.parametrize("keep", [(0.3, 1.0), (0.5, 0.5), (0.05, 0.2)])
def test_against_the_reference(keep):
    values, times = batch()
    lengths = torch.tensor([9, 5, 1, 0])
    got = random_rate(values, times, lengths, keep=keep, generator=torch.Generator().manual_seed(7))
    want = reference(values, times, lengths, keep, seed=7)
    for name, a, b in zip(("values", "times", "lengths"), got, want, strict=True):
        assert torch.equal(a, b), name
    assert got[1].dtype == f64  # float64 times copied bit for bit (the equality above)
    assert got[2].tolist()[2:] == [1, 0]  # one step is always kept; an empty one stays empty


def test_batch_first_is_the_same_draw_transposed():
    values, times = batch()
    lengths = torch.tensor([9, 7, 3, 8])
    time_major = random_rate(
        values, times, lengths, keep=(0.2, 0.9), generator=torch.Generator().manual_seed(1)
    )
    first = random_rate(
        values.transpose(0, 1),
        times.T,
        lengths,
        keep=(0.2, 0.9),
        batch_first=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(first[0], time_major[0].transpose(0, 1))
    assert torch.equal(first[1], time_major[1].T) and torch.equal(first[2], time_major[2])


def test_deterministic_for_a_generator_and_identity_at_one():
    values, times = batch()
    one = random_rate(values, times, keep=(0.3, 0.8), generator=torch.Generator().manual_seed(3))
    two = random_rate(values, times, keep=(0.3, 0.8), generator=torch.Generator().manual_seed(3))
    other = random_rate(values, times, keep=(0.3, 0.8), generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    assert not torch.equal(one[1], other[1])
    same_values, same_times, lengths = random_rate(values, times, keep=(1, 1))
    assert same_values is values and same_times is times and lengths.tolist() == [9] * 4


def test_every_step_is_equally_likely_to_stay():
    values, times = batch(length=10, n=1)
    counts = torch.zeros(10)
    generator = torch.Generator().manual_seed(0)
    draws = 2000
    for _ in range(draws):
        _, kept_times, lengths = random_rate(values, times, keep=(0.5, 0.5), generator=generator)
        kept = kept_times[: int(lengths[0]), 0]
        counts += torch.isin(times[:, 0], kept).float()
    assert torch.allclose(counts / draws, torch.full((10,), 0.5), atol=0.05)


def test_the_layer_reads_the_thinned_batch():
    values, times = batch()
    lengths = torch.tensor([9, 6, 4, 2])
    x, t, n = random_rate(values, times, lengths, keep=(0.1, 1.0))
    out, _ = PhasedLSTM(3, 5)(x, t, lengths=n)  # time still runs forward, padding included
    assert torch.isfinite(out).all() and bool((t[1:] >= t[:-1]).all())


@pytest.mark.parametrize(
    "keep, error, pattern",
    [
        ((0.0, 0.5), ValueError, r"keep must lie in \(0, 1\], got \(0, 0.5\)"),
        ((0.5, 1.2), ValueError, r"keep must lie in \(0, 1\]"),
        ((0.8, 0.4), ValueError, r"keep must have low <= high, got \(0.8, 0.4\)"),
        (0.5, TypeError, r"keep must be a pair \(low, high\)"),
        ((True, 1.0), TypeError, "keep must hold two real numbers"),
    ],
)
def test_keep_errors_name_keep(keep, error, pattern):
    values, times = batch()
    with pytest.raises(error, match=pattern):
        random_rate(values, times, keep=keep)


def test_shape_errors_name_the_argument():
    values, times = batch()
    with pytest.raises(ValueError, match=r"times must have shape \(L, N\) = \(9, 4\) like values"):
        random_rate(values, times[:-1], keep=(0.5, 1))
    with pytest.raises(ValueError, match=r"times must have shape \(N, L\) = \(9, 4\)"):
        random_rate(values, times.T, keep=(0.5, 1), batch_first=True)
    with pytest.raises(ValueError, match="lengths"):
        random_rate(values, times, torch.tensor([10, 1, 1, 1]), keep=(0.5, 1))
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        random_rate(values.numpy(), times, keep=(0.5, 1))


def recording(n=40):
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["x"], events["y"] = np.arange(n) % 34, np.arange(n) // 34
    events["t"] = np.arange(n) * 10
    events["p"] = np.arange(n) % 2
    return events


def test_subsample_events_by_share():
    events = recording()
    for seed in range(50):
        kept = subsample_events(events, share=(0.25, 0.5), seed=seed)
        assert 10 <= len(kept) <= 20  # round(0.25 * 40) to round(0.5 * 40)
        assert np.all(np.diff(kept["t"]) > 0) and np.isin(kept["t"], events["t"]).all()
    assert len(subsample_events(recording(1), share=(0.1, 0.1), seed=0)) == 1
    assert len(subsample_events(recording(0), share=(0.1, 0.1), seed=0)) == 0
    transform = SubsampleEvents(share=(0.3, 1.0), seed=5)
    assert np.array_equal(transform(events), transform(events))  # seeded by the content
    with pytest.raises(TypeError, match="either rate or share"):
        SubsampleEvents(0.5, share=(0.3, 1.0))
    with pytest.raises(TypeError, match="either rate or share"):
        SubsampleEvents()
    with pytest.raises(ValueError, match=r"share must have low <= high"):
        SubsampleEvents(share=(0.9, 0.3))
    assert SubsampleEvents(0.75).rate == 0.75  # the rate form is unchanged
