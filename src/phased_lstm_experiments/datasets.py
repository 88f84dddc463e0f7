"""The registry behind ``phased-lstm data NAME ...``: commands that build a dataset on disk.

A builder is a module with ``main(argv: list[str]) -> int`` that parses its own options
(``prog`` should read ``phased-lstm data NAME``). It is imported only when its command runs,
so the CLI starts fast whatever the builders need.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetBuilder:
    """One ``phased-lstm data`` command.

    Attributes:
        name: the command's name, ``phased-lstm data NAME``.
        help: one line for ``phased-lstm data --help``.
        module: the module whose ``main(argv)`` builds the dataset.
    """

    name: str
    help: str
    module: str

    def main(self, argv: list[str]) -> int:
        return importlib.import_module(self.module).main(argv) or 0


DATASET_BUILDERS: dict[str, DatasetBuilder] = {}


def register(builder: DatasetBuilder) -> DatasetBuilder:
    """Add ``builder`` to the registry; a name may be registered once."""
    if builder.name in DATASET_BUILDERS:
        raise ValueError(f"a dataset builder called {builder.name!r} is registered already")
    DATASET_BUILDERS[builder.name] = builder
    return builder


register(
    DatasetBuilder(
        "nmnist-sim",
        "N-MNIST-sim: event-camera recordings synthesised from real MNIST digits, in N-MNIST's "
        "file format and folder layout",
        "phased_lstm_experiments.nmnist_sim",
    )
)

__all__ = ["DATASET_BUILDERS", "DatasetBuilder", "register"]
