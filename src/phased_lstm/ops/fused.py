"""The compiled backends of the recurrence: ``"fused"`` for training, ``"sparse"`` for inference.

Both run the loop over time steps in C++ (``csrc/recurrence.cpp``), one call per layer and
direction, on CPU float32/float64 tensors.

* ``"fused"``: forward and a hand-written backward (BPTT). The forward keeps only what the
  backward needs, the gate activations and the cell state of every step; the backward does one
  matrix product per step and the gradient of ``weight_hh`` as one product over all steps. It is
  first-order only: for double backward use ``backend="reference"``. With ``batch_sizes`` (a
  batch sorted by length, longest first) each step computes only its valid rows: the step's
  matrix products and elementwise work shrink to them and the padding rows are copied (the
  gradient of ``weight_hh`` stays one product over all rows, zeros included).
* ``"sparse"``: inference without gradients. A neuron whose time gate is exactly closed
  (``k == 0``: eval mode, where the leak is 0, or padding) is not computed at all: no row of
  ``weight_hh`` is read, no nonlinearity evaluated, and its ``h`` and ``c`` are kept bit for
  bit. A step where every neuron of every sample is closed is a copy. Each sample has its own
  open neurons, and only the open (sample, neuron) pairs are computed, as dot products; when the
  share of open pairs of a step is high enough for a dense matrix product to be cheaper (see
  :func:`_dense_above`), that step runs dense. In training mode the leak opens every neuron a
  little, every step is dense and the result is that of ``"fused"``.

  What it saves, with ``r_on = 0.05`` (about 5% of the neurons open at a time), H = 512, on a
  2-core x86 machine, one thread: one sequence (streaming) 2000 steps in 13 ms instead of
  190 ms dense (each open neuron reads its rows of ``weight_hh`` once, so the work falls with
  the open share); a batch of 32, 500 steps in 106 ms instead of 454 ms (the dense product reuses
  each row for all samples, so the gain is smaller than ``1 / r_on`` and shrinks as the open
  share grows). The layer still computes the input projection and the time gate of every step.

The C++ source is compiled on first use with :func:`torch.utils.cpp_extension.load` into torch's
extension cache (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``): it needs a
C++ compiler and ninja, takes about a minute once and nothing is downloaded. If the build fails,
``backend="auto"`` warns once and uses the reference loop; an explicit ``"fused"`` or
``"sparse"`` raises.
"""

from __future__ import annotations

import math
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .reference import reference_recurrence, valid_rows_of

_SOURCES = [Path(__file__).with_name("csrc") / name for name in ("recurrence.cpp", "time_gate.cpp")]
_FIX = (
    "install a C++ compiler (e.g. `apt-get install g++`) and ninja (`pip install ninja`), "
    "then restart Python"
)


_lock = threading.Lock()
_build_error: str | None = None
_built = False
_warned = False


def _cpu_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _build_extension() -> None:
    """Compile (or load from torch's cache) the C++ kernels; raises whatever the build raises."""
    from torch.utils.cpp_extension import load

    name = "phased_lstm_kernels"
    # Without trapping math and errno the compiler may if-convert and vectorise the loops of
    # transcendental functions; neither changes a result.
    cflags = ["-O3", "-fno-trapping-math", "-fno-math-errno"]
    ldflags = []
    if _cpu_has_avx2():
        # The build happens on the machine that runs it; the name keeps the cache of a machine
        # without AVX2 apart when a home directory is shared.
        cflags += ["-mavx2", "-mfma"]
        name += "_avx2"
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for splits the elementwise work over torch's own OpenMP threads.
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    load(
        name=name,
        sources=[str(path) for path in _SOURCES],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        is_python_module=False,
        verbose=False,
    )


def _summary(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    text = "; ".join((lines[:1] + errors[:3]) if errors else lines[:3]) or "no message"
    if len(text) > 600:
        text = text[:600] + "..."
    return f"{type(exc).__name__}: {text}"


def build_error() -> str | None:
    """Build the kernels if not done yet; ``None`` when they are usable, else why not."""
    global _built, _build_error
    with _lock:
        if not _built:
            try:
                _build_extension()
            except Exception as exc:  # a failed build must never break the reference path
                _build_error = _summary(exc)
            _built = True
    return _build_error


def kernels_available(*, warn: bool = False) -> bool:
    """Whether the compiled backends can run; with ``warn``, warn once if they cannot."""
    global _warned
    error = build_error()
    if error is not None and warn and not _warned:
        _warned = True
        warnings.warn(
            f"phased_lstm: the C++ kernels could not be built ({error}); backend='auto' uses the "
            f"slower reference loop. To get them, {_FIX}.",
            RuntimeWarning,
            stacklevel=3,
        )
    return error is None


def unsupported(gates_x, k, weight_hh, weight_ch, h0, c0) -> str | None:
    """Why the compiled kernels cannot take these tensors, or ``None`` when they can."""
    tensors = [gates_x, k, weight_hh, h0, c0] + ([weight_ch] if weight_ch is not None else [])
    for tensor in tensors:
        if tensor.device.type != "cpu":
            return f"they run on the CPU, got a tensor on {tensor.device}"
        if tensor.dtype != gates_x.dtype or gates_x.dtype not in (torch.float32, torch.float64):
            dtypes = sorted({str(t.dtype) for t in tensors})
            return f"they take float32 or float64 tensors of one dtype, got {', '.join(dtypes)}"
    return None


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will need gradients of any of these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _require(backend: str, tensors: tuple) -> None:
    error = build_error()
    if error is not None:
        raise RuntimeError(
            f"backend={backend!r} needs the C++ kernels, which could not be built ({error}). "
            f"To fix it, {_FIX}; or use backend='reference'."
        )
    reason = unsupported(*tensors)
    if reason is not None:
        raise RuntimeError(
            f"backend={backend!r} cannot run these inputs: {reason}; use backend='reference'"
        )


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.contiguous() for t in tensors]


class _FusedRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip, batch_sizes):
        h, c, acts = torch.ops.phased_lstm.forward_train(
            gates_x, k, weight_hh, weight_ch, h0, c0, batch_sizes
        )
        ctx.save_for_backward(k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes)
        ctx.grad_clip = grad_clip
        return h, h[-1].clone(), c[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_h_n, grad_c_n):
        k, weight_hh, weight_ch, h0, c0, h, c, acts, batch_sizes = ctx.saved_tensors
        grads = torch.ops.phased_lstm.backward(
            grad_h.contiguous(),
            grad_h_n.contiguous(),
            grad_c_n.contiguous(),
            k,
            weight_hh,
            weight_ch,
            h0,
            c0,
            h,
            c,
            acts,
            ctx.needs_input_grad[2],
            ctx.grad_clip,
            batch_sizes,
        )
        d_gates_x, d_k, d_weight_hh, d_weight_ch, d_h0, d_c0 = grads
        return (
            d_gates_x,
            d_k,
            d_weight_hh if ctx.needs_input_grad[2] else None,
            d_weight_ch if weight_ch is not None else None,
            d_h0,
            d_c0,
            None,
            None,
        )


def fused_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"fused"``; see :func:`phased_lstm.ops.recurrence` for the contract."""
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    _require("fused", tensors)
    if gates_x.shape[0] == 0:
        return reference_recurrence(*tensors)
    tensors = _contiguous(*tensors)
    if needs_grad(*tensors):
        return _FusedRecurrence.apply(*tensors, grad_clip, batch_sizes)
    # Without gradients nothing needs saving; every step with an open neuron runs dense.
    return torch.ops.phased_lstm.forward_infer(*_held_padding(tensors, batch_sizes), 0.0)


def _held_padding(tensors, batch_sizes):
    """The inference kernel skips neurons with k == 0: padding rows get k = 0, so that their
    state is held as ``batch_sizes`` says, and skipped."""
    if batch_sizes is None:
        return tensors
    gates_x, k, *rest = tensors
    valid = valid_rows_of(batch_sizes, gates_x)
    return (gates_x, torch.where(valid, k, torch.zeros((), dtype=k.dtype)), *rest)


def _dense_above(batch: int) -> float:
    """Share of open (sample, neuron) pairs above which a step of "sparse" runs dense.

    A sparse step reads the rows of ``weight_hh`` of each open neuron once per step and does a
    dot product per open pair; a dense one is a matrix product, which reuses each row for every
    sample. One sequence never gains from dense; in a batch the crossover, measured at H = 512
    on a 2-core x86 machine, falls from ~0.85 (4 samples) to ~0.4 (32 and more).
    """
    return min(1.0, 0.35 + 2.0 / batch)


def sparse_recurrence(
    gates_x, k, weight_hh, weight_ch, h0, c0, grad_clip=math.inf, batch_sizes=None
):
    """Backend ``"sparse"``; see :func:`phased_lstm.ops.recurrence` for the contract.

    ``grad_clip`` is accepted for the common signature; without gradients it changes nothing.
    """
    tensors = (gates_x, k, weight_hh, weight_ch, h0, c0)
    if needs_grad(*tensors):
        raise RuntimeError(
            "backend='sparse' is for inference and computes no gradients, but an input requires "
            "grad; run it under torch.no_grad() (or torch.inference_mode()), or use "
            "backend='fused' or 'auto' for training"
        )
    _require("sparse", tensors)
    if gates_x.shape[0] == 0:
        return reference_recurrence(*tensors)
    dense_above = _dense_above(gates_x.shape[1])
    tensors = _held_padding(_contiguous(*tensors), batch_sizes)
    return torch.ops.phased_lstm.forward_infer(*tensors, dense_above)


__all__ = ["build_error", "fused_recurrence", "kernels_available", "sparse_recurrence"]
