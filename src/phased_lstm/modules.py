"""The module classes' former home, kept so that old imports and whole modules saved with
``torch.save`` (which name ``phased_lstm.modules.PhasedLSTM``) keep loading. They live in
:mod:`phased_lstm.nn`."""

from .nn import PhasedLSTM, PhasedLSTMCell, PhasedLSTMStream, TimeGateSettings, TimeGateValues

__all__ = [
    "PhasedLSTM",
    "PhasedLSTMCell",
    "PhasedLSTMStream",
    "TimeGateSettings",
    "TimeGateValues",
]
