"""Layers the library's tests share."""

import torch

from phased_lstm import PhasedLSTM


def make_busy_layer(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bidirectional: bool = False,
    peepholes: bool = True,
    learn_r_on: bool = True,
    r_on: float = 0.3,
    period_range: tuple[float, float] = (2.0, 8.0),
    dtype: torch.dtype = torch.float64,
) -> PhasedLSTM:
    """A layer whose gates are busy: short periods and a wide r_on open and close them many
    times within a short sequence, and a leak large enough for its gradient to matter. It draws
    its parameters from torch's global generator, as the tests seed it."""
    return PhasedLSTM(
        input_size,
        hidden_size,
        num_layers,
        bidirectional=bidirectional,
        peepholes=peepholes,
        r_on=r_on,
        leak=0.05,
        period_range=period_range,
        learn_r_on=learn_r_on,
    ).to(dtype)
