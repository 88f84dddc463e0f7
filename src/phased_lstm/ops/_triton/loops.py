"""The launched kernels of the recurrence (backend ``"triton"``): the time loop on the GPU.

Imported on first use (through :mod:`.library`), never at ``import phased_lstm``: Triton decides
when a kernel is defined whether it is compiled for the GPU or run by its CPU interpreter
(``TRITON_INTERPRET=1``), so this module must not load before the caller has chosen. The
equations and their order are those of :mod:`phased_lstm.ops.reference`; the blocks they are made
of are in :mod:`.cell`; docs/gpu.md has the design and the cost estimates behind the tile sizes.

Two ways to run the forward and backward loops (:mod:`.launch` chooses):

* persistent (``H`` up to a few hundred): one program per block of batch rows runs every step. It
  keeps its rows' states in the step outputs, which stay in L1/L2, and reads ``weight_hh`` from L2
  at every step (it does not fit on one multiprocessor); a CTA barrier separates the steps. One
  launch per sequence: no host round trip in the time loop.
* stepwise (larger ``H``): haste's layout, per step one cuBLAS product for the whole batch and one
  Triton kernel for the elementwise work, because a single multiprocessor streaming a ``4H x H``
  matrix every step is slower than cuBLAS spreading it over the chip plus two launches.

Without gradients, a block of neurons whose time gate is closed for all rows of the program
(k == 0 exactly, as in eval mode) skips its share of ``weight_hh``.
"""

import triton
import triton.language as tl

from .cell import backward_block, dgates_product, forward_block, recurrent_product


@triton.jit(do_not_specialize=["L"])
def forward_persistent(
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
                acc_i, acc_f, acc_g, acc_o = recurrent_product(
                    h_prev, w_t_ptr, rows, in_batch, cols, cmask, H, BN, BH, BK, CT, RND, OPT,
                    DOT, PREC, UNROLL,
                )  # fmt: skip
                forward_block(
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
def backward_persistent(
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
                dh += dgates_product(
                    dg_t + 4 * NH, w_ptr, rows, in_batch, cols, cmask, H, BN, BH, BK, CT, RND,
                    OPT, DOT, PREC,
                )  # fmt: skip
            dc = tl.load(dc_in + state, mask=mask, other=0.0)
            seed = tl.load(gh_t + state, mask=mask & (rows < seed_rows)[:, None], other=0.0)
            seed = seed.to(CT)
            if row0 < nb:
                backward_block(
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
def forward_step(
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
    forward_block(
        pi, pf, pg, po, hp, cp, kt, wch_ptr, h_ptr, c_ptr, acts_ptr, cols, cmask, mask, valid,
        state, gates, H, CT, PEEP, SAVE,
    )  # fmt: skip


@triton.jit(do_not_specialize=["nb", "seed_rows"])
def backward_step(
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
    backward_block(
        dh, dc, seed, acts_ptr, hp_ptr, cp_ptr, k_ptr, wch_ptr, dk_ptr, dg_ptr, dh_out_ptr,
        dc_out_ptr, pp_ptr + pid_n * 3 * H, tl.load(clip_ptr), rows, cols, cmask, mask,
        rows < nb, state, H, CT, PEEP,
    )  # fmt: skip


# Fixed when the kernels are defined, by the environment Triton was first imported in.
INTERPRETED = type(forward_persistent).__name__ == "InterpretedFunction"
