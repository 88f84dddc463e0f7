"""The ``phased-lstm`` console script: ``reproduce freq|freq2|adding`` and ``bench``.

``phased-lstm reproduce freq`` runs the ``quick`` preset (about 20 minutes on a 2-core CPU);
``--preset paper`` is the paper's protocol and prints its estimated time first. Explicit options
override the preset. Mistakes a user can make end in one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from .config import (
    CONDITIONS,
    EXPERIMENTS,
    GRADIENT_CLIP_MODES,
    MODEL_NAMES,
    PRESETS,
    TIME_GATE_ADAM_MODES,
    ExperimentConfig,
    TrainerOptions,
    preset_config,
)

PROG = "phased-lstm"


def _csv_choices(kind: str, choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, unknown)) or repr(text)}; "
                f"choose from {', '.join(choices)}"
            )
        return list(dict.fromkeys(items))

    parse.__name__ = kind
    return parse


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated non-negative integers such as 1,2,3, got {text!r}"
        )
    return list(dict.fromkeys(seeds))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Phased LSTM: reproduce the paper's experiments, or benchmark."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    reproduce = commands.add_parser(
        "reproduce",
        help="train and compare the paper's models on one of its experiments",
        description="Train the paper's models on an experiment and write results.md, "
        "results.json, metrics.csv and figures to --out.",
    )
    reproduce.add_argument(
        "experiment",
        choices=EXPERIMENTS,
        help="freq: frequency discrimination (fig. 3a-d); freq2: two frequencies (fig. 3e); "
        "adding: the adding task (fig. 4)",
    )
    reproduce.add_argument("--preset", choices=PRESETS, default="quick", help="default: quick")
    all_conditions = tuple(dict.fromkeys(c for cs in CONDITIONS.values() for c in cs))
    reproduce.add_argument(
        "--condition",
        type=_csv_choices("condition", all_conditions),
        help="comma-separated; freq: standard,highres,async (default all); adding: Phased "
        "LSTM period ranges tau0-2,tau2-4,tau4-6,tau6-8 (default all)",
    )
    reproduce.add_argument(
        "--models",
        type=_csv_choices("model", MODEL_NAMES),
        help=f"comma-separated, from {', '.join(MODEL_NAMES)} (cfc needs phased-lstm[cfc])",
    )
    reproduce.add_argument("--seeds", type=_seed_list, help="comma-separated, e.g. 1,2,3")
    reproduce.add_argument("--epochs", type=_positive_int, help="default: the preset's")
    reproduce.add_argument(
        "--samples-per-epoch",
        type=_positive_int,
        help="fresh training examples per epoch, for every condition (default: the preset's)",
    )
    reproduce.add_argument(
        "--test-samples", type=_positive_int, help="fixed test examples (default: the preset's)"
    )
    reproduce.add_argument("--batch-size", type=_positive_int, help="default: 32")
    reproduce.add_argument(
        "--gradient-clip-mode",
        choices=GRADIENT_CLIP_MODES,
        help="gates: clip the gradient of the gate pre-activations at 10 inside the recurrence, "
        "as the authors' code (the paper preset's); value: clip every parameter gradient at 10 "
        "instead (the quick preset's)",
    )
    reproduce.add_argument(
        "--time-gate-adam",
        choices=TIME_GATE_ADAM_MODES,
        help="direct: Adam steps the Phased LSTM's period and r_on in their own units, as the "
        "authors' code (the paper preset's); stored: plain Adam on the stored log period and "
        "logit r_on (the quick preset's)",
    )
    reproduce.add_argument(
        "--out", type=Path, help="output folder (default runs/EXPERIMENT-PRESET)"
    )
    reproduce.add_argument(
        "--resume", action="store_true", help="continue the runs recorded in --out"
    )
    reproduce.add_argument(
        "--jobs",
        type=_positive_int,
        help="runs trained side by side, in separate processes (default: one per CPU core "
        "on a single CPU device, else 1)",
    )
    reproduce.add_argument(
        "--threads",
        type=_positive_int,
        help="torch CPU threads per process (default: cores / jobs with --jobs > 1, else "
        "torch's choice)",
    )
    reproduce.add_argument("--accelerator", default="cpu", help="Lightning accelerator")
    reproduce.add_argument("--devices", default="1", help="Lightning devices: a count, ids, auto")
    reproduce.add_argument("--num-nodes", type=_positive_int, default=1)
    reproduce.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    reproduce.add_argument("--no-progress-bar", action="store_true")
    reproduce.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration and the estimated time, then stop",
    )
    bench = commands.add_parser("bench", help="benchmark the recurrence backends", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def resolve_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ExperimentConfig:
    """The preset's configuration with every option given on the command line applied."""
    config = preset_config(args.experiment, args.preset)
    if args.condition is not None:
        valid = CONDITIONS[args.experiment]
        unknown = [c for c in args.condition if c not in valid]
        if unknown:
            parser.error(
                f"argument --condition: unknown condition {', '.join(map(repr, unknown))} for "
                f"{args.experiment}; choose from {', '.join(valid)}"
            )
        config.conditions = args.condition
    for option, name in (
        ("models", "models"),
        ("seeds", "seeds"),
        ("epochs", "epochs"),
        ("samples_per_epoch", "samples_per_epoch"),
        ("test_samples", "test_samples"),
        ("batch_size", "batch_size"),
        ("gradient_clip_mode", "gradient_clip_mode"),
        ("time_gate_adam", "time_gate_adam"),
        ("threads", "threads"),
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(config, name, value)
    if args.samples_per_epoch is not None:
        # An explicit count holds for every condition, the preset's exceptions included.
        config.condition_samples = {}
    single_cpu = (
        args.accelerator == "cpu"
        and args.devices == "1"
        and args.num_nodes == 1
        and args.strategy == "auto"
    )
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1) if single_cpu else 1
    config.trainer = TrainerOptions(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        progress_bar=not args.no_progress_bar,
        jobs=jobs,
    )
    return config


def _check_extras(config: ExperimentConfig) -> None:
    if "cfc" in config.models:
        try:
            import ncps  # noqa: F401
        except ImportError:
            raise SystemExit(
                f"{PROG}: error: the cfc model needs the ncps package: pip install phased-lstm[cfc]"
            ) from None


def _format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_seconds(config: ExperimentConfig, batches: int = 3) -> float:
    """Wall time of all of ``config``'s runs, extrapolated from a few timed training batches of
    each (model, condition) on one device; evaluation counts as a third of a training batch, and
    ``jobs`` processes, timed with the threads each will have, divide the total."""
    import torch

    from .estimate import time_batches

    jobs = max(1, min(config.trainer.jobs, len(config.runs())))
    threads = config.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0)
    if threads:
        # Time each batch with the threads that one job will have.
        torch.set_num_threads(threads)
    per_batch = {}
    for model, condition, seed in config.runs():
        if (model, condition) not in per_batch:
            per_batch[(model, condition)] = time_batches(config, model, condition, seed, batches)
    test_batches = math.ceil(config.test_samples / config.batch_size)
    total = 0.0
    for model, condition, _ in config.runs():
        train_batches = math.ceil(config.samples_for(condition) / config.batch_size)
        seconds = per_batch[(model, condition)]
        total += config.epochs * seconds * (train_batches + test_batches / 3)
    return total / jobs


def reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    config = resolve_config(args, parser)
    _check_extras(config)
    out = args.out or Path("runs") / f"{config.experiment}-{config.preset}"

    from .report import write_report
    from .runner import (
        ExperimentError,
        is_global_zero,
        prepare_output,
        run_experiment,
        sigterm_interrupts,
    )

    try:
        if is_global_zero():
            # Refuse a wrong --out before spending minutes on the estimate.
            prepare_output(config, out, args.resume)
            print(
                f"{PROG}: {config.experiment}, preset {config.preset}: {len(config.runs())} runs "
                f"({', '.join(config.models)} x {', '.join(config.conditions)} x seeds "
                f"{', '.join(map(str, config.seeds))}), {config.epochs} epochs of "
                f"{config.samples_per_epoch} examples -> {out}",
                file=sys.stderr,
                flush=True,
            )
            if config.preset == "paper" or args.dry_run:
                started = time.perf_counter()
                seconds = estimate_seconds(config)
                print(
                    f"{PROG}: estimated time on this machine: {_format_duration(seconds)} "
                    f"(extrapolated from timed batches, {time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        if args.dry_run:
            return 0
        with sigterm_interrupts():
            run_experiment(config, out, resume=args.resume, on_update=write_report)
    except ExperimentError as error:
        raise SystemExit(f"{PROG}: error: {error}") from None
    except KeyboardInterrupt:
        # Stopped between runs: every finished run is in results.json already.
        raise SystemExit(
            f"{PROG}: error: interrupted; rerun the same command with --resume to continue"
        ) from None
    return 0


def bench(bench_args: list[str]) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as error:
        raise SystemExit(f"{PROG}: error: the benchmark is not available ({error})") from None
    return bench_main(bench_args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":
        # Everything after `bench` belongs to the benchmark's own parser, --help included.
        return bench(argv[1:])
    args = parser.parse_args(argv)
    return reproduce(args, parser)


if __name__ == "__main__":
    sys.exit(main())
