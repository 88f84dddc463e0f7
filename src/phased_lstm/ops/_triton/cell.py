"""The device functions of the recurrence kernels (backend ``"triton"``): one block of one step.

The cell and its backward in the reference's order of operations, the recurrent products
``h_{t-1} W_hh^T`` and ``dgates_t W_hh`` of one block of hidden units, and the loads and stores
around them. The kernels that launch them, with the loop over time steps, are in :mod:`.loops`.
"""

import triton
import triton.language as tl


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
def recurrent_product(
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
def dgates_product(
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
def forward_block(
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
        # Padding rows store zeros: left unwritten, they would hand back whatever the allocator
        # held (an output that differs between two calls on the same inputs).
        v = valid[:, None]
        tl.store(acts_ptr + gates, tl.where(v, i, 0.0), mask=mask)
        tl.store(acts_ptr + gates + H, tl.where(v, f, 0.0), mask=mask)
        tl.store(acts_ptr + gates + 2 * H, tl.where(v, g, 0.0), mask=mask)
        tl.store(acts_ptr + gates + 3 * H, tl.where(v, o, 0.0), mask=mask)


@triton.jit
def backward_block(
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
