"""How ``phased-lstm bench`` measures: wall or CUDA-event time of a step, medians of repeats
interleaved between models, the peak resident memory a step adds, and the lines that describe
the machine the numbers were taken on."""

from __future__ import annotations

import gc
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _seconds(step: Callable[[], None], device: str) -> float:
    """Duration of one call of ``step``: wall clock on the CPU, CUDA events on a GPU (from the
    stream reaching the first event to it reaching the second, launch gaps included)."""
    if device == "cpu":
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    step()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def _time_interleaved(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int, device: str = "cpu"
) -> dict[str, float]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(_seconds(step, device))
    return {name: _median_ms(s) for name, s in samples.items()}


def _rss_kib() -> tuple[int, int] | None:
    """(current, peak) resident set size in KiB from /proc, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            text = status.read()
    except OSError:
        return None
    values = {}
    for key in ("VmRSS", "VmHWM"):
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if match is None:
            return None
        values[key] = int(match.group(1))
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current VmRSS
        return True
    except OSError:
        return False


def _maxrss_kib() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if sys.platform == "darwin" else float(usage)


def peak_growth_mib(step: Callable[[], object]) -> float:
    """How far ``step()`` raises this process's peak resident memory above what it holds
    before, in MiB.

    It resets the process's high-water mark (Linux), so run it in a process of its own (see
    :func:`peak_mib_in_subprocess`); elsewhere it measures the growth of ``ru_maxrss``, which
    only shows a step that goes beyond every earlier peak.
    """
    gc.collect()
    if _reset_peak() and (rss := _rss_kib()) is not None:
        before = rss[0]
        step()
        after = _rss_kib()[1]
    else:
        before = _maxrss_kib()
        step()
        after = _maxrss_kib()
    return max(0.0, after - before) / 1024


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _resolved_backends(backend: str, device: str = "cpu") -> str:
    if backend != "auto":
        return backend
    if device != "cpu":
        from phased_lstm.ops import plan

        def chosen(needs_grad: bool) -> str:
            return plan(
                "auto", device=device, dtype=torch.float32, needs_grad=needs_grad
            ).backend.name

        return f"auto -> {chosen(True)} (train), {chosen(False)} (eval)"
    from phased_lstm.ops import build_kernels

    try:
        build_kernels()  # finds them built, or says why they cannot be
    except RuntimeError as error:
        return f"auto -> reference ({error})"
    return "auto -> fused (train), sparse (eval)"


def _cpu_line() -> str:
    return (
        f"CPU: {_cpu_name()} ({os.cpu_count()} logical cores), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32\n"
    )


def _cuda_line() -> str:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # reported, not needed: the reference runs without Triton
        triton_version = "not installed"
    precision = torch.get_float32_matmul_precision()
    return (
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), triton {triton_version}, float32; "
        f"float32 matmul precision {precision!r} (TF32 {'on' if precision != 'highest' else 'off'}"
        f" for PhasedLSTM), cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}\n"
    )


def _num(value: float | None, fmt: str = ".1f") -> str:
    """A table cell: the number formatted, or "-" where there is none."""
    return "-" if value is None else format(value, fmt)
