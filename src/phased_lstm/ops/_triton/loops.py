"""Triton kernels of the recurrence (backend ``"triton"``): the time loop inside the GPU kernel.

Imported on first use by :mod:`.backend`, never at ``import phased_lstm``:
Triton decides when a kernel is defined whether it is compiled for the GPU or run by its CPU
interpreter (``TRITON_INTERPRET=1``), so this module must not load before the caller has chosen.
The equations and their order are those of :mod:`phased_lstm.ops.reference`; docs/gpu.md has the
design and the cost estimates behind the tile sizes.

Two ways to run the forward and backward loops, chosen by :func:`_plan`:

* persistent (``H`` up to a few hundred): one program per block of batch rows runs every step. It
  keeps its rows' states in the step outputs, which stay in L1/L2, and reads ``weight_hh`` from L2
  at every step (it does not fit on one multiprocessor); a CTA barrier separates the steps. One
  launch per sequence: no host round trip in the time loop.
* stepwise (larger ``H``): haste's layout, per step one cuBLAS product for the whole batch and one
  Triton kernel for the elementwise work, because a single multiprocessor streaming a ``4H x H``
  matrix every step is slower than cuBLAS spreading it over the chip plus two launches.

Both keep the states in float32 (float64 for float64 inputs): bfloat16 and float16 inputs are read
and rounded to their dtype only as operands of the recurrent product, like cuDNN's. The forward
saves the gate activations and the cell state of every step; the backward runs the recurrent part
in reverse time with the in-recurrence gradient clip, then takes the gradient of ``weight_hh`` as
one product over all steps. Without gradients, a block of neurons whose time gate is closed for all
rows of the program (k == 0 exactly, as in eval mode) skips its share of ``weight_hh``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._planner import needs_grad

# ------------------------------------------------------------------------------ device code


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # From one exponential of a non-positive argument (never overflows); near 0, where
    # 1 - e^{-2|x|} cancels, the Taylor series to x^11, whose error at the cut is below the
    # dtype's rounding (float32: 2e-9 at 0.3; float64: 1e-25 at 0.02, where the cancellation
    # costs 3 of 16 digits).
    if x.dtype == tl.float64:
        cut = 0.02
    else:
        cut = 0.3
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    far = (1.0 - e) / (1.0 + e)
    z = a * a
    p = -1382.0 / 155925.0
    p = p * z + 62.0 / 2835.0
    p = p * z - 17.0 / 315.0
    p = p * z + 2.0 / 15.0
    p = p * z - 1.0 / 3.0
    near = a + a * z * p
    t = tl.where(a < cut, near, far)
    return tl.where(x < 0, -t, t)


@triton.jit
def _mac(
    acc,
    a,
    w,
    CT: tl.constexpr,
    RND: tl.constexpr,
    OPT: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    """acc (BN, BH) += a @ w, w (BK, BH). `a` is rounded to RND (the dtype of weight_hh) first.
    With DOT, `a` is (BN, BK) and the product tl.dot on OPT operands (RND, or float32 where the
    interpreter cannot take RND). Without, `a` comes transposed, (BK, BN), for a broadcast
    product summed in CT over its first axis: Triton spreads the last axis (BH) over the lanes and
    warps and keeps the others in each thread's registers, so every thread owns hidden units and
    sums over k alone, without shuffles (rows below 16, IEEE float32, float64)."""
    a = a.to(RND)
    if DOT:
        acc = tl.dot(a.to(OPT), w.to(OPT), acc, input_precision=PREC)
    else:
        acc += tl.sum(a.to(CT)[:, :, None] * w.to(CT)[:, None, :], axis=0)
    return acc


@triton.jit
def _rows_tile(ptr, rows, in_batch, ks, kmask, STRIDE: tl.constexpr, DOT: tl.constexpr):
    """The tile ptr[rows, ks] of a row-major matrix of STRIDE columns: (BN, BK) for tl.dot,
    transposed (BK, BN) for the broadcast product (see _mac)."""
    if DOT:
        tile = tl.load(
            ptr + rows[:, None] * STRIDE + ks[None, :],
            mask=in_batch[:, None] & kmask[None, :],
            other=0.0,
        )
    else:
        tile = tl.load(
            ptr + rows[None, :] * STRIDE + ks[:, None],
            mask=kmask[:, None] & in_batch[None, :],
            other=0.0,
        )
    return tile


@triton.jit
def _clip(x, clip):
    # where, not min/max: NaN passes unchanged, as in the reference's clamp.
    return tl.where(x > clip, clip, tl.where(x < -clip, -clip, x))


@triton.jit
def _cell_forward(pi, pf, pg, po, cp, hp, kt, wci, wcf, wco, PEEP: tl.constexpr):
    """One block of the cell from its pre-activations (without peepholes): the activations and
    the time-gated next states, in the reference's order of operations."""
    if PEEP:
        pi = pi + wci[None, :] * cp
        pf = pf + wcf[None, :] * cp
    i = _sigmoid(pi)
    f = _sigmoid(pf)
    g = _tanh(pg)
    c_new = f * cp + i * g
    if PEEP:
        po = po + wco[None, :] * c_new
    o = _sigmoid(po)
    h_new = o * _tanh(c_new)
    c_next = kt * c_new + (1.0 - kt) * cp
    h_next = kt * h_new + (1.0 - kt) * hp
    return i, f, g, o, c_next, h_next


@triton.jit
def _cell_backward(i, f, g, o, cp, hp, kt, dh, dc, wci, wcf, wco, PEEP: tl.constexpr):
    """Gradients of one block of one step (see csrc/recurrence.cpp, backward_row): dk, the
    unclipped gradients of the four pre-activations, the recomputed c_new and dL/dc_{t-1}."""
    c_new = f * cp + i * g
    tc = _tanh(c_new)
    h_new = o * tc
    dk = dh * (h_new - hp) + dc * (c_new - cp)
    dh_new = kt * dh
    dao = dh_new * tc * o * (1.0 - o)
    dc_new = kt * dc + dh_new * o * (1.0 - tc * tc)
    if PEEP:
        dc_new = dc_new + dao * wco[None, :]
    dai = dc_new * g * i * (1.0 - i)
    daf = dc_new * cp * f * (1.0 - f)
    dag = dc_new * i * (1.0 - g * g)
    dcp = (1.0 - kt) * dc + dc_new * f
    if PEEP:
        dcp = dcp + dai * wci[None, :] + daf * wcf[None, :]
    return dk, dai, daf, dag, dao, c_new, dcp


@triton.jit
def _peepholes(wch_ptr, cols, cmask, H: tl.constexpr, CT: tl.constexpr):
    wci = tl.load(wch_ptr + cols, mask=cmask, other=0.0).to(CT)
    wcf = tl.load(wch_ptr + H + cols, mask=cmask, other=0.0).to(CT)
    wco = tl.load(wch_ptr + 2 * H + cols, mask=cmask, other=0.0).to(CT)
    return wci, wcf, wco


@triton.jit
def _recurrent_tile(
    acc_i, acc_f, acc_g, acc_o, h_ptr, w_t_ptr, rows, in_batch, cols, cmask, kb,
    H: tl.constexpr, BK: tl.constexpr, CT: tl.constexpr, RND: tl.constexpr,
    OPT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Adds h[:, kb:kb+BK] times the matching (BK, BH) tile of weight_hh^T of each gate
    (w_t_ptr: weight_hh^T, (H, 4H), so that a tile's rows are contiguous across the lanes)."""
    ks = kb + tl.arange(0, BK)
    kmask = ks < H
    a = _rows_tile(h_ptr, rows, in_batch, ks, kmask, H, DOT)
    # Element (k, j) of a gate's tile is weight_hh[gate * H + cols[j], k].
    w_tile = w_t_ptr + ks[:, None] * (4 * H) + cols[None, :]
    wmask = kmask[:, None] & cmask[None, :]
    w_i = tl.load(w_tile, mask=wmask, other=0.0)
    w_f = tl.load(w_tile + H, mask=wmask, other=0.0)
    w_g = tl.load(w_tile + 2 * H, mask=wmask, other=0.0)
    w_o = tl.load(w_tile + 3 * H, mask=wmask, other=0.0)
    acc_i = _mac(acc_i, a, w_i, CT, RND, OPT, DOT, PREC)
    acc_f = _mac(acc_f, a, w_f, CT, RND, OPT, DOT, PREC)
    acc_g = _mac(acc_g, a, w_g, CT, RND, OPT, DOT, PREC)
    acc_o = _mac(acc_o, a, w_o, CT, RND, OPT, DOT, PREC)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _recurrent_product(
    h_ptr, w_t_ptr, rows, in_batch, cols, cmask, H: tl.constexpr, BN: tl.constexpr,
    BH: tl.constexpr, BK: tl.constexpr, CT: tl.constexpr, RND: tl.constexpr,
    OPT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    """h_prev W_hh^T for the block `cols` of each gate: four (BN, BH) accumulators. UNROLL
    unrolls the reduction, so that the loads of all its tiles can be in flight at once."""
    acc_i = tl.zeros((BN, BH), dtype=CT)
    acc_f = tl.zeros((BN, BH), dtype=CT)
    acc_g = tl.zeros((BN, BH), dtype=CT)
    acc_o = tl.zeros((BN, BH), dtype=CT)
    if UNROLL:
        for kb in tl.static_range(0, H, BK):
            acc_i, acc_f, acc_g, acc_o = _recurrent_tile(
                acc_i, acc_f, acc_g, acc_o, h_ptr, w_t_ptr, rows, in_batch, cols, cmask, kb,
                H, BK, CT, RND, OPT, DOT, PREC,
            )  # fmt: skip
    else:
        for kb in range(0, H, BK):
            acc_i, acc_f, acc_g, acc_o = _recurrent_tile(
                acc_i, acc_f, acc_g, acc_o, h_ptr, w_t_ptr, rows, in_batch, cols, cmask, kb,
                H, BK, CT, RND, OPT, DOT, PREC,
            )  # fmt: skip
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _dgates_tile(
    acc, dg_ptr, w_ptr, rows, in_batch, cols, cmask, gate, kb, H: tl.constexpr,
    BK: tl.constexpr, CT: tl.constexpr, RND: tl.constexpr, OPT: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Adds dgates[:, gate, kb:kb+BK] times the (BK, BH) tile weight_hh[gate * H + ks, cols]."""
    ks = kb + tl.arange(0, BK)
    kmask = ks < H
    a = _rows_tile(dg_ptr + gate * H, rows, in_batch, ks, kmask, 4 * H, DOT)
    w = tl.load(
        w_ptr + (gate * H + ks[:, None]) * H + cols[None, :],
        mask=kmask[:, None] & cmask[None, :],
        other=0.0,
    )
    return _mac(acc, a, w, CT, RND, OPT, DOT, PREC)


@triton.jit
def _dgates_product(
    dg_ptr, w_ptr, rows, in_batch, cols, cmask, H: tl.constexpr, BN: tl.constexpr,
    BH: tl.constexpr, BK: tl.constexpr, CT: tl.constexpr, RND: tl.constexpr,
    OPT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dgates W_hh for the block `cols` of dL/dh: (BN, BH). Never unrolled: with its four gates
    the hoisted loads would spill registers (see scripts/triton_compile_check.py)."""
    acc = tl.zeros((BN, BH), dtype=CT)
    for gate in range(4):
        for kb in range(0, H, BK):
            acc = _dgates_tile(
                acc, dg_ptr, w_ptr, rows, in_batch, cols, cmask, gate, kb, H, BK, CT, RND, OPT,
                DOT, PREC,
            )  # fmt: skip
    return acc


@triton.jit
def _forward_block(
    pi, pf, pg, po, hp, cp, kt, wch_ptr, h_ptr, c_ptr, acts_ptr, cols, cmask, mask, valid,
    state, gates, H: tl.constexpr, CT: tl.constexpr, PEEP: tl.constexpr, SAVE: tl.constexpr,
):  # fmt: skip
    """The cell for one block of one step from its pre-activations: stores h_t and c_t (rows
    past batch_sizes[t], padding, hold their state) and, with SAVE, the activations."""
    if PEEP:
        wci, wcf, wco = _peepholes(wch_ptr, cols, cmask, H, CT)
    else:
        wci = 0.0
        wcf = 0.0
        wco = 0.0
    i, f, g, o, c_next, h_next = _cell_forward(pi, pf, pg, po, cp, hp, kt, wci, wcf, wco, PEEP)
    tl.store(h_ptr + state, tl.where(valid[:, None], h_next, hp), mask=mask)
    tl.store(c_ptr + state, tl.where(valid[:, None], c_next, cp), mask=mask)
    if SAVE:
        smask = mask & valid[:, None]
        tl.store(acts_ptr + gates, i, mask=smask)
        tl.store(acts_ptr + gates + H, f, mask=smask)
        tl.store(acts_ptr + gates + 2 * H, g, mask=smask)
        tl.store(acts_ptr + gates + 3 * H, o, mask=smask)


@triton.jit
def _backward_block(
    dh, dc, seed, acts_ptr, hp_ptr, cp_ptr, k_ptr, wch_ptr, dk_ptr, dg_ptr, dh_out_ptr,
    dc_out_ptr, pp_ptr, clip, rows, cols, cmask, mask, valid, state, H: tl.constexpr,
    CT: tl.constexpr, PEEP: tl.constexpr,
):  # fmt: skip
    """The backward of one block of one step, given dL/dh_t (dh), dL/dc_t (dc) and the output's
    gradient at t - 1 (seed): stores dk_t, the clipped dgates_t, dL/dc_{t-1} and dL/dh_{t-1}
    without its dgates_t W_hh term; adds the block's peephole gradients to pp_ptr (a row of
    3H sums owned by this program). Padding rows get zero gradients and pass dh, dc through."""
    gates = rows[:, None] * (4 * H) + cols[None, :]
    keep = valid[:, None]
    amask = mask & keep
    i = tl.load(acts_ptr + gates, mask=amask, other=0.0)
    f = tl.load(acts_ptr + gates + H, mask=amask, other=0.0)
    g = tl.load(acts_ptr + gates + 2 * H, mask=amask, other=0.0)
    o = tl.load(acts_ptr + gates + 3 * H, mask=amask, other=0.0)
    cp = tl.load(cp_ptr + state, mask=mask, other=0.0)
    hp = tl.load(hp_ptr + state, mask=mask, other=0.0)
    kt = tl.load(k_ptr + state, mask=amask, other=0.0).to(CT)
    if PEEP:
        wci, wcf, wco = _peepholes(wch_ptr, cols, cmask, H, CT)
    else:
        wci = 0.0
        wcf = 0.0
        wco = 0.0
    dk, dai, daf, dag, dao, c_new, dcp = _cell_backward(
        i, f, g, o, cp, hp, kt, dh, dc, wci, wcf, wco, PEEP
    )
    dai = tl.where(keep, dai, 0.0)
    daf = tl.where(keep, daf, 0.0)
    dag = tl.where(keep, dag, 0.0)
    dao = tl.where(keep, dao, 0.0)
    tl.store(dk_ptr + state, tl.where(keep, dk, 0.0), mask=mask)
    tl.store(dg_ptr + gates, _clip(dai, clip), mask=mask)
    tl.store(dg_ptr + gates + H, _clip(daf, clip), mask=mask)
    tl.store(dg_ptr + gates + 2 * H, _clip(dag, clip), mask=mask)
    tl.store(dg_ptr + gates + 3 * H, _clip(dao, clip), mask=mask)
    tl.store(dh_out_ptr + state, tl.where(keep, (1.0 - kt) * dh, dh) + seed, mask=mask)
    tl.store(dc_out_ptr + state, tl.where(keep, dcp, dc), mask=mask)
    if PEEP:
        # The peepholes see the unclipped gradients (they are added after the clip).
        pp = pp_ptr + cols
        tl.store(pp, tl.load(pp, mask=cmask) + tl.sum(dai * cp, axis=0), mask=cmask)
        tl.store(pp + H, tl.load(pp + H, mask=cmask) + tl.sum(daf * cp, axis=0), mask=cmask)
        tl.store(
            pp + 2 * H, tl.load(pp + 2 * H, mask=cmask) + tl.sum(dao * c_new, axis=0), mask=cmask
        )


@triton.jit(do_not_specialize=["L"])
def _forward_persistent(
    gx_ptr, k_ptr, w_t_ptr, wch_ptr, h0_ptr, c0_ptr, h_ptr, c_ptr, acts_ptr, bs_ptr,
    L, N,
    H: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
    CT: tl.constexpr, RND: tl.constexpr, OPT: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr, UNROLL: tl.constexpr, PEEP: tl.constexpr, SAVE: tl.constexpr,
    SKIP: tl.constexpr,
):  # fmt: skip
    """All L steps for rows [pid * BN, pid * BN + BN). h (L, N, H) receives every step; c is
    (L, N, H) with SAVE (training), else two alternating (N, H) slots."""
    row0 = tl.program_id(0) * BN
    rows = row0 + tl.arange(0, BN)
    in_batch = rows < N
    NH = N * H
    # Pointers advance by one step per iteration: a product t * N * 4H could overflow int32.
    gx_t = gx_ptr
    k_t = k_ptr
    acts_t = acts_ptr
    h_prev = h0_ptr
    c_prev = c0_ptr
    h_out = h_ptr
    c_out = c_ptr
    for t in range(L):
        nb = tl.load(bs_ptr + t)
        valid = rows < nb
        work = row0 < nb
        for jb in range(0, H, BH):
            cols = jb + tl.arange(0, BH)
            cmask = cols < H
            mask = in_batch[:, None] & cmask[None, :]
            state = rows[:, None] * H + cols[None, :]
            hp = tl.load(h_prev + state, mask=mask, other=0.0)
            cp = tl.load(c_prev + state, mask=mask, other=0.0)
            kt = tl.load(k_t + state, mask=mask & valid[:, None], other=0.0).to(CT)
            run = work
            if SKIP:
                run = work & (tl.max(tl.max(tl.abs(kt), axis=1), axis=0) > 0)
            if run:
                gates = rows[:, None] * (4 * H) + cols[None, :]
                pi = tl.load(gx_t + gates, mask=mask, other=0.0).to(CT)
                pf = tl.load(gx_t + gates + H, mask=mask, other=0.0).to(CT)
                pg = tl.load(gx_t + gates + 2 * H, mask=mask, other=0.0).to(CT)
                po = tl.load(gx_t + gates + 3 * H, mask=mask, other=0.0).to(CT)
                acc_i, acc_f, acc_g, acc_o = _recurrent_product(
                    h_prev, w_t_ptr, rows, in_batch, cols, cmask, H, BN, BH, BK, CT, RND, OPT,
                    DOT, PREC, UNROLL,
                )  # fmt: skip
                _forward_block(
                    pi + acc_i, pf + acc_f, pg + acc_g, po + acc_o, hp, cp, kt, wch_ptr, h_out,
                    c_out, acts_t, cols, cmask, mask, valid, state, gates, H, CT, PEEP, SAVE,
                )  # fmt: skip
            else:
                # Padding rows, or (inference) a block closed for every row: the state is held.
                tl.store(h_out + state, hp, mask=mask)
                tl.store(c_out + state, cp, mask=mask)
        # The next step reads rows of h and c that other threads of this program wrote.
        tl.debug_barrier()
        gx_t += 4 * NH
        k_t += NH
        acts_t += 4 * NH
        h_prev = h_out
        c_prev = c_out
        h_out += NH
        if SAVE:
            c_out += NH
        else:
            c_out = c_ptr + ((t + 1) % 2) * NH


@triton.jit(do_not_specialize=["L"])
def _backward_persistent(
    gh_ptr, dh_ptr, dc_ptr, k_ptr, w_ptr, wch_ptr, h0_ptr, c0_ptr, h_ptr, c_ptr, acts_ptr,
    dg_ptr, dk_ptr, pp_ptr, bs_ptr, clip_ptr,
    L, N,
    H: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
    CT: tl.constexpr, RND: tl.constexpr, OPT: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr, PEEP: tl.constexpr,
):  # fmt: skip
    """BPTT for rows [pid * BN, pid * BN + BN), t = L-1 .. 0. The per-step pointers (k, acts,
    dgates, dk, h, c, grad_h) arrive pointing at their last step used and move backwards.

    dh_ptr / dc_ptr: (2, N, H) alternating slots; slot t % 2 holds, on entry to step t, dL/dc_t
    and the part of dL/dh_t that does not pass through dgates_{t+1} W_hh (which this step adds).
    pp_ptr: (programs, 3H) peephole gradient sums of this program."""
    pid = tl.program_id(0)
    row0 = pid * BN
    rows = row0 + tl.arange(0, BN)
    in_batch = rows < N
    NH = N * H
    clip = tl.load(clip_ptr)
    k_t = k_ptr
    acts_t = acts_ptr
    dg_t = dg_ptr
    dk_t = dk_ptr
    gh_t = gh_ptr
    h_t = h_ptr
    c_t = c_ptr
    for step in range(L):
        t = L - 1 - step
        nb = tl.load(bs_ptr + t)
        nb_next = tl.load(bs_ptr + t + 1)  # batch_sizes has a trailing 0
        valid = rows < nb
        dh_in = dh_ptr + (t % 2) * NH
        dc_in = dc_ptr + (t % 2) * NH
        dh_out = dh_ptr + ((t + 1) % 2) * NH
        dc_out = dc_ptr + ((t + 1) % 2) * NH
        # Step 0 reads the initial states and has no output gradient of a previous step.
        if t > 0:
            hp_base = h_t
            cp_base = c_t
            seed_rows = N
        else:
            hp_base = h0_ptr
            cp_base = c0_ptr
            seed_rows = 0 * N
        for jb in range(0, H, BH):
            cols = jb + tl.arange(0, BH)
            cmask = cols < H
            mask = in_batch[:, None] & cmask[None, :]
            state = rows[:, None] * H + cols[None, :]
            dh = tl.load(dh_in + state, mask=mask, other=0.0)
            if row0 < nb_next:
                # dL/dh_t += dgates_{t+1} W_hh: rows padded at t + 1 have dgates = 0.
                dh += _dgates_product(
                    dg_t + 4 * NH, w_ptr, rows, in_batch, cols, cmask, H, BN, BH, BK, CT, RND,
                    OPT, DOT, PREC,
                )  # fmt: skip
            dc = tl.load(dc_in + state, mask=mask, other=0.0)
            seed = tl.load(gh_t + state, mask=mask & (rows < seed_rows)[:, None], other=0.0)
            seed = seed.to(CT)
            if row0 < nb:
                _backward_block(
                    dh, dc, seed, acts_t, hp_base, cp_base, k_t, wch_ptr, dk_t, dg_t, dh_out,
                    dc_out, pp_ptr + pid * 3 * H, clip, rows, cols, cmask, mask, valid, state, H,
                    CT, PEEP,
                )  # fmt: skip
            else:
                # Every row padded at t: no gradient to this step's inputs; it passes through.
                zero = tl.zeros((BN, BH), dtype=CT)
                gates = rows[:, None] * (4 * H) + cols[None, :]
                tl.store(dk_t + state, zero, mask=mask)
                tl.store(dg_t + gates, zero, mask=mask)
                tl.store(dg_t + gates + H, zero, mask=mask)
                tl.store(dg_t + gates + 2 * H, zero, mask=mask)
                tl.store(dg_t + gates + 3 * H, zero, mask=mask)
                tl.store(dh_out + state, dh + seed, mask=mask)
                tl.store(dc_out + state, dc, mask=mask)
        # The next (earlier) step reads this step's dgates and dh/dc slots from other threads.
        tl.debug_barrier()
        k_t -= NH
        acts_t -= 4 * NH
        dg_t -= 4 * NH
        dk_t -= NH
        gh_t -= NH
        h_t -= NH
        c_t -= NH


@triton.jit(do_not_specialize=["nb"])
def _forward_step(
    pre_ptr, gx_ptr, k_ptr, wch_ptr, hp_ptr, cp_ptr, h_ptr, c_ptr, acts_ptr, nb, N,
    H: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, CT: tl.constexpr,
    PEEP: tl.constexpr, SAVE: tl.constexpr,
):  # fmt: skip
    """Stepwise mode: the elementwise part of one step, pre = h_{t-1} W_hh^T given (N, 4H)."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    cmask = cols < H
    mask = (rows < N)[:, None] & cmask[None, :]
    valid = rows < nb
    state = rows[:, None] * H + cols[None, :]
    gates = rows[:, None] * (4 * H) + cols[None, :]
    hp = tl.load(hp_ptr + state, mask=mask, other=0.0)
    cp = tl.load(cp_ptr + state, mask=mask, other=0.0)
    amask = mask & valid[:, None]
    kt = tl.load(k_ptr + state, mask=amask, other=0.0).to(CT)
    pi = tl.load(gx_ptr + gates, mask=amask, other=0.0).to(CT)
    pf = tl.load(gx_ptr + gates + H, mask=amask, other=0.0).to(CT)
    pg = tl.load(gx_ptr + gates + 2 * H, mask=amask, other=0.0).to(CT)
    po = tl.load(gx_ptr + gates + 3 * H, mask=amask, other=0.0).to(CT)
    pi += tl.load(pre_ptr + gates, mask=amask, other=0.0)
    pf += tl.load(pre_ptr + gates + H, mask=amask, other=0.0)
    pg += tl.load(pre_ptr + gates + 2 * H, mask=amask, other=0.0)
    po += tl.load(pre_ptr + gates + 3 * H, mask=amask, other=0.0)
    _forward_block(
        pi, pf, pg, po, hp, cp, kt, wch_ptr, h_ptr, c_ptr, acts_ptr, cols, cmask, mask, valid,
        state, gates, H, CT, PEEP, SAVE,
    )  # fmt: skip


@triton.jit(do_not_specialize=["nb", "seed_rows"])
def _backward_step(
    dh_ptr, dc_ptr, gh_ptr, k_ptr, wch_ptr, hp_ptr, cp_ptr, acts_ptr, dg_ptr, dk_ptr,
    dh_out_ptr, dc_out_ptr, pp_ptr, clip_ptr, nb, N, seed_rows,
    H: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, CT: tl.constexpr,
    PEEP: tl.constexpr,
):  # fmt: skip
    """Stepwise mode: the elementwise part of one backward step; dh_ptr holds the whole dL/dh_t
    (the host added dgates_{t+1} W_hh)."""
    pid_n = tl.program_id(0)
    rows = pid_n * BN + tl.arange(0, BN)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    cmask = cols < H
    mask = (rows < N)[:, None] & cmask[None, :]
    state = rows[:, None] * H + cols[None, :]
    dh = tl.load(dh_ptr + state, mask=mask, other=0.0)
    dc = tl.load(dc_ptr + state, mask=mask, other=0.0)
    seed = tl.load(gh_ptr + state, mask=mask & (rows < seed_rows)[:, None], other=0.0).to(CT)
    # One row of peephole sums per block of rows: no two programs add into the same place.
    _backward_block(
        dh, dc, seed, acts_ptr, hp_ptr, cp_ptr, k_ptr, wch_ptr, dk_ptr, dg_ptr, dh_out_ptr,
        dc_out_ptr, pp_ptr + pid_n * 3 * H, tl.load(clip_ptr), rows, cols, cmask, mask,
        rows < nb, state, H, CT, PEEP,
    )  # fmt: skip


# -------------------------------------------------------------------------------- host code

INTERPRETED = type(_forward_persistent).__name__ == "InterpretedFunction"

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
class _Plan:
    """How to run one recurrence: the mode and the tiles.

    ``block_rows`` (BN) batch rows per program, ``block_hidden`` (BH) hidden units per block,
    ``block_k`` (BK) the reduction tile of the recurrent product (persistent mode), ``dot``
    whether that product uses tl.dot (needs BN, BH, BK >= 16 on a GPU) or a broadcast sum,
    ``unroll`` whether its loop over reduction tiles is unrolled at compile time.
    """

    stepwise: bool
    block_rows: int
    block_hidden: int
    block_k: int
    dot: bool
    num_warps: int = 4
    num_stages: int = 1
    unroll: bool = True


def _pow2(n: int, low: int = 1) -> int:
    return max(low, 1 << max(0, n - 1).bit_length())


def _tensor_cores(dtype: torch.dtype) -> bool:
    """Whether the recurrent product of this dtype may use the tensor cores: half dtypes always,
    float32 when torch allows TF32 for float32 matrix products (as cuBLAS would)."""
    if dtype in (torch.bfloat16, torch.float16):
        return True
    return dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"


def _plan(batch: int, hidden: int, dtype: torch.dtype) -> _Plan:
    """The default plan for a batch of ``batch`` rows, ``hidden`` units and inputs of ``dtype``.

    The tiles are the largest that compile for sm_90 without register spills (Triton 3.6 and
    3.9). The estimates behind the choices are in docs/gpu.md; scripts/gpu_check.py times the
    alternatives on a GPU.
    """
    hp = _pow2(hidden, 16)
    if INTERPRETED:
        # Small tiles: the tests' tiny shapes still run several programs, blocks and k-tiles.
        return _Plan(False, min(4, _pow2(batch)), min(8, hp), min(8, hp), dtype != torch.float64)
    itemsize = torch.finfo(dtype).bits // 8
    if 4 * hidden * hidden * itemsize > _PERSISTENT_MAX_WEIGHT_BYTES:
        if dtype == torch.float64:
            return _Plan(True, block_rows=8, block_hidden=32, block_k=0, dot=False)
        return _Plan(True, block_rows=16, block_hidden=64, block_k=0, dot=False)
    if _tensor_cores(dtype):
        # On the tensor cores the product is cheap: one program per 16 rows (an mma's height),
        # the reduction in tiles of up to 64, unrolled up to 128 units (beyond, it spills, and
        # the loop is pipelined instead).
        unroll = hp <= 128
        return _Plan(False, 16, 32, min(hp, 64), True, 8, 1 if unroll else 3, unroll)
    if dtype == torch.float64:
        # Triton 3.6 cannot compile a float64 tl.dot: the broadcast product (only the tests
        # run float64 on a GPU; speed is no concern).
        return _Plan(False, min(2, _pow2(batch)), 128, 8, False, unroll=False)
    # IEEE float32 on the CUDA cores. tl.dot takes as few as 1 row and keeps its operands in
    # shared memory (the broadcast product needs a layout change per tile, and spills when
    # unrolled); a program's product costs BN * 8 H^2 flops per step, so 4 rows per program
    # spread it over more multiprocessors. The reduction loop stays a loop, so that Triton
    # pipelines its loads (cp.async, 3 stages). Triton 3.9's LLVM aborts the process compiling
    # this tl.dot when the reduction is a single tile (Triton 3.6 does not): always two or more,
    # and the broadcast product below 17 units, where a tile cannot be smaller than 16.
    if hp <= 16:
        return _Plan(False, min(4, _pow2(batch)), 16, 8, False, unroll=False)
    return _Plan(False, min(4, _pow2(batch)), 32, min(32, hp // 2), True, num_stages=3,
                 unroll=False)  # fmt: skip


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _constexprs(dtype: torch.dtype, plan: _Plan) -> dict:
    """The dtype arguments of the persistent kernels for inputs of ``dtype``."""
    ct = _TL_DTYPES[_compute_dtype(dtype)]
    rnd = _TL_DTYPES[dtype]
    # The interpreter multiplies bfloat16 blocks wrongly (as integers); the operands, already
    # rounded to their dtype, are exact in float32, so it gets those instead.
    opt = tl.float32 if INTERPRETED and dtype in (torch.bfloat16, torch.float16) else rnd
    prec = "tf32" if _tensor_cores(dtype) else "ieee"
    return dict(CT=ct, RND=rnd, OPT=opt, DOT=plan.dot, PREC=prec)


def _launch_options(plan: _Plan) -> dict:
    # Fused multiply-adds explicitly on: Triton 3.9 warns when this is left to its default.
    return dict(num_warps=plan.num_warps, num_stages=plan.num_stages, enable_fp_fusion=True)


def _device_batch_sizes(batch_sizes: Tensor | None, length: int, batch: int, device) -> Tensor:
    if batch_sizes is None:
        return torch.full((length,), batch, dtype=torch.int32, device=device)
    return batch_sizes.to(device=device, dtype=torch.int32)


def _host_batch_sizes(batch_sizes: Tensor | None, length: int, batch: int) -> list[int]:
    return [batch] * length if batch_sizes is None else batch_sizes.tolist()


def _forward(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, plan, save):
    """Run the forward recurrence; returns h (L, N, H), c and acts in the compute dtype (c is
    two alternating (N, H) slots and acts a stand-in when ``save`` is False)."""
    length, batch, four_h = gates_x.shape
    hidden = four_h // 4
    ct = _compute_dtype(gates_x.dtype)
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
        _forward_persistent[(triton.cdiv(batch, plan.block_rows),)](
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
        _forward_step[grid](
            pre, gates_x[t], k[t], wch, h_prev, c_prev, h[t], c_t, acts[t] if save else pre,
            nb, batch,
            H=hidden, BN=plan.block_rows, BH=plan.block_hidden, CT=_TL_DTYPES[ct],
            PEEP=peep, SAVE=save, **_launch_options(plan),
        )  # fmt: skip
        h_prev, c_prev = h[t], c_t
    return h, c, acts


def _backward(grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts, clip,
              batch_sizes, plan):  # fmt: skip
    """Gradients of (gates_x, k, h0, c0) and the peephole sums, all in the compute dtype."""
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
    h0 = h0.to(ct).contiguous()
    c0 = c0.to(ct).contiguous()
    grad_h = grad_h.contiguous()
    w = weight_hh.to(ct)
    if not plan.stepwise:
        # batch_sizes with a trailing 0: step L - 1 reads that of step L, which has no rows.
        no_rows = torch.zeros(1, dtype=torch.int32, device=device)
        bs = torch.cat([_device_batch_sizes(batch_sizes, length, batch, device), no_rows])
        before = max(length - 2, 0)
        _backward_persistent[(blocks,)](
            grad_h[before], dh, dc, k[length - 1], weight_hh, wch, h0, c0, h[before], c[before],
            acts[length - 1], dgates[length - 1], dk[length - 1], pp, bs, clip_t, length, batch,
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
            _backward_step[grid](
                dh_t, dc[slot], grad_h[max(t - 1, 0)], k[t], wch,
                h[t - 1] if t > 0 else h0, c[t - 1] if t > 0 else c0, acts[t], dgates[t], dk[t],
                dh[out], dc[out], pp, clip_t, sizes[t], batch, batch if t > 0 else 0,
                H=hidden, BN=plan.block_rows, BH=plan.block_hidden, CT=_TL_DTYPES[ct],
                PEEP=peep, **_launch_options(plan),
            )  # fmt: skip
    # The last step (t = 0) left dL/dh_0 without its dgates_0 W_hh term, in slot 1.
    d_h0 = torch.addmm(dh[1], dgates[0], w)
    return dgates, dk, d_h0, dc[1].clone(), pp.sum(0) if peep else None


class _TritonRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip, batch_sizes, plan):
        h, c, acts = _forward(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, plan, True)
        ctx.save_for_backward(k, weight_hh, weight_ch, h0, c0, h, c, acts)
        ctx.grad_clip = grad_clip
        ctx.batch_sizes = batch_sizes
        ctx.plan = plan
        ctx.dtypes = (gates_x.dtype, weight_ch.dtype if weight_ch is not None else None)
        out = h if h.dtype == gates_x.dtype else h.to(gates_x.dtype)
        return out, h[-1].to(gates_x.dtype, copy=True), c[-1].to(gates_x.dtype, copy=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_h_n, grad_c_n):
        k, weight_hh, weight_ch, h0, c0, h, c, acts = ctx.saved_tensors
        dgates, dk, d_h0, d_c0, d_wch = _backward(
            grad_h, grad_h_n, grad_c_n, k, weight_hh, weight_ch, h0, c0, h, c, acts,
            ctx.grad_clip, ctx.batch_sizes, ctx.plan,
        )  # fmt: skip
        dtype, wch_dtype = ctx.dtypes
        d_whh = None
        if ctx.needs_input_grad[2]:
            # sum_t dgates_t^T h_{t-1}: one product over all steps but the first, plus the first.
            length, hidden = h.shape[0], h.shape[2]
            d_whh = dgates[0].t() @ h0.to(h.dtype)
            if length > 1:
                d_whh.addmm_(dgates[1:].reshape(-1, 4 * hidden).t(), h[:-1].reshape(-1, hidden))
            d_whh = d_whh.to(weight_hh.dtype)
        return (
            dgates.to(dtype),
            dk.to(k.dtype),
            d_whh,
            None if d_wch is None else d_wch.to(wch_dtype),
            d_h0.to(h0.dtype),
            d_c0.to(c0.dtype),
            None,
            None,
            None,
        )


def recurrence(
    gates_x,
    k,
    weight_hh,
    weight_ch,
    h0,
    c0,
    grad_clip=math.inf,
    batch_sizes=None,
    *,
    plan: _Plan | None = None,
):
    """The recurrence on these kernels; inputs checked by the caller (contiguous, one dtype,
    one device). ``plan`` overrides :func:`_plan` (for tests and benchmarks)."""
    length, batch, four_h = gates_x.shape
    if plan is None:
        plan = _plan(batch, four_h // 4, gates_x.dtype)
    if needs_grad(gates_x, k, weight_hh, weight_ch, h0, c0):
        return _TritonRecurrence.apply(
            gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip, batch_sizes, plan
        )
    h, c, _ = _forward(gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes, plan, False)
    out = h if h.dtype == gates_x.dtype else h.to(gates_x.dtype)
    return out, h[-1].to(gates_x.dtype, copy=True), c[(length - 1) % 2].to(gates_x.dtype, copy=True)
