"""Validation of user input, called once at the entry of the public functions.

Each check raises a ValueError or TypeError that names the argument, what was expected and what
came, so that a mistake is reported where it was made rather than deep inside the recurrence.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def shape_str(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    low = 0 if allow_zero else 1
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_r_on(value: object) -> float:
    r_on = check_real("r_on", value)
    if not 0.0 < r_on <= 1.0:
        raise ValueError(f"r_on must lie in (0, 1], got {r_on}")
    return r_on


def check_leak(value: object) -> float:
    leak = check_real("leak", value)
    if not 0.0 <= leak < 1.0:
        raise ValueError(f"leak must lie in [0, 1), got {leak}")
    return leak


def check_grad_clip(value: object) -> float | None:
    if value is None:
        return None
    clip = check_real("grad_clip", value)
    if clip <= 0.0:
        raise ValueError(f"grad_clip must be None or > 0, got {clip}")
    return clip


def check_batch_sizes(value: object, length: int, batch: int) -> Tensor:
    if not isinstance(value, Tensor) or value.dtype != torch.int64:
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"batch_sizes must be an int64 torch.Tensor, got {got}")
    if value.shape != (length,):
        raise ValueError(
            f"batch_sizes must have shape (L,) = ({length},), got {shape_str(value.shape)}"
        )
    value = value.cpu()
    if length and (int(value.min()) < 0 or int(value.max()) > batch):
        raise ValueError(
            f"batch_sizes must lie in [0, N] = [0, {batch}], got values from {int(value.min())} "
            f"to {int(value.max())}"
        )
    if length > 1 and bool((value[1:] > value[:-1]).any()):
        raise ValueError(
            "batch_sizes must not increase from step to step (samples sorted by length, "
            "longest first, as in a PackedSequence)"
        )
    return value


def check_packed_batch_sizes(value: object, rows: int, batch: int) -> Tensor:
    """``batch_sizes`` of the packed layout: ``(L,)`` int64, non-increasing, in ``[0, N]``,
    summing to the ``S`` rows of the packed data."""
    if not isinstance(value, Tensor) or value.dtype != torch.int64 or value.dim() != 1:
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(
            f"batch_sizes must be an int64 torch.Tensor of shape (L,) in the packed layout "
            f"(gates_x of shape (S, 4H)), got {got}"
        )
    value = value.cpu()
    if int(value.sum()) != rows:
        raise ValueError(
            f"batch_sizes must sum to the S = {rows} rows of the packed gates_x, "
            f"got {int(value.sum())}"
        )
    return check_batch_sizes(value, value.shape[0], batch)


def check_dropout(value: object) -> float:
    p = check_real("dropout", value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout must lie in [0, 1], got {p}")
    return p


def check_range(name: str, value: object, *, positive: bool) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}")
    low, high = (check_real(name, v) for v in value)
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive: expected 0 < low <= high, got ({low}, {high})")
    if low > high:
        raise ValueError(f"{name} must have low <= high, got ({low}, {high})")
    return low, high


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_times(
    times: object,
    expected_shape: tuple[int, ...],
    layout: str,
    *,
    finite: bool = True,
    name: str = "times",
) -> Tensor:
    """Timestamps: a real tensor of ``expected_shape`` (described by ``layout``).

    With ``finite=False`` the caller checks finiteness itself, on the valid steps only.
    """
    times = check_tensor(name, times)
    if times.is_complex() or times.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor (float32 or float64), got {times.dtype}")
    if tuple(times.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {layout} = {shape_str(expected_shape)} like input, "
            f"got {shape_str(times.shape)}"
        )
    if finite:
        check_finite_times(times, name)
    return times


def check_finite_times(times: Tensor, name: str = "times") -> None:
    if times.is_floating_point() and not bool(torch.isfinite(times).all()):
        raise ValueError(f"{name} must be finite at every valid step, got NaN or infinity")


def check_lengths(lengths: object, batch: int, max_len: int, *, values: bool = True) -> Tensor:
    """Per-sample lengths: integers of shape (N,) in [0, L], returned as int64.

    ``values=False`` checks the dtype and shape only (for a tensor whose values cannot be read,
    on the meta device).
    """
    if isinstance(lengths, (list, tuple)):
        lengths = torch.as_tensor(lengths)
    lengths = check_tensor("lengths", lengths)
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(
            f"lengths must have shape (N,) = ({batch},), got {shape_str(lengths.shape)}"
        )
    lengths = lengths.to(torch.int64)
    if values and batch and (int(lengths.min()) < 0 or int(lengths.max()) > max_len):
        raise ValueError(
            f"lengths must lie in [0, L] = [0, {max_len}], "
            f"got values from {int(lengths.min())} to {int(lengths.max())}"
        )
    return lengths


def check_hx(
    hx: object, expected_shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Initial state: a pair (h_0, c_0) of tensors of ``expected_shape`` and ``dtype``."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be a pair (h_0, c_0) of tensors, got {type(hx).__name__}")
    out = []
    for name, state in zip(("h_0", "c_0"), hx, strict=True):
        state = check_tensor(f"hx {name}", state)
        if tuple(state.shape) != tuple(expected_shape):
            raise ValueError(
                f"hx {name} must have shape {shape_str(expected_shape)}, "
                f"got {shape_str(state.shape)}"
            )
        if state.dtype != dtype:
            raise TypeError(f"hx {name} must have dtype {dtype} like input, got {state.dtype}")
        out.append(state)
    return out[0], out[1]
