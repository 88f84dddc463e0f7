"""Choosing the time gate's periods from the timestamps a layer will read.

A neuron is open for a share ``r_on`` of each period, so whatever its period it is open at about
``r_on`` of the events it sees: ``r_on`` times the number of events per sequence is what one
neuron gets to update in a sequence, and ``layer.update_fraction`` measures ``r_on`` on average.
The period decides how those updates fall:

* a period ``tau`` with ``r_on * tau`` shorter than the gap between events gives an open window
  that usually falls between two events: a neuron opens at a few events picked by chance, and
  many neurons at none in a short sequence;
* a period longer than the sequence opens at most once in it, and a neuron whose window falls
  outside the sequence never updates at evaluation (training still reaches it through the leak).

:func:`suggest_period_range` proposes the range in between, measured on the data: from the period
whose open window spans the typical gap, ``gap / r_on`` (every opening catches an event), to the
typical duration (every neuron opens within a sequence). :func:`time_scales` gives the duration,
gap and number of events that this rule reads. On short sequences raise ``r_on`` first, so that
``r_on`` times the events per sequence is two or more; the README's "Choosing period_range and
r_on" measures both on real data sets.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import _checks
from .nn._steps import (
    check_time_values,
    step_gaps,
    time_major,
    valid_mask,
)


@dataclasses.dataclass(frozen=True)
class TimeScales:
    """Typical time scales of a batch of sequences, in the units of their timestamps.

    Each is the median over the sequences that have at least two valid events over a positive
    duration (``sequences`` of them); the others say nothing about gaps and are left out.

    Attributes:
        duration: last minus first valid timestamp of a sequence.
        gap: mean gap between consecutive events of a sequence, ``duration / (events - 1)``
            (for events at random times, the mean waiting time between them).
        events: valid events per sequence.
        sequences: how many sequences these were measured on.
    """

    duration: float
    gap: float
    events: float
    sequences: int


def time_scales(
    times: Tensor | PackedSequence,
    lengths: Tensor | None = None,
    *,
    batch_first: bool = False,
) -> TimeScales:
    """Duration, gap between events and events per sequence of a batch of timestamps.

    Args:
        times: ``(L, N)``, ``(N, L)`` with ``batch_first``, ``(L,)`` for one sequence, or a
            PackedSequence of timestamps, as the layer reads them. Any real dtype; computed in
            float64. They must not decrease along a sequence (time runs forward), as for the
            layer; a ValueError names the first sample and step where one goes back, and says
            when the other layout (``batch_first``) would run forward.
        lengths: optional ``(N,)`` integers in ``[0, L]``; steps at or past a sequence's length are
            padding and never read.
        batch_first: whether ``times`` is ``(N, L)``.

    Returns:
        :class:`TimeScales`, each the median over the sequences with two or more valid events.

    Example::

        >>> import torch
        >>> from phased_lstm import time_scales
        >>> times = torch.tensor([[0.0, 2.0, 4.0, 6.0], [0.0, 1.0, 2.0, 9.0]])  # (N, L)
        >>> time_scales(times, torch.tensor([4, 3]), batch_first=True)
        TimeScales(duration=4.0, gap=1.5, events=3.5, sequences=2)
    """
    t, mask = _time_major(times, lengths, batch_first)
    t = torch.where(mask, t, torch.zeros((), dtype=t.dtype))
    # The layer's own check (finite, never going back); the layout hint for times read alone.
    layout = batch_first if bool(mask.all()) and not isinstance(times, PackedSequence) else None
    check_time_values(t, step_gaps(t, mask), "times", None, batch_first=layout)
    events = mask.sum(0)
    first = torch.where(mask, t, torch.full((), torch.inf, dtype=t.dtype)).amin(0)
    last = torch.where(mask, t, torch.full((), -torch.inf, dtype=t.dtype)).amax(0)
    usable = (events >= 2) & (last > first)
    if not bool(usable.any()):
        raise ValueError(
            "times must hold at least one sequence with two or more valid events at different "
            f"times, got {t.shape[1]} sequence(s) with at most {int(events.max())} valid "
            "event(s) or a zero duration"
        )
    duration = (last - first)[usable]
    count = events[usable].to(torch.float64)
    return TimeScales(
        duration=_median(duration),
        gap=_median(duration / (count - 1)),
        events=_median(count),
        sequences=int(usable.sum()),
    )


def suggest_period_range(
    times: Tensor | PackedSequence,
    lengths: Tensor | None = None,
    *,
    batch_first: bool = False,
    r_on: float = 0.05,
) -> tuple[float, float]:
    """A ``period_range`` for :class:`~phased_lstm.PhasedLSTM`, measured on the timestamps.

    With the typical gap between events ``g`` and the typical duration ``D`` of a sequence
    (:func:`time_scales`), it returns ``(g / r_on, D)``:

    * ``g / r_on``: the shortest period whose open window, ``r_on`` of it, spans one gap, so that
      every opening catches an event on average. Below it a window mostly falls between events,
      and a neuron is open only at the events that happen to land in it, each with probability
      ``r_on``: in a short sequence, at none.
    * ``D``: the longest period that opens every neuron within a sequence of typical length,
      whatever its shift. A longer period leaves some neurons closed for the whole sequence,
      which at evaluation (no leak) means they never update.

    The range is empty when a sequence holds fewer than about ``1 / r_on`` events: then no period
    gives a neuron even one open event per sequence on average, and this raises a ValueError
    that says how far to raise ``r_on``. Pass the same ``r_on`` to the layer.

    The rule knows only the sampling, not the task: periods matched to the signal's own time
    scales (a frequency to detect, a delay to remember) can do better, and a trained period
    leaves the range anyway.

    Args:
        times: ``(L, N)``, ``(N, L)`` with ``batch_first``, ``(L,)`` or a PackedSequence of
            timestamps, in the units the layer will read. A training batch or the whole training
            set.
        lengths: optional ``(N,)`` valid steps per sequence; padding is ignored.
        batch_first: whether ``times`` is ``(N, L)``.
        r_on: the open ratio the layer will start from, in ``(0, 1]``.

    Returns:
        ``(low, high)`` as float64 Python floats, ``low <= high``.

    Example::

        >>> import torch
        >>> from phased_lstm import PhasedLSTM, suggest_period_range
        >>> times = torch.arange(100.0).expand(8, 100)  # 8 sequences of 100 steps, gap 1
        >>> suggest_period_range(times, batch_first=True)
        (20.0, 99.0)
        >>> layer = PhasedLSTM(3, 16, batch_first=True, period_range=(20.0, 99.0))
    """
    r_on = _checks.check_r_on(r_on)
    scales = time_scales(times, lengths, batch_first=batch_first)
    low, high = scales.gap / r_on, scales.duration
    if low > high:
        raise ValueError(
            f"r_on = {r_on:g} is too small for sequences of {scales.events:g} events: the period "
            f"whose open window spans the typical gap ({scales.gap:.4g}) is gap / r_on = "
            f"{low:.4g}, longer than the typical duration ({high:.4g}), so no period opens a "
            f"neuron at even one event per sequence on average. Pass r_on >= "
            f"{scales.gap / scales.duration:.3g} (gap / duration) here and to the layer; a neuron "
            "then updates at about r_on x events of each sequence"
        )
    return low, high


def _time_major(times: object, lengths: object, batch_first: object) -> tuple[Tensor, Tensor]:
    """Validated float64 ``(L, N)`` times and the ``(L, N)`` mask of their valid steps."""
    batch_first = _checks.check_bool("batch_first", batch_first)
    if isinstance(times, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths must be None when times is a PackedSequence (it has its own)")
        if times.data.dim() != 1:
            raise ValueError(
                "times must be a PackedSequence of scalar timestamps, data of shape (S,), "
                f"got {_checks.shape_str(times.data.shape)}"
            )
        times, lengths = pad_packed_sequence(times)
    else:
        if isinstance(times, Tensor) and times.dim() == 1 and lengths is not None:
            raise ValueError("lengths must be None for one sequence of times, shape (L,)")
        times = time_major(times, batch_first)
    if times.is_complex() or times.dtype == torch.bool:
        raise TypeError(f"times must be a real tensor, got {times.dtype}")
    length, batch = times.shape
    if length == 0 or batch == 0:
        raise ValueError(
            f"times must hold at least one step of one sequence, got shape "
            f"{_checks.shape_str(times.shape)} (L, N)"
        )
    if lengths is None:
        mask = torch.ones_like(times, dtype=torch.bool)
    else:
        mask = valid_mask(lengths, length, batch, times.device)
    return times.to(torch.float64), mask


def _median(values: Tensor) -> float:
    # quantile, not median: torch.median returns the lower of the two middle values.
    return float(torch.quantile(values, 0.5))


__all__ = ["TimeScales", "suggest_period_range", "time_scales"]
