"""The ``"triton"`` backend's entry points: what it runs, why it cannot, and its lazy loading.

Triton is optional (``pip install 'phased-lstm[gpu]'``) and imported on the first call that needs
it, never by ``import phased_lstm``. The kernels are loaded together on first use, with the
torch.library ops that wrap them (:mod:`.library`; the kernels in :mod:`.loops`, :mod:`.cell` and
:mod:`.gate`, their launches in :mod:`.launch`), and Triton fixes at that moment, once per process,
whether they are compiled for the GPU or run by its CPU interpreter (environment variable
``TRITON_INTERPRET=1``, which must be set before Triton is first imported: slow, for testing
without a GPU).

:data:`TRITON` declares the backend (its recurrence, its gate, :data:`DEVICES`, :data:`DTYPES`,
:func:`unavailable` and :data:`FIX`); :mod:`phased_lstm.ops` registers it, and ``backend="auto"``
takes it for CUDA tensors when Triton imports and the GPU has compute capability 8.0 or newer.
The planner alone decides whether it runs a call; its functions ask it again only when called
directly, as the CPU backends' do.
"""

from __future__ import annotations

import math
import os
from types import ModuleType

import torch
from torch import Tensor

from .._planner import Backend, plan
from ..reference import reference_recurrence

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
FIX = (
    "install Triton (`pip install 'phased-lstm[gpu]'` or `pip install triton`) and pass CUDA "
    "tensors; on the CPU use backend='fused' or 'auto', or, to run the Triton kernels in "
    "Triton's interpreter (slow, for testing), set the environment variable TRITON_INTERPRET=1 "
    "in a new process before it first imports Triton"
)

_import_error: str | None = None
_imported = False
_library: ModuleType | None = None


def import_error() -> str | None:
    """``None`` when Triton imports (tried once), else why it does not.

    No lock: two threads trying at once import the same module and store the same answer. Plain
    code, so that torch.compile traces it when a compiled function makes the first call."""
    global _import_error, _imported
    if not _imported:
        try:
            import triton  # noqa: F401
        except Exception as exc:  # any failure just means: no Triton backend
            _import_error = f"{type(exc).__name__}: {exc}"
        _imported = True
    return _import_error


def interpreted() -> bool:
    """Whether the kernels run in Triton's CPU interpreter: as loaded, or, before they are
    loaded, as the environment says they would be."""
    if _library is not None:
        return _library.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


def _kernels() -> ModuleType:
    """:mod:`.library`, the ops and their entry points, loaded on the first call (all kernels
    together, so that all are compiled or all interpreted). A plain import statement, which
    torch.compile runs while tracing (``importlib`` would break the graph)."""
    global _library
    if _library is None:
        error = import_error()
        if error is not None:
            raise RuntimeError(
                f"backend='triton' needs Triton, which could not be imported ({error}); to fix "
                f"it, {FIX}"
            )
        from . import library

        _library = library
    return _library


def unavailable() -> str | None:
    """``None`` when the backend can run in this process, else why not: Triton must import, and
    (unless interpreted) the GPU must be an NVIDIA one of compute capability 8.0 or newer."""
    error = import_error()
    if error is not None:
        return f"Triton could not be imported ({error})"
    if interpreted() or not torch.cuda.is_available():
        return None
    if torch.version.hip is not None:
        return "its kernels are written and checked for NVIDIA GPUs, this is a ROCm build"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        return f"it needs compute capability 8.0 or newer, this GPU has {major}.{minor}"
    return None


# Where it runs: CUDA tensors; CPU tensors too in a process that interprets the kernels.
DEVICES = ("cuda", "cpu") if interpreted() else ("cuda",)


def triton_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"triton"``; see :func:`phased_lstm.ops.recurrence` for the contract.

    Both layouts; the packed one runs padded (see :func:`_packed`). First-order gradients only
    (like ``"fused"``): use ``backend="reference"`` for double backward.
    """
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    plan("triton", tensors=tensors, packed=gates_x.dim() == 2)  # raises if it cannot run
    library = _kernels()
    if gates_x.shape[0] == 0 or gates_x.shape[1] == 0:
        return reference_recurrence(*tensors, grad_clip, batch_sizes)
    if gates_x.dim() == 2:
        return _packed(tensors, grad_clip, batch_sizes)
    tensors = tuple(None if t is None else t.contiguous() for t in tensors)
    return library.recurrence(*tensors, grad_clip, batch_sizes)


def _packed(tensors, grad_clip, batch_sizes: Tensor):
    """The packed layout through the padded kernels: the kernels address step ``t`` as rows
    ``t * N + n``, so the packed rows are scattered there (the padding gets ``k = 0``, and
    ``batch_sizes`` holds its state anyway) and gathered back. Both moves are differentiable,
    and small beside the recurrence (one pass over ``gates_x``, ``k`` and ``h``)."""
    gates_x, k, weight_hh, weight_ch, h0, c0 = tensors
    length, batch = batch_sizes.shape[0], h0.shape[0]
    steps = torch.arange(length).repeat_interleave(batch_sizes)
    firsts = (torch.cumsum(batch_sizes, 0) - batch_sizes).repeat_interleave(batch_sizes)
    rows = (steps * batch + torch.arange(steps.shape[0]) - firsts).to(gates_x.device)

    def padded(packed: Tensor) -> Tensor:
        grid = packed.new_zeros(length * batch, packed.shape[1])
        return grid.index_copy(0, rows, packed).view(length, batch, -1)

    tensors = [t if t is None else t.contiguous() for t in (weight_hh, weight_ch, h0, c0)]
    h, h_n, c_n = _kernels().recurrence(
        padded(gates_x), padded(k), *tensors, grad_clip, batch_sizes
    )
    return h.reshape(length * batch, -1).index_select(0, rows), h_n, c_n


def sequence_gate(times, period, shift, r_on, leak, valid, dtype) -> Tensor:
    """The Triton time gate; see :func:`phased_lstm.ops.sequence_gate`."""
    return _kernels().time_gate(times, period, shift, r_on, leak, valid, dtype)


TRITON = Backend(
    "triton",
    triton_recurrence,
    gate=sequence_gate,
    devices=DEVICES,
    dtypes=DTYPES,
    gradients=True,
    packed=True,
    # Above the reference, below the CPU kernels: on a GPU it competes with the reference
    # only; on the CPU (under the interpreter) "auto" keeps "fused" and "sparse".
    priority=5,
    unavailable=unavailable,
    fix=FIX,
)

__all__ = [
    "TRITON",
    "DEVICES",
    "DTYPES",
    "FIX",
    "interpreted",
    "triton_recurrence",
    "unavailable",
]
