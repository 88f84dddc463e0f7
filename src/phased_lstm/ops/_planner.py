"""The registry of backends and the planner, the one place that chooses who runs a call.

A :class:`Backend` brings everything that runs one layer-direction: its recurrence (the
signature of :func:`phased_lstm.ops.recurrence`), optionally its own time gate and its own
streaming step, and a declaration of what it can run (device types, dtypes, gradients, the
packed layout, and whether it can run in this process at all). :func:`plan` reads those
declarations, and nothing else, to choose for one call from the device, the dtype, the grad
mode, the layout and the request; every caller (the layer, the cell, the stream,
``update_fraction``, :func:`phased_lstm.ops.recurrence`) asks it and uses its answer for the
gate and the recurrence together, so the two can never disagree.

Adding a backend is one call (here for a recurrence written for CUDA tensors)::

    from phased_lstm.ops import Backend, register_backend

    register_backend(Backend(
        name="mine",
        recurrence=my_recurrence,              # the signature of ops.recurrence
        gate=my_gate,                          # optional: the signature of ops.sequence_gate
        devices=("cuda",),
        dtypes=(torch.float32, torch.float64),
        gradients=True,
        priority=15,                           # "auto" prefers it to the reference
        unavailable=lambda: None if _imports() else "my_package is not installed",
    ))

``backend="auto"`` takes, among the registered backends that can run the call and are
available, the one with the highest ``priority``; ``"reference"`` (priority 0, any device,
any dtype) is always among them. A backend asked for by name that cannot run the call raises a
RuntimeError that says why and how to fix it; an automatic choice never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import reference_gate

RecurrenceFn = Callable[..., tuple[Tensor, Tensor, Tensor]]
GateFn = Callable[..., Tensor]
StreamFn = Callable[..., object]
DirectionFn = Callable[..., tuple[Tensor, Tensor, Tensor]]

_HALF = (torch.float16, torch.bfloat16)
_DEVICE_WORDS = {"cpu": "the CPU", "cuda": "CUDA devices"}


@dataclass(frozen=True)
class Backend:
    """A recurrence implementation, the gate and streaming step that go with it, and what it
    can run.

    Attributes:
        name: the string users pass as ``backend=``.
        recurrence: a function with the signature of :func:`phased_lstm.ops.recurrence`
            (without ``backend``); ``grad_clip`` arrives as ``math.inf`` when unset.
        devices: device types it runs on (``("cpu",)``), the tensors of a call all on one
            device; ``None`` for any.
        dtypes: dtypes it computes in; ``None`` for any. All tensors of a call share one.
        gradients: whether it computes gradients; a backend without them is chosen by
            ``"auto"`` only when no gradient is needed.
        packed: whether it takes the packed layout (``gates_x`` of shape ``(S, 4H)``).
        priority: ``"auto"`` picks the eligible backend with the highest.
        unavailable: optional check, ``None`` when the backend can run in this process, else
            why not (e.g. a package that does not import, kernels that could not be built).
        fix: what a user can do when it is asked for and cannot run.
        gate: its own time gate, a function
            ``(times, period, shift, r_on, leak, valid, dtype) -> k`` like
            :func:`phased_lstm.ops.sequence_gate` (without ``backend``), or ``None`` for the
            readable one (:func:`phased_lstm.functional.time_gate`). It need not differentiate
            with respect to ``times``: where the timestamps need a gradient the planner pairs
            the backend with the readable gate.
        stream: its streaming step, or ``None`` if it has none: a factory called with the
            detached tensors of every layer, ``(w_ih, w_hh, bias, w_ch, period, shift, r_on)``
            (lists, one entry per layer), the module's tensors (to notice in-place changes) and
            ``batch_first``, returning an object with methods ``layer(input, times, hx, 0.0)``,
            ``cell(x, t, hx, 0.0)`` and ``advance(x, t, h, c, 0.0)`` that answer ``None``
            where they do not apply and ``NotImplemented`` when a tensor changed since. It
            runs without gradients, in the module's own dtype.
        passed_over: optional, called when ``"auto"`` passes the backend over because it is
            unavailable (the compiled CPU backends warn once there).
        direction: optionally, one layer-direction straight from the layer's input, a function
            ``(x, times, weight_ih, bias, weight_hh, weight_ch, period, shift, r_on, leak,
            valid, h0, c0, grad_clip, batch_sizes) -> (h, h_n, c_n)`` (``bias`` the two biases
            summed or ``None``; ``valid`` the ``(L, N)`` mask of the padded layout or ``None``;
            the rest as :func:`phased_lstm.ops.recurrence` and
            :func:`phased_lstm.ops.sequence_gate` take them) that computes the time gate, the
            input projection and the recurrence itself, differentiable where the backend
            computes gradients. It can then skip the projection where the gate is closed, or
            write it straight where the recurrence reads it. Modules call it instead of their
            own projection, the gate and the recurrence when autocast is off and the plan uses
            the backend's own gate; ``None``: they always call those.
    """

    name: str
    recurrence: RecurrenceFn
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    gradients: bool = True
    packed: bool = False
    priority: int = 0
    unavailable: Callable[[], str | None] | None = None
    fix: str = "use backend='reference'"
    # Replace the flags needs_kernels and kernel_gate of earlier versions (a backend now says
    # itself whether it can run, and brings its gate instead of naming a built-in one).
    gate: GateFn | None = None
    stream: StreamFn | None = None
    passed_over: Callable[[], object] | None = None
    direction: DirectionFn | None = None


@dataclass(frozen=True)
class Plan:
    """What runs one layer-direction: the backend, the gate, and the dtype they compute in.

    ``gate`` is the backend's own gate or the readable one (``kernel_gate`` says which);
    ``compute_dtype`` differs from the parameters' dtype for float16 and bfloat16 layers, whose
    recurrence runs in float32 (see :func:`plan`).
    """

    backend: Backend
    gate: GateFn
    compute_dtype: torch.dtype

    @property
    def kernel_gate(self) -> bool:
        """Whether the gate is the backend's own rather than the readable one."""
        return self.gate is not reference_gate


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add a backend (or replace the one of the same name); ``"auto"`` cannot be a name."""
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a Backend, got {type(backend).__name__}")
    if backend.name == "auto" or not backend.name.isidentifier():
        raise ValueError(
            f"a backend name must be an identifier other than 'auto', got {backend.name!r}"
        )
    _REGISTRY[backend.name] = backend


def available_backends() -> list[str]:
    """Names accepted by ``backend=``: ``"auto"`` and every registered backend."""
    return ["auto", *_REGISTRY]


def check_backend(backend: object) -> str:
    """Validate a ``backend`` choice and return it."""
    if not isinstance(backend, str) or backend not in available_backends():
        raise ValueError(f"backend must be one of {available_backends()}, got {backend!r}")
    return backend


def get_backend(name: str) -> Backend:
    return _REGISTRY[check_backend(name)]


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will need gradients of any of these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------------- what a call needs
@dataclass(frozen=True)
class Call:
    """The facts of one call that decide who can run it.

    ``device`` and ``dtype`` are ``None`` when the tensors of the call do not share one.
    """

    device: str | None
    dtype: torch.dtype | None
    needs_grad: bool
    packed: bool = False
    dtypes_seen: tuple[str, ...] = ()
    devices_seen: tuple[str, ...] = ()


def call_of(tensors: tuple[Tensor | None, ...], *, packed: bool = False) -> Call:
    """The :class:`Call` of the tensors handed to a recurrence."""
    present = [t for t in tensors if t is not None]
    devices = sorted({str(t.device) for t in present})
    device_types = {t.device.type for t in present}
    dtypes = {t.dtype for t in present}
    return Call(
        device=device_types.pop() if len(device_types) == 1 else None,
        dtype=dtypes.pop() if len(dtypes) == 1 else None,
        needs_grad=needs_grad(*present),
        packed=packed,
        dtypes_seen=tuple(sorted({str(t.dtype) for t in present})),
        devices_seen=tuple(devices),
    )


def _dtype_words(dtypes: tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def _unsupported(backend: Backend, call: Call) -> str | None:
    """Why ``backend`` cannot run ``call`` (device, dtype, layout), or ``None`` if it can. A
    backend bound to device types runs the tensors of one device (a kernel reads them all)."""
    if backend.devices is not None and call.device not in backend.devices:
        where = " or ".join(_DEVICE_WORDS.get(d, f"{d} devices") for d in backend.devices)
        got = ", ".join(call.devices_seen) or str(call.device)
        return f"they run on {where}, got a tensor on {got}"
    if backend.devices is not None and len(call.devices_seen) > 1:
        return f"they take tensors on one device, got {', '.join(call.devices_seen)}"
    if backend.dtypes is not None and call.dtype not in backend.dtypes:
        got = ", ".join(call.dtypes_seen) or str(call.dtype)
        return f"they take {_dtype_words(backend.dtypes)} tensors of one dtype, got {got}"
    if call.packed and not backend.packed:
        return "it does not take the packed layout (gates_x of shape (S, 4H))"
    return None


def _require(name: str, call: Call) -> Backend:
    """The backend ``name`` if it can run ``call``, else a RuntimeError that says how to fix it."""
    backend = get_backend(name)
    if call.needs_grad and not backend.gradients:
        trainers = [
            repr(b.name)
            for b in _REGISTRY.values()
            if b.gradients and b.name != "reference" and _unsupported(b, call) is None
        ]
        raise RuntimeError(
            f"backend={name!r} is for inference and computes no gradients, but an input requires "
            "grad; run it under torch.no_grad() (or torch.inference_mode()), or use "
            f"backend={' or '.join([*trainers, repr('auto')])} for training"
        )
    error = None if backend.unavailable is None else backend.unavailable()
    if error is not None:
        raise RuntimeError(f"backend={name!r} cannot run here: {error}; {backend.fix}")
    reason = _unsupported(backend, call)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} cannot run these inputs: {reason}; {backend.fix}")
    return backend


def _best(call: Call) -> Backend:
    """The eligible, available backend of the highest priority ("auto")."""
    best = _REGISTRY["reference"]
    for backend in _REGISTRY.values():
        if backend.priority <= best.priority:
            continue
        if call.needs_grad and not backend.gradients:
            continue
        if _unsupported(backend, call) is not None:
            continue
        if backend.unavailable is not None and backend.unavailable() is not None:
            if backend.passed_over is not None:
                backend.passed_over()
            continue
        best = backend
    return best


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a layer of parameters in ``dtype`` runs its gate and recurrence in.

    float16 and bfloat16 layers run them in float32: the state carried over thousands of steps
    would otherwise round away its small updates (8 bits of mantissa in bfloat16), and the
    compiled kernels compute in float32 or float64 only. The input projection stays in the
    layer's dtype, and so do the outputs.
    """
    return torch.float32 if dtype in _HALF else dtype


def plan(
    requested: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    needs_grad: bool = False,
    times_need_grad: bool = False,
    packed: bool = False,
    tensors: tuple[Tensor | None, ...] | None = None,
    stream: bool = False,
) -> Plan | None:
    """Who runs one layer-direction: the only function that chooses a backend.

    The facts come either from a module (``device`` and ``dtype`` of its parameters; the gate
    and the recurrence then run in :func:`compute_dtype`) or from the ``tensors`` handed to a
    recurrence (their device and dtype as they are; ``needs_grad`` from them). The backend's
    own gate is used unless the timestamps need a gradient (``times_need_grad``).

    With ``stream=True`` it answers for the streaming step of a module whose tensors are
    ``tensors`` (no gradients, in their own dtype): the plan of a backend that has one, or
    ``None`` (then the general path runs, and reports what cannot run).
    """
    requested = check_backend(requested)
    if tensors is not None:
        call = call_of(tensors, packed=packed)
        if stream:
            call = Call(call.device, call.dtype, needs_grad=False)
        work = call.dtype
    else:
        work = dtype if stream else compute_dtype(dtype)
        device_type = None if device is None else torch.device(device).type
        call = Call(device=device_type, dtype=work, needs_grad=needs_grad, packed=packed)
    if requested == "auto":
        backend = _best(call)
    elif stream:
        try:
            backend = _require(requested, call)
        except RuntimeError:  # the general path raises it, after checking the inputs
            return None
    else:
        backend = _require(requested, call)
    if stream and backend.stream is None:
        return None
    own_gate = backend.gate is not None and not times_need_grad
    return Plan(backend, backend.gate if own_gate else reference_gate, work)
