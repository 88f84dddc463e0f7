"""PhasedLSTMCell: one step of a Phased LSTM, for running a trained layer event by event."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from ._base import PhasedModule
from ._parameters import init_direction
from ._steps import check_device, prepare_steps
from .settings import DEFAULT, settings_from


class PhasedLSTMCell(PhasedModule):
    r"""One step of a Phased LSTM, for running a trained layer event by event.

    .. math::
        \begin{array}{ll}
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi} + w_{ci} \odot c) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf} + w_{cf} \odot c) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        \tilde c = f \odot c + i \odot g \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho} + w_{co} \odot \tilde c) \\
        \tilde h = o \odot \tanh(\tilde c) \\
        c' = k_t \odot \tilde c + (1 - k_t) \odot c \\
        h' = k_t \odot \tilde h + (1 - k_t) \odot h
        \end{array}

    with ``k_t`` the time gate of :func:`phased_lstm.functional.time_gate` at the step's
    timestamp ``t`` (leak in training mode only); the peephole terms ``w_c`` exist only with
    ``peepholes=True``.

    Args:
        input_size: ``H_in``, features of each input step.
        hidden_size: ``H``, number of neurons.
        bias: if ``False``, no ``bias_ih``/``bias_hh``.
        peepholes: diagonal peepholes ``weight_ch`` of shape ``(3H,)`` for (i, f, o).
        r_on: initial open ratio, in ``(0, 1]``.
        leak: ``alpha``, slope of the closed gate in training mode; 0 in eval mode.
        period_range: ``(low, high)``, the period is initialised log-uniform in it.
        shift_range: ``None`` for a shift uniform in ``[0, period)``, else ``(low, high)``.
        learn_period, learn_shift, learn_r_on: whether each is a trained parameter or a buffer.
        grad_clip: ``None``, or a bound on the gradient of the gate pre-activations, applied
            elementwise in backpropagation (see :class:`PhasedLSTM`).
        backend: recurrence backend, one of :func:`phased_lstm.ops.available_backends`.

    Inputs: x, t, hx
        * **x**: ``(N, H_in)`` or ``(H_in,)``.
        * **t**: the step's timestamps, ``(N,)`` on the device of ``x``, or a number or 0-dim
          tensor (any device) shared by the batch.
        * **hx**: optional pair ``(h, c)`` of ``(N, H)`` or ``(H,)``; zeros if omitted.

    Outputs: h', c'
        both ``(N, H)`` or ``(H,)``.

    Dtypes, devices and the streaming step under ``torch.no_grad()``: as :class:`PhasedLSTM`.

    Example::

        >>> cell = PhasedLSTMCell(2, 8)
        >>> h, c = cell(torch.randn(4, 2), torch.tensor([0.5, 1.0, 7.0, 30.0]))
        >>> h, c = cell(torch.randn(4, 2), torch.tensor([0.9, 2.5, 7.2, 31.0]), (h, c))
        >>> h.shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        peepholes: bool = DEFAULT.peepholes,
        r_on: float = DEFAULT.r_on,
        leak: float = DEFAULT.leak,
        period_range: tuple[float, float] = DEFAULT.period_range,
        shift_range: tuple[float, float] | None = DEFAULT.shift_range,
        learn_period: bool = DEFAULT.learn_period,
        learn_shift: bool = DEFAULT.learn_shift,
        learn_r_on: bool = DEFAULT.learn_r_on,
        grad_clip: float | None = DEFAULT.grad_clip,
        backend: str = DEFAULT.backend,
    ) -> None:
        input_size = _checks.check_positive_int("input_size", input_size)
        hidden_size = _checks.check_positive_int("hidden_size", hidden_size)
        bias = _checks.check_bool("bias", bias)
        super().__init__(settings_from(locals()))
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self._add_direction("", self.input_size, self.bias)
        self.reset_parameters()

    def _suffix(self, layer: int, reverse: bool) -> str:
        if layer != 0 or reverse:
            raise ValueError(
                f"a PhasedLSTMCell has one layer and direction: layer=0, reverse=False, "
                f"got layer={layer!r}, reverse={reverse!r}"
            )
        return ""

    def _all_suffixes(self) -> list[str]:
        return [""]

    @property
    def period(self) -> Tensor:
        """``exp(log_period)`` in the parameters' dtype (``time_gate_values()``: float64)."""
        return self.time_gate_values().period.to(self.shift.dtype)

    @property
    def r_on(self) -> Tensor:
        """``sigmoid(logit_r_on)`` in the parameters' dtype (``time_gate_values()``: float64)."""
        return self.time_gate_values().r_on.to(self.shift.dtype)

    def reset_parameters(self) -> None:
        init_direction(self._weights(""), self.settings, self.hidden_size)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if not self.bias:
            parts.append("bias=False")
        return ", ".join(parts + self._settings_repr())

    def forward(
        self, x: Tensor, t: Tensor | float, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # One event without gradients: the streaming step, when it can take it.
            result = self._stream_call("cell", x, t, hx)
            if result is not None:
                return result
        x = _checks.check_tensor("x", x)
        if x.dim() not in (1, 2):
            raise ValueError(
                f"x must have shape (N, H_in) or (H_in,), got {_checks.shape_str(x.shape)}"
            )
        dtype = self.weight_ih.dtype
        if x.dtype != dtype:
            raise TypeError(f"x must have the parameters' dtype {dtype}, got {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have {self.input_size} features (input_size), got {x.shape[-1]}"
            )
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
        n = x.shape[0]
        if not isinstance(t, Tensor):
            t = torch.full((n,), _checks.check_real("t", t), dtype=torch.float64, device=x.device)
        elif t.dim() == 0:
            # A 0-dim CPU tensor goes with input on any device, as it does in torch's ops.
            t = t.to(x.device).expand(n)
        t = _checks.check_times(t, (n,), "(N,)" if not unbatched else "()", name="t", finite=False)
        steps = prepare_steps(t.unsqueeze(0), None, x.device, name="t", owner=self)
        state_shape = (self.hidden_size,) if unbatched else (n, self.hidden_size)
        if hx is None:
            h0 = c0 = x.new_zeros((n, self.hidden_size))
        else:
            h0, c0 = _checks.check_hx(hx, state_shape, dtype)
            check_device("hx", h0, x.device)
            check_device("hx", c0, x.device)
            if unbatched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        _, h, c = self._run_direction("", x.unsqueeze(0), steps.times, None, h0, c0)
        if unbatched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c
