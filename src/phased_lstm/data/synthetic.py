"""Synthetic tasks of the Phased LSTM paper, as plain functions returning padded tensors.

Each generator returns a batch of sequences of different lengths in the layout that
:class:`phased_lstm.PhasedLSTM` reads with ``batch_first=True``: values ``(N, L, C)`` padded
with zeros, timestamps ``(N, L)`` in float64, and the valid ``lengths`` ``(N,)``. Past a sample's
length its timestamps repeat its last valid timestamp, so every row stays non-decreasing;
a model that honours ``lengths`` never reads the padding.

Randomness comes from a NumPy ``Generator``: pass ``seed`` for a fresh one, ``generator`` to
continue an existing stream, or neither for OS entropy.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_int

FREQUENCY_CONDITIONS = ("standard", "highres", "async")

# Task 1 of the paper (and the authors' code): all numbers in milliseconds.
_PERIOD_RANGE = (1.0, 100.0)  # log-uniform
_TARGET_PERIOD = (5.0, 6.0)
_DURATION_RANGE = (15.0, 125.0)
_ASYNC_POINTS = (15, 125)
_STEP = {"standard": 1.0, "highres": 0.1}

# The two-frequency variant (fig. 3e), window and point counts as in the authors' code.
_SECOND_TARGET_PERIOD = (13.0, 15.0)
_COMBO_DURATION_RANGE = (1.0, 100.0)
_COMBO_POINTS = (100, 1000)


def frequency_task(
    n: int,
    condition: str,
    *,
    seed: int | None = None,
    generator: np.random.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Frequency discrimination (paper Task 1, fig. 3a-c): is the sine's period in [5, 6] ms?

    Each example is :math:`y(t) = \sin(2 \pi t / T - \varphi)` observed in a window of duration
    :math:`d \sim U(15, 125)` ms starting at :math:`t_0 \sim U(0, 125 - d)`, with phase
    :math:`\varphi \sim U(0, d)`. The period :math:`T` is log-uniform in [1, 100] ms, except for
    exactly ``n // 2`` examples at random positions whose period is drawn from U(5, 6) ms (the
    authors force half of every batch; here any batch of the returned order holds about half).
    The label is 1 iff :math:`5 \le T \le 6`.

    The three sampling conditions:

    * ``"standard"``: :math:`t = t_0, t_0 + 1, \dots < t_0 + d`: 15 to 125 points;
    * ``"highres"``: the same with a 0.1 ms step: 150 to 1250 points;
    * ``"async"``: ``int(U(15, 125))`` points (15 to 124, independent of the duration) at
      sorted times drawn uniformly in the window.

    Args:
        n: number of examples ``N``.
        condition: one of ``"standard"``, ``"highres"``, ``"async"``.
        seed: seed of a fresh ``numpy.random.Generator``.
        generator: an existing ``numpy.random.Generator`` to draw from (not with ``seed``).

    Returns:
        ``(values, times, lengths, labels)``:

        * **values**: ``(N, L, 1)`` float32, the sine at each valid step, zero past the length;
        * **times**: ``(N, L)`` float64 in ms, the last valid time repeated past the length;
        * **lengths**: ``(N,)`` int64;
        * **labels**: ``(N,)`` int64 in {0, 1};

        where ``L`` is the longest of the ``N`` sequences.

    Example::

        >>> values, times, lengths, labels = frequency_task(4, "async", seed=0)
        >>> values.shape[0], times.dtype, lengths.dtype, labels.dtype
        (4, torch.float64, torch.int64, torch.int64)
    """
    n = check_positive_int("n", n)
    condition = _check_choice("condition", condition, FREQUENCY_CONDITIONS)
    rng = _rng(seed, generator)

    period = _log_uniform(rng, _PERIOD_RANGE, n)
    forced = rng.permutation(n)[: n // 2]
    period[forced] = rng.uniform(*_TARGET_PERIOD, size=forced.size)
    duration = rng.uniform(*_DURATION_RANGE, size=n)
    start = rng.uniform(0.0, _DURATION_RANGE[1] - duration)
    phase = rng.uniform(0.0, duration)

    if condition == "async":
        times, lengths = _async_times(rng, start, duration, _ASYNC_POINTS)
    else:
        times, lengths = _regular_times(start, duration, _STEP[condition])
    signal = np.sin(2 * np.pi * times / period[:, None] - phase[:, None])
    labels = (period >= _TARGET_PERIOD[0]) & (period <= _TARGET_PERIOD[1])
    return _pack(signal[:, :, None], times, lengths) + (torch.from_numpy(labels.astype(np.int64)),)


def two_frequency_task(
    n: int,
    *,
    seed: int | None = None,
    generator: np.random.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Two-frequency discrimination (paper fig. 3e), asynchronously sampled.

    Each example is :math:`\sin(2 \pi t / T_1 - \varphi_1) + \sin(2 \pi t / T_2 - \varphi_2)`
    with independent phases :math:`\varphi_i \sim U(0, d)`. Exactly ``n // 2`` examples at
    random positions are the target, :math:`T_1 \sim U(5, 6)` and :math:`T_2 \sim U(13, 15)` ms;
    the others draw both periods log-uniform in [1, 100] ms, as in the authors' code. The label
    is 1 iff :math:`5 \le T_1 \le 6` and :math:`13 \le T_2 \le 15`, so "outside" means that at
    least one of the two periods lies outside its band: the rare random pair that falls inside
    both (about 0.1%) is labelled 1, and a pair with only one period in its band is a negative.

    The window, as in the authors' code: duration :math:`d \sim U(1, 100)` ms starting at
    :math:`t_0 \sim U(0, 100 - d)`; ``int(U(100, 1000))`` points at sorted uniform times in it.
    (That code writes :math:`\sin(t / T - \varphi)`, without the :math:`2\pi`; here :math:`T`
    is a period, as in the paper's text and in :func:`frequency_task`.)

    Args:
        n: number of examples ``N``.
        seed: seed of a fresh ``numpy.random.Generator``.
        generator: an existing ``numpy.random.Generator`` to draw from (not with ``seed``).

    Returns:
        ``(values, times, lengths, labels)`` laid out as in :func:`frequency_task`, with 100 to
        999 points per example.
    """
    n = check_positive_int("n", n)
    rng = _rng(seed, generator)

    period_1 = _log_uniform(rng, _PERIOD_RANGE, n)
    period_2 = _log_uniform(rng, _PERIOD_RANGE, n)
    forced = rng.permutation(n)[: n // 2]
    period_1[forced] = rng.uniform(*_TARGET_PERIOD, size=forced.size)
    period_2[forced] = rng.uniform(*_SECOND_TARGET_PERIOD, size=forced.size)
    duration = rng.uniform(*_COMBO_DURATION_RANGE, size=n)
    start = rng.uniform(0.0, _COMBO_DURATION_RANGE[1] - duration)
    phase_1 = rng.uniform(0.0, duration)
    phase_2 = rng.uniform(0.0, duration)

    times, lengths = _async_times(rng, start, duration, _COMBO_POINTS)
    signal = np.sin(2 * np.pi * times / period_1[:, None] - phase_1[:, None]) + np.sin(
        2 * np.pi * times / period_2[:, None] - phase_2[:, None]
    )
    labels = (
        (period_1 >= _TARGET_PERIOD[0])
        & (period_1 <= _TARGET_PERIOD[1])
        & (period_2 >= _SECOND_TARGET_PERIOD[0])
        & (period_2 <= _SECOND_TARGET_PERIOD[1])
    )
    return _pack(signal[:, :, None], times, lengths) + (torch.from_numpy(labels.astype(np.int64)),)


def adding_task(
    n: int,
    *,
    length_range: tuple[int, int] = (490, 510),
    seed: int | None = None,
    generator: np.random.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The adding task (paper Task 2, fig. 4): sum the two marked values of a long sequence.

    Each sequence has a length drawn uniformly from the integers in ``length_range``. Channel 0
    holds values :math:`\sim U(-0.5, 0.5)`; channel 1 is a marker, 1 at exactly two steps and 0
    elsewhere: one step drawn uniformly from the first 10% of the sequence
    (``[0, max(1, length // 10))``) and one from its second half (``[length // 2, length)``).
    The target is the sum of the two marked values, in [-1, 1]. The timestamp of each step is
    its index 0, 1, 2, ... (the period ranges of fig. 4 are in steps).

    Args:
        n: number of examples ``N``.
        length_range: ``(low, high)`` inclusive bounds of the lengths, ``2 <= low <= high``.
        seed: seed of a fresh ``numpy.random.Generator``.
        generator: an existing ``numpy.random.Generator`` to draw from (not with ``seed``).

    Returns:
        ``(values, times, lengths, targets)``:

        * **values**: ``(N, L, 2)`` float32, (value, marker), zero past the length;
        * **times**: ``(N, L)`` float64, the step index, the last valid index repeated past the
          length;
        * **lengths**: ``(N,)`` int64;
        * **targets**: ``(N,)`` float32;

        where ``L`` is the longest of the ``N`` sequences.

    Example::

        >>> values, times, lengths, targets = adding_task(3, length_range=(10, 12), seed=0)
        >>> values.shape[-1], bool((values[..., 1].sum(dim=1) == 2).all())
        (2, True)
    """
    n = check_positive_int("n", n)
    low, high = _check_length_range(length_range)
    rng = _rng(seed, generator)

    lengths = rng.integers(low, high + 1, size=n)
    width = lengths.max()
    steps = np.arange(width)
    valid = steps[None, :] < lengths[:, None]
    addends = np.where(valid, rng.uniform(-0.5, 0.5, size=(n, width)), 0.0)
    early = rng.integers(0, np.maximum(1, lengths // 10))
    late = rng.integers(lengths // 2, lengths)
    marker = np.zeros((n, width))
    rows = np.arange(n)
    marker[rows, early] = 1.0
    marker[rows, late] = 1.0
    targets = addends[rows, early] + addends[rows, late]
    times = np.minimum(steps[None, :], lengths[:, None] - 1).astype(np.float64)
    values = np.stack([addends, marker], axis=-1)
    return _pack(values, times, lengths) + (torch.from_numpy(targets.astype(np.float32)),)


def _regular_times(start: np.ndarray, duration: np.ndarray, step: float):
    """Times start, start + step, ... < start + duration; padded with the last valid time."""
    # Counting steps first avoids np.arange's float rounding at the window's end.
    lengths = np.ceil(duration / step - 1e-9).astype(np.int64)
    index = np.arange(lengths.max())
    index = np.minimum(index[None, :], lengths[:, None] - 1)
    return start[:, None] + step * index, lengths


def _async_times(rng: np.random.Generator, start, duration, points: tuple[int, int]):
    """``int(U(*points))`` sorted uniform times per window, padded with the last valid time."""
    n = start.shape[0]
    lengths = rng.uniform(*points, size=n).astype(np.int64)
    width = lengths.max()
    valid = np.arange(width)[None, :] < lengths[:, None]
    # Padding sorts after every valid draw, so each row's first `length` entries are its times.
    unit = np.sort(np.where(valid, rng.random((n, width)), np.inf), axis=1)
    last = unit[np.arange(n), lengths - 1]
    unit = np.where(valid, unit, last[:, None])
    return start[:, None] + duration[:, None] * unit, lengths


def _pack(values: np.ndarray, times: np.ndarray, lengths: np.ndarray) -> tuple[Tensor, ...]:
    valid = np.arange(values.shape[1])[None, :] < lengths[:, None]
    values = np.where(valid[:, :, None], values, 0.0)
    return (
        torch.from_numpy(values.astype(np.float32)),
        torch.from_numpy(np.ascontiguousarray(times, dtype=np.float64)),
        torch.from_numpy(lengths.astype(np.int64)),
    )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size=n))


def _rng(seed: object, generator: object) -> np.random.Generator:
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, np.random.Generator):
            raise TypeError(
                f"generator must be a numpy.random.Generator, got {type(generator).__name__}"
            )
        return generator
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(seed)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    return value


def _check_length_range(value: object) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"length_range must be a pair (low, high), got {value!r}")
    low = check_positive_int("length_range[0]", value[0])
    high = check_positive_int("length_range[1]", value[1])
    if not 2 <= low <= high:
        raise ValueError(f"length_range must satisfy 2 <= low <= high, got ({low}, {high})")
    return low, high


__all__ = ["FREQUENCY_CONDITIONS", "adding_task", "frequency_task", "two_frequency_task"]
