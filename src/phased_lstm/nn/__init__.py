"""The Phased LSTM modules, read top-down:

* :mod:`.settings`: :class:`TimeGateSettings`, the modules' keyword settings and defaults;
* ``_parameters``: the tensors of one layer-direction, their initialisation and gate values;
* ``_steps``: the one path of user ``times`` into the kernels' ``(L, N)`` layout, with lengths,
  masks, sort order, reverse and packed indices and the checks of timestamp values;
* ``_base``: what the cell and the layer share, including the run of one layer-direction
  through the planner's choice (:func:`phased_lstm.ops.plan`) and the streaming step's cache;
* :mod:`.cell`, :mod:`.layer`, :mod:`.stream`: the three public modules.

The modules whose names start with ``_`` are private.
"""

from ._parameters import TimeGateValues
from .cell import PhasedLSTMCell
from .layer import PhasedLSTM
from .settings import TimeGateSettings
from .stream import PhasedLSTMStream

__all__ = [
    "PhasedLSTM",
    "PhasedLSTMCell",
    "PhasedLSTMStream",
    "TimeGateSettings",
    "TimeGateValues",
]
