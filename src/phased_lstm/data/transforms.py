"""Transforms of event recordings, and the collate that batches them for the Phased LSTM.

Each transform is a pure function of a recording (a structured array with fields ``x``, ``y``,
``t``, ``p``, see :mod:`.events`) and its settings; the frozen dataclasses hold the settings and
call the function, so that they can be given to a dataset as ``transform=`` and sent to
DataLoader workers. None of them keeps state between calls.

:func:`collate_events` pads a list of recordings into the layout that
``PhasedLSTM(batch_first=True)`` reads: each event is one step, its address (see
:func:`event_address`) the input to an embedding, its timestamp the step's time.
"""

from __future__ import annotations

import dataclasses
import numbers
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from .._checks import check_positive_int
from .events import SENSOR_SIZE, _check_events, _check_first
from .rates import check_share_range
from .synthetic import _check_choice, _rng

NUM_ADDRESSES = SENSOR_SIZE[0] * SENSOR_SIZE[1] * SENSOR_SIZE[2]  # 2,312 for 34x34x2
TIME_UNITS = ("ms", "us")


def subsample_events(
    events: np.ndarray,
    rate: float | None = None,
    *,
    share: tuple[float, float] | None = None,
    seed: int | None = None,
    generator: np.random.Generator | None = None,
) -> np.ndarray:
    """Keep each event independently with probability ``rate`` (the paper's event rate rho),
    or a random ``share`` of the events (training for any rate).

    Args:
        events: a recording.
        rate: the probability to keep an event, in ``(0, 1]``; 1 keeps them all.
        share: instead of ``rate``, ``(low, high)`` with ``0 < low <= high <= 1``: a share
            ``s`` is drawn uniformly in ``[low, high]`` and ``max(1, round(s * n))`` of the
            ``n`` events are kept (none of an empty recording), chosen uniformly without
            replacement (as :func:`phased_lstm.data.random_rate` does for a padded batch).
        seed: seed of a fresh ``numpy.random.Generator``.
        generator: an existing ``numpy.random.Generator`` to draw from (not with ``seed``);
            with neither, the draw comes from OS entropy.

    Returns:
        The kept events, in their order (a new array).
    """
    _check_events(events)
    if (rate is None) == (share is None):
        raise TypeError("subsample_events takes either rate or share=(low, high), not both")
    rng = _rng(seed, generator)
    if share is not None:
        low, high = check_share_range("share", share)
        count = events.shape[0]
        kept = min(count, max(1, round(rng.uniform(low, high) * count)))
        return events[np.sort(rng.permutation(count)[:kept])]
    rate = _check_rate(rate)
    return events[rng.random(events.shape[0]) < rate]


def time_window(events: np.ndarray, start: int | None = None, stop: int | None = None):
    """The events with ``start <= t < stop`` (microseconds; ``None`` leaves that side open)."""
    _check_events(events)
    start, stop = _check_window(start, stop)
    keep = np.ones(events.shape[0], dtype=bool)
    if start is not None:
        keep &= events["t"] >= start
    if stop is not None:
        keep &= events["t"] < stop
    return events[keep]


def event_address(events: np.ndarray) -> np.ndarray:
    """The address of each event: one integer in ``[0, NUM_ADDRESSES)`` = ``[0, 2312)``.

    ``address = (p * 34 + y) * 34 + x``: the event's flat index in a ``(2, 34, 34)`` frame of
    :func:`to_frames` (OFF events first, then ON).

    Returns:
        An int64 array of the recording's length.
    """
    _check_events(events)
    x, y, p = (events[name].astype(np.int64) for name in ("x", "y", "p"))
    _check_sensor(x, y, p)
    width, height, _ = SENSOR_SIZE
    return (p * height + y) * width + x


def to_frames(
    events: np.ndarray,
    n_time_bins: int | None = None,
    *,
    time_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Accumulate events into count images, e.g. the input of a CNN.

    Args:
        events: a recording.
        n_time_bins: ``None`` for one image of the whole ``time_range``, or the number of equal
            time bins that split it.
        time_range: ``(start, stop)`` in microseconds, ``start < stop``; events outside
            ``[start, stop)`` are left out. ``None``: from the first event to just past the last
            (``(0, 1)`` for an empty recording).

    Returns:
        float32 counts of shape ``(2, 34, 34)``, or ``(n_time_bins, 2, 34, 34)``, indexed
        ``[polarity, y, x]`` (channel 0 OFF, channel 1 ON).
    """
    _check_events(events)
    bins = 1 if n_time_bins is None else check_positive_int("n_time_bins", n_time_bins)
    t = events["t"].astype(np.int64)
    if time_range is None:
        time_range = (int(t.min()), int(t.max()) + 1) if t.size else (0, 1)
    start, stop = _check_window(*_check_pair("time_range", time_range))
    if start >= stop:
        raise ValueError(f"time_range must have start < stop, got ({start}, {stop})")
    inside = (t >= start) & (t < stop)
    # Integer arithmetic, so that an event on a bin edge lands in the later bin exactly.
    which = (t[inside] - start) * bins // (stop - start)
    flat = which * NUM_ADDRESSES + event_address(events[inside])
    counts = np.bincount(flat, minlength=bins * NUM_ADDRESSES).astype(np.float32)
    width, height, polarities = SENSOR_SIZE
    frames = counts.reshape(bins, polarities, height, width)
    return frames[0] if n_time_bins is None else frames


def collate_events(
    batch: Sequence[tuple[np.ndarray, object]], *, time_unit: str = "ms"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad ``(events, label)`` pairs, as an event dataset yields them, into one batch.

    Use as ``DataLoader(dataset, collate_fn=collate_events)``; for microseconds,
    ``collate_fn=functools.partial(collate_events, time_unit="us")``.

    Args:
        batch: a sequence of ``(events, label)`` pairs.
        time_unit: ``"ms"`` (default: the recording's microseconds divided by 1,000, the unit
            of the layer's periods in the paper's N-MNIST model, tau = 100 ms) or ``"us"``.

    Returns:
        ``(addresses, times, lengths, labels)``:

        * **addresses**: ``(N, L)`` int64, :func:`event_address` of each event, 0 past the
          length;
        * **times**: ``(N, L)`` float64, the timestamps in ``time_unit`` as recorded (not
          shifted), the last valid time repeated past the length (0 for an empty recording);
        * **lengths**: ``(N,)`` int64, the number of events of each recording;
        * **labels**: the labels through ``torch.utils.data.default_collate`` (``(N,)``
          int64 for int labels);

        where ``L`` is the longest recording of the batch. ``layer(embedding(addresses), times,
        lengths=lengths)`` with ``PhasedLSTM(batch_first=True)`` reads it as it is.
    """
    time_unit = _check_choice("time_unit", time_unit, TIME_UNITS)
    if not isinstance(batch, Sequence) or not batch:
        raise ValueError(
            f"batch must be a non-empty sequence of (events, label) pairs, got {batch!r:.80}"
        )
    recordings, labels = [], []
    for k, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"batch[{k}] must be an (events, label) pair, got {type(item).__name__}"
            )
        recordings.append(_check_events(item[0], f"batch[{k}] events"))
        labels.append(item[1])

    lengths = np.array([r.shape[0] for r in recordings], dtype=np.int64)
    width = int(lengths.max())
    addresses = np.zeros((len(recordings), width), dtype=np.int64)
    times = np.zeros((len(recordings), width), dtype=np.float64)
    per_unit = 1000.0 if time_unit == "ms" else 1.0
    for row, (events, length) in enumerate(zip(recordings, lengths, strict=True)):
        if length:
            addresses[row, :length] = event_address(events)
            times[row, :length] = events["t"] / per_unit
            times[row, length:] = times[row, length - 1]
    return (
        torch.from_numpy(addresses),
        torch.from_numpy(times),
        torch.from_numpy(lengths),
        default_collate(labels),
    )


@dataclasses.dataclass(frozen=True)
class SubsampleEvents:
    """:func:`subsample_events` as a dataset transform: keep each event with probability ``rate``
    (or a random ``share`` of the events: ``SubsampleEvents(share=(0.3, 1.0))``).

    With ``seed=None`` every call draws afresh (OS entropy): a new subsample each epoch. With an
    int ``seed``, the draw is seeded by ``seed`` and the recording's content, so a recording
    loses the same events on every call, in every DataLoader worker and in any order: fixed,
    reproducible test sets (e.g. at rho = 0.4 and 1.0, the same for every model compared).
    For reproducible training that still varies by epoch, set a new ``seed`` each epoch
    (``dataset.transform = SubsampleEvents(0.75, seed=epoch)``).
    """

    rate: float | None = None
    seed: int | None = None
    share: tuple[float, float] | None = None

    def __post_init__(self):
        if (self.rate is None) == (self.share is None):
            raise TypeError("SubsampleEvents takes either rate or share=(low, high), not both")
        if self.rate is not None:
            _check_rate(self.rate)
        else:
            object.__setattr__(self, "share", check_share_range("share", self.share))
        _rng(self.seed, None)  # validates the seed

    def __call__(self, events: np.ndarray) -> np.ndarray:
        _check_events(events)
        generator = None
        if self.seed is not None:
            content = zlib.crc32(np.ascontiguousarray(events).tobytes())
            generator = np.random.default_rng([self.seed, content, events.shape[0]])
        return subsample_events(events, self.rate, share=self.share, generator=generator)


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    """:func:`time_window` as a dataset transform: the events with ``start <= t < stop`` (us)."""

    start: int | None = None
    stop: int | None = None

    def __post_init__(self):
        _check_window(self.start, self.stop)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        return time_window(events, self.start, self.stop)


@dataclasses.dataclass(frozen=True)
class ToFrames:
    """:func:`to_frames` as a dataset transform: count images for a CNN."""

    n_time_bins: int | None = None
    time_range: tuple[int, int] | None = None

    def __post_init__(self):
        if self.n_time_bins is not None:
            check_positive_int("n_time_bins", self.n_time_bins)
        if self.time_range is not None:
            start, stop = _check_window(*_check_pair("time_range", self.time_range))
            if start >= stop:
                raise ValueError(f"time_range must have start < stop, got ({start}, {stop})")

    def __call__(self, events: np.ndarray) -> np.ndarray:
        return to_frames(events, self.n_time_bins, time_range=self.time_range)


@dataclasses.dataclass(frozen=True)
class Compose:
    """Apply ``transforms`` in order: ``Compose((SubsampleEvents(0.75), ToFrames()))``."""

    transforms: tuple[Callable[[np.ndarray], object], ...]

    def __post_init__(self):
        if not isinstance(self.transforms, (tuple, list)):
            raise TypeError(
                f"transforms must be a tuple of callables, got {type(self.transforms).__name__}"
            )
        for k, transform in enumerate(self.transforms):
            if not callable(transform):
                raise TypeError(f"transforms[{k}] must be callable, got {type(transform).__name__}")
        object.__setattr__(self, "transforms", tuple(self.transforms))

    def __call__(self, events):
        for transform in self.transforms:
            events = transform(events)
        return events


def _check_sensor(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> None:
    width, height, _ = SENSOR_SIZE
    _check_first(
        (x < 0) | (x >= width) | (y < 0) | (y >= height) | ((p != 0) & (p != 1)),
        "events",
        lambda k: (
            f"event {k} (x={x[k]}, y={y[k]}, p={p[k]}) is not on the {width}x{height} "
            "sensor with polarity 0 or 1"
        ),
    )


def _check_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"rate must be a real number, got {type(rate).__name__}")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must lie in (0, 1], got {rate}")
    return float(rate)


def _check_pair(name: str, value: object) -> tuple[object, object]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (start, stop), got {value!r}")
    return value[0], value[1]


def _check_window(start: object, stop: object) -> tuple[int | None, int | None]:
    for name, value in (("start", start), ("stop", stop)):
        integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if value is not None and not integer:
            raise TypeError(
                f"{name} must be an int (microseconds) or None, got {type(value).__name__}"
            )
    if start is not None and stop is not None and start > stop:
        raise ValueError(f"the time window must have start <= stop, got ({start}, {stop})")
    return (None if start is None else int(start)), (None if stop is None else int(stop))


__all__ = [
    "NUM_ADDRESSES",
    "TIME_UNITS",
    "Compose",
    "SubsampleEvents",
    "TimeWindow",
    "ToFrames",
    "collate_events",
    "event_address",
    "subsample_events",
    "time_window",
    "to_frames",
]
