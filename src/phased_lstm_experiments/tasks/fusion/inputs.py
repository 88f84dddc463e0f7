"""What each model of the fusion task reads: the Phased LSTMs the streams merged at their own
timestamps (:func:`native_batch`), the baselines the streams resampled on a 100 Hz grid, each
holding its last value (:func:`grid_batch`); with ``--features standardised``, every model the
same z-scores of each sensor's features, measured on training utterances (:class:`Standardisation`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from phased_lstm.data import merge_stream_batch

from .data import GRID_STEP, N_LANDMARKS, N_MFCC, STREAMS, AudioVideoExamples

CONDITION_STREAMS = {"fused": ("audio", "video"), "audio": ("audio",), "video": ("video",)}
# What the models read: "raw", each sensor's features as they come (the first protocol, where
# only the BN-LSTM normalised its input); "standardised", z-scores from training statistics.
FEATURES = ("standardised", "raw")

_WIDTHS = {"audio": N_MFCC, "video": N_LANDMARKS}


@dataclasses.dataclass(frozen=True)
class Standardisation:
    """Per-sensor z-scores: each feature of a stream minus its mean, divided by its standard
    deviation, both measured over every frame of the utterances handed to :meth:`fit`.

    Attributes:
        mean: stream name -> ``(F,)`` float64 mean of each of its features.
        std: stream name -> ``(F,)`` float64 standard deviation (population) of each.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, examples: AudioVideoExamples) -> Standardisation:
        """The statistics of ``examples`` (training utterances: never the test's)."""
        mean, std = {}, {}
        for name in STREAMS:
            frames = np.concatenate([values for _, values in getattr(examples, name)])
            mean[name] = frames.mean(0, dtype=np.float64)
            spread = frames.std(0, dtype=np.float64)
            # A feature that never changes stays centred, not divided by zero.
            std[name] = np.where(spread > 0, spread, 1.0)
        return cls(mean, std)

    def __call__(self, examples: AudioVideoExamples) -> AudioVideoExamples:
        """``examples`` with every frame's features standardised; the timestamps unchanged."""

        def scaled(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
            mean, std = self.mean[name], self.std[name]
            return [
                (times, ((values - mean) / std).astype(np.float32))
                for times, values in getattr(examples, name)
            ]

        return dataclasses.replace(examples, audio=scaled("audio"), video=scaled("video"))


def native_batch(examples: AudioVideoExamples, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The named streams merged at their own timestamps: ``(values, times, lengths)``, each
    stream's features held between its events, then one indicator column per stream."""
    return merge_stream_batch(examples.streams(names), hold=True)


def hold_last(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One stream ``(times (K,), values (K, F))`` read at the ticks ``grid (G,)``: at each tick
    the stream's latest value at or before it, zeros before its first event. ``(G, F)``."""
    held = np.zeros((grid.size, values.shape[1]), dtype=values.dtype)
    latest = np.searchsorted(times, grid, side="right") - 1
    held[latest >= 0] = values[latest[latest >= 0]]
    return held


def grid_batch(examples: AudioVideoExamples, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The named streams resampled every 10 ms from the first event to the last, each holding
    its latest value (:func:`hold_last`): ``(values, times, lengths)``, padded as
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
        values[row, : grid.size] = np.concatenate([hold_last(*s, grid) for s in streams], axis=1)
    return torch.from_numpy(values), torch.from_numpy(times), torch.from_numpy(lengths)


def reads_events(model: str) -> bool:
    """Whether ``model`` is a Phased LSTM, which reads the merged events (else the grid)."""
    return model.startswith("plstm")


def _layout(model: str):
    return native_batch if reads_events(model) else grid_batch


def input_size(model: str, condition: str) -> int:
    names = CONDITION_STREAMS[condition]
    features = sum(_WIDTHS[name] for name in names)
    return features + len(names) if reads_events(model) else features
