"""Data for the Phased LSTM: the paper's synthetic tasks, as padded tensors ready for the layer.

:mod:`.synthetic` holds the generators of the paper's synthetic tasks.
"""

from .synthetic import FREQUENCY_CONDITIONS, adding_task, frequency_task, two_frequency_task

__all__ = ["FREQUENCY_CONDITIONS", "adding_task", "frequency_task", "two_frequency_task"]
