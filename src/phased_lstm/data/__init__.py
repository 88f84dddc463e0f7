"""Data for the Phased LSTM: the paper's synthetic tasks, and event-camera recordings (N-MNIST).

:mod:`.synthetic` holds the generators of the paper's synthetic tasks, as padded tensors ready
for the layer. :mod:`.events` reads and writes event recordings in the N-MNIST file format,
:mod:`.nmnist` serves them as a torch Dataset and :mod:`.transforms` holds the event transforms
and the collate that pads recordings for the layer. :mod:`.streams` merges sensors that tick at
their own rates into one sequence; :mod:`.rates` thins a batch to random rates, for training
that holds at any sampling rate. :func:`write_atomic` writes a file that no reader sees half
written.
"""

from .events import EVENT_DTYPE, SENSOR_SIZE, read_nmnist, write_nmnist
from .files import write_atomic
from .nmnist import NMNIST
from .rates import random_rate
from .streams import merge_stream_batch, merge_streams
from .synthetic import FREQUENCY_CONDITIONS, adding_task, frequency_task, two_frequency_task
from .transforms import (
    NUM_ADDRESSES,
    TIME_UNITS,
    Compose,
    SubsampleEvents,
    TimeWindow,
    ToFrames,
    collate_events,
    event_address,
    subsample_events,
    time_window,
    to_frames,
)

__all__ = [
    "EVENT_DTYPE",
    "FREQUENCY_CONDITIONS",
    "NMNIST",
    "NUM_ADDRESSES",
    "SENSOR_SIZE",
    "TIME_UNITS",
    "Compose",
    "SubsampleEvents",
    "TimeWindow",
    "ToFrames",
    "adding_task",
    "collate_events",
    "event_address",
    "frequency_task",
    "merge_stream_batch",
    "merge_streams",
    "random_rate",
    "read_nmnist",
    "subsample_events",
    "time_window",
    "to_frames",
    "two_frequency_task",
    "write_atomic",
    "write_nmnist",
]
