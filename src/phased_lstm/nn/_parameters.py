"""The parameters of one layer-direction: their names, creation, initialisation and gate values.

The time gate is stored reparametrised so that the optimiser cannot leave its domain:

* ``log_period``: ``period = exp(log_period) > 0`` for any real value;
* ``shift``: the phase shift itself (any real value is valid);
* ``logit_r_on``: ``r_on = sigmoid(logit_r_on)`` in ``(0, 1)`` (``1`` exactly when frozen at 1).

Unlike a clamp, these maps keep a gradient everywhere. :func:`gate_values` reads the effective
values (float64, as the layer computes the phase).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .settings import TimeGateSettings


class TimeGateValues(NamedTuple):
    """The effective time gate of one layer-direction, ``(H,)`` float64 tensors each.

    They carry gradients to the stored parameters (``log_period``, ``shift``, ``logit_r_on``).
    """

    period: Tensor
    shift: Tensor
    r_on: Tensor


class Weights(NamedTuple):
    """The tensors of one layer-direction, fetched by name from its module."""

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    weight_ch: Tensor | None
    log_period: Tensor
    shift: Tensor
    logit_r_on: Tensor


def create_direction(
    module: nn.Module, suffix: str, input_size: int, hidden_size: int, bias: bool
) -> None:
    """Register the (uninitialised) tensors of one layer-direction on ``module``."""
    settings = module.settings

    def add(name: str, shape: tuple[int, ...], learn: bool = True) -> None:
        tensor = torch.empty(shape)
        if learn:
            module.register_parameter(name + suffix, nn.Parameter(tensor))
        else:
            module.register_buffer(name + suffix, tensor)

    add("weight_ih", (4 * hidden_size, input_size))
    add("weight_hh", (4 * hidden_size, hidden_size))
    if bias:
        add("bias_ih", (4 * hidden_size,))
        add("bias_hh", (4 * hidden_size,))
    if settings.peepholes:
        add("weight_ch", (3 * hidden_size,))
    add("log_period", (hidden_size,), settings.learn_period)
    add("shift", (hidden_size,), settings.learn_shift)
    add("logit_r_on", (hidden_size,), settings.learn_r_on)


def init_direction(weights: Weights, settings: TimeGateSettings, hidden_size: int) -> None:
    """The authors' initialisation: LSTM weights as nn.LSTM's, periods log-uniform in
    ``period_range``, shifts uniform in ``[0, period)`` (or ``shift_range``), r_on fixed."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for tensor in (*weights[:5],):
            if tensor is not None:
                tensor.uniform_(-bound, bound)
        low, high = settings.period_range
        weights.log_period.uniform_(math.log(low), math.log(high))
        if settings.shift_range is None:
            weights.shift.uniform_(0.0, 1.0).mul_(weights.log_period.exp())
        else:
            weights.shift.uniform_(*settings.shift_range)
        r_on = settings.r_on
        weights.logit_r_on.fill_(math.inf if r_on == 1.0 else math.log(r_on / (1.0 - r_on)))


def gate_values(weights: Weights) -> TimeGateValues:
    """Period, shift and r_on of one layer-direction in float64, with their gradients."""
    # A float32 exp would put a relative error of 1e-7 on the period, which at t ~ 1e6 moves
    # the phase of a short period by a visible fraction of a cycle.
    return TimeGateValues(
        weights.log_period.to(torch.float64).exp(),
        weights.shift.to(torch.float64),
        torch.sigmoid(weights.logit_r_on.to(torch.float64)),
    )
