"""Adam as the authors' code applied it to the time gate: on the period and r_on themselves.

PhasedLSTM stores ``log_period`` and ``logit_r_on`` so that no step can leave the domain. The
authors' Lasagne layer stored the period and r_on directly (read through ``abs``), and Adam
moved each by about ``lr`` per step: a tiny relative step for a period of 3-20 ms, a large one
for r_on = 0.05. On the stored parameters Adam's steps are relative instead (``lr`` in log
period, ``lr * r (1 - r)`` in r_on), which learns the period faster and r_on ~20 times slower
than the paper did. This optimiser takes Adam's step on the direct values and stores the result
back, so the training dynamics are the authors' while the model stays the library's.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bounds after a direct step: the authors' abs() kept a period positive and a ratio below 1 did
# not exist there; here r_on stays in (0, 1) and the period above zero, so that the logarithm
# and the logit stay finite.
_MIN_PERIOD = 1e-6
_R_ON_MARGIN = 1e-6


def _kind(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1]
    if last.startswith("log_period"):
        return "period"
    if last.startswith("logit_r_on"):
        return "r_on"
    return None


class TimeGateAdam(torch.optim.Adam):
    """``torch.optim.Adam`` that steps the time gate's period and r_on in their own units.

    Args:
        named_parameters: ``module.named_parameters()``; parameters named ``log_period*`` and
            ``logit_r_on*`` (PhasedLSTM's) are stepped as ``exp`` and ``sigmoid`` of themselves.
        lr: Adam's learning rate, for every parameter in its own units.

    Adam's moments of those parameters live in the direct units, in the usual state dict, so a
    checkpoint resumes the same run.
    """

    def __init__(self, named_parameters, lr: float = 1e-3):
        named = list(named_parameters)
        self._kinds: dict[Tensor, str] = {}
        for name, param in named:
            kind = _kind(name)
            if kind is not None:
                self._kinds[param] = kind
        super().__init__([param for _, param in named], lr=lr)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for param, kind in self._kinds.items():
            value = param.exp() if kind == "period" else torch.sigmoid(param)
            if param.grad is not None:
                # d value / d stored: value for exp, value (1 - value) for the sigmoid.
                slope = value if kind == "period" else value * (1 - value)
                param.grad.div_(slope)
            param.copy_(value)
        try:
            super().step()
        finally:
            for param, kind in self._kinds.items():
                if kind == "period":
                    param.copy_(param.abs().clamp(min=_MIN_PERIOD).log())
                else:
                    r_on = param.clamp(_R_ON_MARGIN, 1 - _R_ON_MARGIN)
                    param.copy_(torch.log(r_on) - torch.log1p(-r_on))
        return loss


__all__ = ["TimeGateAdam"]
