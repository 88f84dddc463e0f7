"""The host side of the recurrence kernels (backend ``"triton"``): the tiles and the launches.

:func:`default_plan` chooses how a recurrence runs (the mode of :mod:`.loops` and its tiles) from
the shapes and the dtype; :func:`forward` and :func:`backward` allocate the outputs and launch the
kernels with that plan. :mod:`.library` wraps them as torch.library ops. Inputs arrive as the
planner admitted them (one device, one dtype) and contiguous.

Both modes keep the states in float32 (float64 for float64 inputs): bfloat16 and float16 inputs
are read and rounded to their dtype only as operands of the recurrent product, like cuDNN's. The
forward saves the gate activations and the cell state of every step; the backward runs the
recurrent part in reverse time with the in-recurrence gradient clip, then takes the gradient of
``weight_hh`` as one product over all steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .loops import INTERPRETED, backward_persistent, backward_step, forward_persistent, forward_step

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}

# Persistent mode while weight_hh takes at most this many bytes. One program streams all of
# weight_hh from L2 at every step; at the ~100 GB/s one H100/H200 multiprocessor draws from L2,
# 1 MiB costs ~10 us per step, about what the stepwise mode costs in launches (a cuBLAS product
# and a Triton kernel, ~5 us of host time each). float32: H <= 256; bfloat16: H <= 362.
_PERSISTENT_MAX_WEIGHT_BYTES = 1 << 20


@dataclass(frozen=True)
class LaunchPlan:
    """How to run one recurrence: the mode and the tiles.

    ``block_rows`` (BN) batch rows per program, ``block_hidden`` (BH) hidden units per block,
    ``block_k`` (BK) the reduction tile of the recurrent product (persistent mode), ``dot``
    whether that product uses tl.dot (needs BN, BH, BK >= 16 on a GPU) or a broadcast sum,
    ``unroll`` whether its loop over reduction tiles is unrolled at compile time.

    The ops take it as a list of ints (:meth:`to_ints`; the empty list for :func:`default_plan`),
    which is what a torch.library schema can carry.
    """

    stepwise: bool
    block_rows: int
    block_hidden: int
    block_k: int
    dot: bool
    num_warps: int = 4
    num_stages: int = 1
    unroll: bool = True

    def to_ints(self) -> list[int]:
        return [int(value) for value in astuple(self)]

    @classmethod
    def of_ints(cls, values: Sequence[int]) -> LaunchPlan:
        fields = len(cls.__dataclass_fields__)
        if len(values) != fields:
            raise ValueError(
                f"plan must be empty or hold the {fields} ints of a LaunchPlan, got {list(values)}"
            )
        stepwise, rows, hidden, block_k, dot, warps, stages, unroll = values
        return cls(bool(stepwise), rows, hidden, block_k, bool(dot), warps, stages, bool(unroll))


def _pow2(n: int, low: int = 1) -> int:
    return max(low, 1 << max(0, n - 1).bit_length())


def _tensor_cores(dtype: torch.dtype) -> bool:
    """Whether the recurrent product of this dtype may use the tensor cores: half dtypes always,
    float32 when torch allows TF32 for float32 matrix products (as cuBLAS would)."""
    if dtype in (torch.bfloat16, torch.float16):
        return True
    return dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"


def default_plan(batch: int, hidden: int, dtype: torch.dtype) -> LaunchPlan:
    """The plan for a batch of ``batch`` rows, ``hidden`` units and inputs of ``dtype``.

    The tiles are the largest that compile for sm_90 without register spills (Triton 3.6 and
    3.9). The estimates behind the choices are in docs/gpu.md; scripts/gpu_check.py times the
    alternatives on a GPU.
    """
    hp = _pow2(hidden, 16)
    if INTERPRETED:
        # Small tiles: the tests' tiny shapes still run several programs, blocks and k-tiles.
        return LaunchPlan(
            False, min(4, _pow2(batch)), min(8, hp), min(8, hp), dtype != torch.float64
        )
    itemsize = torch.finfo(dtype).bits // 8
    if 4 * hidden * hidden * itemsize > _PERSISTENT_MAX_WEIGHT_BYTES:
        if dtype == torch.float64:
            return LaunchPlan(True, block_rows=8, block_hidden=32, block_k=0, dot=False)
        return LaunchPlan(True, block_rows=16, block_hidden=64, block_k=0, dot=False)
    if _tensor_cores(dtype):
        # On the tensor cores the product is cheap: one program per 16 rows (an mma's height),
        # the reduction in tiles of up to 64, unrolled up to 128 units (beyond, it spills, and
        # the loop is pipelined instead).
        unroll = hp <= 128
        return LaunchPlan(False, 16, 32, min(hp, 64), True, 8, 1 if unroll else 3, unroll)
    if dtype == torch.float64:
        # Triton 3.6 cannot compile a float64 tl.dot: the broadcast product (only the tests
        # run float64 on a GPU; speed is no concern).
        return LaunchPlan(False, min(2, _pow2(batch)), 128, 8, False, unroll=False)
    # IEEE float32 on the CUDA cores. tl.dot takes as few as 1 row and keeps its operands in
    # shared memory (the broadcast product needs a layout change per tile, and spills when
    # unrolled); a program's product costs BN * 8 H^2 flops per step, so 4 rows per program
    # spread it over more multiprocessors. The reduction loop stays a loop, so that Triton
    # pipelines its loads (cp.async, 3 stages). Triton 3.9's LLVM aborts the process compiling
    # this tl.dot when the reduction is a single tile (Triton 3.6 does not): always two or more,
    # and the broadcast product below 17 units, where a tile cannot be smaller than 16.
    if hp <= 16:
        return LaunchPlan(False, min(4, _pow2(batch)), 16, 8, False, unroll=False)
    return LaunchPlan(False, min(4, _pow2(batch)), 32, min(32, hp // 2), True, num_stages=3,
                      unroll=False)  # fmt: skip


def plan_of(plan: Sequence[int], batch: int, hidden: int, dtype: torch.dtype) -> LaunchPlan:
    """The plan an op was given: :func:`default_plan` for the empty list."""
    return LaunchPlan.of_ints(plan) if len(plan) else default_plan(batch, hidden, dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the states, the activations and the accumulation for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _constexprs(dtype: torch.dtype, plan: LaunchPlan) -> dict:
    """The dtype arguments of the persistent kernels for inputs of ``dtype``."""
    ct = _TL_DTYPES[compute_dtype(dtype)]
    rnd = _TL_DTYPES[dtype]
    # The interpreter multiplies bfloat16 blocks wrongly (as integers); the operands, already
    # rounded to their dtype, are exact in float32, so it gets those instead.
    opt = tl.float32 if INTERPRETED and dtype in (torch.bfloat16, torch.float16) else rnd
    prec = "tf32" if _tensor_cores(dtype) else "ieee"
    return dict(CT=ct, RND=rnd, OPT=opt, DOT=plan.dot, PREC=prec)


def _launch_options(plan: LaunchPlan) -> dict:
    # Fused multiply-adds explicitly on: Triton 3.9 warns when this is left to its default.
    return dict(num_warps=plan.num_warps, num_stages=plan.num_stages, enable_fp_fusion=True)


def _device_batch_sizes(batch_sizes: Tensor | None, length: int, batch: int, device) -> Tensor:
    if batch_sizes is None:
        return torch.full((length,), batch, dtype=torch.int32, device=device)
    return batch_sizes.to(device=device, dtype=torch.int32)


def _host_batch_sizes(batch_sizes: Tensor | None, length: int, batch: int) -> list[int]:
    return [batch] * length if batch_sizes is None else batch_sizes.tolist()


def forward(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, plan: LaunchPlan, save: bool):
    """Run the forward recurrence; returns h (L, N, H), c and acts in the compute dtype (c is
    two alternating (N, H) slots and acts a stand-in when ``save`` is False)."""
    length, batch, four_h = gates_x.shape
    hidden = four_h // 4
    ct = compute_dtype(gates_x.dtype)
    device = gates_x.device
    h = torch.empty(length, batch, hidden, dtype=ct, device=device)
    c = torch.empty(length if save else 2, batch, hidden, dtype=ct, device=device)
    # Without saving, acts is never written: a one-element stand-in (an empty tensor's null
    # pointer is not something to hand a kernel).
    acts = torch.empty(length if save else 1, batch, four_h if save else 1, dtype=ct, device=device)
    h0 = h0.to(ct).contiguous()
    c0 = c0.to(ct).contiguous()
    peep = weight_ch is not None
    wch = weight_ch if peep else h0  # any pointer: not read without peepholes
    if not plan.stepwise:
        bs = _device_batch_sizes(batch_sizes, length, batch, device)
        # weight_hh^T: a tile's rows (one reduction index, BH hidden units) are contiguous.
        forward_persistent[(triton.cdiv(batch, plan.block_rows),)](
            gates_x, k, weight_hh.t().contiguous(), wch, h0, c0, h, c, acts, bs, length, batch,
            H=hidden, BN=plan.block_rows, BH=plan.block_hidden, BK=plan.block_k,
            UNROLL=plan.unroll, PEEP=peep, SAVE=save, SKIP=not save,
            **_constexprs(gates_x.dtype, plan), **_launch_options(plan),
        )  # fmt: skip
        return h, c, acts
    # Stepwise: the product in the compute dtype, cuBLAS on float32 operands (TF32 only if torch
    # allows it) whatever the input dtype, so that the states stay float32 as in the persistent
    # mode; then the cell. Rows past batch_sizes[t] are not multiplied (the kernel holds them).
    w_t = weight_hh.to(ct).t()
    pre = torch.empty(batch, four_h, dtype=ct, device=device)
    grid = (triton.cdiv(batch, plan.block_rows), triton.cdiv(hidden, plan.block_hidden))
    h_prev, c_prev = h0, c0
    for t, nb in enumerate(_host_batch_sizes(batch_sizes, length, batch)):
        if nb > 0:
            torch.mm(h_prev[:nb], w_t, out=pre[:nb])
        c_t = c[t] if save else c[t % 2]
        forward_step[grid](
            pre, gates_x[t], k[t], wch, h_prev, c_prev, h[t], c_t, acts[t] if save else pre,
            nb, batch,
            H=hidden, BN=plan.block_rows, BH=plan.block_hidden, CT=_TL_DTYPES[ct],
            PEEP=peep, SAVE=save, **_launch_options(plan),
        )  # fmt: skip
        h_prev, c_prev = h[t], c_t
    return h, c, acts


def backward(grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts, clip,
             batch_sizes, plan: LaunchPlan, weight_hh_grad: bool):  # fmt: skip
    """Gradients of (gates_x, k, weight_hh, weight_ch, h0, c0), each in its input's dtype (that
    of ``k`` for ``gates_x``); those of ``weight_hh`` without ``weight_hh_grad`` and of absent
    peepholes are ``None``."""
    length, batch, hidden = h.shape
    ct = h.dtype
    device = h.device
    peep = weight_ch is not None
    dgates = torch.empty(length, batch, 4 * hidden, dtype=ct, device=device)
    dk = torch.empty(length, batch, hidden, dtype=ct, device=device)
    # Two alternating slots; slot (L - 1) % 2 holds dL/dh and dL/dc of the last step on entry.
    dh = torch.empty(2, batch, hidden, dtype=ct, device=device)
    dc = torch.empty(2, batch, hidden, dtype=ct, device=device)
    last = (length - 1) % 2
    torch.add(grad_h[length - 1].to(ct), grad_h_n.to(ct), out=dh[last])
    dc[last].copy_(grad_c_n)
    clip_t = torch.tensor([clip], dtype=ct, device=device)
    wch = weight_ch if peep else h0
    blocks = triton.cdiv(batch, plan.block_rows)
    pp = torch.zeros(blocks if peep else 1, 3 * hidden, dtype=ct, device=device)
    h0_ct = h0.to(ct).contiguous()
    c0_ct = c0.to(ct).contiguous()
    grad_h = grad_h.contiguous()
    w = weight_hh.to(ct)
    if not plan.stepwise:
        # batch_sizes with a trailing 0: step L - 1 reads that of step L, which has no rows.
        no_rows = torch.zeros(1, dtype=torch.int32, device=device)
        bs = torch.cat([_device_batch_sizes(batch_sizes, length, batch, device), no_rows])
        before = max(length - 2, 0)
        backward_persistent[(blocks,)](
            grad_h[before], dh, dc, k[length - 1], weight_hh, wch, h0_ct, c0_ct, h[before],
            c[before], acts[length - 1], dgates[length - 1], dk[length - 1], pp, bs, clip_t,
            length, batch,
            H=hidden, BN=plan.block_rows, BH=plan.block_hidden, BK=plan.block_k, PEEP=peep,
            **_constexprs(weight_hh.dtype, plan), **_launch_options(plan),
        )  # fmt: skip
    else:
        # Stepwise: per step dL/dh_t = slot + dgates_{t+1} W_hh by cuBLAS, then the cell.
        dh_full = torch.empty(batch, hidden, dtype=ct, device=device)
        grid = (blocks, triton.cdiv(hidden, plan.block_hidden))
        sizes = _host_batch_sizes(batch_sizes, length, batch)
        for t in range(length - 1, -1, -1):
            slot, out = t % 2, (t + 1) % 2
            dh_t = dh[slot]
            if t + 1 < length and sizes[t + 1] > 0:
                dh_t = torch.addmm(dh[slot], dgates[t + 1], w, out=dh_full)
            backward_step[grid](
                dh_t, dc[slot], grad_h[max(t - 1, 0)], k[t], wch,
                h[t - 1] if t > 0 else h0_ct, c[t - 1] if t > 0 else c0_ct, acts[t], dgates[t],
                dk[t], dh[out], dc[out], pp, clip_t, sizes[t], batch, batch if t > 0 else 0,
                H=hidden, BN=plan.block_rows, BH=plan.block_hidden, CT=_TL_DTYPES[ct],
                PEEP=peep, **_launch_options(plan),
            )  # fmt: skip
    # The last step (t = 0) left dL/dh_0 without its dgates_0 W_hh term, in slot 1.
    d_h0 = torch.addmm(dh[1], dgates[0], w)
    d_whh = None
    if weight_hh_grad:
        # sum_t dgates_t^T h_{t-1}: one product over all steps but the first, plus the first.
        d_whh = dgates[0].t() @ h0_ct
        if length > 1:
            d_whh.addmm_(dgates[1:].reshape(-1, 4 * hidden).t(), h[:-1].reshape(-1, hidden))
        d_whh = d_whh.to(weight_hh.dtype)
    d_wch = pp.sum(0).to(weight_ch.dtype) if peep else None
    return (
        dgates.to(k.dtype),
        dk.to(k.dtype),
        d_whh,
        d_wch,
        d_h0.to(h0.dtype),
        dc[1].to(c0.dtype, copy=True),
    )
