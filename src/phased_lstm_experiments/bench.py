"""Speed and memory of PhasedLSTM against torch.nn.LSTM on the CPU: ``phased-lstm bench``.

Also runnable as ``python -m phased_lstm_experiments.bench``. For each configuration both models
run in this process on the same float32 input, interleaved (one PhasedLSTM repeat, then one
nn.LSTM repeat, and so on) after warm-up, and the table gives the median of the repeats:

* training configs time one step, forward and backward of ``output.sum()``, models in train
  mode (PhasedLSTM with its training leak, so every neuron updates at every step);
* eval configs time one forward under ``torch.no_grad()``, models in eval mode (leak 0: a closed
  neuron does no work with the sparse backend).

nn.LSTM reads the same input without the timestamps. Columns:

* ``GFLOP/s``: the dense LSTM's floating-point operations for the step (input projection and
  recurrent products, forward, and for training the backward products of the weights and the
  state) divided by the time; the same count for both models, so for a sparse forward it is an
  effective rate, not what the CPU executed;
* ``matmul ms`` (training configs): the same matrix products as PhasedLSTM's step, called one
  by one from Python with preallocated outputs (each call adds a few microseconds): a floor for
  any implementation that does the same products in the same order;
* ``peak MB``: how far one step raised the resident memory of a fresh subprocess above what it
  held before the step (Linux: the VmHWM high-water mark, reset just before the step; elsewhere
  the growth of ru_maxrss). All of torch's CPU allocations are in it, nothing of Python's setup;
* ``target``: the ratio the project aims at for that config on an idle machine, where it has one.

The ``events-*`` configs time streaming instead, one event per call (:mod:`.bench_events`).

The machine's other load shows in the numbers; run it on an otherwise idle machine.

With ``--device cuda`` both models run on the GPU (PhasedLSTM's ``"auto"`` backend is then the
Triton kernels when Triton is installed), each repeat is timed with CUDA events, and ``peak MB``
is how far one step raised ``torch.cuda.max_memory_allocated`` above what was allocated before
it, measured in this process. nn.LSTM runs cuDNN, which by torch's default uses TF32 for
float32; ``--tf32`` lets PhasedLSTM's float32 products use TF32 too.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import phased_lstm
from phased_lstm import PhasedLSTM
from phased_lstm.ops import available_backends

from .bench_events import EventConfig, format_event_table, run_event_config
from .bench_measure import (
    _cpu_line,
    _cuda_line,
    _num,
    _resolved_backends,
    _time_interleaved,
    peak_growth_mib,
)

PROG = "phased-lstm bench"


@dataclass(frozen=True)
class BenchConfig:
    """One benchmarked shape: a training step or an evaluation forward pass."""

    name: str
    train: bool
    batch: int
    length: int
    input_size: int
    hidden_size: int
    r_on: float = 0.05
    # Lengths drawn uniformly from [length // 10, length] per sample: PhasedLSTM gets `lengths`,
    # nn.LSTM a PackedSequence; both should cost the valid steps, not the padding.
    varied_lengths: bool = False
    # The ratio PhasedLSTM / nn.LSTM the project aims at on an idle machine (issue 21).
    target: float | None = None

    def describe(self) -> str:
        mode = "train fwd+bwd" if self.train else "eval fwd"
        steps = (
            f"T={self.length // 10}..{self.length}" if self.varied_lengths else f"T={self.length}"
        )
        return (
            f"{self.name}: {mode} B={self.batch} {steps} I={self.input_size} H={self.hidden_size}"
        )

    def mean_length(self) -> float:
        return (self.length // 10 + self.length) / 2 if self.varied_lengths else self.length

    def flops(self) -> float:
        """Floating-point operations of the dense LSTM for one forward or training step."""
        per_step = 2 * self.batch * 4 * self.hidden_size
        steps = self.mean_length()
        forward = per_step * (self.input_size + self.hidden_size) * steps
        if not self.train:
            return float(forward)
        # Backward: the state's gradient through W_hh, and the gradients of W_hh and W_ih.
        backward = per_step * (self.hidden_size + self.hidden_size + self.input_size) * steps
        return float(forward + backward)


CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig("paper-train", True, 32, 1000, 1, 110, target=0.75),
        BenchConfig("lengths-train", True, 32, 1000, 1, 110, varied_lengths=True),
        BenchConfig("h512-train", True, 32, 500, 64, 512, target=1.3),
        BenchConfig("stream-eval", False, 1, 2000, 16, 512, target=0.2),
        BenchConfig("batch-eval", False, 32, 2000, 16, 512, target=0.5),
        BenchConfig("batch-eval-b8", False, 8, 2000, 16, 512, target=0.35),
        BenchConfig("paper-eval", False, 32, 1000, 1, 110),
        BenchConfig("h512-eval", False, 32, 500, 64, 512),
        BenchConfig("quick-train", True, 4, 60, 3, 24),
        BenchConfig("quick-eval", False, 1, 200, 3, 64),
    )
}


EVENT_CONFIGS: dict[str, EventConfig] = {
    c.name: c
    for c in (
        EventConfig("events-cell-h110", 0, 110, 400, target=1.0),
        EventConfig("events-cell-h512", 0, 512, 200, target=0.3),
        EventConfig("events-2layer-h110", 2, 110, 400, target=0.5),
        EventConfig("events-2layer-h512", 2, 512, 100, target=0.2),
        EventConfig("events-smoke", 2, 16, 20, input_size=3),
    )
}
DEFAULT_CONFIGS = (
    "paper-train",
    "lengths-train",
    "h512-train",
    "stream-eval",
    "batch-eval",
    "batch-eval-b8",
    "events-cell-h110",
    "events-cell-h512",
    "events-2layer-h110",
    "events-2layer-h512",
)
QUICK_CONFIGS = ("quick-train", "quick-eval")
MODELS = ("plstm", "lstm")


def irregular_times(length: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(L, N) float64 timestamps of a Poisson process of rate 1, one per sample."""
    gaps = torch.empty(length, batch, dtype=torch.float64).exponential_(1.0, generator=generator)
    return gaps.cumsum(0)


class _Case:
    """Both models and one input of a config, and the step that is timed."""

    def __init__(
        self, config: BenchConfig, backend: str, seed: int = 0, device: str = "cpu"
    ) -> None:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.config = config
        c = config
        self.x = torch.randn(c.length, c.batch, c.input_size, generator=gen)
        self.times = irregular_times(c.length, c.batch, gen)
        self.lengths = None
        if c.varied_lengths:
            self.lengths = torch.randint(c.length // 10, c.length + 1, (c.batch,), generator=gen)
        self.models = {
            "plstm": PhasedLSTM(c.input_size, c.hidden_size, r_on=c.r_on, backend=backend),
            "lstm": nn.LSTM(c.input_size, c.hidden_size),
        }
        for model in self.models.values():
            model.train(c.train)
        if device != "cpu":
            # Drawn on the CPU first, so that every device times the same numbers.
            self.x, self.times = self.x.to(device), self.times.to(device)
            self.models = {name: model.to(device) for name, model in self.models.items()}

    def step(self, model_name: str, x: torch.Tensor | None = None) -> None:
        x = self.x if x is None else x
        model = self.models[model_name]
        if self.config.train:
            for p in model.parameters():
                p.grad = None
            self._output(model_name, x).sum().backward()
        else:
            with torch.no_grad():
                self._output(model_name, x)

    def _output(self, model_name: str, x: torch.Tensor) -> torch.Tensor:
        model = self.models[model_name]
        lengths = None if self.lengths is None else self.lengths.clamp(max=x.shape[0])
        if model_name == "plstm":
            return model(x, self.times[: x.shape[0]], lengths=lengths)[0]
        if lengths is None:
            return model(x)[0]
        return model(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data


def _matmul_step(config: BenchConfig, device: str = "cpu") -> Callable[[], None]:
    """The matrix products of one PhasedLSTM training step, one by one, nothing else."""
    c = config
    four_h = 4 * c.hidden_size

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=device)

    x = randn(c.length * c.batch, c.input_size)
    weight_ih = randn(four_h, c.input_size)
    weight_hh = randn(four_h, c.hidden_size)
    bias = randn(four_h)
    gates = empty(c.length, c.batch, four_h)
    states = randn(c.length, c.batch, c.hidden_size)
    grad_gates = randn(c.length, c.batch, four_h)
    grad_h = empty(c.batch, c.hidden_size)
    grad_w_hh = empty(four_h, c.hidden_size)
    grad_w_ih = empty(four_h, c.input_size)

    def run() -> None:
        torch.addmm(bias, x, weight_ih.t(), out=gates.view(-1, four_h))
        w_t = weight_hh.t()
        for t in range(c.length):
            torch.addmm(gates[t], states[t - 1], w_t, out=gates[t])
        for t in range(c.length - 1, -1, -1):
            torch.mm(grad_gates[t], weight_hh, out=grad_h)
        flat_gates = grad_gates.view(-1, four_h)
        torch.mm(flat_gates.t(), states.view(-1, c.hidden_size), out=grad_w_hh)
        torch.mm(flat_gates.t(), x, out=grad_w_ih)

    return run


def measure_peak_mib(config: BenchConfig, model: str, backend: str) -> float:
    """:func:`peak_growth_mib` of one step of ``model`` on ``config``.

    Meant to run in a fresh process (see :func:`peak_mib_in_subprocess`).
    """
    case = _Case(config, backend)
    case.step(model, case.x[:2])  # loads the compiled kernels and warms the allocator up
    return peak_growth_mib(lambda: case.step(model))


def cuda_peak_mib(case: _Case, model: str) -> float:
    """How far one step raised ``torch.cuda.max_memory_allocated`` above what was allocated
    before it, in MiB (the step ran before, so kernels and allocator are warm)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    case.step(model)
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before) / 2**20


def peak_mib_in_subprocess(config: BenchConfig, model: str, backend: str) -> float | None:
    """:func:`measure_peak_mib` in a fresh interpreter, or None if that fails."""
    command = [
        sys.executable,
        "-m",
        "phased_lstm_experiments.bench",
        "--memory-probe",
        config.name,
        model,
        "--backend",
        backend,
        "--threads",
        str(torch.get_num_threads()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"warning: memory probe {config.name}/{model} failed: {result.stderr.strip()}")
        return None
    return float(result.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class BenchRow:
    config: BenchConfig
    plstm_ms: float
    lstm_ms: float
    matmul_ms: float | None
    plstm_peak_mib: float | None
    lstm_peak_mib: float | None

    @property
    def ratio(self) -> float:
        return self.plstm_ms / self.lstm_ms

    def gflops(self, ms: float) -> float:
        return self.config.flops() / (ms * 1e-3) / 1e9


def run_config(
    config: BenchConfig,
    *,
    backend: str,
    warmup: int,
    repeats: int,
    memory: bool,
    device: str = "cpu",
) -> BenchRow:
    case = _Case(config, backend, device=device)
    steps = {name: (lambda name=name: case.step(name)) for name in MODELS}
    if config.train and not config.varied_lengths:
        steps["matmul"] = _matmul_step(config, device)
    times = _time_interleaved(steps, warmup, repeats, device)
    peaks = {name: None for name in MODELS}
    if memory and device == "cpu":
        peaks = {name: peak_mib_in_subprocess(config, name, backend) for name in MODELS}
    elif memory:
        peaks = {name: cuda_peak_mib(case, name) for name in MODELS}
    return BenchRow(
        config,
        times["plstm"],
        times["lstm"],
        times.get("matmul"),
        peaks["plstm"],
        peaks["lstm"],
    )


def format_table(rows: list[BenchRow]) -> str:
    header = (
        "| config | PhasedLSTM ms | nn.LSTM ms | ratio | PhasedLSTM GFLOP/s | nn.LSTM GFLOP/s "
        "| matmul ms | PhasedLSTM / matmul | PhasedLSTM peak MB | nn.LSTM peak MB | target |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    row.config.describe(),
                    _num(row.plstm_ms),
                    _num(row.lstm_ms),
                    _num(row.ratio, ".2f"),
                    _num(row.gflops(row.plstm_ms)),
                    _num(row.gflops(row.lstm_ms)),
                    _num(row.matmul_ms),
                    _num(None if row.matmul_ms is None else row.plstm_ms / row.matmul_ms, ".2f"),
                    _num(row.plstm_peak_mib),
                    _num(row.lstm_peak_mib),
                    "-" if row.config.target is None else f"<= {row.config.target:g}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, for its own parser or a subcommand's."""
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated configs to run, from {', '.join({**CONFIGS, **EVENT_CONFIGS})} "
        f"(default: {','.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny smoke configs ({', '.join(QUICK_CONFIGS)}) with few repeats",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=available_backends(),
        help="PhasedLSTM's recurrence backend (default: auto)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where both models run (default: cpu)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="with --device cuda: let float32 matrix products use TF32, as cuDNN's nn.LSTM does "
        "by default (torch.set_float32_matmul_precision('high'))",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up repeats (default 2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument(
        "--memory-probe", nargs=2, metavar=("CONFIG", "MODEL"), help=argparse.SUPPRESS
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Time PhasedLSTM against torch.nn.LSTM (CPU or GPU) and print a table.",
    )
    add_arguments(parser)
    return parser


def _config_names(text: str | None, quick: bool, parser: argparse.ArgumentParser) -> list[str]:
    if text is None:
        return list(QUICK_CONFIGS if quick else DEFAULT_CONFIGS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = {**CONFIGS, **EVENT_CONFIGS}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(
            f"unknown config {', '.join(unknown) or text!r}; choose from {', '.join(known)}"
        )
    return names


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the benchmark described by parsed ``args`` and print its table."""
    for option in ("repeats", "warmup", "threads"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "warmup" else 1):
            parser.error(f"--{option} must be a positive integer, got {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU, and torch.cuda.is_available() is False")
    if args.tf32 and args.device != "cuda":
        parser.error("--tf32 applies to --device cuda only")
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_probe is not None:
        name, model = args.memory_probe
        if name not in CONFIGS or model not in MODELS:
            parser.error(f"--memory-probe takes a config and one of {MODELS}")
        print(f"{measure_peak_mib(CONFIGS[name], model, args.backend):.3f}")
        return 0
    names = _config_names(args.configs, args.quick, parser)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    print(
        f"phased-lstm {phased_lstm.__version__} benchmark, "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n"
        + (_cuda_line() if args.device == "cuda" else _cpu_line())
        + f"PhasedLSTM backend: {_resolved_backends(args.backend, args.device)}; "
        f"median of {repeats} interleaved repeats after {warmup} warm-up\n"
    )
    rows = []
    for name in names:
        if name in CONFIGS:
            rows.append(
                run_config(
                    CONFIGS[name],
                    backend=args.backend,
                    warmup=warmup,
                    repeats=repeats,
                    memory=not args.no_memory,
                    device=args.device,
                )
            )
    if rows:
        print(format_table(rows))
    event_rows = [
        run_event_config(EVENT_CONFIGS[name], warmup=warmup, repeats=repeats)
        for name in names
        if name in EVENT_CONFIGS
    ]
    if event_rows:
        print(("\n" if rows else "") + format_event_table(event_rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
