"""An independent float64 transcription of the paper's equations, for the tests only.

Written without any code of the library: one sample at a time, over its true length only, the
reverse direction by flipping that sample's steps, the time gate with an explicit floor.
"""

from __future__ import annotations

import torch


def gate(t, period, shift, r_on, leak):
    """k for one scalar timestamp t (float64 tensor) and (H,) parameters."""
    x = t - shift
    phi = (x - period * torch.floor(x / period)) / period
    out = []
    for j in range(period.shape[0]):
        p, r = phi[j], r_on[j]
        if p < r / 2:
            out.append(2 * p / r)
        elif p < r:
            out.append(2 - 2 * p / r)
        else:
            out.append(leak * p)
    return torch.stack(out)


def lstm_step(x, h, c, p, leak, t):
    """One Phased LSTM step on (H_in,) x and (H,) states; p holds one direction's tensors."""
    hidden = h.shape[0]
    z = p["weight_ih"] @ x + p["weight_hh"] @ h
    if "bias_ih" in p:
        z = z + p["bias_ih"] + p["bias_hh"]
    zi, zf, zg, zo = (z[n * hidden : (n + 1) * hidden] for n in range(4))
    if "weight_ch" in p:
        zi = zi + p["weight_ch"][:hidden] * c
        zf = zf + p["weight_ch"][hidden : 2 * hidden] * c
    i, f, g = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg)
    c_tilde = f * c + i * g
    if "weight_ch" in p:
        zo = zo + p["weight_ch"][2 * hidden :] * c_tilde
    h_tilde = torch.sigmoid(zo) * torch.tanh(c_tilde)
    period = torch.exp(p["log_period"])
    r_on = 1 / (1 + torch.exp(-p["logit_r_on"]))
    k = gate(t, period, p["shift"], r_on, leak)
    return k * h_tilde + (1 - k) * h, k * c_tilde + (1 - k) * c


def direction_params(params: dict, suffix: str) -> dict:
    names = (
        "weight_ih",
        "weight_hh",
        "bias_ih",
        "bias_hh",
        "weight_ch",
        "log_period",
        "shift",
        "logit_r_on",
    )
    return {n: params[n + suffix] for n in names if n + suffix in params}


def phased_lstm(params, x, times, lengths, num_layers, bidirectional, leak, h0=None, c0=None):
    """Run the network on (L, N, H_in) x with (L, N) times; returns output, h_n, c_n.

    ``params`` maps the layer's state_dict names to float64 tensors. Outputs at padded steps are
    zero, h_n/c_n are the states after each sample's last valid step.
    """
    length, batch, _ = x.shape
    directions = 2 if bidirectional else 1
    hidden = params["weight_hh_l0"].shape[1]
    outputs = torch.zeros(length, batch, directions * hidden, dtype=torch.float64)
    out_rows = [[None] * length for _ in range(batch)]
    h_n = [[None] * batch for _ in range(num_layers * directions)]
    c_n = [[None] * batch for _ in range(num_layers * directions)]
    for n in range(batch):
        steps = int(lengths[n])
        seq = [x[s, n] for s in range(steps)]
        ts = [times[s, n] for s in range(steps)]
        for layer in range(num_layers):
            per_dir = []
            for d in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                p = direction_params(params, suffix)
                idx = layer * directions + d
                h = h0[idx, n] if h0 is not None else torch.zeros(hidden, dtype=torch.float64)
                c = c0[idx, n] if c0 is not None else torch.zeros(hidden, dtype=torch.float64)
                order = range(steps - 1, -1, -1) if d else range(steps)
                hs = [None] * steps
                for s in order:
                    h, c = lstm_step(seq[s], h, c, p, leak, ts[s])
                    hs[s] = h
                per_dir.append(hs)
                h_n[idx][n], c_n[idx][n] = h, c
            seq = [torch.cat([per_dir[d][s] for d in range(directions)]) for s in range(steps)]
        for s in range(steps):
            out_rows[n][s] = seq[s]
    rows = []
    for s in range(length):
        rows.append(
            torch.stack(
                [
                    out_rows[n][s] if out_rows[n][s] is not None else outputs[s, n]
                    for n in range(batch)
                ]
            )
        )
    output = torch.stack(rows)
    return (
        output,
        torch.stack([torch.stack(r) for r in h_n]),
        torch.stack([torch.stack(r) for r in c_n]),
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against the reference b."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(b.norm()), 1e-12)
    return float((a - b).norm()) / scale
