"""An ablation for sampling rates: the Phased LSTM reading each step's input scaled by the time
that step stands for (``plstm-gapscaled``).

A neuron's cell state sums the inputs of the steps at which its time gate is open, so at twice
the sampling rate an open window holds twice the steps and its sum doubles: the model learns the
typical count of its training rate. Scaling the input of step ``j`` by its share of time,

    w_j = (t_j - t_{j-1}) / g,

where ``g`` is the mean gap between steps in training, turns a window's sum into about ``1 / g``
times the integral of the input over the window, whatever the rate. At the training rate the
weights average 1, so the model starts out as the plain one. The first step of a sequence has no
gap and keeps weight 1; a step at the same time as its predecessor adds nothing (weight 0; under
1% of N-MNIST-sim's events share a timestamp); padding gets weight 0.

``g`` is the mean of every gap the model was trained on (a buffer, kept in checkpoints and fixed
at evaluation): ``gap_total / gap_count``. A model never trained falls back to the mean gap of
the batch it reads. This is experiment code, an ablation; the library holds no such model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GAP_SCALED = "plstm-gapscaled"
# Its line in results.md's protocol.
GAP_SCALED_TEXT = (
    f"- `{GAP_SCALED}` (an ablation, beyond the paper): the Phased LSTM reading each step's "
    "input times (t_j - t_(j-1)) / g, g the mean gap between the steps it was trained on (1 at a "
    "sequence's first step), so that what an open window sums follows its length in time, not "
    "its count of samples"
)


def step_gaps(times: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For ``times (N, L)``: the gap before each step ``(N, L)`` (0 at the first), whether a step
    is valid (``step < length``) and whether it is valid and has a predecessor."""
    steps = torch.arange(times.shape[1], device=times.device).unsqueeze(0)
    valid = steps < lengths.to(times.device).unsqueeze(1)
    gaps = torch.diff(times, dim=1, prepend=times[:, :1])
    return gaps, valid, valid & (steps > 0)


def gap_weights(times: Tensor, lengths: Tensor, mean_gap: float | Tensor) -> Tensor:
    """``w_j = (t_j - t_{j-1}) / mean_gap`` per step ``(N, L)``, in the dtype of ``times``: 1 at
    each sequence's first step, 0 on padding."""
    gaps, valid, inner = step_gaps(times, lengths)
    weights = torch.where(inner, gaps / mean_gap, valid.to(times.dtype))
    return weights


class GapScaledInput(nn.Module):
    """An encoder ``(values (N, L, C), times (N, L), lengths (N,)) -> (N, H)`` that reads every
    step's values multiplied by :func:`gap_weights`; the timestamps reach it unchanged.

    ``rnn`` is the wrapped encoder's recurrent layer, so what measures a Phased LSTM (its open
    share, its updates per neuron) measures this one too.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("gap_total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("gap_count", torch.zeros((), dtype=torch.float64))

    @property
    def rnn(self) -> nn.Module:
        return self.encoder.rnn

    def mean_gap(self, times: Tensor, lengths: Tensor) -> Tensor:
        """``g``: the mean training gap, or this batch's where none was seen (1 without gaps)."""
        if float(self.gap_count) > 0:
            return (self.gap_total / self.gap_count).to(times.dtype)
        gaps, _, inner = step_gaps(times, lengths)
        count = inner.sum()
        return gaps[inner].sum() / count if int(count) > 0 else times.new_ones(())

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                gaps, _, inner = step_gaps(times, lengths)
                self.gap_total += gaps[inner].sum().to(self.gap_total.dtype)
                self.gap_count += inner.sum().to(self.gap_count.dtype)
        weights = gap_weights(times, lengths, self.mean_gap(times, lengths))
        return self.encoder(values * weights.unsqueeze(-1).to(values.dtype), times, lengths)


__all__ = ["GAP_SCALED", "GAP_SCALED_TEXT", "GapScaledInput", "gap_weights", "step_gaps"]
