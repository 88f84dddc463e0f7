"""phased-lstm: the Phased LSTM (Neil, Pfeiffer & Liu, NIPS 2016) for PyTorch.

An LSTM whose neurons update only while a learnable oscillation, the time gate, is open: it reads
inputs that arrive at any time, and a closed neuron does no work at evaluation.
"""

from . import data, functional, ops, optim
from .functional import time_gate
from .modules import PhasedLSTM, PhasedLSTMCell, PhasedLSTMStream
from .tuning import TimeScales, suggest_period_range, time_scales

__version__ = "0.1.0"

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
