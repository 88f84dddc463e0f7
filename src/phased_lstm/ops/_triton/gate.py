"""The time gate of a whole sequence in one Triton launch, forward and backward (GPU).

The counterpart of ``_cpu/csrc/time_gate.cpp`` for the ``"triton"`` backend: the kernels and
their launches, which :mod:`.library` registers as ops; loaded with the backend's other kernels
on first use. On a GPU the readable definition (:func:`phased_lstm.functional.time_gate`) is a
dozen full-size float64 passes plus as many in its backward; here each element is computed once,
in float64 with the same floor-mod as the C++ kernel, ``k = 0`` is written on padded steps, and
the backward reduces each block of rows into partial sums of the ``(H,)`` gradients of period,
shift and r_on (summed afterwards, in a fixed order: no atomics, the same result on every run).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

f64 = torch.float64


@triton.jit
def _phase(x, tau, inv_tau):
    """(x mod tau) / tau in [0, 1), the floor-mod of torch.remainder: the quotient from a
    multiplication, the remainder from one fused multiply-add, corrected into [0, tau)."""
    q = tl.floor(x * inv_tau)
    m = tl.fma(-q, tau, x)
    m = tl.where(m < 0.0, m + tau, tl.where(m >= tau, m - tau, m))
    phase = m * inv_tau
    # Rounding can give 1 for a remainder just under tau: that phase is 1 - eps, i.e. 0.
    return tl.where(phase >= 1.0, phase - 1.0, phase)


@triton.jit
def _gate_tile(
    times_ptr,
    period_ptr,
    shift_ptr,
    r_on_ptr,
    valid_ptr,
    rows,
    cols,
    R,
    H: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    rmask = rows < R
    cmask = cols < H
    t = tl.load(times_ptr + rows, mask=rmask, other=0.0)
    tau = tl.load(period_ptr + cols, mask=cmask, other=1.0)
    s = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    r = tl.load(r_on_ptr + cols, mask=cmask, other=1.0)
    inv_tau = 1.0 / tau
    x = t[:, None] - s[None, :]
    phase = _phase(x, tau[None, :], inv_tau[None, :])
    live = rmask[:, None] & cmask[None, :]
    if HAS_VALID:
        live = live & (tl.load(valid_ptr + rows, mask=rmask, other=0) != 0)[:, None]
    return x, phase, r[None, :], inv_tau[None, :], live


@triton.jit
def _gate_forward(
    times_ptr,
    period_ptr,
    shift_ptr,
    r_on_ptr,
    valid_ptr,
    leak_ptr,
    k_ptr,
    R,
    H: tl.constexpr,
    BR: tl.constexpr,
    BH: tl.constexpr,
    HAS_VALID: tl.constexpr,
    OUT: tl.constexpr,
):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    x, phase, r, inv_tau, live = _gate_tile(
        times_ptr, period_ptr, shift_ptr, r_on_ptr, valid_ptr, rows, cols, R, H, HAS_VALID
    )
    leak = tl.load(leak_ptr)
    rising = 2.0 * phase / r
    k = tl.where(phase < r / 2.0, rising, tl.where(phase < r, 2.0 - rising, leak * phase))
    k = tl.where(live, k, 0.0)
    if OUT != tl.float64:
        k = k.to(tl.float32)
    mask = (rows < R)[:, None] & (cols < H)[None, :]
    tl.store(k_ptr + rows[:, None] * H + cols[None, :], k.to(OUT), mask=mask)


@triton.jit
def _gate_backward(
    grad_ptr,
    times_ptr,
    period_ptr,
    shift_ptr,
    r_on_ptr,
    valid_ptr,
    leak_ptr,
    part_ptr,
    R,
    rows_per_program,
    H: tl.constexpr,
    BR: tl.constexpr,
    BH: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    """Partial sums over rows [pid0 * rows_per_program, ...) into part (programs, 3, H)."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    leak = tl.load(leak_ptr)
    acc_period = tl.zeros((BH,), dtype=tl.float64)
    acc_shift = tl.zeros((BH,), dtype=tl.float64)
    acc_r_on = tl.zeros((BH,), dtype=tl.float64)
    start = pid * rows_per_program
    for r0 in range(start, start + rows_per_program, BR):
        rows = r0 + tl.arange(0, BR)
        x, phase, r, inv_tau, live = _gate_tile(
            times_ptr, period_ptr, shift_ptr, r_on_ptr, valid_ptr, rows, cols, R, H, HAS_VALID
        )
        g = tl.load(grad_ptr + rows[:, None] * H + cols[None, :], mask=live, other=0.0)
        g = g.to(tl.float64)
        rising = phase < r / 2.0
        falling = (phase >= r / 2.0) & (phase < r)
        dk_dphase = tl.where(rising, 2.0 / r, tl.where(falling, -2.0 / r, leak))
        dk_dr = tl.where(
            rising, -2.0 * phase / (r * r), tl.where(falling, 2.0 * phase / (r * r), 0.0)
        )
        # phase = (x - tau floor(x / tau)) / tau, with d(x mod tau)/dtau = -floor(x / tau).
        dphase_dtau = (-tl.floor(x * inv_tau) - phase) * inv_tau
        gp = g * dk_dphase
        acc_period += tl.sum(gp * dphase_dtau, axis=0)
        acc_shift -= tl.sum(gp * inv_tau, axis=0)
        acc_r_on += tl.sum(g * dk_dr, axis=0)
    cmask = cols < H
    out = part_ptr + pid * 3 * H + cols
    tl.store(out, acc_period, mask=cmask)
    tl.store(out + H, acc_shift, mask=cmask)
    tl.store(out + 2 * H, acc_r_on, mask=cmask)


_OUT = {
    torch.float32: tl.float32,
    f64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}
_BR, _BH = 32, 32
_OPTIONS = dict(num_warps=4, enable_fp_fusion=True)


def _valid_bytes(valid: Tensor | None, times: Tensor) -> Tensor:
    if valid is None:
        return times  # any pointer: not read
    return valid.contiguous().view(torch.uint8)


def _leak(leak: float, times: Tensor) -> Tensor:
    # Through memory: Triton passes a Python float to a kernel as float32, the gate is float64.
    return torch.tensor([leak], dtype=f64, device=times.device)


def forward(times, period, shift, r_on, leak: float, valid, dtype: torch.dtype) -> Tensor:
    """k of shape ``(*times.shape, H)`` in ``dtype``, zero where ``valid`` is False; float64
    contiguous ``times``, ``period``, ``shift``, ``r_on`` (the op :mod:`.library` registers)."""
    rows, hidden = times.numel(), period.numel()
    k = torch.empty(*times.shape, hidden, dtype=dtype, device=times.device)
    if rows > 0 and hidden > 0:
        grid = (triton.cdiv(rows, _BR), triton.cdiv(hidden, _BH))
        _gate_forward[grid](
            times, period, shift, r_on, _valid_bytes(valid, times), _leak(leak, times), k, rows,
            H=hidden, BR=_BR, BH=_BH, HAS_VALID=valid is not None, OUT=_OUT[dtype], **_OPTIONS,
        )  # fmt: skip
    return k


def backward(grad_k, times, period, shift, r_on, leak: float, valid) -> tuple[Tensor, ...]:
    """The gradients of period, shift and r_on (float64, ``(H,)`` each) for ``grad_k``."""
    rows, hidden = times.numel(), period.numel()
    # Enough programs to fill a GPU, each summing a contiguous run of rows.
    blocks = triton.cdiv(max(rows, 1), _BR)
    programs = max(1, min(blocks, 1024 // triton.cdiv(max(hidden, 1), _BH)))
    rows_per_program = triton.cdiv(blocks, programs) * _BR
    programs = triton.cdiv(max(rows, 1), rows_per_program)
    part = torch.zeros(programs, 3, hidden, dtype=f64, device=times.device)
    if rows > 0 and hidden > 0:
        _gate_backward[(programs, triton.cdiv(hidden, _BH))](
            grad_k, times, period, shift, r_on, _valid_bytes(valid, times), _leak(leak, times),
            part, rows, rows_per_program,
            H=hidden, BR=_BR, BH=_BH, HAS_VALID=valid is not None, **_OPTIONS,
        )  # fmt: skip
    # Three separate tensors (an op's outputs may not share memory), each summed in one order.
    return tuple(part[:, which].sum(0) for which in range(3))
