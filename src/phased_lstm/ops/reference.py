"""Readable reference recurrence of the Phased LSTM: a plain PyTorch loop under autograd.

It is the ground truth the fast kernels are tested against, so it stays a literal transcription
of the paper's equations, with no tricks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reference_recurrence(
    gates_x: Tensor,
    k: Tensor,
    weight_hh: Tensor,
    weight_ch: Tensor | None,
    h0: Tensor,
    c0: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the gated LSTM recurrence over precomputed input projections and time-gate values.

    See :func:`phased_lstm.ops.recurrence` for the contract.
    """
    w_hh_t = weight_hh.t()
    if weight_ch is not None:
        w_ci, w_cf, w_co = weight_ch.chunk(3)
    h, c = h0, c0
    hs = []
    # unbind, not gates_x[step]: the backward of an index writes a full-size gradient per step,
    # which would make the loop quadratic in the sequence length.
    for gates_xt, kt in zip(gates_x.unbind(0), k.unbind(0), strict=True):
        gates = gates_xt + h @ w_hh_t
        i, f, g, o = gates.chunk(4, dim=-1)
        if weight_ch is not None:
            # Diagonal peepholes: input and forget gates look at the previous cell state.
            i = i + w_ci * c
            f = f + w_cf * c
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if weight_ch is not None:
            # ...while the output gate looks at the new proposal.
            o = o + w_co * c_new
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        # Written as in the paper so that k = 0 keeps the state bit for bit and k = 1 is nn.LSTM.
        c = kt * c_new + (1 - kt) * c
        h = kt * h_new + (1 - kt) * h
        hs.append(h)
    if hs:
        return torch.stack(hs), h, c
    return gates_x.new_empty((0,) + h0.shape), h0, c0
