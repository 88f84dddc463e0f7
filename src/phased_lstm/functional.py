"""The Phased LSTM time gate as a pure function."""

from __future__ import annotations

import torch
from torch import Tensor


def time_gate(
    times: Tensor,
    period: Tensor,
    shift: Tensor,
    r_on: Tensor,
    leak: float = 0.0,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Openness ``k`` of the time gate of every neuron at every timestamp.

    .. math::
        \phi = \frac{(t - s) \bmod \tau}{\tau}, \qquad
        k = \begin{cases}
            2\phi / r_{on} & \phi < r_{on} / 2 \\
            2 - 2\phi / r_{on} & r_{on} / 2 \le \phi < r_{on} \\
            \alpha \phi & \text{otherwise}
        \end{cases}

    The mod is a floor-mod, so the phase lies in ``[0, 1)`` for negative ``t - s`` too, and it is
    computed in float64 whatever the input dtypes: a float32 timestamp near 1e6 would otherwise
    lose the phase of a period of one unit. Gradients reach ``period`` and ``shift``
    (``d(x mod tau)/dtau = -floor(x / tau)``) and ``r_on``.

    Args:
        times: timestamps of any shape ``(*)``, any real dtype, any units.
        period: ``(H,)`` periods ``tau > 0``, in the units of ``times``.
        shift: ``(H,)`` phase shifts ``s``.
        r_on: ``(H,)`` open ratios in ``(0, 1]``.
        leak: ``alpha``, the slope of the closed phase; pass 0 at evaluation.
        dtype: the dtype of ``k``; by default that of ``period``.

    Returns:
        ``k`` of shape ``(*, H)``.

    Example::

        >>> import torch
        >>> from phased_lstm.functional import time_gate
        >>> period, shift, r_on = torch.tensor([10.0]), torch.tensor([0.0]), torch.tensor([0.2])
        >>> time_gate(torch.tensor([0.0, 0.5, 1.0, 1.5, 5.0]), period, shift, r_on).squeeze(-1)
        tensor([0.0000, 0.5000, 1.0000, 0.5000, 0.0000])
    """
    if not isinstance(times, Tensor):
        raise TypeError(f"times must be a torch.Tensor, got {type(times).__name__}")
    for name, value in (("period", period), ("shift", shift), ("r_on", r_on)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            got = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if times.is_complex() or times.dtype == torch.bool:
        raise TypeError(f"times must have a real dtype, got {times.dtype}")
    out_dtype = period.dtype if dtype is None else dtype
    t = times.to(torch.float64).unsqueeze(-1)
    tau = period.to(torch.float64)
    s = shift.to(torch.float64)
    r = r_on.to(torch.float64)
    phase = torch.remainder(t - s, tau) / tau
    # Rounding can return tau itself for a tiny negative t - s; that phase is 1 - eps, i.e. 0.
    phase = torch.where(phase >= 1, phase - 1, phase)
    rising = 2 * phase / r
    k = torch.where(
        phase < r / 2,
        rising,
        torch.where(phase < r, 2 - rising, leak * phase),
    )
    return k.to(out_dtype)


__all__ = ["time_gate"]
