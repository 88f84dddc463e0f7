"""The Python half of scripts/gpu_check.sh: ``sweep`` times the Triton backend's ways of running
the recurrence on a GPU, ``summary`` condenses the logs of a check into a short table.

    PYTHONPATH=src python scripts/gpu_check.py sweep
    PYTHONPATH=src python scripts/gpu_check.py summary OUT_DIR

The sweep times the op itself (``phased_lstm.ops.triton_rnn.recurrence``: no input projection,
no time gate) at the benchmark's shapes for each plan: a training step (forward and backward of
``h.sum()``) and an inference forward, in milliseconds (median of CUDA-event timings). Each
plan's output and input gradient on the first steps are compared with the float64 reference
(``err``: largest difference relative to the largest value). Lines are printed as they are
measured, most important first, so a time-out keeps what was done.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

import torch

from phased_lstm.ops import reference_recurrence

_REPEATS = 5
_PREFIX = 24  # steps compared with the float64 reference


def _ms(run, repeats: int = _REPEATS) -> float:
    run()  # compiles on first use, warms the allocator
    samples = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
    return statistics.median(samples)


def _inputs(length, batch, hidden, *, gate="train", seed=0):
    gen = torch.Generator().manual_seed(seed)
    scale = hidden**-0.5
    if gate == "eval":
        # Eval-mode openness of neurons with r_on = 0.05 and their own phase per sample:
        # 95% of (sample, neuron, step) exactly 0.
        phase = torch.rand(length, batch, hidden, generator=gen, dtype=torch.float64)
        k = torch.where(phase < 0.05, 1 - (phase - 0.025).abs() / 0.025, 0.0)
    elif gate == "open":
        k = torch.ones(length, batch, hidden, dtype=torch.float64)
    else:
        k = torch.rand(length, batch, hidden, generator=gen, dtype=torch.float64)
    tensors = [
        torch.randn(length, batch, 4 * hidden, generator=gen, dtype=torch.float64),
        k,
        torch.randn(4 * hidden, hidden, generator=gen, dtype=torch.float64) * scale,
        None,
        torch.randn(batch, hidden, generator=gen, dtype=torch.float64) * 0.5,
        torch.randn(batch, hidden, generator=gen, dtype=torch.float64),
    ]
    return [None if t is None else t.cuda() for t in tensors]


def _relative(got, want) -> float:
    got = got.detach().double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


class _Shape:
    """One benchmark shape: float32 inputs, and the float64 reference on its first steps."""

    def __init__(self, name, length, batch, hidden):
        self.name, self.hidden = name, hidden
        inputs = _inputs(length, batch, hidden)
        self.train = [None if t is None else t.float().requires_grad_() for t in inputs]
        self.eval = [None if t is None else t.float() for t in _inputs(length, batch, hidden,
                                                                         gate="eval")]  # fmt: skip
        prefix = [None if t is None else t[:_PREFIX].detach() for t in inputs[:2]] + inputs[2:]
        prefix = [None if t is None else t.detach().requires_grad_() for t in prefix]
        h, _, _ = reference_recurrence(*prefix)
        self.weights = torch.randn(h.shape, dtype=torch.float64, device="cuda")
        (grad,) = torch.autograd.grad((h * self.weights).sum(), prefix[0])
        self.want = (h.detach(), grad)
        self.prefix = [None if t is None else t.detach().float().requires_grad_() for t in prefix]

    def line(self, rnn, label, plan) -> str:
        def train():
            h, _, _ = rnn.recurrence(*self.train, plan=plan)
            h.sum().backward()

        def infer():
            with torch.no_grad():
                rnn.recurrence(*self.eval, plan=plan)

        h, _, _ = rnn.recurrence(*self.prefix, plan=plan)
        (grad,) = torch.autograd.grad((h * self.weights.float()).sum(), self.prefix[0])
        err_h, err_grad = _relative(h, self.want[0]), _relative(grad, self.want[1])
        train_ms, infer_ms = _ms(train), _ms(infer)
        for t in self.train:
            if t is not None:
                t.grad = None
        return (
            f"{self.name:11s} {label:5s} {_describe(plan):40s} | train {train_ms:8.2f} ms "
            f"| eval {infer_ms:8.2f} ms | err h {err_h:.1e} grad {err_grad:.1e}"
        )


def _describe(plan) -> str:
    if plan.stepwise:
        return f"stepwise BN{plan.block_rows} BH{plan.block_hidden}"
    unit = "dot" if plan.dot else "bcast"
    unroll = " unroll" if plan.unroll else ""
    return (
        f"persist {unit} BN{plan.block_rows} BH{plan.block_hidden} BK{plan.block_k} "
        f"w{plan.num_warps} s{plan.num_stages}{unroll}"
    )


PRECISIONS = {"ieee": "highest", "tf32": "high"}


def sweep_plans(rnn) -> tuple[list, list]:
    """What the sweep times: (hidden, label, plan) of the default plans and of the other mode on
    each side of the threshold (B 32 at H 110 and 512), then other tiles at H 110."""
    from dataclasses import replace

    def plan_of(hidden: int, label: str):
        torch.set_float32_matmul_precision(PRECISIONS[label])
        return rnn._plan(32, hidden, torch.float32)

    first, second = [], []
    for hidden in (110, 512):
        for label in PRECISIONS:
            default, persistent = plan_of(hidden, label), plan_of(64, label)
            first.append((hidden, label, default))
            if default.stepwise:
                other = replace(persistent, unroll=False, num_stages=3)
            else:
                other = replace(default, stepwise=True, block_rows=16, block_hidden=64)
            first.append((hidden, label, other))
    for label in PRECISIONS:
        default = plan_of(110, label)
        if label == "tf32":
            variants = [
                replace(default, unroll=False, num_stages=3),
                replace(default, block_rows=8),
                replace(default, num_warps=4),
            ]
        else:
            variants = [
                replace(default, unroll=True, num_stages=1),
                replace(default, block_rows=2),
                replace(default, block_rows=8),
                replace(default, block_k=16),
                replace(default, block_hidden=64),
                # The broadcast product on the CUDA cores, instead of tl.dot.
                replace(default, dot=False, block_hidden=128, block_k=8, num_stages=1),
            ]
        second += [(110, label, plan) for plan in variants]
    torch.set_float32_matmul_precision("highest")
    return first, second


def sweep() -> int:
    from phased_lstm.ops import triton_backend

    rnn, _ = triton_backend._kernels()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    shapes = {110: _Shape("B32 T1000", 1000, 32, 110), 512: _Shape("B32 T500", 500, 32, 512)}

    def measure(hidden, label, plan):
        torch.set_float32_matmul_precision(PRECISIONS[label])
        shape = shapes[hidden]
        try:
            print(shape.line(rnn, label, plan), flush=True)
        except Exception as exc:  # a plan that does not compile or run is a result too
            print(f"{shape.name:11s} {label:5s} {_describe(plan):40s} | FAILED "
                  f"{type(exc).__name__}: {str(exc)[:200]}", flush=True)  # fmt: skip
        torch.set_float32_matmul_precision("highest")

    # The defaults first, then the time gate and the skipping of closed neurons, then other
    # tiles at the paper's shape: a time-out cuts the least important.
    first, second = sweep_plans(rnn)
    for case in first:
        measure(*case)
    _time_gate()
    _skip_closed(rnn)
    for case in second:
        measure(*case)
    return 0


def _skip_closed(rnn) -> None:
    """What skipping closed blocks saves at inference: eval-mode k against k = 1 (same kernel)."""
    for batch, hidden, length in ((32, 110, 1000), (1, 512, 2000)):
        plan = rnn._plan(batch, min(hidden, 256), torch.float32)
        times = {}
        for gate in ("eval", "open"):
            inputs = [None if t is None else t.float() for t in _inputs(length, batch, hidden,
                                                                          gate=gate)]  # fmt: skip
            with torch.no_grad():
                times[gate] = _ms(lambda i=inputs, p=plan: rnn.recurrence(*i, plan=p))
        print(
            f"skip closed B{batch} H{hidden} T{length} {_describe(plan)}: eval-mode k "
            f"{times['eval']:.2f} ms, all open {times['open']:.2f} ms",
            flush=True,
        )


def _time_gate() -> None:
    """The time gate of the paper's shape (T 1000, B 32, H 110), forward and backward: the Triton
    kernel against the same function in plain PyTorch."""
    from phased_lstm.ops.gate import sequence_gate

    f64 = torch.float64
    times = torch.rand(1000, 32, dtype=f64, device="cuda").mul(2).cumsum(0)
    period = torch.rand(110, dtype=f64, device="cuda").mul(20).add(1).requires_grad_()
    shift = torch.rand(110, dtype=f64, device="cuda").mul(20).requires_grad_()
    r_on = torch.full((110,), 0.05, dtype=f64, device="cuda")
    result = {}
    for backend in ("triton", "reference"):

        def run(backend=backend):
            k = sequence_gate(
                times, period, shift, r_on, 1e-3, None, torch.float32, backend=backend
            )
            k.sum().backward()

        result[backend] = _ms(run)
    print(
        f"time gate T1000 B32 H110 fwd+bwd: triton {result['triton']:.3f} ms, "
        f"torch {result['reference']:.3f} ms",
        flush=True,
    )


# ------------------------------------------------------------------------------- summary
def _last_line(path: Path, pattern: str) -> str:
    if not path.exists():
        return "(no log)"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    matches = [line for line in lines if re.search(pattern, line)]
    return (matches or lines or ["(empty)"])[-1].strip()[:160]


def _bench_rows(path: Path) -> list[str]:
    if not path.exists():
        return ["  (no log)"]
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 10 and cells[0] not in ("config", "---"):
            name = cells[0].split(":")[0]
            rows.append(
                f"  {name:14s} PhasedLSTM {cells[1]:>8} ms  cuDNN {cells[2]:>7} ms  "
                f"ratio {cells[3]:>6}  peak MB {cells[8]:>7} / {cells[9]:>7}"
            )
    header = [line for line in path.read_text(errors="replace").splitlines()
              if line.startswith(("GPU:", "PhasedLSTM backend"))]  # fmt: skip
    return [f"  {line[:150]}" for line in header] + (rows or ["  " + _last_line(path, "")])


def summary(out: str) -> int:
    out_dir = Path(out)
    print("=" * 30 + " GPU check summary " + "=" * 30)
    env = out_dir / "env.txt"
    for line in env.read_text(errors="replace").splitlines() if env.exists() else ["(no env)"]:
        print("env: " + line[:150])
    print("(a) tests/test_triton.py on CUDA: " + _last_line(
        out_dir / "test_triton.log", r"passed|failed|error|no tests"))  # fmt: skip
    failed = []
    if (out_dir / "test_triton.log").exists():
        failed = [line for line in (out_dir / "test_triton.log").read_text().splitlines()
                  if line.startswith(("FAILED", "ERROR"))]  # fmt: skip
    for line in failed[:8]:
        print("    " + line[:150])
    print("(b) other tests -k cuda:          " + _last_line(
        out_dir / "tests_cuda.log", r"passed|failed|error|no tests|deselected"))  # fmt: skip
    print("    C++ CPU build: " + _last_line(out_dir / "cpp_build.log", ""))
    print("(c) sweep of plans (op only):")
    sweep_log = out_dir / "sweep.txt"
    if sweep_log.exists():
        for line in sweep_log.read_text(errors="replace").splitlines()[1:]:
            if "|" in line or line.startswith(("skip", "time gate")) or "Error" in line:
                print("  " + line[:170])
    print("(d) bench --device cuda (fwd+bwd for train, fwd for eval; ratio = PhasedLSTM/cuDNN):")
    print("\n".join(_bench_rows(out_dir / "bench.txt")))
    print("    with --tf32:")
    print("\n".join(_bench_rows(out_dir / "bench_tf32.txt")))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["sweep"]:
        return sweep()
    if argv[:1] == ["summary"] and len(argv) == 2:
        return summary(argv[1])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
