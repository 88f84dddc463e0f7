"""PhasedLSTM: the paper's multi-layer layer with the contract of torch.nn.LSTM.

The module checks its inputs, brings ``times`` into the kernels' layout (:mod:`._steps`), sorts
a padded batch by length, and runs every layer and direction with the gate and recurrence that
the planner (:func:`phased_lstm.ops.plan`) picks for it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import _checks
from ..ops import plan, sequence_gate
from ._base import PhasedModule
from ._parameters import gate_values, init_direction
from ._steps import (
    Steps,
    check_device,
    check_packed_times,
    gather_steps,
    input_times,
    packed_reverse_index,
    prepare_steps,
    reverse_index,
    time_major,
)
from .settings import DEFAULT, settings_from

if TYPE_CHECKING:
    from .stream import PhasedLSTMStream


class PhasedLSTM(PhasedModule):
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
          float64 for large timestamps), one per input step and sample, in any units. Float32
          timestamps whose magnitude leaves steps coarser than 1% of their smallest gap (at
          1e6 float32 holds steps of 1/16) get one warning per layer.
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

    Dtypes and devices: any device PyTorch runs on (the compiled kernels on the CPU, the
    reference loop elsewhere; see :func:`phased_lstm.ops.available_backends`), in float32,
    float64, bfloat16 or float16. The phase is always computed in float64. A bfloat16 or
    float16 layer computes its input projections in its dtype and its gate and recurrence in
    float32 (a state carried over many steps would round its small updates away), and returns
    its dtype: against the float32 layer with the same weights, outputs and states agree to
    1e-2 (bfloat16) or 1e-3 (float16) absolute, gradients to 5e-2 or 5e-3 of each parameter's
    largest. Under ``torch.autocast`` the input projections run in the autocast dtype and the
    recurrence in float32; outputs come in the parameters' dtype. The checks that read values
    synchronise with a CUDA device: once per call (finite ``times``), and once more if
    ``lengths`` is on the GPU (give it on the CPU, as nn.utils.rnn does). They are skipped on
    the meta device and while torch.compile or torch.export trace the layer.

    Event by event: under ``torch.no_grad()``/``torch.inference_mode()`` a call with a few steps
    (``L * N <= 64``) and no ``lengths`` (eval mode, CPU, float32/float64, unidirectional;
    float32 ``times`` for one step only) takes a streaming step that runs the gate and the
    update of the open neurons of every layer in one compiled call; :meth:`stream` returns a
    :class:`PhasedLSTMStream` that holds the state as well.

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
        sizes = {
            "input_size": _checks.check_positive_int("input_size", input_size),
            "hidden_size": _checks.check_positive_int("hidden_size", hidden_size),
            "num_layers": _checks.check_positive_int("num_layers", num_layers),
        }
        flags = {
            "bias": _checks.check_bool("bias", bias),
            "batch_first": _checks.check_bool("batch_first", batch_first),
            "dropout": _checks.check_dropout(dropout),
            "bidirectional": _checks.check_bool("bidirectional", bidirectional),
        }
        super().__init__(settings_from(locals()))
        for name, value in (sizes | flags).items():
            setattr(self, name, value)
        directions = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * directions
            for suffix in self._suffixes(layer):
                self._add_direction(suffix, layer_input, self.bias)
        self.reset_parameters()

    def stream(
        self, batch_size: int = 1, hx: tuple[Tensor, Tensor] | None = None
    ) -> PhasedLSTMStream:
        """A :class:`PhasedLSTMStream` that runs this layer event by event from ``hx`` (zeros
        by default) for ``batch_size`` independent streams."""
        # stream.py builds on this module (a stream holds a layer), hence the import here.
        from .stream import PhasedLSTMStream

        return PhasedLSTMStream(self, batch_size, hx)

    def _suffixes(self, layer: int) -> list[str]:
        suffix = f"_l{layer}"
        return [suffix, suffix + "_reverse"] if self.bidirectional else [suffix]

    def _all_suffixes(self) -> list[str]:
        return [s for layer in range(self.num_layers) for s in self._suffixes(layer)]

    def _suffix(self, layer: int, reverse: bool) -> str:
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int)
            or not 0 <= layer < self.num_layers
        ):
            raise ValueError(f"layer must be an int in [0, {self.num_layers - 1}], got {layer!r}")
        if not isinstance(reverse, bool) or (reverse and not self.bidirectional):
            raise ValueError(
                f"reverse must be a bool, and True only for a bidirectional layer, got {reverse!r}"
            )
        return f"_l{layer}" + ("_reverse" if reverse else "")

    def reset_parameters(self) -> None:
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                init_direction(self._weights(suffix), self.settings, self.hidden_size)

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
        return ", ".join(parts + self._settings_repr())

    def forward(
        self,
        input: Tensor | PackedSequence,
        times: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | None = None,
    ):
        if lengths is None and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # A few events without gradients: the streaming step, when it can take them.
            result = self._stream_call("layer", input, times, hx)
            if result is not None:
                return result
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, times, hx, lengths)
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
        times = input_times(times, (length, batch), unbatched, self.batch_first)
        steps = prepare_steps(times, lengths, x.device, owner=self)
        h0, c0 = self._initial_state(hx, batch, x, unbatched)

        order, batch_sizes = steps.padding_order()
        if order is None:
            output, h_n, c_n = self._run_padded(x, steps, h0, c0, batch_sizes)
        else:
            # Sorted by length, longest first, the valid samples of every step are the leading
            # rows, and the recurrence computes only those (batch_sizes).
            # index_select, not x[:, order]: the backward of advanced indexing is an
            # accumulating index_put, several times slower than index_select's index_add.
            output, h_n, c_n = self._run_padded(
                x.index_select(1, order),
                steps.sorted(order),
                h0.index_select(1, order),
                c0.index_select(1, order),
                batch_sizes,
            )
            restore = torch.argsort(order)
            output, h_n, c_n = (t.index_select(1, restore) for t in (output, h_n, c_n))

        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _run_padded(self, x, steps: Steps, h0, c0, batch_sizes):
        """All layers over time-major ``x`` (L, N, H_in) of a batch in the sorted order that
        ``batch_sizes`` (if any) describes."""
        mask = steps.mask
        reverse = None
        if self.bidirectional:
            index = reverse_index(x.shape[0], x.shape[1], steps.device_lengths, x.device)
            reverse = functools.partial(gather_steps, index=index)
        return self._run_layers(x, steps.times, mask, h0, c0, batch_sizes, reverse)

    def _forward_packed(self, input: PackedSequence, times: object, hx, lengths: object):
        """A PackedSequence runs in its own layout: its data, ``batch_sizes`` and order go to
        the recurrence as they are (no padding, sorting or re-packing)."""
        if lengths is not None:
            raise ValueError("lengths must be None when input is a PackedSequence (it has its own)")
        if not isinstance(times, PackedSequence):
            raise TypeError(
                "times must be a PackedSequence packed like input when input is one, "
                f"got {type(times).__name__}"
            )
        if not torch.equal(times.batch_sizes, input.batch_sizes) or not same_optional(
            times.sorted_indices, input.sorted_indices
        ):
            raise ValueError("times must be packed exactly like input (same lengths and order)")
        if times.data.dim() != 1:
            raise ValueError(
                "times must be a PackedSequence of scalar timestamps, data of shape (S,), "
                f"got {_checks.shape_str(times.data.shape)}"
            )
        x = input.data
        self._check_input_features(x)
        data = _checks.check_times(times.data, tuple(times.data.shape), "(S,)", finite=False)
        check_device("times", data, x.device)
        batch_sizes = input.batch_sizes
        check_packed_times(data, batch_sizes, self)
        batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
        h0, c0 = self._initial_state(hx, batch, x, False)
        if input.sorted_indices is not None:  # hx comes in the caller's order
            h0, c0 = (
                h0.index_select(1, input.sorted_indices),
                c0.index_select(1, input.sorted_indices),
            )
        reverse = None
        if self.bidirectional:
            index = packed_reverse_index(batch_sizes).to(x.device)
            reverse = functools.partial(torch.index_select, dim=0, index=index)
        output, h_n, c_n = self._run_layers(x, data, None, h0, c0, batch_sizes, reverse)
        if input.unsorted_indices is not None:
            h_n, c_n = (
                h_n.index_select(1, input.unsorted_indices),
                c_n.index_select(1, input.unsorted_indices),
            )
        packed = PackedSequence(output, batch_sizes, input.sorted_indices, input.unsorted_indices)
        return packed, (h_n, c_n)

    def _run_layers(self, x, times, mask, h0, c0, batch_sizes, reverse):
        """Every layer and direction; ``reverse`` maps steps to their order in the reverse
        direction (an involution: it maps the outputs back too)."""
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                index = layer * len(self._suffixes(layer)) + direction
                inp, t = layer_input, times
                if direction == 1:
                    inp, t = reverse(inp), reverse(t)
                h_seq, h_last, c_last = self._run_direction(
                    suffix, inp, t, mask, h0[index], c0[index], batch_sizes
                )
                if direction == 1:
                    h_seq = reverse(h_seq)
                outputs.append(h_seq)
                h_n.append(h_last)
                c_n.append(c_last)
            output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if mask is not None:
                output = output.masked_fill(~mask.unsqueeze(-1), 0)
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
        check_device("the parameters", self.weight_ih_l0, x.device)

    def _initial_state(self, hx, batch: int, x: Tensor, unbatched: bool) -> tuple[Tensor, Tensor]:
        """``(h_0, c_0)`` of shape ``(D * num_layers, N, H)``, checked, or zeros like ``x``."""
        states = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            zeros = x.new_zeros((states, batch, self.hidden_size))
            return zeros, zeros
        shape = (states, self.hidden_size) if unbatched else (states, batch, self.hidden_size)
        h0, c0 = _checks.check_hx(hx, shape, x.dtype)
        check_device("hx", h0, x.device)
        check_device("hx", c0, x.device)
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        return h0, c0

    @torch.no_grad()
    def update_fraction(self, times: Tensor, lengths: Tensor | None = None) -> float:
        """Share of neuron-steps whose gate is open (k > 0) at evaluation.

        Averaged over layers and directions (each direction sees every valid step once), this is
        the share of state updates that have to be computed at runtime: ``r_on`` on average.

        Args:
            times: ``(L, N)``, ``(N, L)`` with ``batch_first``, or ``(L,)``.
            lengths: optional ``(N,)``; padded steps are not counted.
        """
        times = time_major(times, self.batch_first)
        times = _checks.check_times(times, tuple(times.shape), "(L, N)", finite=False)
        if times.device.type == "meta":
            raise ValueError(
                "update_fraction counts open gates, which needs timestamps with values; "
                "times on the meta device have none"
            )
        steps = prepare_steps(
            times, lengths, times.device, owner=self, batch_first=self.batch_first
        )
        count = steps.valid_count
        if count == 0:
            raise ValueError("update_fraction needs at least one valid step, got none")
        total, directions = 0.0, 0
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                weights = self._weights(suffix)
                chosen = plan(
                    self.settings.backend,
                    device=times.device,
                    dtype=weights.shift.dtype,
                    needs_grad=False,
                )
                k = sequence_gate(
                    steps.times,
                    *gate_values(weights),
                    0.0,
                    steps.mask,
                    chosen.compute_dtype,
                    backend=chosen,
                )
                total += float((k > 0).sum()) / (count * self.hidden_size)
                directions += 1
        return total / directions


def same_optional(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)
