"""PhasedLSTMCell and PhasedLSTM: the paper's layer with the contract of torch.nn.LSTM.

Both modules keep the parameters of one layer and direction under the names nn.LSTM uses
(``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) plus the peepholes ``weight_ch`` and
the time gate, which is stored reparametrised so that the optimiser cannot leave its domain:

* ``log_period``: ``period = exp(log_period) > 0`` for any real value;
* ``shift``: the phase shift itself (any real value is valid);
* ``logit_r_on``: ``r_on = sigmoid(logit_r_on)`` in ``(0, 1)`` (``1`` exactly when frozen at 1).

Unlike a clamp, these maps keep a gradient everywhere. The effective values are read through
``period``/``r_on`` (cell) or ``period_l{k}``/``r_on_l{k}`` (layer, ``_reverse`` too).
"""

from __future__ import annotations

import functools
import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _checks
from .ops import check_backend, recurrence
from .ops.fused import needs_grad
from .ops.gate import sequence_gate

DEFAULT_PERIOD_RANGE = (math.e, math.e**3)
_DERIVED = re.compile(r"^(period|r_on)(_l\d+(?:_reverse)?)?$")
# Steps per chunk of a forward pass that needs no gradient (bounds its memory, not its result).
_EVAL_CHUNK = 256


class _GateParameters(nn.Module):
    """Creation, initialisation and reading of the parameters of one layer-direction.

    Both modules derive from it; ``suffix`` is ``""`` for the cell and ``_l{k}[_reverse]`` for the
    layer, which is what makes a cell's state_dict the layer's layer-0 keys without ``_l0``.
    """

    def _configure_gate(
        self,
        *,
        peepholes: object,
        r_on: object,
        leak: object,
        period_range: object,
        shift_range: object,
        learn_period: object,
        learn_shift: object,
        learn_r_on: object,
        grad_clip: object,
        backend: object,
    ) -> None:
        self.peepholes = _checks.check_bool("peepholes", peepholes)
        self.initial_r_on = _checks.check_r_on(r_on)
        self.leak = _checks.check_leak(leak)
        self.period_range = _checks.check_range("period_range", period_range, positive=True)
        self.shift_range = (
            None
            if shift_range is None
            else _checks.check_range("shift_range", shift_range, positive=False)
        )
        self.learn_period = _checks.check_bool("learn_period", learn_period)
        self.learn_shift = _checks.check_bool("learn_shift", learn_shift)
        self.learn_r_on = _checks.check_bool("learn_r_on", learn_r_on)
        if self.learn_r_on and self.initial_r_on == 1.0:
            raise ValueError(
                "r_on must be < 1 when learn_r_on=True (its logit would be infinite), got 1.0; "
                "use learn_r_on=False for a fixed r_on of 1"
            )
        self.grad_clip = _checks.check_grad_clip(grad_clip)
        self.backend = check_backend(backend)

    def _add_direction(self, suffix: str, input_size: int, hidden_size: int, bias: bool) -> None:
        def add(name: str, shape: tuple[int, ...], learn: bool = True) -> None:
            tensor = torch.empty(shape)
            if learn:
                self.register_parameter(name + suffix, nn.Parameter(tensor))
            else:
                self.register_buffer(name + suffix, tensor)

        add("weight_ih", (4 * hidden_size, input_size))
        add("weight_hh", (4 * hidden_size, hidden_size))
        if bias:
            add("bias_ih", (4 * hidden_size,))
            add("bias_hh", (4 * hidden_size,))
        if self.peepholes:
            add("weight_ch", (3 * hidden_size,))
        add("log_period", (hidden_size,), self.learn_period)
        add("shift", (hidden_size,), self.learn_shift)
        add("logit_r_on", (hidden_size,), self.learn_r_on)

    def _reset_direction(self, suffix: str, hidden_size: int) -> None:
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ch"):
                tensor = getattr(self, name + suffix, None)
                if tensor is not None:
                    tensor.uniform_(-bound, bound)
            low, high = self.period_range
            log_period = getattr(self, "log_period" + suffix)
            log_period.uniform_(math.log(low), math.log(high))
            shift = getattr(self, "shift" + suffix)
            if self.shift_range is None:
                shift.uniform_(0.0, 1.0).mul_(log_period.exp())
            else:
                shift.uniform_(*self.shift_range)
            r_on = self.initial_r_on
            logit = math.inf if r_on == 1.0 else math.log(r_on / (1.0 - r_on))
            getattr(self, "logit_r_on" + suffix).fill_(logit)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            match = _DERIVED.match(name)
            if match is None:
                raise
            kind, suffix = match.group(1), match.group(2) or ""
            value = self._gate_values(suffix)[0 if kind == "period" else 2]
            return value.to(super().__getattr__("shift" + suffix).dtype)

    def _gate_values(self, suffix: str) -> tuple[Tensor, Tensor, Tensor]:
        """(period, shift, r_on) of one layer-direction, derived in float64.

        A float32 exp would put a relative error of 1e-7 on the period, which at t ~ 1e6 moves
        the phase of a short period by a visible fraction of a cycle.
        """
        log_period = super().__getattr__("log_period" + suffix)
        logit_r_on = super().__getattr__("logit_r_on" + suffix)
        return (
            log_period.to(torch.float64).exp(),
            super().__getattr__("shift" + suffix),
            torch.sigmoid(logit_r_on.to(torch.float64)),
        )

    def _gate(
        self, suffix: str, times: Tensor, valid: Tensor | None = None, leak: float | None = None
    ) -> Tensor:
        """k of this layer-direction for ``times`` (L, N), zero where ``valid`` is False."""
        if leak is None:
            leak = self.leak if self.training else 0.0
        period, shift, r_on = self._gate_values(suffix)
        return sequence_gate(
            times, period, shift, r_on, leak, valid, shift.dtype, backend=self.backend
        )

    def _run_direction(
        self,
        suffix: str,
        x: Tensor,
        times: Tensor,
        mask: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        batch_sizes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer-direction over ``x`` (L, N, H_in) with ``times`` (L, N); ``batch_sizes``
        as in :func:`phased_lstm.ops.recurrence` when the samples are sorted by length."""
        if x.shape[0] > _EVAL_CHUNK and not needs_grad(x, h0, c0, *self.parameters()):
            # Without autograd nothing has to outlive a step: run in time chunks with the state
            # carried, so the (L, N, 4H) input projection and k never exist whole.
            h_seqs, h, c = [], h0, c0
            for start in range(0, x.shape[0], _EVAL_CHUNK):
                part = slice(start, start + _EVAL_CHUNK)
                h_seq, h, c = self._run_chunk(
                    suffix,
                    x[part],
                    times[part],
                    None if mask is None else mask[part],
                    h,
                    c,
                    None if batch_sizes is None else batch_sizes[part],
                )
                h_seqs.append(h_seq)
            return torch.cat(h_seqs), h, c
        return self._run_chunk(suffix, x, times, mask, h0, c0, batch_sizes)

    def _run_chunk(
        self,
        suffix: str,
        x: Tensor,
        times: Tensor,
        mask: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        batch_sizes: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        bias = None
        if getattr(self, "bias_ih" + suffix, None) is not None:
            bias = getattr(self, "bias_ih" + suffix) + getattr(self, "bias_hh" + suffix)
        # The input projection and the gate of all steps at once, outside the recurrence.
        # k = 0 on padded steps: the state is held there exactly, so h_n is the last valid one.
        gates_x = F.linear(x, getattr(self, "weight_ih" + suffix), bias)
        k = self._gate(suffix, times, mask)
        return recurrence(
            gates_x,
            k,
            getattr(self, "weight_hh" + suffix),
            getattr(self, "weight_ch" + suffix, None),
            h0,
            c0,
            grad_clip=self.grad_clip,
            batch_sizes=batch_sizes,
            backend=self.backend,
        )

    def _gate_repr(self) -> list[str]:
        parts = []
        if self.peepholes:
            parts.append("peepholes=True")
        if self.initial_r_on != 0.05:
            parts.append(f"r_on={self.initial_r_on}")
        if self.leak != 1e-3:
            parts.append(f"leak={self.leak}")
        if self.period_range != DEFAULT_PERIOD_RANGE:
            parts.append(f"period_range={self.period_range}")
        if self.shift_range is not None:
            parts.append(f"shift_range={self.shift_range}")
        for name in ("learn_period", "learn_shift"):
            if not getattr(self, name):
                parts.append(f"{name}=False")
        if self.learn_r_on:
            parts.append("learn_r_on=True")
        if self.grad_clip is not None:
            parts.append(f"grad_clip={self.grad_clip:g}")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return parts


class PhasedLSTMCell(_GateParameters):
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
        * **t**: the step's timestamps, ``(N,)`` or a scalar shared by the batch.
        * **hx**: optional pair ``(h, c)`` of ``(N, H)`` or ``(H,)``; zeros if omitted.

    Outputs: h', c'
        both ``(N, H)`` or ``(H,)``.

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
        peepholes: bool = False,
        r_on: float = 0.05,
        leak: float = 1e-3,
        period_range: tuple[float, float] = DEFAULT_PERIOD_RANGE,
        shift_range: tuple[float, float] | None = None,
        learn_period: bool = True,
        learn_shift: bool = True,
        learn_r_on: bool = False,
        grad_clip: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size = _checks.check_positive_int("input_size", input_size)
        self.hidden_size = _checks.check_positive_int("hidden_size", hidden_size)
        self.bias = _checks.check_bool("bias", bias)
        self._configure_gate(
            peepholes=peepholes,
            r_on=r_on,
            leak=leak,
            period_range=period_range,
            shift_range=shift_range,
            learn_period=learn_period,
            learn_shift=learn_shift,
            learn_r_on=learn_r_on,
            grad_clip=grad_clip,
            backend=backend,
        )
        self._add_direction("", self.input_size, self.hidden_size, self.bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_direction("", self.hidden_size)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if not self.bias:
            parts.append("bias=False")
        return ", ".join(parts + self._gate_repr())

    def forward(
        self, x: Tensor, t: Tensor | float, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
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
            _checks.check_real("t", t)
            t = torch.tensor(t, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(n)
        t = _checks.check_times(t, (n,), "(N,)" if not unbatched else "()", name="t")
        state_shape = (self.hidden_size,) if unbatched else (n, self.hidden_size)
        if hx is None:
            h0 = c0 = x.new_zeros((n, self.hidden_size))
        else:
            h0, c0 = _checks.check_hx(hx, state_shape, dtype)
            if unbatched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        _, h, c = self._run_direction("", x.unsqueeze(0), t.unsqueeze(0), None, h0, c0)
        if unbatched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class PhasedLSTM(_GateParameters):
    r"""A multi-layer Phased LSTM (Neil, Pfeiffer & Liu, NIPS 2016), a drop-in for nn.LSTM.

    Every neuron has a time gate with a learnable period ``tau``, phase shift ``s`` and open
    ratio ``r_on``; it may change its state only while the gate is open. For each step ``t``
    with timestamp ``t_t`` each layer computes

    .. math::
        \begin{array}{ll}
        \phi_t = ((t_t - s) \bmod \tau) / \tau \\
        k_t = 2 \phi_t / r_{on} \text{ if } \phi_t < r_{on}/2, \quad
              2 - 2 \phi_t / r_{on} \text{ if } \phi_t < r_{on}, \quad
              \alpha \phi_t \text{ otherwise} \\
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + w_{ci} \odot c_{t-1}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + w_{cf} \odot c_{t-1}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        \tilde c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + w_{co} \odot \tilde c_t) \\
        \tilde h_t = o_t \odot \tanh(\tilde c_t) \\
        c_t = k_t \odot \tilde c_t + (1 - k_t) \odot c_{t-1} \\
        h_t = k_t \odot \tilde h_t + (1 - k_t) \odot h_{t-1}
        \end{array}

    The mod is a floor-mod computed in float64 (phase in ``[0, 1)`` for any sign, and exact
    for timestamps near 1e6). The leak ``alpha`` applies in training mode only: in eval mode a
    closed neuron keeps ``h`` and ``c`` bit for bit. The peephole terms ``w_c`` exist only with
    ``peepholes=True``. Every layer reads the same timestamps; the reverse direction runs over
    each sample's valid steps in reverse order with their original timestamps. With the gate
    open (``k = 1``) the layer is exactly nn.LSTM, whose weights load by name.

    Args:
        input_size: ``H_in``, features of each input step.
        hidden_size: ``H``, neurons per layer and direction.
        num_layers: stacked layers.
        bias: if ``False``, no ``bias_ih``/``bias_hh``.
        batch_first: input and output as ``(N, L, *)``, times as ``(N, L)``.
        dropout: dropout on the outputs of every layer but the last, as nn.LSTM.
        bidirectional: add a reverse direction; outputs are concatenated.
        peepholes: diagonal peepholes ``weight_ch_l{k}`` of shape ``(3H,)`` for (i, f, o).
        r_on: initial open ratio, in ``(0, 1]`` (the paper: 0.05).
        leak: ``alpha``, slope of the closed gate in training mode (the paper: 1e-3).
        period_range: ``(low, high)``: the period is initialised log-uniform in it, as the
            authors did (their code: ``exp(U(1, 3))``, the default). In the units of ``times``.
        shift_range: ``None`` for a shift uniform in ``[0, period)``, else ``(low, high)``.
        learn_period, learn_shift, learn_r_on: whether each is trained (a parameter) or fixed
            (a buffer).
        grad_clip: ``None``, or a bound ``> 0`` on the gradient of the gate pre-activations
            (``W_i x_t + b + W_h h_{t-1}``, before the peephole terms) at every step, clamped
            elementwise during backpropagation through time. This is Lasagne's
            ``grad_clipping``, with which the paper's authors trained (at 10); it keeps one
            steep step from blowing up the gradient of the whole sequence, which clipping the
            parameter gradients afterwards cannot do. The forward pass is unchanged.
        backend: recurrence backend, one of :func:`phased_lstm.ops.available_backends`.

    Inputs: input, times, hx, lengths
        * **input**: ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, ``(L, H_in)``
          unbatched, or a PackedSequence.
        * **times**: ``(L, N)``, ``(N, L)`` with ``batch_first``, or ``(L,)`` shared by the batch;
          a PackedSequence packed like ``input`` when ``input`` is one. Float32 or float64 (use
          float64 for large timestamps), one per input step and sample, in any units.
        * **hx**: optional pair ``(h_0, c_0)``, each ``(D * num_layers, N, H)`` or
          ``(D * num_layers, H)`` unbatched; zeros if omitted.
        * **lengths**: optional ``(N,)`` integers in ``[0, L]``: steps at or past a sample's length
          leave its state unchanged and give zero output.

    Outputs: output, (h_n, c_n)
        * **output**: ``(L, N, D * H)``, ``(N, L, D * H)`` with ``batch_first``, ``(L, D * H)``
          unbatched, or a PackedSequence; the last layer's ``h_t`` of every step.
        * **h_n**, **c_n**: ``(D * num_layers, N, H)``, the states at each sample's last valid step.

    where ``L`` is the sequence length, ``N`` the batch size, ``H_in`` = ``input_size``,
    ``H`` = ``hidden_size`` and ``D`` = 2 if ``bidirectional`` else 1.

    Example::

        >>> layer = PhasedLSTM(3, 16, batch_first=True)
        >>> x = torch.randn(4, 50, 3)
        >>> times = torch.rand(4, 50, dtype=torch.float64).mul(100).sort(dim=1).values
        >>> output, (h_n, c_n) = layer(x, times, lengths=torch.tensor([50, 42, 17, 3]))
        >>> output.shape, h_n.shape
        (torch.Size([4, 50, 16]), torch.Size([1, 4, 16]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        peepholes: bool = False,
        r_on: float = 0.05,
        leak: float = 1e-3,
        period_range: tuple[float, float] = DEFAULT_PERIOD_RANGE,
        shift_range: tuple[float, float] | None = None,
        learn_period: bool = True,
        learn_shift: bool = True,
        learn_r_on: bool = False,
        grad_clip: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size = _checks.check_positive_int("input_size", input_size)
        self.hidden_size = _checks.check_positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.check_positive_int("num_layers", num_layers)
        self.bias = _checks.check_bool("bias", bias)
        self.batch_first = _checks.check_bool("batch_first", batch_first)
        self.dropout = _checks.check_dropout(dropout)
        self.bidirectional = _checks.check_bool("bidirectional", bidirectional)
        self._configure_gate(
            peepholes=peepholes,
            r_on=r_on,
            leak=leak,
            period_range=period_range,
            shift_range=shift_range,
            learn_period=learn_period,
            learn_shift=learn_shift,
            learn_r_on=learn_r_on,
            grad_clip=grad_clip,
            backend=backend,
        )
        directions = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * directions
            for suffix in self._suffixes(layer):
                self._add_direction(suffix, layer_input, self.hidden_size, self.bias)
        self.reset_parameters()

    def _suffixes(self, layer: int) -> list[str]:
        suffix = f"_l{layer}"
        return [suffix, suffix + "_reverse"] if self.bidirectional else [suffix]

    def reset_parameters(self) -> None:
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                self._reset_direction(suffix, self.hidden_size)

    def flatten_parameters(self) -> None:
        """No-op, for code written for nn.LSTM (the parameters are never flattened)."""

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout != 0:
            parts.append(f"dropout={self.dropout}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        return ", ".join(parts + self._gate_repr())

    def _time_major_times(
        self, times: object, shape_ln: tuple[int, int], unbatched: bool
    ) -> Tensor:
        """Validate ``times`` against the input's (L, N) and return it time-major (L, N)."""
        length, batch = shape_ln
        check = functools.partial(_checks.check_times, finite=False)
        if unbatched:
            return check(times, (length,), "(L,)").unsqueeze(1)
        if isinstance(times, Tensor) and times.dim() == 1:
            return check(times, (length,), "(L,)").unsqueeze(1).expand(-1, batch)
        if self.batch_first:
            return check(times, (batch, length), "(N, L)").transpose(0, 1)
        return check(times, (length, batch), "(L, N)")

    def forward(
        self,
        input: Tensor | PackedSequence,
        times: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | None = None,
    ):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths, times = self._unpack(input, times, lengths)
            unbatched = False
        else:
            x = _checks.check_tensor("input", input)
            if x.dim() not in (2, 3):
                layout = "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"
                raise ValueError(
                    f"input must have shape {layout} or (L, H_in), got {_checks.shape_str(x.shape)}"
                )
            unbatched = x.dim() == 2
            if unbatched:
                x = x.unsqueeze(1)
                if lengths is not None:
                    raise ValueError("lengths must be None for unbatched (L, H_in) input")
            elif self.batch_first:
                x = x.transpose(0, 1)
        self._check_input_features(x)
        length, batch = x.shape[0], x.shape[1]
        if not packed:
            times = self._time_major_times(times, (length, batch), unbatched)
        mask = None
        if lengths is not None:
            lengths = _checks.check_lengths(lengths, batch, length).to(x.device)
            mask = torch.arange(length, device=x.device).unsqueeze(1) < lengths
            # Padding entries are never read; zero them so that they cannot poison a gradient.
            times = torch.where(mask, times, torch.zeros((), dtype=times.dtype))
        _checks.check_finite_times(times)
        h0, c0 = self._initial_state(hx, x, unbatched)

        order, batch_sizes = _padding_order(lengths, length)
        if order is None:
            output, h_n, c_n = self._forward_time_major(
                x, times, mask, lengths, h0, c0, batch_sizes
            )
        else:
            # Sorted by length, longest first, the valid samples of every step are the leading
            # rows, and the recurrence computes only those (batch_sizes).
            # index_select, not x[:, order]: the backward of advanced indexing is an
            # accumulating index_put, several times slower than index_select's index_add.
            output, h_n, c_n = self._forward_time_major(
                *(t.index_select(1, order) for t in (x, times, mask)),
                lengths.index_select(0, order),
                *(t.index_select(1, order) for t in (h0, c0)),
                batch_sizes,
            )
            restore = torch.argsort(order)
            output, h_n, c_n = (t.index_select(1, restore) for t in (output, h_n, c_n))

        if packed:
            return self._repack(output, lengths, input), (h_n, c_n)
        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _forward_time_major(self, x, times, mask, lengths, h0, c0, batch_sizes):
        reverse_index = None
        if self.bidirectional:
            reverse_index = _reverse_index(x.shape[0], x.shape[1], lengths, x.device)
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                index = layer * len(self._suffixes(layer)) + direction
                inp, t = layer_input, times
                if direction == 1:
                    inp, t = _gather_steps(inp, reverse_index), _gather_steps(t, reverse_index)
                h_seq, h_last, c_last = self._run_direction(
                    suffix, inp, t, mask, h0[index], c0[index], batch_sizes
                )
                if direction == 1:
                    h_seq = _gather_steps(h_seq, reverse_index)
                outputs.append(h_seq)
                h_n.append(h_last)
                c_n.append(c_last)
            output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if mask is not None:
                output = torch.where(
                    mask.unsqueeze(-1), output, torch.zeros((), dtype=output.dtype)
                )
            if layer < self.num_layers - 1 and self.dropout > 0:
                output = F.dropout(output, self.dropout, self.training)
            layer_input = output
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def _check_input_features(self, x: Tensor) -> None:
        dtype = self.weight_ih_l0.dtype
        if not x.is_floating_point() or x.dtype != dtype:
            raise TypeError(f"input must have the parameters' dtype {dtype}, got {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input must have {self.input_size} features (input_size) in its last dimension, "
                f"got {x.shape[-1]}"
            )

    def _initial_state(self, hx, x: Tensor, unbatched: bool) -> tuple[Tensor, Tensor]:
        states = self.num_layers * (2 if self.bidirectional else 1)
        batch = x.shape[1]
        if hx is None:
            zeros = x.new_zeros((states, batch, self.hidden_size))
            return zeros, zeros
        shape = (states, self.hidden_size) if unbatched else (states, batch, self.hidden_size)
        h0, c0 = _checks.check_hx(hx, shape, x.dtype)
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        return h0, c0

    @staticmethod
    def _unpack(input: PackedSequence, times: object, lengths: object):
        if lengths is not None:
            raise ValueError("lengths must be None when input is a PackedSequence (it has its own)")
        if not isinstance(times, PackedSequence):
            raise TypeError(
                "times must be a PackedSequence packed like input when input is one, "
                f"got {type(times).__name__}"
            )
        if not torch.equal(times.batch_sizes, input.batch_sizes) or not _same_optional(
            times.sorted_indices, input.sorted_indices
        ):
            raise ValueError("times must be packed exactly like input (same lengths and order)")
        if times.data.dim() != 1:
            raise ValueError(
                "times must be a PackedSequence of scalar timestamps, data of shape (S,), "
                f"got {_checks.shape_str(times.data.shape)}"
            )
        x, lengths = pad_packed_sequence(input)
        t, _ = pad_packed_sequence(times)
        _checks.check_times(t, tuple(t.shape), "(L, N)", finite=False)
        return x, lengths, t

    @staticmethod
    def _repack(output: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
        order = like.sorted_indices
        if order is not None:
            output, lengths = output[:, order], lengths[order.to(lengths.device)]
        packed = pack_padded_sequence(output, lengths.cpu(), enforce_sorted=True)
        return PackedSequence(
            packed.data, packed.batch_sizes, like.sorted_indices, like.unsorted_indices
        )

    @torch.no_grad()
    def update_fraction(self, times: Tensor, lengths: Tensor | None = None) -> float:
        """Share of neuron-steps whose gate is open (k > 0) at evaluation.

        Averaged over layers and directions (each direction sees every valid step once), this is
        the share of state updates that have to be computed at runtime: ``r_on`` on average.

        Args:
            times: ``(L, N)``, ``(N, L)`` with ``batch_first``, or ``(L,)``.
            lengths: optional ``(N,)``; padded steps are not counted.
        """
        times = _checks.check_tensor("times", times)
        if times.dim() == 1:
            times = times.unsqueeze(1)
        elif times.dim() == 2:
            if self.batch_first:
                times = times.transpose(0, 1)
        else:
            layout = "(N, L)" if self.batch_first else "(L, N)"
            raise ValueError(
                f"times must have shape {layout} or (L,), got {_checks.shape_str(times.shape)}"
            )
        times = _checks.check_times(times, tuple(times.shape), "(L, N)", finite=False)
        length, batch = times.shape
        mask = None
        if lengths is not None:
            lengths = _checks.check_lengths(lengths, batch, length).to(times.device)
            mask = torch.arange(length, device=times.device).unsqueeze(1) < lengths
            times = torch.where(mask, times, torch.zeros((), dtype=times.dtype))
        _checks.check_finite_times(times)
        steps = int(mask.sum()) if mask is not None else length * batch
        if steps == 0:
            raise ValueError("update_fraction needs at least one valid step, got none")
        total, count = 0.0, 0
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                is_open = self._gate(suffix, times, mask, leak=0.0) > 0
                total += float(is_open.sum()) / (steps * self.hidden_size)
                count += 1
        return total / count


def _padding_order(lengths: Tensor | None, length: int) -> tuple[Tensor | None, Tensor | None]:
    """``(order, batch_sizes)`` for a batch with padding: the order that sorts ``lengths``
    longest first (``None`` when the batch is in that order already) and the number of valid
    samples at each step once sorted; ``(None, None)`` when there is no padding to skip."""
    if lengths is None or not bool((lengths < length).any()):
        return None, None
    order = torch.argsort(lengths, descending=True, stable=True)
    steps = torch.arange(length).unsqueeze(1)
    batch_sizes = (steps < lengths.index_select(0, order).cpu()).sum(1)
    if bool((order == torch.arange(order.numel(), device=order.device)).all()):
        order = None
    return order, batch_sizes


def _same_optional(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


def _reverse_index(length: int, batch: int, lengths: Tensor | None, device) -> Tensor:
    """(L, N) step index that reverses each sample's valid steps and leaves padding in place.

    Applying it twice is the identity, so the same index maps the outputs back.
    """
    steps = torch.arange(length, device=device).unsqueeze(1).expand(length, batch)
    if lengths is None:
        return (length - 1 - steps).contiguous()
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


def _gather_steps(values: Tensor, index: Tensor) -> Tensor:
    """values[index[t, n], n, ...] for (L, N) or (L, N, F) values."""
    if values.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, -1, values.shape[-1])
    return values.gather(0, index)
