"""What the cell and the layer share: settings, parameters by layer-direction, the streaming
step's cache, and the run of one layer-direction through the planner's choice.

A layer-direction is named by its ``suffix``: ``""`` for the cell and ``_l{k}[_reverse]`` for
the layer, which is what makes a cell's state_dict the layer's layer-0 keys without ``_l0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..ops import Plan, plan, sequence_gate
from ..ops._planner import needs_grad
from ._parameters import TimeGateValues, Weights, create_direction, gate_values
from .settings import TimeGateSettings, setting

# Steps per chunk of a forward pass that needs no gradient and runs the backend's gate and
# recurrence, for backends without a ``direction`` (bounds its memory, not its result).
EVAL_CHUNK = 256


class PhasedModule(nn.Module):
    """The base of :class:`~phased_lstm.PhasedLSTMCell` and :class:`~phased_lstm.PhasedLSTM`.

    Subclasses name their layer-directions (:meth:`_suffix`, :meth:`_all_suffixes`) and
    register them with :meth:`_add_direction`.
    """

    peepholes = setting("peepholes", settable=False)
    initial_r_on = setting("r_on", settable=True, attribute="initial_r_on")
    leak = setting("leak", settable=True)
    period_range = setting("period_range", settable=True)
    shift_range = setting("shift_range", settable=True)
    learn_period = setting("learn_period", settable=False)
    learn_shift = setting("learn_shift", settable=False)
    learn_r_on = setting("learn_r_on", settable=False)
    grad_clip = setting("grad_clip", settable=True)
    backend = setting("backend", settable=True)

    def __init__(self, settings: TimeGateSettings) -> None:
        super().__init__()
        self.settings = settings
        # period_l0, r_on_l1_reverse, ...: derived values read by name (see __getattr__).
        self._derived_names: dict[str, tuple[str, str]] = {}

    @property
    def settings(self) -> TimeGateSettings:
        """The keyword settings, one frozen :class:`TimeGateSettings`."""
        return self.__dict__["_settings"]

    @settings.setter
    def settings(self, value: TimeGateSettings) -> None:
        if not isinstance(value, TimeGateSettings):
            raise TypeError(f"settings must be a TimeGateSettings, got {type(value).__name__}")
        self.__dict__["_settings"] = value
        self.__dict__["_stream"] = None

    # ------------------------------------------------------------------- layer-directions
    def _suffix(self, layer: int, reverse: bool) -> str:
        """The suffix of one layer-direction, checked."""
        raise NotImplementedError

    def _all_suffixes(self) -> list[str]:
        """The suffixes of every layer-direction, in the order they run."""
        raise NotImplementedError

    def _add_direction(self, suffix: str, input_size: int, bias: bool) -> None:
        create_direction(self, suffix, input_size, self.hidden_size, bias)
        for kind in ("period", "r_on"):
            self._derived_names[kind + suffix] = (suffix, kind)

    def _weights(self, suffix: str) -> Weights:
        get = self._parameters.get
        buffers = self._buffers

        def tensor(name: str) -> Tensor | None:
            key = name + suffix
            value = get(key)
            return buffers.get(key) if value is None else value

        return Weights(*(tensor(name) for name in Weights._fields))

    def time_gate_values(self, layer: int = 0, reverse: bool = False) -> TimeGateValues:
        """Period, shift and r_on of one layer-direction, as the layer computes with them.

        They are float64 whatever the parameters' dtype (the phase is computed in float64 from
        ``exp(log_period)``), and carry gradients to the stored parameters.

        Args:
            layer: the layer, from 0 (the cell has only 0).
            reverse: the reverse direction of a bidirectional layer.
        """
        return gate_values(self._weights(self._suffix(layer, reverse)))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            derived = self.__dict__.get("_derived_names", {})
            if name not in derived:
                raise
            suffix, kind = derived[name]
            weights = self._weights(suffix)
            values = gate_values(weights)
            # Handed out in the parameters' dtype, as they always were; time_gate_values()
            # gives the float64 values the layer computes with.
            return getattr(values, kind).to(weights.shift.dtype)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_derived_names", {})))

    def _settings_repr(self) -> list[str]:
        return self.settings.repr_parts()

    # ----------------------------------------------------------- the streaming step's cache
    # The streaming step (a backend's: "sparse" runs ops/_cpu/csrc/stream.cpp) holds what it
    # computes with, prepared once from this module's tensors. It notices in-place changes itself
    # (version counters and storage); what replaces a tensor, converts the module or changes its
    # mode or settings forgets it.
    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if isinstance(value, Tensor) or name == "training":
            self.__dict__["_stream"] = None

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self.__dict__["_stream"] = None
        return result

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_stream"] = None  # not picklable, and rebuilt on the next call anyway
        return state

    def _make_stream(self):
        """The streaming step prepared from this module's tensors by the backend the planner
        picks for it, or ``False`` where there is none: training with a leak or dropout (every
        neuron moves, or the layers draw random numbers), a bidirectional layer (the reverse
        direction needs the whole sequence), parametrised weights, or no backend with a
        streaming step for these tensors (the general path then runs, and reports what
        cannot)."""
        settings = self.settings
        if self.training and (settings.leak > 0 or getattr(self, "dropout", 0.0) > 0):
            return False
        if getattr(self, "bidirectional", False) or parametrize.is_parametrized(self):
            return False
        tensors = [
            t for t in (*self._parameters.values(), *self._buffers.values()) if t is not None
        ]
        chosen = plan(settings.backend, tensors=tuple(tensors), stream=True)
        if chosen is None:
            return False
        parts: dict[str, list] = {name: [] for name in ("w_ih", "w_hh", "bias", "w_ch", "gate")}
        with torch.no_grad():
            for suffix in self._all_suffixes():
                weights = self._weights(suffix)
                parts["w_ih"].append(weights.weight_ih.detach())
                parts["w_hh"].append(weights.weight_hh.detach())
                bias = None if weights.bias_ih is None else weights.bias_ih + weights.bias_hh
                parts["bias"].append(bias)
                parts["w_ch"].append(
                    None if weights.weight_ch is None else weights.weight_ch.detach()
                )
                parts["gate"].append(gate_values(weights))
        period, shift, r_on = (list(values) for values in zip(*parts["gate"], strict=True))
        return chosen.backend.stream(
            parts["w_ih"],
            parts["w_hh"],
            parts["bias"],
            parts["w_ch"],
            period,
            shift,
            r_on,
            tensors,
            getattr(self, "batch_first", False),
        )

    def _stream_call(self, method: str, *args):
        """The streaming step's ``method`` (``"layer"``, ``"cell"`` or ``"advance"``) for these
        inputs, or ``None`` where it does not apply (then the general path runs, and
        validates)."""
        stream = self.__dict__.get("_stream")
        if stream is None:
            stream = self.__dict__["_stream"] = self._make_stream()
        if stream is False:
            return None
        result = getattr(stream, method)(*args, 0.0)
        if result is NotImplemented:  # a tensor changed in place since it was prepared
            stream = self.__dict__["_stream"] = self._make_stream()
            if stream is False:
                return None
            result = getattr(stream, method)(*args, 0.0)
        return result

    # ------------------------------------------------------------ one layer-direction's run
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
        weights = self._weights(suffix)
        grad = needs_grad(x, h0, c0, *weights)
        chosen = plan(
            self.settings.backend,
            device=x.device,
            dtype=weights.weight_hh.dtype,
            needs_grad=grad,
            times_need_grad=torch.is_grad_enabled() and times.requires_grad,
        )
        direction = chosen.backend.direction
        if direction is not None and chosen.kernel_gate:
            if not torch.is_autocast_enabled(x.device.type):
                return self._run_direct(
                    direction, weights, chosen, x, times, mask, h0, c0, batch_sizes
                )
        if x.shape[0] > EVAL_CHUNK and not grad:
            # Without autograd nothing has to outlive a step: run in time chunks with the state
            # carried, so the (L, N, 4H) input projection and k never exist whole.
            h_seqs, h, c = [], h0, c0
            for start in range(0, x.shape[0], EVAL_CHUNK):
                part = slice(start, start + EVAL_CHUNK)
                h_seq, h, c = self._run_chunk(
                    weights,
                    chosen,
                    x[part],
                    times[part],
                    None if mask is None else mask[part],
                    h,
                    c,
                    None if batch_sizes is None else batch_sizes[part],
                )
                h_seqs.append(h_seq)
            return torch.cat(h_seqs), h, c
        return self._run_chunk(weights, chosen, x, times, mask, h0, c0, batch_sizes)

    def _run_direct(self, direction, weights, chosen, x, times, mask, h0, c0, batch_sizes):
        """One layer-direction through the backend's ``direction``: the input projection and
        the gate computed inside it (see :class:`phased_lstm.ops.Backend`)."""
        bias = None
        if weights.bias_ih is not None:
            bias = weights.bias_ih + weights.bias_hh
        leak = self.settings.leak if self.training else 0.0
        clip = math.inf if self.settings.grad_clip is None else self.settings.grad_clip
        work = chosen.compute_dtype
        tensors = (x, weights.weight_ih, bias, weights.weight_hh, weights.weight_ch, h0, c0)
        x, w_ih, bias, w_hh, w_ch, h0, c0 = (None if t is None else t.to(work) for t in tensors)
        period, shift, r_on = gate_values(weights)
        h_seq, h_n, c_n = direction(
            x,
            times,
            w_ih,
            bias,
            w_hh,
            w_ch,
            period,
            shift,
            r_on,
            leak,
            mask,
            h0,
            c0,
            clip,
            batch_sizes,
        )
        dtype = weights.weight_hh.dtype
        return h_seq.to(dtype), h_n.to(dtype), c_n.to(dtype)

    def _run_chunk(
        self,
        weights: Weights,
        chosen: Plan,
        x: Tensor,
        times: Tensor,
        mask: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        batch_sizes: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        bias = None
        if weights.bias_ih is not None:
            bias = weights.bias_ih + weights.bias_hh
        # The input projection and the gate of all steps at once, outside the recurrence.
        # k = 0 on padded steps: the state is held there exactly, so h_n is the last valid one.
        gates_x = F.linear(x, weights.weight_ih, bias)
        leak = self.settings.leak if self.training else 0.0
        work = chosen.compute_dtype
        k = sequence_gate(times, *gate_values(weights), leak, mask, work, backend=chosen)
        clip = math.inf if self.settings.grad_clip is None else self.settings.grad_clip
        dtype = weights.weight_hh.dtype
        tensors = (gates_x, k, weights.weight_hh, weights.weight_ch, h0, c0)
        # float16/bfloat16 layers run the recurrence in float32 (see the planner's compute_dtype);
        # under autocast gates_x may come in another dtype than the parameters'.
        tensors = tuple(None if t is None else t.to(work) for t in tensors)
        h_seq, h_n, c_n = chosen.backend.recurrence(*tensors, clip, batch_sizes)
        return h_seq.to(dtype), h_n.to(dtype), c_n.to(dtype)
