"""PhasedLSTMCell and PhasedLSTM: the paper's layer with the contract of torch.nn.LSTM.

Both modules keep the parameters of one layer and direction under the names nn.LSTM uses
(``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) plus the peepholes ``weight_ch`` and
the time gate, which is stored reparametrised so that the optimiser cannot leave its domain:

* ``log_period``: ``period = exp(log_period) > 0`` for any real value;
* ``shift``: the phase shift itself (any real value is valid);
* ``logit_r_on``: ``r_on = sigmoid(logit_r_on)`` in ``(0, 1)`` (``1`` exactly when frozen at 1).

Unlike a clamp, these maps keep a gradient everywhere. The effective values are read with
``time_gate_values()`` (float64, as the layer computes the phase), or as ``period``/``r_on``
(cell) and ``period_l{k}``/``r_on_l{k}`` (layer, ``_reverse`` too) in the parameters' dtype.

The module is organised by what each part is: :class:`TimeGateSettings` holds the keyword
settings (validated once, printed by the repr); ``_create_direction``/``_init_direction`` make
and initialise the parameters of one layer-direction; :class:`_Steps` is the one preparation
of timestamps, lengths and masks that the layer, the cell and ``update_fraction`` share; and
``_run_direction`` runs the gate and the recurrence of one layer-direction with the backend
that :func:`phased_lstm.ops.backends.plan` picks for both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from . import _checks
from .ops import backends
from .ops.backends import check_backend
from .ops.fused import needs_grad
from .ops.gate import sequence_gate
from .ops.kernels import kernel_module

DEFAULT_PERIOD_RANGE = (math.e, math.e**3)
# Steps per chunk of a forward pass that needs no gradient (bounds its memory, not its result).
_EVAL_CHUNK = 256


def _float(value: object) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class TimeGateSettings:
    """The keyword-only settings of :class:`PhasedLSTMCell` and :class:`PhasedLSTM`, validated.

    Its defaults are the modules' defaults (the authors': r_on 0.05, leak 1e-3, periods
    ``exp(U(1, 3))``); the repr of a module shows the settings that differ from them. See
    :class:`PhasedLSTM` for what each one means.
    """

    peepholes: bool = False
    r_on: float = 0.05
    leak: float = 1e-3
    period_range: tuple[float, float] = DEFAULT_PERIOD_RANGE
    shift_range: tuple[float, float] | None = None
    learn_period: bool = True
    learn_shift: bool = True
    learn_r_on: bool = False
    grad_clip: float | None = field(default=None, metadata={"format": _float})
    backend: str = "auto"

    def __post_init__(self) -> None:
        checked = {
            "peepholes": _checks.check_bool("peepholes", self.peepholes),
            "r_on": _checks.check_r_on(self.r_on),
            "leak": _checks.check_leak(self.leak),
            "period_range": _checks.check_range("period_range", self.period_range, positive=True),
            "shift_range": None
            if self.shift_range is None
            else _checks.check_range("shift_range", self.shift_range, positive=False),
            "learn_period": _checks.check_bool("learn_period", self.learn_period),
            "learn_shift": _checks.check_bool("learn_shift", self.learn_shift),
            "learn_r_on": _checks.check_bool("learn_r_on", self.learn_r_on),
            "grad_clip": _checks.check_grad_clip(self.grad_clip),
            "backend": check_backend(self.backend),
        }
        if checked["learn_r_on"] and checked["r_on"] == 1.0:
            raise ValueError(
                "r_on must be < 1 when learn_r_on=True (its logit would be infinite), got 1.0; "
                "use learn_r_on=False for a fixed r_on of 1"
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def repr_parts(self) -> list[str]:
        """``name=value`` for every setting that differs from its default."""
        parts = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value != spec.default:
                text = spec.metadata.get("format", repr)(value)
                parts.append(f"{spec.name}={text}")
        return parts


_DEFAULT = TimeGateSettings()


def _settings_from(arguments: dict) -> TimeGateSettings:
    """The settings among a constructor's arguments (its ``locals()``): the keyword-only
    arguments of both modules are exactly the fields of :class:`TimeGateSettings`."""
    return TimeGateSettings(
        **{f.name: arguments[f.name] for f in dataclasses.fields(TimeGateSettings)}
    )


def _setting(name: str, *, settable: bool, attribute: str | None = None) -> property:
    """A module attribute that reads (and, validated, writes) one field of ``settings``."""
    attribute = attribute or name

    def get(self):
        return getattr(self.settings, name)

    def set_(self, value):
        self.settings = dataclasses.replace(self.settings, **{name: value})

    def refuse(self, value):
        raise AttributeError(
            f"{attribute} is fixed at construction (it decides which parameters exist); "
            "build a new module to change it"
        )

    return property(get, set_ if settable else refuse, doc=f"``settings.{name}``")


class TimeGateValues(NamedTuple):
    """The effective time gate of one layer-direction, ``(H,)`` float64 tensors each.

    They carry gradients to the stored parameters (``log_period``, ``shift``, ``logit_r_on``).
    """

    period: Tensor
    shift: Tensor
    r_on: Tensor


# ----------------------------------------------------------------- parameters of a direction
class _Weights(NamedTuple):
    """The tensors of one layer-direction, fetched by name from its module."""

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    weight_ch: Tensor | None
    log_period: Tensor
    shift: Tensor
    logit_r_on: Tensor


def _create_direction(
    module: nn.Module, suffix: str, input_size: int, hidden_size: int, bias: bool
) -> None:
    """Register the (uninitialised) tensors of one layer-direction on ``module``."""
    settings = module.settings

    def add(name: str, shape: tuple[int, ...], learn: bool = True) -> None:
        tensor = torch.empty(shape)
        if learn:
            module.register_parameter(name + suffix, nn.Parameter(tensor))
        else:
            module.register_buffer(name + suffix, tensor)

    add("weight_ih", (4 * hidden_size, input_size))
    add("weight_hh", (4 * hidden_size, hidden_size))
    if bias:
        add("bias_ih", (4 * hidden_size,))
        add("bias_hh", (4 * hidden_size,))
    if settings.peepholes:
        add("weight_ch", (3 * hidden_size,))
    add("log_period", (hidden_size,), settings.learn_period)
    add("shift", (hidden_size,), settings.learn_shift)
    add("logit_r_on", (hidden_size,), settings.learn_r_on)


def _init_direction(weights: _Weights, settings: TimeGateSettings, hidden_size: int) -> None:
    """The authors' initialisation: LSTM weights as nn.LSTM's, periods log-uniform in
    ``period_range``, shifts uniform in ``[0, period)`` (or ``shift_range``), r_on fixed."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for tensor in (*weights[:5],):
            if tensor is not None:
                tensor.uniform_(-bound, bound)
        low, high = settings.period_range
        weights.log_period.uniform_(math.log(low), math.log(high))
        if settings.shift_range is None:
            weights.shift.uniform_(0.0, 1.0).mul_(weights.log_period.exp())
        else:
            weights.shift.uniform_(*settings.shift_range)
        r_on = settings.r_on
        weights.logit_r_on.fill_(math.inf if r_on == 1.0 else math.log(r_on / (1.0 - r_on)))


def _gate_values(weights: _Weights) -> TimeGateValues:
    # A float32 exp would put a relative error of 1e-7 on the period, which at t ~ 1e6 moves
    # the phase of a short period by a visible fraction of a cycle.
    return TimeGateValues(
        weights.log_period.to(torch.float64).exp(),
        weights.shift.to(torch.float64),
        torch.sigmoid(weights.logit_r_on.to(torch.float64)),
    )


# ----------------------------------------------------------------- the steps of a batch
@dataclass(frozen=True)
class _Steps:
    """Timestamps of a batch, time-major and checked, and the padding that goes with them.

    Attributes:
        times: ``(L, N)``, zero on padded steps (so that padding cannot poison a gradient).
        mask: ``(L, N)`` bool on the device of ``times``, True on valid steps; ``None`` when
            every step is valid.
        lengths: ``(N,)`` int64 on the CPU when there is padding (``None`` without, and where
            values are unknown: on the meta device and while torch.compile or export trace).
        device_lengths: the lengths on the device of ``times`` whenever there is a mask.
    """

    times: Tensor
    mask: Tensor | None = None
    lengths: Tensor | None = None
    device_lengths: Tensor | None = None

    @property
    def valid_count(self) -> int:
        """Valid (step, sample) pairs, counted on the CPU."""
        length, batch = self.times.shape
        return length * batch if self.lengths is None else int(self.lengths.sum())

    def padding_order(self) -> tuple[Tensor | None, Tensor | None]:
        """``(order, batch_sizes)``: the order that sorts the samples longest first (``None``
        when the batch is in that order already) and the number of valid samples at each step
        once sorted; ``(None, None)`` without padding, or without lengths on the CPU."""
        if self.lengths is None or self.mask is None:
            return None, None
        lengths = self.lengths
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = torch.arange(self.times.shape[0]).unsqueeze(1)
        batch_sizes = (steps < lengths.index_select(0, order)).sum(1)
        if bool((order == torch.arange(order.numel())).all()):
            return None, batch_sizes
        return order.to(self.times.device), batch_sizes


def _values_checkable(tensor: Tensor) -> bool:
    """Whether checks that read values can run: not on the meta device, not while tracing for
    torch.compile or torch.export (the values are not known there)."""
    return tensor.device.type != "meta" and not torch.compiler.is_compiling()


def _check_device(name: str, tensor: Tensor, device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name} must be on the device of input ({device}), got {tensor.device}")


def _prepare_steps(
    times: Tensor,
    lengths: object,
    device: torch.device,
    name: str = "times",
    owner: nn.Module | None = None,
) -> _Steps:
    """Check ``times`` (already ``(L, N)``, time-major) and ``lengths``; build the mask.

    Checks that read values synchronise with a CUDA device: the finiteness of ``times``, and
    the range of ``lengths`` if it is given on the GPU (give it on the CPU, as nn.utils.rnn
    wants it anyway, and that check costs nothing). Timestamps in float32 (or narrower) are
    also checked for a resolution too coarse for their spacing, in the same sync; ``owner``
    warns about that once (see :func:`_check_time_values`).
    """
    _check_device(name, times, device)
    length, batch = times.shape
    if lengths is None:
        steps = _Steps(times)
    elif not _values_checkable(times) or (
        isinstance(lengths, Tensor) and lengths.device.type == "meta"
    ):
        # Values unknown (meta, or traced by torch.compile/export): no value checks and no
        # sorting by length; the mask alone holds the state on padded steps.
        device_lengths = _checks.check_lengths(lengths, batch, length, values=False).to(device)
        mask = torch.arange(length, device=device).unsqueeze(1) < device_lengths
        steps = _Steps(times.masked_fill(~mask, 0), mask, None, device_lengths)
    else:
        if isinstance(lengths, Tensor) and lengths.device.type != "cpu":
            lengths = lengths.cpu()
        host = _checks.check_lengths(lengths, batch, length)
        if bool((host < length).any()):
            device_lengths = host.to(device)
            mask = torch.arange(length, device=device).unsqueeze(1) < device_lengths
            # Padding entries are never read; zero them so that they cannot poison a gradient.
            steps = _Steps(times.masked_fill(~mask, 0), mask, host, device_lengths)
        else:
            steps = _Steps(times)
    if _values_checkable(times):
        gaps = None
        if times.dtype in _COARSE_DTYPES:
            gaps = steps.times[1:] - steps.times[:-1]
            if steps.mask is not None:
                gaps = gaps.masked_fill(~steps.mask[1:], 0)
        _check_time_values(steps.times, gaps, name, owner)
    return steps


# Timestamps in these dtypes are checked for a resolution too coarse for their spacing: a
# float32 step larger than this share of the smallest gap between events moves the phase.
_COARSE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_COARSE_SHARE = 0.01


def _check_time_values(
    times: Tensor, gaps: Tensor | None, name: str, owner: nn.Module | None
) -> None:
    """Finite ``times`` (a ValueError if not) and, with ``gaps`` (the differences between
    consecutive valid timestamps of each sample; float32 or narrower times only), a warning,
    once per ``owner``, when the dtype cannot resolve those gaps at the times' magnitude: at
    t ~ 1e6 float32 holds steps of 1/16, and at 1e9 of 64. One host sync on CUDA; float64
    times cost the finiteness check only."""
    if gaps is None or times.numel() == 0:
        _checks.check_finite_times(times, name)
        return
    warned = owner is not None and owner.__dict__.get("_warned_coarse_times", False)
    positive = gaps.abs()
    positive = positive.masked_fill(positive == 0, math.inf)
    smallest = positive.min() if positive.numel() else times.new_tensor(math.inf)
    finite, magnitude, gap = torch.stack(
        [
            torch.isfinite(times).all().to(torch.float64),
            times.abs().max().double(),
            smallest.double(),
        ]
    ).tolist()
    if not finite:
        raise ValueError(f"{name} must be finite at every valid step, got NaN or infinity")
    if warned or magnitude == 0 or not math.isfinite(gap):
        return
    resolution = torch.finfo(times.dtype).eps * 2.0 ** math.floor(math.log2(magnitude))
    if resolution > _COARSE_SHARE * gap:
        dtype = str(times.dtype).replace("torch.", "")
        warnings.warn(
            f"{name} is {dtype} with magnitudes up to {magnitude:.3g}, where {dtype} holds steps "
            f"of {resolution:.3g} only, coarse against the smallest gap between consecutive "
            f"timestamps ({gap:.3g}): the phase of the time gate is off by up to "
            f"{resolution:.3g} time units. Pass {name} as float64, or subtract an offset "
            f"(e.g. {name} - {name}.min()) before converting them to {dtype}.",
            UserWarning,
            stacklevel=4,
        )
        if owner is not None:
            owner.__dict__["_warned_coarse_times"] = True


# ------------------------------------------------------------------------ the streaming step
def _make_stream(module: _PhasedModule):
    """The compiled streaming step prepared from ``module``'s tensors, or ``False`` where it
    does not apply: training with a leak or dropout (every neuron moves, or the layers draw
    random numbers), a bidirectional layer (the reverse direction needs the whole sequence),
    another backend asked for, tensors off the CPU or not float32/float64, parametrised
    weights, or kernels that could not be built (the general path warns about those)."""
    settings = module.settings
    if settings.backend not in ("auto", "sparse"):
        return False
    if module.training and (settings.leak > 0 or getattr(module, "dropout", 0.0) > 0):
        return False
    if getattr(module, "bidirectional", False) or parametrize.is_parametrized(module):
        return False
    tensors = [
        t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None
    ]
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64) or any(
        t.dtype != dtype or t.device.type != "cpu" for t in tensors
    ):
        return False
    extension = kernel_module()
    if extension is None:
        return False
    suffixes = (
        [""] if isinstance(module, PhasedLSTMCell) else [f"_l{k}" for k in range(module.num_layers)]
    )
    parts: dict[str, list] = {name: [] for name in ("w_ih", "w_hh", "bias", "w_ch", "gate")}
    with torch.no_grad():
        for suffix in suffixes:
            weights = module._weights(suffix)
            parts["w_ih"].append(weights.weight_ih.detach())
            parts["w_hh"].append(weights.weight_hh.detach())
            bias = None if weights.bias_ih is None else weights.bias_ih + weights.bias_hh
            parts["bias"].append(bias)
            parts["w_ch"].append(None if weights.weight_ch is None else weights.weight_ch.detach())
            parts["gate"].append(_gate_values(weights))
    period, shift, r_on = (list(values) for values in zip(*parts["gate"], strict=True))
    return extension.Stream(
        parts["w_ih"],
        parts["w_hh"],
        parts["bias"],
        parts["w_ch"],
        period,
        shift,
        r_on,
        tensors,
        getattr(module, "batch_first", False),
    )


# ----------------------------------------------------------------------- the shared base
class _PhasedModule(nn.Module):
    """What the cell and the layer share: settings, parameters by layer-direction, the gate
    values and the run of one layer-direction.

    ``suffix`` names a layer-direction: ``""`` for the cell and ``_l{k}[_reverse]`` for the
    layer, which is what makes a cell's state_dict the layer's layer-0 keys without ``_l0``.
    """

    peepholes = _setting("peepholes", settable=False)
    initial_r_on = _setting("r_on", settable=True, attribute="initial_r_on")
    leak = _setting("leak", settable=True)
    period_range = _setting("period_range", settable=True)
    shift_range = _setting("shift_range", settable=True)
    learn_period = _setting("learn_period", settable=False)
    learn_shift = _setting("learn_shift", settable=False)
    learn_r_on = _setting("learn_r_on", settable=False)
    grad_clip = _setting("grad_clip", settable=True)
    backend = _setting("backend", settable=True)

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

    # ----------------------------------------------------------- the streaming step's cache
    # The streaming step (ops/csrc/stream.cpp) holds what it computes with, prepared once from
    # this module's tensors. It notices in-place changes itself (version counters and storage);
    # what replaces a tensor, converts the module or changes its mode or settings forgets it.
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

    def _stream_call(self, method: str, *args):
        """The streaming step's ``method`` (``"layer"`` or ``"cell"``) for these inputs, or
        ``None`` where it does not apply (then the general path runs, and validates)."""
        stream = self.__dict__.get("_stream")
        if stream is None:
            stream = self.__dict__["_stream"] = _make_stream(self)
        if stream is False:
            return None
        result = getattr(stream, method)(*args, 0.0)
        if result is NotImplemented:  # a tensor changed in place since it was prepared
            stream = self.__dict__["_stream"] = _make_stream(self)
            if stream is False:
                return None
            result = getattr(stream, method)(*args, 0.0)
        return result

    def _add_direction(self, suffix: str, input_size: int, bias: bool) -> None:
        _create_direction(self, suffix, input_size, self.hidden_size, bias)
        for kind in ("period", "r_on"):
            self._derived_names[kind + suffix] = (suffix, kind)

    def _weights(self, suffix: str) -> _Weights:
        get = self._parameters.get
        buffers = self._buffers

        def tensor(name: str) -> Tensor | None:
            key = name + suffix
            value = get(key)
            return buffers.get(key) if value is None else value

        return _Weights(*(tensor(name) for name in _Weights._fields))

    def _suffix(self, layer: int, reverse: bool) -> str:
        raise NotImplementedError

    def time_gate_values(self, layer: int = 0, reverse: bool = False) -> TimeGateValues:
        """Period, shift and r_on of one layer-direction, as the layer computes with them.

        They are float64 whatever the parameters' dtype (the phase is computed in float64 from
        ``exp(log_period)``), and carry gradients to the stored parameters.

        Args:
            layer: the layer, from 0 (the cell has only 0).
            reverse: the reverse direction of a bidirectional layer.
        """
        return _gate_values(self._weights(self._suffix(layer, reverse)))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            derived = self.__dict__.get("_derived_names", {})
            if name not in derived:
                raise
            suffix, kind = derived[name]
            weights = self._weights(suffix)
            values = _gate_values(weights)
            # Handed out in the parameters' dtype, as they always were; time_gate_values()
            # gives the float64 values the layer computes with.
            return getattr(values, kind).to(weights.shift.dtype)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_derived_names", {})))

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
        plan = backends.plan(
            self.settings.backend,
            device=x.device,
            dtype=weights.weight_hh.dtype,
            needs_grad=grad,
            times_need_grad=torch.is_grad_enabled() and times.requires_grad,
        )
        if x.shape[0] > _EVAL_CHUNK and not grad:
            # Without autograd nothing has to outlive a step: run in time chunks with the state
            # carried, so the (L, N, 4H) input projection and k never exist whole.
            h_seqs, h, c = [], h0, c0
            for start in range(0, x.shape[0], _EVAL_CHUNK):
                part = slice(start, start + _EVAL_CHUNK)
                h_seq, h, c = self._run_chunk(
                    weights,
                    plan,
                    x[part],
                    times[part],
                    None if mask is None else mask[part],
                    h,
                    c,
                    None if batch_sizes is None else batch_sizes[part],
                )
                h_seqs.append(h_seq)
            return torch.cat(h_seqs), h, c
        return self._run_chunk(weights, plan, x, times, mask, h0, c0, batch_sizes)

    def _run_chunk(
        self,
        weights: _Weights,
        plan: backends.Plan,
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
        work = plan.compute_dtype
        k = sequence_gate(times, *_gate_values(weights), leak, mask, work, backend=plan)
        clip = math.inf if self.settings.grad_clip is None else self.settings.grad_clip
        dtype = weights.weight_hh.dtype
        tensors = (gates_x, k, weights.weight_hh, weights.weight_ch, h0, c0)
        # float16/bfloat16 layers run the recurrence in float32 (see backends.compute_dtype);
        # under autocast gates_x may come in another dtype than the parameters'.
        tensors = tuple(None if t is None else t.to(work) for t in tensors)
        h_seq, h_n, c_n = plan.backend.recurrence(*tensors, clip, batch_sizes)
        return h_seq.to(dtype), h_n.to(dtype), c_n.to(dtype)

    def _settings_repr(self) -> list[str]:
        return self.settings.repr_parts()


class PhasedLSTMCell(_PhasedModule):
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
        peepholes: bool = _DEFAULT.peepholes,
        r_on: float = _DEFAULT.r_on,
        leak: float = _DEFAULT.leak,
        period_range: tuple[float, float] = _DEFAULT.period_range,
        shift_range: tuple[float, float] | None = _DEFAULT.shift_range,
        learn_period: bool = _DEFAULT.learn_period,
        learn_shift: bool = _DEFAULT.learn_shift,
        learn_r_on: bool = _DEFAULT.learn_r_on,
        grad_clip: float | None = _DEFAULT.grad_clip,
        backend: str = _DEFAULT.backend,
    ) -> None:
        input_size = _checks.check_positive_int("input_size", input_size)
        hidden_size = _checks.check_positive_int("hidden_size", hidden_size)
        bias = _checks.check_bool("bias", bias)
        super().__init__(_settings_from(locals()))
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

    @property
    def period(self) -> Tensor:
        """``exp(log_period)`` in the parameters' dtype (``time_gate_values()``: float64)."""
        return self.time_gate_values().period.to(self.shift.dtype)

    @property
    def r_on(self) -> Tensor:
        """``sigmoid(logit_r_on)`` in the parameters' dtype (``time_gate_values()``: float64)."""
        return self.time_gate_values().r_on.to(self.shift.dtype)

    def reset_parameters(self) -> None:
        _init_direction(self._weights(""), self.settings, self.hidden_size)

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
        steps = _prepare_steps(t.unsqueeze(0), None, x.device, name="t", owner=self)
        state_shape = (self.hidden_size,) if unbatched else (n, self.hidden_size)
        if hx is None:
            h0 = c0 = x.new_zeros((n, self.hidden_size))
        else:
            h0, c0 = _checks.check_hx(hx, state_shape, dtype)
            _check_device("hx", h0, x.device)
            _check_device("hx", c0, x.device)
            if unbatched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        _, h, c = self._run_direction("", x.unsqueeze(0), steps.times, None, h0, c0)
        if unbatched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class PhasedLSTM(_PhasedModule):
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
        peepholes: bool = _DEFAULT.peepholes,
        r_on: float = _DEFAULT.r_on,
        leak: float = _DEFAULT.leak,
        period_range: tuple[float, float] = _DEFAULT.period_range,
        shift_range: tuple[float, float] | None = _DEFAULT.shift_range,
        learn_period: bool = _DEFAULT.learn_period,
        learn_shift: bool = _DEFAULT.learn_shift,
        learn_r_on: bool = _DEFAULT.learn_r_on,
        grad_clip: float | None = _DEFAULT.grad_clip,
        backend: str = _DEFAULT.backend,
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
        super().__init__(_settings_from(locals()))
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
        return PhasedLSTMStream(self, batch_size, hx)

    def _suffixes(self, layer: int) -> list[str]:
        suffix = f"_l{layer}"
        return [suffix, suffix + "_reverse"] if self.bidirectional else [suffix]

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
                _init_direction(self._weights(suffix), self.settings, self.hidden_size)

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

    def _time_major_times(
        self, times: object, shape_ln: tuple[int, int], unbatched: bool
    ) -> Tensor:
        """Validate ``times`` against the input's (L, N) and return it time-major (L, N)."""
        length, batch = shape_ln
        check = _checks.check_times
        if unbatched:
            return check(times, (length,), "(L,)", finite=False).unsqueeze(1)
        if isinstance(times, Tensor) and times.dim() == 1:
            return check(times, (length,), "(L,)", finite=False).unsqueeze(1).expand(-1, batch)
        if self.batch_first:
            return check(times, (batch, length), "(N, L)", finite=False).transpose(0, 1)
        return check(times, (length, batch), "(L, N)", finite=False)

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
        times = self._time_major_times(times, (length, batch), unbatched)
        steps = _prepare_steps(times, lengths, x.device, owner=self)
        h0, c0 = self._initial_state(hx, batch, x, unbatched)

        order, batch_sizes = steps.padding_order()
        if order is None:
            output, h_n, c_n = self._run_padded(x, steps, h0, c0, batch_sizes)
        else:
            # Sorted by length, longest first, the valid samples of every step are the leading
            # rows, and the recurrence computes only those (batch_sizes).
            # index_select, not x[:, order]: the backward of advanced indexing is an
            # accumulating index_put, several times slower than index_select's index_add.
            sorted_steps = _Steps(
                steps.times.index_select(1, order),
                steps.mask.index_select(1, order),
                steps.lengths.index_select(0, order.cpu()),
                steps.device_lengths.index_select(0, order),
            )
            output, h_n, c_n = self._run_padded(
                x.index_select(1, order),
                sorted_steps,
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

    def _run_padded(self, x, steps: _Steps, h0, c0, batch_sizes):
        """All layers over time-major ``x`` (L, N, H_in) of a batch in the sorted order that
        ``batch_sizes`` (if any) describes."""
        mask = steps.mask
        reverse = None
        if self.bidirectional:
            index = _reverse_index(x.shape[0], x.shape[1], steps.device_lengths, x.device)
            reverse = functools.partial(_gather_steps, index=index)
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
        if not torch.equal(times.batch_sizes, input.batch_sizes) or not _same_optional(
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
        _check_device("times", data, x.device)
        batch_sizes = input.batch_sizes
        if _values_checkable(data):
            gaps = None
            if data.dtype in _COARSE_DTYPES:
                rows, previous = _packed_successions(batch_sizes)
                gaps = data[rows.to(data.device)] - data[previous.to(data.device)]
            _check_time_values(data, gaps, "times", self)
        batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
        h0, c0 = self._initial_state(hx, batch, x, False)
        if input.sorted_indices is not None:  # hx comes in the caller's order
            h0, c0 = (
                h0.index_select(1, input.sorted_indices),
                c0.index_select(1, input.sorted_indices),
            )
        reverse = None
        if self.bidirectional:
            index = _packed_reverse_index(batch_sizes).to(x.device)
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
        _check_device("the parameters", self.weight_ih_l0, x.device)

    def _initial_state(self, hx, batch: int, x: Tensor, unbatched: bool) -> tuple[Tensor, Tensor]:
        """``(h_0, c_0)`` of shape ``(D * num_layers, N, H)``, checked, or zeros like ``x``."""
        states = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            zeros = x.new_zeros((states, batch, self.hidden_size))
            return zeros, zeros
        shape = (states, self.hidden_size) if unbatched else (states, batch, self.hidden_size)
        h0, c0 = _checks.check_hx(hx, shape, x.dtype)
        _check_device("hx", h0, x.device)
        _check_device("hx", c0, x.device)
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
        if times.device.type == "meta":
            raise ValueError(
                "update_fraction counts open gates, which needs timestamps with values; "
                "times on the meta device have none"
            )
        steps = _prepare_steps(times, lengths, times.device, owner=self)
        count = steps.valid_count
        if count == 0:
            raise ValueError("update_fraction needs at least one valid step, got none")
        total, directions = 0.0, 0
        for layer in range(self.num_layers):
            for suffix in self._suffixes(layer):
                weights = self._weights(suffix)
                plan = backends.plan(
                    self.settings.backend,
                    device=times.device,
                    dtype=weights.shift.dtype,
                    needs_grad=False,
                )
                k = sequence_gate(
                    steps.times,
                    *_gate_values(weights),
                    0.0,
                    steps.mask,
                    plan.compute_dtype,
                    backend=plan,
                )
                total += float((k > 0).sum()) / (count * self.hidden_size)
                directions += 1
        return total / directions


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
        if not torch.compiler.is_compiling():
            out = self.layer._stream_call("advance", x, t, self._h, self._c)
            if out is not None:
                return out
        return self._general(x, t)

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


def _packed_successions(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, previous)``: every row of packed data after a sample's first step, and the row
    of the same sample's step before it."""
    sizes = batch_sizes.to(torch.int64)
    batch = int(sizes[0]) if sizes.numel() else 0
    offsets = sizes.cumsum(0) - sizes
    present = torch.arange(batch).unsqueeze(0) < sizes.unsqueeze(1)  # (L, N)
    step, sample = present[1:].nonzero(as_tuple=True)
    return offsets[step + 1] + sample, offsets[step] + sample


def _packed_reverse_index(batch_sizes: Tensor) -> Tensor:
    """(S,) row index of packed data that reverses each sample's steps (an involution).

    Row (t, n) of the packed layout holds step t of sample n; it trades places with step
    ``length_n - 1 - t`` of the same sample.
    """
    sizes = batch_sizes.to(torch.int64)
    batch = int(sizes[0]) if sizes.numel() else 0
    offsets = sizes.cumsum(0) - sizes
    present = torch.arange(batch).unsqueeze(0) < sizes.unsqueeze(1)  # (L, N)
    step, sample = present.nonzero(as_tuple=True)  # in the packed order
    lengths = present.sum(0)
    return offsets[lengths[sample] - 1 - step] + sample


def _gather_steps(values: Tensor, *, index: Tensor) -> Tensor:
    """values[index[t, n], n, ...] for (L, N) or (L, N, F) values."""
    if values.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, -1, values.shape[-1])
    return values.gather(0, index)


__all__ = [
    "PhasedLSTM",
    "PhasedLSTMCell",
    "PhasedLSTMStream",
    "TimeGateSettings",
    "TimeGateValues",
]
