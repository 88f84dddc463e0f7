"""CfC (Hasani et al. 2022), the peer the experiments compare beside the paper's models: the cell
of the optional ``ncps`` package, driven one step at a time over a padded batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .models import ModelSpec


class CfCEncoder(nn.Module):
    """CfC (Hasani et al. 2022) from the ``ncps`` package, fed the values and the time gaps.

    ncps 1.0.1's sequence module squeezes per-sample gaps ``(N, L)`` into a shape that does not
    broadcast against the state, so its cell is driven here in a loop, one ``(N, 1)`` gap per
    step. The gap of the first step is its own timestamp (the time since 0) under
    ``spec.time_input == "raw"``, as this encoder always fed it before the option existed, and
    0 otherwise; ``"scaled"`` divides every gap by ``spec.time_unit``.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        try:
            from ncps.torch import CfCCell
        except ImportError:
            raise SystemExit(
                "the cfc model needs the ncps package: pip install phased-lstm[cfc]"
            ) from None
        self.hidden_size = spec.hidden_size
        self.spec = spec
        self.cell = CfCCell(spec.input_size, spec.hidden_size)

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        from .models import step_mask  # models imports this module to register the cell

        gaps = self.gaps(times).to(values.dtype)
        mask = step_mask(lengths, values.shape[1])
        h = values.new_zeros(values.shape[0], self.hidden_size)
        for step in range(values.shape[1]):
            h_new, _ = self.cell(values[:, step], h, gaps[:, step : step + 1])
            h = torch.where(mask[step].unsqueeze(-1), h_new, h)
        return h

    def gaps(self, times: Tensor) -> Tensor:
        """The time each step integrates over, ``(N, L)`` in the dtype of ``times``."""
        if self.spec.time_input == "raw":
            return torch.diff(times, dim=1, prepend=torch.zeros_like(times[:, :1]))
        gaps = torch.diff(times, dim=1, prepend=times[:, :1])
        return gaps / self.spec.time_unit if self.spec.time_input == "scaled" else gaps
