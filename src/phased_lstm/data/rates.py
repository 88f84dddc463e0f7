"""Training for any sampling rate: thin each sequence of a batch to a random share of its steps.

A Phased LSTM trained at one sampling rate can lose accuracy at another: a neuron's state
sums the events of its open window, so it learns their typical number. Training on batches
whose sequences keep a random share of their samples (:func:`random_rate`) shows it every
density between ``keep[0]`` and ``keep[1]``. :func:`.transforms.subsample_events` with
``share=`` does the same for one event recording.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .._checks import check_bool, check_lengths, shape_str


def check_share_range(name: str, value: object) -> tuple[float, float]:
    """``(low, high)`` with ``0 < low <= high <= 1``: the range a kept share is drawn from."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high) of shares in (0, 1], got {value!r}")
    low, high = value
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise TypeError(f"{name} must hold two real numbers, got {value!r}")
    low, high = float(low), float(high)
    if not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
        raise ValueError(f"{name} must lie in (0, 1], got ({low:g}, {high:g})")
    if low > high:
        raise ValueError(f"{name} must have low <= high, got ({low:g}, {high:g})")
    return low, high


def random_rate(
    values: Tensor,
    times: Tensor,
    lengths: Tensor | None = None,
    *,
    keep: tuple[float, float],
    batch_first: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random share of each sequence's steps: the batch as a sensor at another rate.

    For each sequence a share ``s`` is drawn uniformly in ``[low, high]`` and
    ``max(1, round(s * length))`` of its valid steps are kept, chosen uniformly without
    replacement and kept in time order. They move to the front; the steps after the new length
    are padding: values 0, times repeating the last kept time (as the layer accepts). The
    tensors keep their length ``L`` (``values[: int(new_lengths.max())]`` trims the padding).
    Computed for the whole batch at once, on the tensors' device; timestamps and values are
    copied, never recomputed (float64 times stay bit for bit).

    Args:
        values: ``(L, N, *)``, or ``(N, L, *)`` with ``batch_first``: the inputs.
        times: ``(L, N)``, or ``(N, L)`` with ``batch_first``: their timestamps.
        lengths: ``(N,)`` integers in ``[0, L]``: the valid steps of each sequence (all ``L``
            when ``None``). A sequence of length 0 stays empty.
        keep: ``(low, high)``, ``0 < low <= high <= 1``: the range of the share kept.
            ``(1, 1)`` returns ``values`` and ``times`` themselves.
        batch_first: the layout of ``values`` and ``times``.
        generator: a ``torch.Generator`` (on the CPU, or on the tensors' device) for a
            reproducible draw; the global one by default.

    Returns:
        ``(values, times, lengths)`` in the input's layout, ``lengths`` a new ``(N,)`` int64
        tensor on the CPU.

    Example::

        >>> import torch
        >>> x = torch.arange(6.0).reshape(6, 1, 1)            # (L, N, C): one sequence
        >>> t = torch.arange(6.0, dtype=torch.float64)[:, None]
        >>> g = torch.Generator().manual_seed(0)
        >>> v, t2, n = random_rate(x, t, keep=(0.5, 0.5), generator=g)
        >>> int(n[0]), bool((t2[1:int(n[0])] > t2[:int(n[0]) - 1]).all())
        (3, True)
    """
    low, high = check_share_range("keep", keep)
    batch_first = check_bool("batch_first", batch_first)
    for name, tensor in (("values", values), ("times", times)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    layout = "(N, L)" if batch_first else "(L, N)"
    if values.dim() < 2:
        raise ValueError(f"values must have shape {layout[:-1]}, *), got {shape_str(values.shape)}")
    if tuple(times.shape) != tuple(values.shape[:2]):
        raise ValueError(
            f"times must have shape {layout} = {shape_str(values.shape[:2])} like values, "
            f"got {shape_str(times.shape)}"
        )
    if times.device != values.device:
        raise ValueError(
            f"times must be on the device of values ({values.device}), got {times.device}"
        )
    if batch_first:
        values, times = values.transpose(0, 1), times.transpose(0, 1)
    length, batch = times.shape
    if lengths is None:
        lengths = torch.full((batch,), length, dtype=torch.int64)
    else:
        lengths = check_lengths(lengths, batch, length).to("cpu", torch.int64).clone()
    if low == high == 1.0:
        if batch_first:
            values, times = values.transpose(0, 1), times.transpose(0, 1)
        return values, times, lengths

    device = values.device
    draw_device = generator.device if generator is not None else device
    share = low + (high - low) * torch.rand(batch, generator=generator, device=draw_device)
    kept = torch.round(share.to(torch.float64).cpu() * lengths).to(torch.int64).clamp_(min=1)
    kept = torch.minimum(kept, lengths)  # an empty sequence stays empty
    # The kept steps of a sequence: those whose random key is among its `kept` smallest.
    keys = torch.rand(length, batch, generator=generator, device=draw_device).to(device)
    steps = torch.arange(length, device=device).unsqueeze(1)
    keys = keys.masked_fill(steps >= lengths.to(device), 2.0)
    rank = keys.argsort(0).argsort(0)
    chosen = rank < kept.to(device)
    # The chosen steps first, in time order (a stable sort on "not chosen").
    source = torch.argsort((~chosen).to(torch.uint8), dim=0, stable=True)
    # Rows past a sequence's new length read its last kept step (its time repeats there).
    last = (kept.to(device) - 1).clamp(min=0)
    filled = steps < kept.to(device)
    source = torch.where(filled, source, source.gather(0, last.unsqueeze(0)))
    if bool((kept == 0).any()):
        source = torch.where(kept.to(device) == 0, torch.zeros_like(source), source)
    new_times = times.gather(0, source)
    index = source.reshape(length, batch, *([1] * (values.dim() - 2))).expand_as(values)
    new_values = values.gather(0, index)
    mask = filled.reshape(length, batch, *([1] * (values.dim() - 2)))
    new_values = new_values.masked_fill(~mask, 0)
    if batch_first:
        new_values, new_times = new_values.transpose(0, 1), new_times.transpose(0, 1)
    return new_values, new_times, kept


__all__ = ["check_share_range", "random_rate"]
