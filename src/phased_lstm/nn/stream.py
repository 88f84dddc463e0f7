"""PhasedLSTMStream: a unidirectional PhasedLSTM run event by event, its state held inside."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from ._steps import raise_time_goes_back
from .layer import PhasedLSTM


class PhasedLSTMStream:
    """A unidirectional :class:`PhasedLSTM` run event by event, its state held inside.

    Made by :meth:`PhasedLSTM.stream`. Each call advances the state over one event per sample
    (or a few) and returns the last layer's ``h`` after each; it runs without gradients, as
    under ``torch.no_grad()``. On the CPU (float32 or float64, eval mode, up to 64 events
    and samples together) each call is one compiled step that computes only the neurons whose
    time gate is open; otherwise it runs the layer's general path, with the same results.

    Inputs: x, t
        * **x**: ``(N, H_in)``, one event per sample; ``(H_in,)`` when ``N = 1``; or
          ``(L, N, H_in)``, ``L`` events per sample in time order (time-major, whatever the
          layer's ``batch_first``).
        * **t**: the events' timestamps: a number or a 0-dim tensor shared by the batch,
          ``(N,)``, or ``(L, N)`` with ``L`` events. Prefer float64 (see :class:`PhasedLSTM`).

    Output: h
        ``(N, H)``, ``(H,)`` for ``(H_in,)`` input, or ``(L, N, H)``: the last layer's hidden
        state after each event. A new tensor each call.

    Time runs forward: an event earlier than the sample's previous one (in this call or an
    earlier one since :meth:`reset`) raises a ValueError naming ``t``; equal times are fine.

    Example::

        >>> layer = PhasedLSTM(2, 8, num_layers=2).eval()
        >>> stream = layer.stream()
        >>> for t in (0.3, 1.1, 2.9):
        ...     h = stream(torch.randn(2), t)
        >>> h.shape, stream.state[0].shape
        (torch.Size([8]), torch.Size([2, 1, 8]))
    """

    def __init__(
        self,
        layer: PhasedLSTM,
        batch_size: int = 1,
        hx: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        if not isinstance(layer, PhasedLSTM):
            raise TypeError(f"layer must be a PhasedLSTM, got {type(layer).__name__}")
        if layer.bidirectional:
            raise ValueError(
                "a bidirectional PhasedLSTM cannot stream events: its reverse direction reads "
                "each sequence from its end"
            )
        self.layer = layer
        self.batch_size = _checks.check_positive_int("batch_size", batch_size)
        self.reset(hx)

    @property
    def state(self) -> tuple[Tensor, Tensor]:
        """``(h, c)``, each ``(num_layers, N, H)``: the state after the last event."""
        return self._h, self._c

    def reset(self, hx: tuple[Tensor, Tensor] | None = None) -> None:
        """Start again from ``hx`` (``(num_layers, N, H)`` each), or from zeros."""
        layer = self.layer
        shape = (layer.num_layers, self.batch_size, layer.hidden_size)
        like = layer.weight_hh_l0
        # The latest timestamp each sample has seen: a float while the batch shares it.
        self._last: float | Tensor = -math.inf
        if hx is None:
            self._h = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self._c = torch.zeros(shape, dtype=like.dtype, device=like.device)
        else:
            h0, c0 = _checks.check_hx(hx, shape, like.dtype)
            self._h = h0.detach().clone(memory_format=torch.contiguous_format)
            self._c = c0.detach().clone(memory_format=torch.contiguous_format)

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self(x, t)
        if torch.compiler.is_compiling():
            return self._general(x, t)
        latest = self._check_forward(t)
        out = self.layer._stream_call("advance", x, t, self._h, self._c)
        if out is None:
            out = self._general(x, t)
        self._last = latest
        return out

    def _check_forward(self, t: Tensor | float) -> float | Tensor:
        """Refuse events earlier than each sample's previous one; return the latest time of
        each sample after this call (kept once the call succeeds)."""
        last = self._last
        if isinstance(t, Tensor) and t.numel() == 1 and t.dim() <= 2 and t.is_floating_point():
            # One timestamp (one event of one stream, or shared by the batch): compared as a
            # Python number, which costs a microsecond, not the ten of a few tensor ops.
            t = t.item()
        if not isinstance(t, Tensor):
            value = _checks.check_real("t", t)
            latest = last if isinstance(last, float) else float(last.max())
            if value < latest:
                raise ValueError(
                    f"t must not go back in a stream (time runs forward), got {value:.10g} "
                    f"after {latest:.10g}; call reset() to start a new sequence"
                )
            return value
        if t.dim() > 2 or t.is_complex() or t.dtype == torch.bool:
            return last  # the layer's checks name what is wrong
        times = t.detach().to(torch.float64)
        if times.dim() == 2 and times.shape[0] > 1:
            gaps = times[1:] - times[:-1]
            if bool((gaps < 0).any()):
                raise_time_goes_back(times, gaps, "t")
        first = times if times.dim() < 2 else times[0]
        if isinstance(last, float):
            behind = first < last
        else:
            behind = first < last.to(first.device)
        if bool(behind.any()):
            sample = int(behind.reshape(-1).nonzero()[0]) if behind.dim() else 0
            previous = last if isinstance(last, float) else float(last.reshape(-1)[sample])
            now = float(first.reshape(-1)[sample]) if first.dim() else float(first)
            raise ValueError(
                f"t must not go back in a stream (time runs forward), but sample {sample} "
                f"got {now:.10g} after {previous:.10g}; call reset() to start a new sequence"
            )
        final = times if times.dim() < 2 else times[-1]
        return float(final) if final.dim() == 0 else final.clone()

    def _general(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The same through the layer's general path (which validates)."""
        x = _checks.check_tensor("x", x)
        if x.dim() not in (1, 2, 3) or (x.dim() == 1 and self.batch_size != 1):
            raise ValueError(
                f"x must have shape (N, H_in) = ({self.batch_size}, H_in), (L, N, H_in)"
                f"{' or (H_in,)' if self.batch_size == 1 else ''}, "
                f"got {_checks.shape_str(x.shape)}"
            )
        single = x.dim() == 1
        events = x.reshape(1, 1, -1) if single else x.unsqueeze(0) if x.dim() == 2 else x
        length = events.shape[0]
        if not isinstance(t, Tensor):
            t = torch.tensor(_checks.check_real("t", t), dtype=torch.float64, device=x.device)
        times = t.expand(length, self.batch_size) if t.dim() == 0 else t
        if x.dim() != 3 and times.dim() == 1:
            times = times.unsqueeze(0)
        if self.layer.batch_first:
            events, times = events.transpose(0, 1), times.transpose(0, 1)
        out, (h, c) = self.layer(events, times, (self._h, self._c))
        self._h, self._c = h, c
        if self.layer.batch_first:
            out = out.transpose(0, 1)
        return out[0, 0] if single else out[0] if x.dim() == 2 else out
