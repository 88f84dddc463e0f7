"""The one path of user timestamps into the kernels' layout: time-major ``(L, N)``, checked.

Everything that reads ``times`` goes through here: the layer, the cell, ``update_fraction``
and :func:`phased_lstm.tuning.time_scales`. It turns the user's layouts (``(L, N)``,
``(N, L)`` with ``batch_first``, ``(L,)`` shared by the batch) into ``(L, N)``, checks the
values once (finite; float32 timestamps coarse against their gaps get one warning), and builds
what padding needs: the mask, the lengths, the order that sorts a batch longest first with its
``batch_sizes``, and the step indices of the reverse direction (padded and packed layouts).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import _checks

# Timestamps in these dtypes are checked for a resolution too coarse for their spacing: a
# float32 step larger than this share of the smallest gap between events moves the phase.
COARSE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
COARSE_SHARE = 0.01


# ------------------------------------------------------------------ the user's layouts to (L, N)
def time_major(times: object, batch_first: bool) -> Tensor:
    """``times`` given without an input to match, ``(L, N)``, ``(N, L)`` with
    ``batch_first``, or ``(L,)`` for one sequence, as an ``(L, N)`` tensor (a view)."""
    times = _checks.check_tensor("times", times)
    if times.dim() == 1:
        return times.unsqueeze(1)
    if times.dim() == 2:
        return times.transpose(0, 1) if batch_first else times
    layout = "(N, L)" if batch_first else "(L, N)"
    raise ValueError(
        f"times must have shape {layout} or (L,), got {_checks.shape_str(times.shape)}"
    )


def input_times(
    times: object, shape_ln: tuple[int, int], unbatched: bool, batch_first: bool
) -> Tensor:
    """``times`` of an input of (time-major) shape ``shape_ln``, validated against it and
    returned time-major ``(L, N)``; ``(L,)`` is shared by the batch."""
    length, batch = shape_ln
    check = _checks.check_times
    if unbatched:
        return check(times, (length,), "(L,)", finite=False).unsqueeze(1)
    if isinstance(times, Tensor) and times.dim() == 1:
        return check(times, (length,), "(L,)", finite=False).unsqueeze(1).expand(-1, batch)
    if batch_first:
        return check(times, (batch, length), "(N, L)", finite=False).transpose(0, 1)
    return check(times, (length, batch), "(L, N)", finite=False)


def valid_mask(lengths: object, length: int, batch: int, device: torch.device) -> Tensor:
    """``(L, N)`` bool, True at the steps before each sample's length (checked)."""
    lengths = _checks.check_lengths(lengths, batch, length).to(device)
    return torch.arange(length, device=device).unsqueeze(1) < lengths


# ----------------------------------------------------------------------- the steps of a batch
@dataclass(frozen=True)
class Steps:
    """Timestamps of a batch, time-major and checked, and the padding that goes with them.

    Attributes:
        times: ``(L, N)``, zero on padded steps (so that padding cannot poison a gradient).
        mask: ``(L, N)`` bool on the device of ``times``, True on valid steps; ``None`` when
            every step is valid.
        lengths: ``(N,)`` int64 on the CPU when there is padding (``None`` without, and where
            values are unknown: on the meta device and while torch.compile or export trace).
        device_lengths: the lengths on the device of ``times`` whenever there is a mask.
    """

    times: Tensor
    mask: Tensor | None = None
    lengths: Tensor | None = None
    device_lengths: Tensor | None = None

    @property
    def valid_count(self) -> int:
        """Valid (step, sample) pairs, counted on the CPU."""
        length, batch = self.times.shape
        return length * batch if self.lengths is None else int(self.lengths.sum())

    def padding_order(self) -> tuple[Tensor | None, Tensor | None]:
        """``(order, batch_sizes)``: the order that sorts the samples longest first (``None``
        when the batch is in that order already) and the number of valid samples at each step
        once sorted; ``(None, None)`` without padding, or without lengths on the CPU."""
        if self.lengths is None or self.mask is None:
            return None, None
        lengths = self.lengths
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = torch.arange(self.times.shape[0]).unsqueeze(1)
        batch_sizes = (steps < lengths.index_select(0, order)).sum(1)
        if bool((order == torch.arange(order.numel())).all()):
            return None, batch_sizes
        return order.to(self.times.device), batch_sizes

    def sorted(self, order: Tensor) -> Steps:
        """The same steps with the samples in ``order`` (from :meth:`padding_order`)."""
        return Steps(
            self.times.index_select(1, order),
            self.mask.index_select(1, order),
            self.lengths.index_select(0, order.cpu()),
            self.device_lengths.index_select(0, order),
        )


def values_checkable(tensor: Tensor) -> bool:
    """Whether checks that read values can run: not on the meta device, not while tracing for
    torch.compile or torch.export (the values are not known there)."""
    return tensor.device.type != "meta" and not torch.compiler.is_compiling()


def check_device(name: str, tensor: Tensor, device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name} must be on the device of input ({device}), got {tensor.device}")


def prepare_steps(
    times: Tensor,
    lengths: object,
    device: torch.device,
    name: str = "times",
    owner: nn.Module | None = None,
    batch_first: bool | None = None,
) -> Steps:
    """Check ``times`` (already ``(L, N)``, time-major) and ``lengths``; build the mask.

    ``batch_first``: the layout ``times`` came in when they came without an input (as to
    :meth:`PhasedLSTM.update_fraction`), for the hint of :func:`check_time_values`.

    Checks that read values synchronise with a CUDA device: the finiteness of ``times``, and
    the range of ``lengths`` if it is given on the GPU (give it on the CPU, as nn.utils.rnn
    wants it anyway, and that check costs nothing). Timestamps in float32 (or narrower) are
    also checked for a resolution too coarse for their spacing, in the same sync; ``owner``
    warns about that once (see :func:`check_time_values`).
    """
    check_device(name, times, device)
    length, batch = times.shape
    if lengths is None:
        steps = Steps(times)
    elif not values_checkable(times) or (
        isinstance(lengths, Tensor) and lengths.device.type == "meta"
    ):
        # Values unknown (meta, or traced by torch.compile/export): no value checks and no
        # sorting by length; the mask alone holds the state on padded steps.
        device_lengths = _checks.check_lengths(lengths, batch, length, values=False).to(device)
        mask = torch.arange(length, device=device).unsqueeze(1) < device_lengths
        steps = Steps(times.masked_fill(~mask, 0), mask, None, device_lengths)
    else:
        if isinstance(lengths, Tensor) and lengths.device.type != "cpu":
            lengths = lengths.cpu()
        host = _checks.check_lengths(lengths, batch, length)
        if bool((host < length).any()):
            device_lengths = host.to(device)
            mask = torch.arange(length, device=device).unsqueeze(1) < device_lengths
            # Padding entries are never read; zero them so that they cannot poison a gradient.
            steps = Steps(times.masked_fill(~mask, 0), mask, host, device_lengths)
        else:
            steps = Steps(times)
    if values_checkable(times):
        layout = batch_first if steps.mask is None else None
        gaps = step_gaps(steps.times, steps.mask)
        check_time_values(steps.times, gaps, name, owner, batch_first=layout)
    return steps


def step_gaps(times: Tensor, mask: Tensor | None) -> Tensor:
    """``(L - 1, N)``: each valid timestamp minus the one before it in its sequence, 0 where
    either step is padding."""
    gaps = times[1:] - times[:-1]
    return gaps if mask is None else gaps.masked_fill(~mask[1:], 0)


def check_packed_times(data: Tensor, batch_sizes: Tensor, owner: nn.Module | None) -> None:
    """:func:`check_time_values` for the ``(S,)`` timestamps of a PackedSequence."""
    if not values_checkable(data):
        return
    rows, previous = packed_successions(batch_sizes)
    gaps = data[rows.to(data.device)] - data[previous.to(data.device)]
    check_time_values(data, gaps, "times", owner, stacklevel=5, packed=batch_sizes)


def check_time_values(
    times: Tensor,
    gaps: Tensor,
    name: str,
    owner: nn.Module | None,
    stacklevel: int = 4,
    packed: Tensor | None = None,
    batch_first: bool | None = None,
) -> None:
    """Finite ``times`` that never decrease along a sequence (a ValueError if not,
    :func:`raise_time_goes_back`), given ``gaps``, the differences between consecutive valid
    timestamps of each sequence (:func:`step_gaps`; of a PackedSequence with ``packed``, its
    batch sizes, in :func:`packed_successions` order). For float32 or narrower times also a
    warning, once per ``owner``, when the dtype cannot resolve those gaps at the times'
    magnitude: at t ~ 1e6 float32 holds steps of 1/16, and at 1e9 of 64. One host sync on
    CUDA. ``batch_first``: the layout the times came in, when they came alone (no input to
    check their shape against, no padding): the error then says when the other layout would
    run forward."""
    if times.numel() == 0:
        return
    if not times.is_floating_point():  # integer timestamps: exact as float64 up to 2**53
        times, gaps = times.double(), gaps.double()
    coarse = times.dtype in COARSE_DTYPES
    smallest = times.new_tensor(math.inf)
    if coarse and gaps.numel():  # the smallest gap matters to the resolution warning only
        positive = gaps.abs()
        smallest = positive.masked_fill(positive == 0, math.inf).min()
    lowest = gaps.min() if gaps.numel() else times.new_zeros(())
    finite, magnitude, gap, back = torch.stack(
        [
            torch.isfinite(times).all().to(torch.float64),
            times.abs().max().double(),
            smallest.double(),
            (lowest < 0).to(torch.float64),
        ]
    ).tolist()
    if not finite:
        raise ValueError(f"{name} must be finite at every valid step, got NaN or infinity")
    if back:
        hint = "" if batch_first is None else batch_first_hint(times, batch_first)
        raise_time_goes_back(times, gaps, name, packed, hint)
    warned = owner is not None and owner.__dict__.get("_warned_coarse_times", False)
    if not coarse or warned or magnitude == 0 or not math.isfinite(gap):
        return
    resolution = torch.finfo(times.dtype).eps * 2.0 ** math.floor(math.log2(magnitude))
    if resolution > COARSE_SHARE * gap:
        dtype = str(times.dtype).replace("torch.", "")
        warnings.warn(
            f"{name} is {dtype} with magnitudes up to {magnitude:.3g}, where {dtype} holds steps "
            f"of {resolution:.3g} only, coarse against the smallest gap between consecutive "
            f"timestamps ({gap:.3g}): the phase of the time gate is off by up to "
            f"{resolution:.3g} time units. Pass {name} as float64, or subtract an offset "
            f"(e.g. {name} - {name}.min()) before converting them to {dtype}.",
            UserWarning,
            stacklevel=stacklevel,
        )
        if owner is not None:
            owner.__dict__["_warned_coarse_times"] = True


def raise_time_goes_back(
    times: Tensor,
    gaps: Tensor,
    name: str = "times",
    packed: Tensor | None = None,
    hint: str = "",
) -> None:
    """The ValueError for timestamps that decrease within a sequence: it names the first
    sample (in the batch's order) and the step where time goes back, with both values.

    Time runs forward within each sequence, as the paper's gate and every use of it assume; a
    timestamp that goes back is almost always a mistake upstream (a wrong layout, a counter
    that wrapped, unsorted events)."""
    if packed is None:
        step, sample = (gaps < 0).nonzero(as_tuple=True)
        first = int(torch.argmin(sample * gaps.shape[0] + step))
        sample, step = int(sample[first]), int(step[first]) + 1
        before, after = times[step - 1, sample], times[step, sample]
    else:
        rows, previous = packed_successions(packed)
        sizes = packed.to(torch.int64)
        offsets = sizes.cumsum(0) - sizes
        back = (gaps < 0).nonzero(as_tuple=True)[0].cpu()
        row_steps = torch.searchsorted(offsets, rows[back], right=True) - 1
        row_samples = rows[back] - offsets[row_steps]
        first = int(torch.argmin(row_samples * sizes.numel() + row_steps))
        sample, step = int(row_samples[first]), int(row_steps[first])
        before = times[int(previous[back][first])]
        after = times[int(rows[back][first])]
    raise ValueError(
        f"{name} must not decrease along a sequence (time runs forward within each sample), "
        f"but sample {sample} goes back at step {step}: {float(before):.10g} then "
        f"{float(after):.10g}{hint}"
    )


def batch_first_hint(times: Tensor, batch_first: bool) -> str:
    """A hint for :func:`raise_time_goes_back` when unpadded ``times`` (time-major
    ``(L, N)``, as read with ``batch_first``) would run forward read in the other layout."""
    if times.dim() != 2 or times.shape[0] < 2 or times.shape[1] < 2:
        return ""
    if not bool((times[:, 1:] >= times[:, :-1]).all()):
        return ""
    layout, other = ("(L, N)", False) if batch_first else ("(N, L)", True)
    return (
        f"; they run forward along the other axis: if times is laid out {layout}, pass "
        f"batch_first={other}"
    )


# ------------------------------------------------------------- the reverse direction's steps
def reverse_index(length: int, batch: int, lengths: Tensor | None, device) -> Tensor:
    """(L, N) step index that reverses each sample's valid steps and leaves padding in place.

    Applying it twice is the identity, so the same index maps the outputs back.
    """
    steps = torch.arange(length, device=device).unsqueeze(1).expand(length, batch)
    if lengths is None:
        return (length - 1 - steps).contiguous()
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


def gather_steps(values: Tensor, *, index: Tensor) -> Tensor:
    """values[index[t, n], n, ...] for (L, N) or (L, N, F) values."""
    if values.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, -1, values.shape[-1])
    return values.gather(0, index)


def packed_successions(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, previous)``: every row of packed data after a sample's first step, and the row
    of the same sample's step before it."""
    sizes = batch_sizes.to(torch.int64)
    batch = int(sizes[0]) if sizes.numel() else 0
    offsets = sizes.cumsum(0) - sizes
    present = torch.arange(batch).unsqueeze(0) < sizes.unsqueeze(1)  # (L, N)
    step, sample = present[1:].nonzero(as_tuple=True)
    return offsets[step + 1] + sample, offsets[step] + sample


def packed_reverse_index(batch_sizes: Tensor) -> Tensor:
    """(S,) row index of packed data that reverses each sample's steps (an involution).

    Row (t, n) of the packed layout holds step t of sample n; it trades places with step
    ``length_n - 1 - t`` of the same sample.
    """
    sizes = batch_sizes.to(torch.int64)
    batch = int(sizes[0]) if sizes.numel() else 0
    offsets = sizes.cumsum(0) - sizes
    present = torch.arange(batch).unsqueeze(0) < sizes.unsqueeze(1)  # (L, N)
    step, sample = present.nonzero(as_tuple=True)  # in the packed order
    lengths = present.sum(0)
    return offsets[lengths[sample] - 1 - step] + sample
