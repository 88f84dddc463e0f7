"""phased-lstm: the Phased LSTM (Neil, Pfeiffer & Liu, NIPS 2016) for PyTorch.

An LSTM whose neurons update only while a learnable oscillation, the time gate, is open: it reads
inputs that arrive at any time, and a closed neuron does no work at evaluation.
"""

from . import data, functional, ops, optim
from ._version import __version__
from .functional import time_gate
from .nn import PhasedLSTM, PhasedLSTMCell, PhasedLSTMStream
from .tuning import TimeScales, suggest_period_range, time_scales

__all__ = [
    "PhasedLSTM",
    "PhasedLSTMCell",
    "PhasedLSTMStream",
    "TimeScales",
    "data",
    "functional",
    "ops",
    "optim",
    "suggest_period_range",
    "time_gate",
    "time_scales",
    "__version__",
]
