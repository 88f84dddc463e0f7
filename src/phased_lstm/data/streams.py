"""Several sensors, each ticking at its own rate, merged into one time-sorted input sequence.

A Phased LSTM needs no common clock: every event keeps its own timestamp. To feed it several
streams at once (audio features at 100 Hz and video frames at 25 Hz, an IMU beside a GPS),
:func:`merge_streams` interleaves their events in time order; each stream's features get their
own columns, and an indicator column per stream says which sensor produced each row.
:func:`merge_stream_batch` does that per sample and pads the results into the layout that
``PhasedLSTM(batch_first=True)`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import check_bool, shape_str


def merge_streams(streams: Sequence, *, hold: bool = True) -> tuple[Tensor, Tensor]:
    """Merge ``S`` event streams into one sequence sorted by time.

    Stream ``s`` is a pair ``(times, values)``: ``times`` of shape ``(n_s,)``, real and
    non-decreasing, ``values`` of shape ``(n_s, d_s)`` (or ``(n_s,)``, read as ``d_s = 1``).
    Either may be a torch tensor, a NumPy array or a list; a stream may be empty (``n_s = 0``).

    Each row of the result is one event. Its features are laid out in column slots, one per
    stream in stream order (``d_1 + ... + d_S`` columns), followed by ``S`` indicator columns:
    1.0 in column ``s`` on the rows that came from stream ``s``, 0.0 elsewhere. On the rows of
    the other streams, a stream's slot holds its latest value with ``hold=True`` (zeros before
    its first event) and zeros with ``hold=False``. Events at the same time stay separate rows,
    in stream order, and within a stream in their order (a stable merge).

    Args:
        streams: a sequence of ``S >= 1`` pairs ``(times, values)``.
        hold: keep each stream's latest value in its slot between its events.

    Returns:
        ``(times, values)``, on the CPU:

        * **times**: ``(L,)`` float64 with ``L = n_1 + ... + n_S``, non-decreasing (float64
          input is kept bit for bit; other real dtypes are converted);
        * **values**: ``(L, d_1 + ... + d_S + S)`` float32.

    Raises:
        ValueError: no streams; a stream whose times are not 1-D, not finite or decreasing,
            whose values are not 1-D or 2-D, or whose values and times differ in length. The
            message names the stream's index.
        TypeError: a stream that is not a pair, or times or values that are not real numbers.

    Example::

        >>> audio = (torch.tensor([0.0, 10.0, 20.0]), torch.tensor([[1.0], [2.0], [3.0]]))
        >>> video = (torch.tensor([10.0]), torch.tensor([[7.0, 8.0]]))
        >>> times, values = merge_streams([audio, video])
        >>> times.tolist()
        [0.0, 10.0, 10.0, 20.0]
        >>> for row in values.tolist():  # audio slot, video slot, indicators (audio, video)
        ...     print(row)
        [1.0, 0.0, 0.0, 1.0, 0.0]
        [2.0, 0.0, 0.0, 1.0, 0.0]
        [2.0, 7.0, 8.0, 0.0, 1.0]
        [3.0, 7.0, 8.0, 1.0, 0.0]
    """
    hold = check_bool("hold", hold)
    checked = _check_streams(streams)
    times, values = _merge(checked, hold)
    return torch.from_numpy(times), torch.from_numpy(values)


def merge_stream_batch(samples: Sequence, *, hold: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`merge_streams` applied to each sample of a batch, padded into one batch.

    Every sample is a sequence of the same ``S`` streams, stream ``s`` with the same number of
    features ``d_s`` in every sample (the number of events may differ, and may be 0).

    Args:
        samples: a sequence of ``N >= 1`` samples, each a sequence of ``(times, values)``
            pairs as :func:`merge_streams` takes them.
        hold: as in :func:`merge_streams`.

    Returns:
        ``(values, times, lengths)``, ready for ``PhasedLSTM(batch_first=True)(values, times,
        lengths=lengths)``:

        * **values**: ``(N, L, F)`` float32 with ``F = d_1 + ... + d_S + S``, zeros past each
          sample's length;
        * **times**: ``(N, L)`` float64, the last valid time repeated past the length (0 for
          a sample without events), so every row is non-decreasing;
        * **lengths**: ``(N,)`` int64, each sample's number of events;

        where ``L`` is the largest number of events of a sample.

    Example::

        >>> first = [(torch.arange(4.0) * 10, torch.randn(4, 3)), ([5.0], torch.randn(1, 2))]
        >>> second = [(torch.arange(2.0) * 10, torch.randn(2, 3)), ([], torch.zeros(0, 2))]
        >>> values, times, lengths = merge_stream_batch([first, second])
        >>> values.shape, times.dtype, lengths.tolist()
        (torch.Size([2, 5, 7]), torch.float64, [5, 2])
    """
    hold = check_bool("hold", hold)
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence) or not samples:
        raise ValueError(
            "samples must be a non-empty sequence of samples, each a sequence of (times, "
            f"values) streams, got {samples!r:.80}"
        )
    merged, widths = [], None
    for k, streams in enumerate(samples):
        checked = _check_streams(streams, f"samples[{k}]")
        sample_widths = [values.shape[1] for _, values in checked]
        if widths is None:
            widths = sample_widths
        elif sample_widths != widths:
            raise ValueError(
                f"samples[{k}] must have streams of the same widths as samples[0]: "
                f"features per stream {widths}, got {sample_widths}"
            )
        merged.append(_merge(checked, hold))

    lengths = np.array([times.shape[0] for times, _ in merged], dtype=np.int64)
    steps, features = int(lengths.max()), sum(widths) + len(widths)
    values = np.zeros((len(merged), steps, features), dtype=np.float32)
    times = np.zeros((len(merged), steps), dtype=np.float64)
    for row, ((sample_times, sample_values), length) in enumerate(
        zip(merged, lengths, strict=True)
    ):
        if length:
            values[row, :length] = sample_values
            times[row, :length] = sample_times
            times[row, length:] = sample_times[-1]
    return torch.from_numpy(values), torch.from_numpy(times), torch.from_numpy(lengths)


def _merge(streams: list[tuple[np.ndarray, np.ndarray]], hold: bool):
    """The merge of checked streams: ``(times (L,) float64, values (L, F) float32)``."""
    counts = [times.shape[0] for times, _ in streams]
    widths = [values.shape[1] for _, values in streams]
    count, n_streams = sum(counts), len(streams)
    # Concatenated in stream order, a stable sort puts equal times in stream order and keeps
    # each (sorted) stream's own order.
    all_times = np.concatenate([times for times, _ in streams])
    source = np.repeat(np.arange(n_streams), counts)
    order = np.argsort(all_times, kind="stable")
    source = source[order]
    # The index of each row's event within its own stream.
    position = np.concatenate([np.arange(n) for n in counts])[order]

    values = np.zeros((count, sum(widths) + n_streams), dtype=np.float32)
    values[np.arange(count), sum(widths) + source] = 1.0
    column = 0
    for s, (_, stream_values) in enumerate(streams):
        slot = slice(column, column + widths[s])
        column += widths[s]
        if counts[s] == 0:
            continue
        own = source == s
        if hold:
            # Rows up to a stream's k-th event read its (k-1)-th value; rows before its first
            # event stay zero.
            latest = np.cumsum(own) - 1
            started = latest >= 0
            values[started, slot] = stream_values[latest[started]]
        else:
            values[own, slot] = stream_values[position[own]]
    return all_times[order], values


def _check_streams(streams: object, where: str = "streams") -> list[tuple[np.ndarray, np.ndarray]]:
    """Each stream as ``(times (n,) float64, values (n, d) float32)`` NumPy arrays."""
    if isinstance(streams, (str, bytes)) or not isinstance(streams, Sequence):
        raise TypeError(
            f"{where} must be a sequence of (times, values) pairs, got {type(streams).__name__}"
        )
    if not streams:
        raise ValueError(f"{where} must hold at least one (times, values) stream, got none")
    return [_check_stream(stream, f"{where}[{s}]") for s, stream in enumerate(streams)]


def _check_stream(stream: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(stream, (tuple, list)) or len(stream) != 2:
        raise TypeError(f"{where} must be a (times, values) pair, got {type(stream).__name__}")
    times = _real_array(stream[0], f"{where} times")
    values = _real_array(stream[1], f"{where} values")
    if times.ndim != 1:
        raise ValueError(f"{where} times must be 1-D, (n,), got shape {shape_str(times.shape)}")
    if values.ndim == 1:
        values = values[:, None]
    elif values.ndim != 2:
        raise ValueError(
            f"{where} values must have shape (n, d) or (n,), got {shape_str(values.shape)}"
        )
    if values.shape[0] != times.shape[0]:
        raise ValueError(
            f"{where} values must have one row per timestamp: {times.shape[0]} times, "
            f"got {values.shape[0]} rows of values"
        )
    times = times.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(times))
    if bad.size:
        raise ValueError(
            f"{where} times must be finite, got {float(times[bad[0]])} at event {int(bad[0])}"
        )
    back = np.flatnonzero(times[1:] < times[:-1])
    if back.size:
        k = int(back[0]) + 1
        raise ValueError(
            f"{where} times must be non-decreasing (sorted), got times[{k}] = {float(times[k])!r} "
            f"after times[{k - 1}] = {float(times[k - 1])!r}"
        )
    return times, values.astype(np.float32, copy=False)


def _real_array(value: object, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        # NumPy has no bfloat16; float32 holds every bfloat16 value exactly.
        value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        # A ragged list, for one.
        raise TypeError(f"{name} must be an array of real numbers, got {value!r:.80}") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must hold real numbers (an integer or floating dtype), got dtype {array.dtype}"
        )
    return array


__all__ = ["merge_stream_batch", "merge_streams"]
