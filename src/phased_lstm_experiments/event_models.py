"""The models of the event-camera task (``reproduce nmnist``): a learned multi-resolution
embedding of each event's address read by a sequence model (:class:`EventSequenceModel`), and
a small CNN on the events accumulated into one frame (:class:`FrameCNN`). The sequence models
they wrap are those of :mod:`.models`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from phased_lstm.data import (
    NUM_ADDRESSES,
    SENSOR_SIZE,
)

from .models import SequenceModel

# The embedding of an event's address: one table per spatial resolution (blocks of 1x1, 2x2 and
# 4x4 pixels, per polarity), concatenated. The authors' code has a layer of this kind (several
# tables, indexed at several resolutions, outputs concatenated, drawn from N(0, 0.2)); the
# coarse tables let events of neighbouring pixels share what they learn.
EMBEDDING_LEVELS = (1, 2, 4)


EMBEDDING_DIM_PER_LEVEL = 16


EMBEDDING_STD = 0.2


EMBEDDING_SIZE = len(EMBEDDING_LEVELS) * EMBEDDING_DIM_PER_LEVEL


# The CNN reads event counts divided by this (the typical count of a pixel that has events at
# rho = 0.75 on N-MNIST-sim), not normalised per digit: like the paper's CNN, it sees the
# density change when the test rate differs.
FRAME_SCALE = 4.0


class MultiResolutionEmbedding(nn.Module):
    """A learned vector for each event address, concatenated over several spatial resolutions.

    At resolution ``r`` the sensor is cut into blocks of ``r x r`` pixels per polarity, each
    with its own vector in a table; an event's embedding is the concatenation, over the
    resolutions, of the vectors of the blocks it falls in.

    Args:
        levels: the block sizes ``r``, in pixels.
        dim_per_level: the size of each table's vectors.
        std: the tables are drawn from N(0, std).

    Input: addresses ``(*)`` int64 in ``[0, NUM_ADDRESSES)``, as
    :func:`phased_lstm.data.event_address` gives them (``(p * 34 + y) * 34 + x``).
    Output: ``(*, len(levels) * dim_per_level)``.
    """

    def __init__(
        self,
        levels: Sequence[int] = EMBEDDING_LEVELS,
        dim_per_level: int = EMBEDDING_DIM_PER_LEVEL,
        std: float = EMBEDDING_STD,
    ):
        super().__init__()
        width, height, polarities = SENSOR_SIZE
        address = torch.arange(NUM_ADDRESSES)
        x, y, p = address % width, (address // width) % height, address // (width * height)
        self.levels = tuple(levels)
        self.tables = nn.ModuleList()
        for index, level in enumerate(self.levels):
            columns, rows = math.ceil(width / level), math.ceil(height / level)
            table = nn.Embedding(polarities * rows * columns, dim_per_level)
            nn.init.normal_(table.weight, 0.0, std)
            self.tables.append(table)
            block = (p * rows + y // level) * columns + x // level
            # Derived from the levels alone: rebuilt, not saved in checkpoints.
            self.register_buffer(f"block_{index}", block, persistent=False)
        self.output_size = len(self.levels) * dim_per_level

    def forward(self, addresses: Tensor) -> Tensor:
        blocks = (getattr(self, f"block_{i}")[addresses] for i in range(len(self.tables)))
        return torch.cat([table(b) for table, b in zip(self.tables, blocks, strict=True)], -1)


class EventSequenceModel(nn.Module):
    """Classifies a padded batch of event streams ``(addresses, times, lengths)``, as
    :func:`phased_lstm.data.collate_events` gives them: the embedding of each address, read
    with its timestamp by a recurrent classifier (:class:`..models.SequenceModel`), whose
    read-out sees the state at each stream's last event.

    Args:
        embedding: addresses ``(N, L)`` -> ``(N, L, E)``.
        classifier: reads ``(values (N, L, E), times (N, L), lengths (N,))``.
        time_unit: the timestamps (ms) are divided by it before the classifier reads them: 1
            for the Phased LSTM's gate, which reads milliseconds; the baselines' time input is
            read in :data:`BASELINE_TIME_UNIT_MS`.
    """

    def __init__(self, embedding: nn.Module, classifier: SequenceModel, time_unit: float = 1.0):
        super().__init__()
        self.embedding = embedding
        self.classifier = classifier
        self.time_unit = float(time_unit)

    @property
    def rnn(self) -> nn.Module:
        """The recurrent layer."""
        return self.classifier.encoder.rnn

    def forward(self, addresses: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        times = times if self.time_unit == 1.0 else times / self.time_unit
        return self.classifier(self.embedding(addresses), times, lengths)

    @torch.no_grad()
    def updates_per_neuron(self, times: Tensor, lengths: Tensor) -> float:
        """State updates per neuron, summed over the streams of a batch (``times`` in ms).

        A Phased LSTM updates a neuron only at the events where its time gate is open (leak 0
        at evaluation), counted from the gates and averaged over neurons and layers; an LSTM
        updates every neuron at every event.
        """
        events = float(lengths.sum())
        if hasattr(self.rnn, "update_fraction"):
            return self.rnn.update_fraction(times, lengths) * events
        return events


class FrameCNN(nn.Module):
    """A small CNN on the events of a digit accumulated into one frame ``(N, 2, 34, 34)``
    (OFF and ON counts, :func:`phased_lstm.data.to_frames`), read as counts / ``scale``.

    Two 3x3 convolutions (32 and 64 channels, ReLU, 2x2 max-pooling) and a hidden layer of 128
    units (dropout 0.5 before it) to the class scores.
    """

    def __init__(self, num_classes: int = 10, scale: float = FRAME_SCALE):
        super().__init__()
        self.scale = float(scale)
        self.features = nn.Sequential(
            nn.Conv2d(2, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 34 -> 17
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 17 -> 8
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, frames: Tensor) -> Tensor:
        return self.classifier(self.features(frames / self.scale))
