"""TimeGateAdam, now in the library as :class:`phased_lstm.optim.TimeGateAdam`.

Kept importable from here because results, configs and users' code name it so.
"""

from phased_lstm.optim import TimeGateAdam

__all__ = ["TimeGateAdam"]
