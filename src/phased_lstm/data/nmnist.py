"""N-MNIST as a torch Dataset: one event recording per digit, read from the official layout.

The real N-MNIST (MNIST digits recorded by an event camera making three saccades) and the
N-MNIST-sim recordings that ``phased-lstm data nmnist-sim`` synthesises share the layout and the
file format, so this one class reads both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .._checks import check_bool
from .events import SENSOR_SIZE, read_nmnist

_SPLITS = {True: "Train", False: "Test"}
_CLASSES = tuple(str(digit) for digit in range(10))


class NMNIST(Dataset):
    """The recordings of one split of N-MNIST (or N-MNIST-sim), labelled by their folder.

    Reads ``root/Train/<digit>/*.bin`` (``train=True``) or ``root/Test/<digit>/*.bin``, or the
    same under ``root/NMNIST/`` (where tonic puts it), ``<digit>`` being ``0`` to ``9``. The
    recordings are ordered by digit, then by file name; other folders and files are ignored.

    Args:
        root: the folder that holds ``Train`` and ``Test`` (or ``NMNIST/Train``, ...).
        train: the training split, else the test split.
        transform: a callable applied to each recording (a structured array of
            :data:`~phased_lstm.data.EVENT_DTYPE`), e.g. ``SubsampleEvents(0.75, seed=0)``.
        target_transform: a callable applied to each label.
        cache: keep every recording in memory once read (before ``transform``), so that later
            epochs skip the disk; each DataLoader worker holds its own copy. The cached arrays
            are read-only, so that a transform that would change them in place fails loudly.
            About 32 bytes per event: ~130 kB per N-MNIST digit, ~8 GB for the real training set.

    Attributes:
        folder: the split's folder that was found.
        files: the recordings' paths, in the dataset's order.
        targets: their labels (ints 0-9), in the same order.
        classes: ``("0", ..., "9")``.
        sensor_size: ``(34, 34, 2)``: width, height, polarities.

    ``dataset[i]`` is ``(transform(events), target_transform(label))``.

    Raises:
        ValueError: when no recording is found (the message lists the folders looked at), and
            from :func:`~phased_lstm.data.read_nmnist` on a malformed file.
    """

    classes = _CLASSES
    sensor_size = SENSOR_SIZE

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        cache: bool = False,
    ):
        super().__init__()
        train = check_bool("train", train)
        self.cache = check_bool("cache", cache)
        for name, value in (("transform", transform), ("target_transform", target_transform)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
        self.root = Path(root)
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        self.folder, self.files, self.targets = _find_recordings(self.root, _SPLITS[train])
        self._cached: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} recordings")
        index %= len(self)
        events = self._cached.get(index)
        if events is None:
            events = read_nmnist(self.files[index])
            if self.cache:
                events.flags.writeable = False
                self._cached[index] = events
        target = self.targets[index]
        if self.transform is not None:
            events = self.transform(events)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return events, target

    def __repr__(self) -> str:
        split = _SPLITS[self.train]
        return f"NMNIST({split}: {len(self)} recordings in {self.folder})"


def _find_recordings(root: Path, split: str) -> tuple[Path, list[Path], list[int]]:
    candidates = (root / split, root / "NMNIST" / split)
    for folder in candidates:
        if not folder.is_dir():
            continue
        files, targets = [], []
        for label, name in enumerate(_CLASSES):
            found = sorted((folder / name).glob("*.bin")) if (folder / name).is_dir() else []
            files += found
            targets += [label] * len(found)
        if files:
            return folder, files, targets
    looked = " and ".join(f"{folder}/<digit>/*.bin" for folder in candidates)
    if not root.is_dir():
        problem = f"the folder {root} does not exist"
    else:
        problem = f"no recording found: looked for {looked}, with <digit> 0 to 9"
    raise ValueError(f"N-MNIST root {root}: {problem}")


__all__ = ["NMNIST"]
