"""Event-camera digits (the paper's Task 3, Table 1): ``phased-lstm reproduce nmnist``.

Each digit is a recording of an event camera that made three saccades over it; every event is
one input step. The Phased LSTM reads a learned embedding of the event's address (pixel and
polarity) while the event's timestamp drives its time gate, and classifies the digit at its last
event. Against it: the same embedding read by an LSTM and by the authors' BN-LSTM, with the
timestamp as an extra input, and a small CNN on the events accumulated into one frame. Training
keeps each event with probability rho = 0.75 (or, with ``--rate-augment LOW,HIGH``, a share
drawn in [LOW, HIGH]); the same trained models are tested at 0.75, 0.4 and 1.0, and at 0.2 for
the rate-shift matrix, and the state updates per neuron per digit are counted at evaluation.

The data is N-MNIST-sim by default (synthesised from real MNIST digits, built on first use into
a cache folder: ``phased-lstm data nmnist-sim``); ``--data ROOT`` reads any folder in N-MNIST's
layout, the real N-MNIST included. The protocol and the paper's numbers are in docs/paper.md;
what we chose where the paper is silent, and what we measured, in docs/reproduction.md.

Read in this order: :mod:`.data` (the folder, its description, the event rates),
:mod:`phased_lstm_experiments.event_models` (the embedding, the event classifier, the CNN),
:mod:`.task` (the task the runner calls), :mod:`.report` (Table 1, the paper's numbers, the
figures). The names users and tests imported from the single module are re-exported here.
"""

from ...event_models import (
    EMBEDDING_SIZE,
    FRAME_SCALE,
    EventSequenceModel,
    FrameCNN,
    MultiResolutionEmbedding,
)
from . import data, report, task
from .data import EXTRA_TEST_RATES, TRAINING_RATES, data_root_option, describe_data
from .report import PAPER_TABLE1
from .task import (
    BASELINE_TIME_UNIT_MS,
    PERIOD_RANGE_MS,
    R_ON,
    TASK,
    TIMED_DIGITS,
    NMNISTTask,
    time_inference,
)

__all__ = [
    "BASELINE_TIME_UNIT_MS",
    "EMBEDDING_SIZE",
    "EXTRA_TEST_RATES",
    "FRAME_SCALE",
    "PAPER_TABLE1",
    "PERIOD_RANGE_MS",
    "R_ON",
    "TASK",
    "TIMED_DIGITS",
    "TRAINING_RATES",
    "EventSequenceModel",
    "FrameCNN",
    "MultiResolutionEmbedding",
    "NMNISTTask",
    "data",
    "data_root_option",
    "describe_data",
    "report",
    "task",
    "time_inference",
]
