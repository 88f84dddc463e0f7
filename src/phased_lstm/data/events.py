"""Event-camera recordings as NumPy structured arrays, and the N-MNIST file format.

An event is one change of brightness seen by one pixel of the sensor: its column ``x``, its row
``y``, its timestamp ``t`` in microseconds and its polarity ``p`` (1 = ON, the pixel got
brighter; 0 = OFF, it got darker). A recording is a 1-D structured array of :data:`EVENT_DTYPE`
in time order. tonic's N-MNIST dataset uses the same fields in the same order (``x, y, t, p``,
all 64-bit integers), so arrays pass between tonic and this package unchanged.

N-MNIST stores one recording per file, a headerless list of 5-byte events: byte 0 is ``x``,
byte 1 is ``y``, the top bit of byte 2 is ``p`` and the remaining 23 bits (the low 7 bits of
byte 2, then bytes 3 and 4, big-endian) are ``t``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import write_atomic

EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
SENSOR_SIZE = (34, 34, 2)  # (width, height, polarities), as tonic's NMNIST.sensor_size

_MAX_TIMESTAMP = 2**23 - 1
# Readers of the format (the dataset authors', tonic's) take a record with y = 240 for a
# timestamp-overflow marker, not an event: every later timestamp is 2**13 us later.
_OVERFLOW_Y = 240
_OVERFLOW_US = 2**13


def read_nmnist(path: str | os.PathLike) -> np.ndarray:
    """Read one N-MNIST recording (a ``.bin`` file) into a structured array of events.

    Args:
        path: the file.

    Returns:
        A 1-D array of :data:`EVENT_DTYPE` (fields ``x``, ``y``, ``t``, ``p``, int64) in file
        order: ``x`` and ``y`` in ``[0, 34)``, ``t`` in microseconds, ``p`` 1 for ON and 0 for
        OFF. An empty file gives 0 events. Records with ``y = 240`` are read as
        timestamp-overflow markers, as the format's other readers do: they add 8,192 us to every
        later timestamp and are not returned.

    Raises:
        ValueError: naming the file, when it cannot be read, when its size is not a multiple of
            5 bytes, or when an event lies outside the 34x34 sensor.

    Example::

        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "00001.bin"
        >>> _ = path.write_bytes(bytes([3, 4, 0x80 | 0x01, 0x02, 0x03]))  # x=3, y=4, ON
        >>> events = read_nmnist(path)
        >>> events.dtype.names, int(events["t"][0]) == 0x010203, int(events["p"][0])
        (('x', 'y', 't', 'p'), True, 1)
    """
    try:
        raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"cannot read N-MNIST file {path}: {error.strerror or error}") from error
    if raw.size % 5:
        raise ValueError(
            f"N-MNIST file {path} has {raw.size} bytes, not a multiple of 5 (each event is 5 "
            "bytes): the file is truncated or is not an N-MNIST recording"
        )
    record = raw.reshape(-1, 5).astype(np.int64)
    x, y = record[:, 0], record[:, 1]
    p = record[:, 2] >> 7
    t = ((record[:, 2] & 0x7F) << 16) | (record[:, 3] << 8) | record[:, 4]
    overflow = y == _OVERFLOW_Y
    if overflow.any():
        t = t + _OVERFLOW_US * np.cumsum(overflow)
        keep = ~overflow
        x, y, t, p = x[keep], y[keep], t[keep], p[keep]
    _check_addresses(x, y, f"N-MNIST file {path}")

    events = np.empty(x.size, dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events


def write_nmnist(path: str | os.PathLike, events: np.ndarray) -> None:
    """Write one recording as an N-MNIST ``.bin`` file (5 bytes per event), atomically.

    The file appears complete or not at all: the bytes go to a temporary file in the same
    folder, which then replaces ``path``. The folder must exist.

    Args:
        path: the file to write (replaced if it exists).
        events: a 1-D structured array with integer fields ``x``, ``y``, ``t``, ``p`` (any
            field order and integer widths, e.g. :data:`EVENT_DTYPE` or tonic's), written in
            its order.

    Raises:
        TypeError: when ``events`` is not such an array.
        ValueError: naming the file, when an event lies outside the 34x34 sensor, a polarity
            is not 0 or 1, or a timestamp is negative or does not fit the format's 23 bits
            (0 to 8,388,607 us).
    """
    _check_events(events)
    where = f"cannot write N-MNIST file {path}"
    if events.ndim != 1:
        raise ValueError(f"{where}: events must be a 1-D array, got shape {events.shape}")
    x, y, t, p = (events[name].astype(np.int64) for name in ("x", "y", "t", "p"))
    _check_addresses(x, y, where)
    _check_first(
        (p != 0) & (p != 1), where, lambda k: f"event {k} has polarity p={p[k]}, expected 0 or 1"
    )
    _check_first(
        (t < 0) | (t > _MAX_TIMESTAMP),
        where,
        lambda k: (
            f"event {k} has timestamp t={t[k]} us, which does not fit the format's 23 "
            f"bits (0 to {_MAX_TIMESTAMP} us)"
        ),
    )
    record = np.empty((x.size, 5), dtype=np.uint8)
    record[:, 0], record[:, 1] = x, y
    record[:, 2] = (p << 7) | (t >> 16)
    record[:, 3], record[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    write_atomic(Path(path), record.tobytes())


def _check_events(events: object, name: str = "events") -> np.ndarray:
    """Check that ``events`` is a structured array with integer fields ``x``, ``y``, ``t``, ``p``.

    Returns ``events`` unchanged; raises a TypeError saying what came otherwise.
    """
    names = getattr(getattr(events, "dtype", None), "names", None)
    if not isinstance(events, np.ndarray) or names is None:
        raise TypeError(
            f"{name} must be a NumPy structured array with fields x, y, t, p (e.g. of "
            f"phased_lstm.data.EVENT_DTYPE), got {_describe(events)}"
        )
    missing = [field for field in ("x", "y", "t", "p") if field not in names]
    if missing:
        raise TypeError(
            f"{name} must have the fields x, y, t, p, got fields {names} (missing "
            f"{', '.join(missing)})"
        )
    for field in ("x", "y", "t", "p"):
        if events.dtype[field].kind not in "iub":
            raise TypeError(f"{name} field {field!r} must hold integers, got {events.dtype[field]}")
    return events


def _check_addresses(x: np.ndarray, y: np.ndarray, where: str) -> None:
    width, height, _ = SENSOR_SIZE
    _check_first(
        (x < 0) | (x >= width) | (y < 0) | (y >= height),
        where,
        lambda k: f"event {k} has address (x={x[k]}, y={y[k]}) outside the {width}x{height} sensor",
    )


def _check_first(bad: np.ndarray, where: str, describe) -> None:
    """Raise a ValueError describing the first flagged event and how many there are."""
    if bad.any():
        first = int(np.argmax(bad))
        count = int(bad.sum())
        more = f" ({count} such events)" if count > 1 else ""
        raise ValueError(f"{where}: {describe(first)}{more}")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype}"
    return type(value).__name__


__all__ = ["EVENT_DTYPE", "SENSOR_SIZE", "read_nmnist", "write_nmnist"]
