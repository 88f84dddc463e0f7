"""One registry of recurrence backends and one planner that picks the gate and the recurrence.

A backend is a function with the signature of :func:`phased_lstm.ops.recurrence` (without
``backend``) plus a declaration of what it can run: the device types, the dtypes, whether it
computes gradients, whether it takes the packed layout, whether it needs the compiled C++
kernels, and which time gate goes with it. :func:`plan` reads those declarations, and nothing
else, to choose for one call: every module asks it once per layer and direction and uses its
answer for the gate and the recurrence, so the two can never disagree.

Adding a backend is one call (here for a recurrence written for CUDA tensors)::

    from phased_lstm.ops.backends import Backend, register_backend

    register_backend(Backend(
        name="triton",
        recurrence=triton_recurrence,          # the signature of ops.recurrence
        devices=("cuda",),
        dtypes=(torch.float32, torch.float64),
        gradients=True,
        priority=15,                           # "auto" prefers it to the reference
        unavailable=lambda: None if _triton_imports() else "triton is not installed",
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

RecurrenceFn = Callable[..., tuple[Tensor, Tensor, Tensor]]

_HALF = (torch.float16, torch.bfloat16)
_DEVICE_WORDS = {"cpu": "the CPU", "cuda": "CUDA devices"}


@dataclass(frozen=True)
class Backend:
    """A recurrence implementation and what it can run.

    Attributes:
        name: the string users pass as ``backend=``.
        recurrence: a function with the signature of :func:`phased_lstm.ops.recurrence`
            (without ``backend``); ``grad_clip`` arrives as ``math.inf`` when unset.
        devices: device types it runs on (``("cpu",)``); ``None`` for any.
        dtypes: dtypes it computes in; ``None`` for any. All tensors of a call share one.
        gradients: whether it computes gradients; a backend without them is chosen by
            ``"auto"`` only when no gradient is needed.
        packed: whether it takes the packed layout (``gates_x`` of shape ``(S, 4H)``).
        needs_kernels: whether it runs the compiled C++ kernels (then it is available only
            once they are built; ``"auto"`` warns once and passes it over if they cannot be).
        kernel_gate: whether the time gate runs in the compiled C++ kernel (CPU, timestamps
            without gradient) rather than :func:`phased_lstm.functional.time_gate`.
        priority: ``"auto"`` picks the eligible backend with the highest.
        unavailable: optional check, ``None`` when the backend can run in this process, else
            why not (e.g. a package that does not import).
        fix: what a user can do when it is asked for and cannot run.
    """

    name: str
    recurrence: RecurrenceFn
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    gradients: bool = True
    packed: bool = False
    needs_kernels: bool = False
    kernel_gate: bool = False
    priority: int = 0
    unavailable: Callable[[], str | None] | None = None
    fix: str = "use backend='reference'"


@dataclass(frozen=True)
class Plan:
    """What runs one layer-direction: the backend, the gate, and the dtype they compute in.

    ``compute_dtype`` differs from the parameters' dtype for float16 and bfloat16 layers, whose
    recurrence runs in float32 (see :func:`plan`).
    """

    backend: Backend
    kernel_gate: bool
    compute_dtype: torch.dtype


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
        needs_grad=torch.is_grad_enabled() and any(t.requires_grad for t in present),
        packed=packed,
        dtypes_seen=tuple(sorted({str(t.dtype) for t in present})),
        devices_seen=tuple(devices),
    )


def _dtype_words(dtypes: tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def unsupported(backend: Backend, call: Call) -> str | None:
    """Why ``backend`` cannot run ``call`` (device, dtype, layout), or ``None`` if it can."""
    if backend.devices is not None and call.device not in backend.devices:
        where = " or ".join(_DEVICE_WORDS.get(d, f"{d} devices") for d in backend.devices)
        got = ", ".join(call.devices_seen) or str(call.device)
        return f"they run on {where}, got a tensor on {got}"
    if backend.dtypes is not None and call.dtype not in backend.dtypes:
        got = ", ".join(call.dtypes_seen) or str(call.dtype)
        return f"they take {_dtype_words(backend.dtypes)} tensors of one dtype, got {got}"
    if call.packed and not backend.packed:
        return "it does not take the packed layout (gates_x of shape (S, 4H))"
    return None


def _unavailable(backend: Backend) -> str | None:
    if backend.needs_kernels:
        from .kernels import build_error

        error = build_error()
        if error is not None:
            return error
    return None if backend.unavailable is None else backend.unavailable()


def require(name: str, call: Call) -> Backend:
    """The backend ``name`` if it can run ``call``, else a RuntimeError that says how to fix it."""
    backend = get_backend(name)
    if call.needs_grad and not backend.gradients:
        trainers = [
            repr(b.name)
            for b in _REGISTRY.values()
            if b.gradients and b.name != "reference" and unsupported(b, call) is None
        ]
        raise RuntimeError(
            f"backend={name!r} is for inference and computes no gradients, but an input requires "
            "grad; run it under torch.no_grad() (or torch.inference_mode()), or use "
            f"backend={' or '.join([*trainers, repr('auto')])} for training"
        )
    error = _unavailable(backend)
    if error is not None:
        if backend.needs_kernels:
            from .kernels import FIX

            raise RuntimeError(
                f"backend={name!r} needs the C++ kernels, which could not be built ({error}). "
                f"To fix it, {FIX}; or use backend='reference'."
            )
        raise RuntimeError(f"backend={name!r} cannot run here: {error}; {backend.fix}")
    reason = unsupported(backend, call)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} cannot run these inputs: {reason}; {backend.fix}")
    return backend


def choose(requested: str, call: Call) -> Backend:
    """The backend that runs ``call``: ``requested`` (checked), or the best one for "auto"."""
    if requested != "auto":
        return require(requested, call)
    best = _REGISTRY["reference"]
    for backend in _REGISTRY.values():
        if backend.priority <= best.priority:
            continue
        if call.needs_grad and not backend.gradients:
            continue
        if unsupported(backend, call) is not None:
            continue
        if backend.needs_kernels:
            from .kernels import kernels_available

            if not kernels_available(warn=True):
                continue
        if backend.unavailable is not None and backend.unavailable() is not None:
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
    device: torch.device | str,
    dtype: torch.dtype,
    needs_grad: bool,
    times_need_grad: bool = False,
    packed: bool = False,
) -> Plan:
    """What runs one layer-direction of a module on ``device`` with parameters in ``dtype``.

    The recurrence runs in :func:`compute_dtype`; the compiled gate is used when the chosen
    backend pairs with it and the timestamps need no gradient (the kernel differentiates with
    respect to period, shift and r_on only).
    """
    device_type = torch.device(device).type
    work = compute_dtype(dtype)
    call = Call(device=device_type, dtype=work, needs_grad=needs_grad, packed=packed)
    backend = choose(requested, call)
    return Plan(backend, backend.kernel_gate and not times_need_grad, work)
