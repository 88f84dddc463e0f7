"""The N-MNIST task's data: the folder (``--data`` or N-MNIST-sim), its description for the
report, the event rates of Table 1, the seeds of the transforms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from phased_lstm.data import (
    NMNIST,
)

# The event rates (rho: the share of events kept) of the paper's Table 1: training and the main
# test set at 0.75 (the one condition), the same models also tested at 0.4 and 1.0; and at 0.2,
# beyond the paper, for the rate-shift matrix.
TRAINING_RATES = {"rate75": 0.75}


EXTRA_TEST_RATES = {"test_rate20": 0.2, "test_rate40": 0.4, "test_rate100": 1.0}

# The rate-shift matrix's test conditions: key -> (title, the metric of a run's final record).
# "rate75" is the training condition's own test set ("test").
SHIFT_TESTS = {
    "rate20": ("rho = 0.2", "test_rate20_acc"),
    "rate40": ("rho = 0.4", "test_rate40_acc"),
    "rate75": ("rho = 0.75", "test_acc"),
    "rate100": ("rho = 1.0", "test_rate100_acc"),
}


def data_root_option(text: str) -> str:
    """``--data ROOT``: a folder in N-MNIST's layout with both splits, as an absolute path."""
    root = Path(text).expanduser().resolve()
    try:
        for train in (True, False):
            NMNIST(root, train=train)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return str(root)


def _stream_seed(*entropy: int) -> int:
    """An int seed for a transform, drawn from ``entropy`` (a run's seed, a stream, an epoch)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def _collate_frames(batch: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor]:
    frames, labels = zip(*batch, strict=True)
    return torch.from_numpy(np.stack(frames)), torch.tensor(labels, dtype=torch.int64)


def describe_data(root: str | Path) -> str:
    """Which data ``root`` holds, for the CLI and results.md: N-MNIST-sim (by the marker its
    builder writes) or a folder read as N-MNIST."""
    from ...nmnist_sim import MARKER, NAME

    root = Path(root)
    marker = root / MARKER
    try:
        counts = [len(NMNIST(root, train=train)) for train in (True, False)]
    except ValueError:
        return f"{root} (not readable when this was written)"
    split = f"{counts[0]:,} training and {counts[1]:,} test digits"
    if marker.is_file():
        settings = json.loads(marker.read_text())
        return (
            f"{NAME} (recordings synthesised from real MNIST digits; not N-MNIST, and its numbers "
            f"are not numbers on N-MNIST), seed {settings.get('seed')}, {split}, in {root}"
        )
    return f"the recordings in {root}, read as N-MNIST (its layout and file format), {split}"
