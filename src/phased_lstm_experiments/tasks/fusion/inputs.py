"""What each model of the fusion task reads: the Phased LSTM the streams merged at their own
timestamps (:func:`native_batch`), the baselines the streams resampled on a 100 Hz grid
(:func:`grid_batch`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from phased_lstm.data import merge_stream_batch

from .data import GRID_STEP, N_LANDMARKS, N_MFCC, AudioVideoExamples

CONDITION_STREAMS = {"fused": ("audio", "video"), "audio": ("audio",), "video": ("video",)}


_WIDTHS = {"audio": N_MFCC, "video": N_LANDMARKS}


def native_batch(examples: AudioVideoExamples, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The named streams merged at their own timestamps: ``(values, times, lengths)``, each
    stream's features held between its events, then one indicator column per stream."""
    return merge_stream_batch(examples.streams(names), hold=True)


def grid_batch(examples: AudioVideoExamples, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The named streams resampled every 10 ms from the first event to the last, each holding
    its latest value (zeros before its first event): ``(values, times, lengths)``, padded as
    :func:`native_batch` pads, without indicator columns."""
    samples = examples.streams(names)
    grids = []
    for streams in samples:
        first = min(times[0] for times, _ in streams if len(times))
        last = max(times[-1] for times, _ in streams if len(times))
        grids.append(first + GRID_STEP * np.arange(int((last - first) // GRID_STEP) + 1))
    lengths = np.array([grid.size for grid in grids], dtype=np.int64)
    values = np.zeros((len(samples), lengths.max(), sum(_WIDTHS[n] for n in names)), np.float32)
    times = np.zeros((len(samples), lengths.max()))
    for row, (streams, grid) in enumerate(zip(samples, grids, strict=True)):
        times[row, : grid.size], times[row, grid.size :] = grid, grid[-1]
        column = 0
        for stream_times, stream_values in streams:
            # The latest event at or before each tick.
            latest = np.searchsorted(stream_times, grid, side="right") - 1
            slot = values[row, : grid.size, column : column + stream_values.shape[1]]
            slot[latest >= 0] = stream_values[latest[latest >= 0]]
            column += stream_values.shape[1]
    return torch.from_numpy(values), torch.from_numpy(times), torch.from_numpy(lengths)


def _layout(model: str):
    return native_batch if model == "plstm" else grid_batch


def input_size(model: str, condition: str) -> int:
    names = CONDITION_STREAMS[condition]
    features = sum(_WIDTHS[name] for name in names)
    return features + len(names) if model == "plstm" else features
