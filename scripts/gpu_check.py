"""The Python half of scripts/gpu_check.sh: ``parity`` checks the Triton backend against the
reference without pytest, ``sweep`` times its ways of running the recurrence on a GPU, ``summary``
condenses the logs of a check into a short table.

    PYTHONPATH=src python scripts/gpu_check.py parity [--device cuda]
    PYTHONPATH=src python scripts/gpu_check.py sweep
    PYTHONPATH=src python scripts/gpu_check.py summary OUT_DIR

``parity`` is for a machine without pytest (tests/lib/test_triton.py is the full check): outputs,
final states and every input gradient of the op against the float64 reference loop, with
grad_clip, batch_sizes, the packed layout, float32, float64 and bfloat16, and the layer end to
end. ``--device cpu`` runs it in Triton's interpreter (set TRITON_INTERPRET=1) on small shapes.

The sweep times the op itself (``ops._triton.library.recurrence``: no input projection,
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
        return rnn.launch.default_plan(32, hidden, torch.float32)

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
    from phased_lstm.ops._triton import backend as triton_backend

    rnn = triton_backend._kernels()
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

    # The skipping of closed neurons and the time gate first, then the default plans and the
    # other mode, then other tiles at the paper's shape: a time-out cuts the least important.
    first, second = sweep_plans(rnn)
    _skip_closed(rnn)
    _time_gate()
    for case in first:
        measure(*case)
    for case in second:
        measure(*case)
    return 0


def _skip_closed(rnn) -> None:
    """What skipping closed blocks saves at inference: eval-mode k against k = 1 (same kernel)."""
    for batch, hidden, length in ((32, 110, 1000), (1, 512, 2000)):
        plan = rnn.launch.default_plan(batch, min(hidden, 256), torch.float32)
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
    from phased_lstm.ops import sequence_gate

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


# -------------------------------------------------------------------------------- parity
# name: (length, batch, hidden, dtype, peepholes, grad_clip, lengths or None, packed); the
# large shapes (many programs and blocks, the stepwise mode at H 300) on a GPU only.
_PARITY_CASES = {
    "T5 B3 H12 f32": (5, 3, 12, torch.float32, False, None, None, False),
    "T5 B3 H12 f64 peep clip lengths": (5, 3, 12, torch.float64, True, 0.05, [5, 3, 1], False),
    "T5 B3 H12 f32 peep clip lengths": (5, 3, 12, torch.float32, True, 0.05, [5, 3, 1], False),
    "T5 B3 H12 f32 packed": (5, 3, 12, torch.float32, True, 0.1, [5, 4, 2], True),
    "T5 B3 H12 bf16 peep clip lengths": (5, 3, 12, torch.bfloat16, True, 0.5, [5, 4, 2], False),
    "T64 B37 H110 f32 peep clip lengths": (64, 37, 110, torch.float32, True, 1.0, "sorted", False),
    "T64 B37 H300 f32 peep clip lengths": (64, 37, 300, torch.float32, True, 1.0, "sorted", False),
    "T64 B37 H110 bf16 peep": (64, 37, 110, torch.bfloat16, True, None, None, False),
}
# Largest difference relative to the largest value, against the float64 reference on the same
# (rounded) inputs: float32 over 64 steps, bfloat16 operands in the recurrent products.
_PARITY_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _parity_case(device, length, batch, hidden, dtype, peepholes, clip, lengths, packed):
    """The largest relative difference, over outputs and input gradients, of "triton" against
    the float64 reference, and the name of the tensor where it is."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from phased_lstm.ops import recurrence

    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    values = {
        "gates_x": randn(length, batch, 4 * hidden),
        "k": torch.rand(length, batch, hidden, generator=gen, dtype=torch.float64),
        "weight_hh": randn(4 * hidden, hidden, scale=hidden**-0.5),
        "weight_ch": randn(3 * hidden, scale=0.5) if peepholes else None,
        "h0": randn(batch, hidden, scale=0.5),
        "c0": randn(batch, hidden),
    }
    if lengths == "sorted":
        lengths = torch.linspace(length, 1, batch).round().long().tolist()
    batch_sizes = None
    if lengths is not None:
        lengths = torch.tensor(lengths)
        batch_sizes = (torch.arange(length).unsqueeze(1) < lengths).sum(1)
        if packed:
            for name in ("gates_x", "k"):
                values[name] = pack_padded_sequence(values[name], lengths).data
    # Rounded to the dtype first, so that both sides start from the same numbers.
    values = {n: None if v is None else v.to(dtype).to(torch.float64) for n, v in values.items()}
    weights = None
    results = {}
    for side, side_dtype in (("triton", dtype), ("reference", torch.float64)):
        inputs = {
            n: None if v is None else v.to(device, side_dtype).requires_grad_()
            for n, v in values.items()
        }
        h, h_n, c_n = recurrence(
            *inputs.values(), grad_clip=clip, batch_sizes=batch_sizes, backend=side
        )
        if weights is None:
            weights = [
                torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (h, h_n, c_n)
            ]
        outputs = zip((h, h_n, c_n), weights, strict=True)
        loss = sum((t.double() * w.to(device)).sum() for t, w in outputs)
        names = [n for n, t in inputs.items() if t is not None]
        grads = torch.autograd.grad(loss, [inputs[n] for n in names])
        results[side] = {"h": h, "h_n": h_n, "c_n": c_n} | dict(zip(names, grads, strict=True))
    worst = (0.0, "")
    for name, want in results["reference"].items():
        got = results["triton"][name]
        if got.dtype != dtype:
            return float("inf"), f"{name} came in {got.dtype}, not {dtype}"
        worst = max(worst, (_relative(got, want.detach()), name))
    return worst


def _parity_layer(device) -> float:
    """The layer end to end, float64, bidirectional, unsorted lengths: train step then eval."""
    from phased_lstm import PhasedLSTM

    torch.manual_seed(0)
    layers = {
        backend: PhasedLSTM(2, 6, bidirectional=True, peepholes=True, grad_clip=1.0,
                            backend=backend).to(device, torch.float64)
        for backend in ("reference", "triton")
    }  # fmt: skip
    layers["triton"].load_state_dict(layers["reference"].state_dict())
    x = torch.randn(7, 3, 2, dtype=torch.float64, device=device)
    times = torch.rand(7, 3, dtype=torch.float64, device=device).mul(3).cumsum(0)
    lengths = torch.tensor([4, 7, 2])
    results = {}
    for backend, layer in layers.items():
        out, (h_n, c_n) = layer(x, times, lengths=lengths)
        (out.sum() + h_n.square().sum() + c_n.sum()).backward()
        with torch.no_grad():
            evaluated = layer.eval()(x, times, lengths=lengths)[0]
        grads = {n: p.grad for n, p in layer.named_parameters()}
        results[backend] = {"out": out, "h_n": h_n, "c_n": c_n, "eval": evaluated} | grads
    return max(
        _relative(results["triton"][n], want.detach()) for n, want in results["reference"].items()
    )


def parity(device: str) -> int:
    """Print one line per case, PASS or FAIL; the exit status is the number of failures."""
    small = device != "cuda"
    failed = 0
    for name, case in _PARITY_CASES.items():
        if small and case[0] > 8:
            continue
        try:
            err, where = _parity_case(device, *case)
            ok = err <= _PARITY_TOL[case[3]]
            line = f"err {err:.1e} (worst: {where}, tolerance {_PARITY_TOL[case[3]]:.0e})"
        except Exception as exc:  # reported as a failure, the other cases still run
            ok, line = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} op {name}: {line}", flush=True)
    try:
        err = _parity_layer(device)
        ok, line = err <= 1e-10, f"err {err:.1e} (tolerance 1e-10)"
    except Exception as exc:
        ok, line = False, f"{type(exc).__name__}: {str(exc)[:300]}"
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} layer f64 bidirectional lengths train+eval: {line}")
    print(f"parity on {device}: {failed} failed" if failed else f"parity on {device}: all passed")
    return min(failed, 1)


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


def _failures(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if line.startswith(("FAILED", "ERROR", "FAIL "))]


def summary(out: str) -> int:
    out_dir = Path(out)
    print("=" * 30 + " GPU check summary " + "=" * 30)
    env = out_dir / "env.txt"
    for line in env.read_text(errors="replace").splitlines() if env.exists() else ["(no env)"]:
        print("env: " + line[:150])
    for title, log in (
        ("(a) tests/lib/test_triton.py on CUDA:", out_dir / "tests_triton.log"),
        ("    its large-shape tests:       ", out_dir / "tests_triton_shapes.log"),
        ("(a) other tests, CUDA cases:     ", out_dir / "tests_cuda.log"),
    ):
        result = _last_line(log, r"passed|failed|error|no tests|parity on|skipped:")
        print(f"{title} {result}; {_last_line(log, r'^exit')}")
        for line in _failures(log)[:8]:
            print("    " + line[:150])
    print("    C++ CPU build: " + _last_line(out_dir / "cpp_build.log", r"built|error|exit [^0]"))
    print("(b) bench --device cuda (fwd+bwd for train, fwd for eval; ratio = PhasedLSTM/cuDNN):")
    print("\n".join(_bench_rows(out_dir / "bench.txt")))
    print("    with --tf32:")
    print("\n".join(_bench_rows(out_dir / "bench_tf32.txt")))
    print("    other configs:")
    print("\n".join(_bench_rows(out_dir / "bench_more.txt")))
    print("(c) sweep (op only): skipping closed neurons, time gate, plans:")
    sweep_log = out_dir / "sweep.txt"
    if sweep_log.exists():
        for line in sweep_log.read_text(errors="replace").splitlines()[1:]:
            if "|" in line or line.startswith(("skip", "time gate", "exit")) or "Error" in line:
                print("  " + line[:170])
    else:
        print("  (no log)")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["parity"] and argv[1:] in ([], ["--device", "cuda"], ["--device", "cpu"]):
        return parity(argv[2] if len(argv) == 3 else "cuda")
    if argv[:1] == ["sweep"]:
        return sweep()
    if argv[:1] == ["summary"] and len(argv) == 2:
        return summary(argv[1])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
