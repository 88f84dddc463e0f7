"""The ``phased-lstm`` console script: ``reproduce EXPERIMENT`` (``freq``, ``freq2``, ``adding``,
``nmnist`` or ``fusion``), ``rate-shift``, ``bench``, ``data NAME`` and ``build-kernels``.

``phased-lstm reproduce freq`` runs the ``quick`` preset (about 20 minutes on a 2-core CPU);
``--preset paper`` is the paper's protocol and prints its estimated time first. Explicit options
override the preset. The experiments, their conditions, models, presets and own options come
from the task registry (:mod:`.tasks`); nothing here names one. Mistakes a user can make end in
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from .config import (
    GRADIENT_CLIP_MODES,
    TIME_GATE_ADAM_MODES,
    ExperimentConfig,
    TrainerOptions,
)
from .datasets import DATASET_BUILDERS
from .tasks import TASKS, preset_config

PROG = "phased-lstm"


def _csv_list(kind: str):
    """A comma-separated list of names; whether each is valid depends on the experiment, which
    :func:`resolve_config` checks, so that the error lists that experiment's own choices."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind}s, got {text!r}")
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


def _union(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for items in values for item in items))


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
        choices=tuple(TASKS),
        help="; ".join(f"{name}: {task.help}" for name, task in TASKS.items()),
    )
    presets = _union(task.presets for task in TASKS.values())
    reproduce.add_argument("--preset", choices=presets, default="quick", help="default: quick")
    reproduce.add_argument(
        "--condition",
        type=_csv_list("condition"),
        help="comma-separated (default: all of the experiment's); "
        + "; ".join(f"{name}: {','.join(task.conditions)}" for name, task in TASKS.items()),
    )
    models = _union(task.models for task in TASKS.values())
    reproduce.add_argument(
        "--models",
        type=_csv_list("model"),
        help=f"comma-separated, from {', '.join(models)} (cfc needs phased-lstm[cfc])",
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
        "--restart-broken",
        action="store_true",
        help="with --resume: train again from scratch a run whose last checkpoint is unreadable "
        "(the broken file is kept beside it, renamed *.broken); the other runs resume",
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
    reproduce.add_argument(
        "--no-progress-bar",
        action="store_true",
        help="plain progress lines instead of a bar redrawn in place on a terminal",
    )
    reproduce.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration and the estimated time, then stop",
    )
    _add_task_options(reproduce)
    shift = commands.add_parser(
        "rate-shift",
        help="one rate-shift matrix from several output folders (with and without --rate-augment)",
        add_help=False,
    )
    shift.add_argument("shift_args", nargs=argparse.REMAINDER)
    bench = commands.add_parser("bench", help="benchmark the recurrence backends", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    kernels = commands.add_parser(
        "build-kernels",
        help="compile the C++ kernels now rather than at first use",
        add_help=False,
    )
    kernels.add_argument("build_args", nargs=argparse.REMAINDER)
    builders = "; ".join(f"{b.name}: {b.help}" for b in DATASET_BUILDERS.values())
    data = commands.add_parser(
        "data",
        help="build a dataset on disk",
        description=f"Build a dataset on disk. {builders or 'No builders in this version.'}",
    )
    data.add_argument("name", metavar="NAME", help=", ".join(DATASET_BUILDERS) or "none yet")
    data.add_argument(
        "data_args", nargs=argparse.REMAINDER, metavar="OPTIONS", help="the builder's own options"
    )
    return parser


def _add_task_options(reproduce: argparse.ArgumentParser) -> None:
    """Each task's own options, in a group per task. Tasks that share an option (the same
    name) share its flag; its help names every task that has it."""
    actions: dict[str, argparse.Action] = {}
    for name, task in TASKS.items():
        if not task.options:
            continue
        group = reproduce.add_argument_group(f"options of {name}")
        for option in task.options:
            if option.name in actions:
                actions[option.name].help += f"; {name}: {option.help}"
                continue
            actions[option.name] = group.add_argument(
                option.flag,
                dest=f"task_{option.name}",
                type=option.type,
                metavar=option.metavar,
                help=f"{name}: {option.help} (default: {option.default!r})",
            )


def resolve_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ExperimentConfig:
    """The preset's configuration with every option given on the command line applied."""
    task = TASKS[args.experiment]
    if args.preset not in task.presets:
        parser.error(
            f"argument --preset: {args.experiment} has no preset {args.preset!r}; choose from "
            f"{', '.join(task.presets)}"
        )
    config = preset_config(args.experiment, args.preset)
    for option, kind, valid in (
        ("condition", "condition", task.conditions),
        ("models", "model", task.models),
    ):
        unknown = [item for item in getattr(args, option) or () if item not in valid]
        if unknown:
            parser.error(
                f"argument --{option}: unknown {kind} {', '.join(map(repr, unknown))} for "
                f"{args.experiment}; choose from {', '.join(valid)}"
            )
    if args.condition is not None:
        config.conditions = args.condition
    for name in (
        "models",
        "seeds",
        "epochs",
        "samples_per_epoch",
        "test_samples",
        "batch_size",
        "gradient_clip_mode",
        "time_gate_adam",
        "threads",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    if args.samples_per_epoch is not None:
        # An explicit count holds for every condition, the preset's exceptions included.
        config.condition_samples = {}
    own = {option.name for option in task.options}
    for key, value in vars(args).items():
        if key.startswith("task_") and value is not None:
            name = key.removeprefix("task_")
            if name not in own:
                flag = "--" + name.replace("_", "-")
                parser.error(f"argument {flag}: not an option of {args.experiment}")
            config.options[name] = value
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


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_estimate(config: ExperimentConfig, left: dict, results: dict):
    """Print how long the runs will take, or how long what is ``left`` of them will (and the
    learning-rate sweep, unless ``results`` records it done); return the
    :class:`.estimate.Estimate`."""
    from .estimate import estimate_time
    from .interrupts import sigterm_interrupts

    started = time.perf_counter()
    with sigterm_interrupts():
        estimate = estimate_time(config, left=left)
    seconds = estimate.seconds
    remaining = sum(left.values())
    total = len(left) * config.epochs
    if remaining == 0:
        print(f"{PROG}: every run is trained already; nothing left to estimate", file=sys.stderr)
        return estimate
    what = "estimated time on this machine"
    if remaining < total:
        what = f"estimated time left on this machine ({remaining} of {total} epochs to train)"
    if config.patience > 0:
        what += ", at most (every run to its last epoch, none stopped early)"
    sweep = _sweep_seconds(config, results, estimate)
    if sweep:
        what += f", of which the learning-rate sweep {_format_duration(sweep)}"
        seconds += sweep
    timed = f", {estimate.jobs} processes at once" if estimate.jobs > 1 else ""
    print(
        f"{PROG}: {what}: {_format_duration(seconds)} (extrapolated from miniatures of the "
        f"runs{timed}, {time.perf_counter() - started:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    per_epoch = {}
    for (model, _, _), epoch in estimate.epoch_seconds.items():
        per_epoch.setdefault(model, epoch)
    if config.patience > 0 and per_epoch:
        epochs = ", ".join(f"{m} {_format_duration(s)}" for m, s in per_epoch.items())
        print(f"{PROG}: one epoch of each model: {epochs}", file=sys.stderr, flush=True)
    return estimate


def _sweep_seconds(config: ExperimentConfig, results: dict, estimate) -> float:
    """The learning-rate sweep's wall time for the models ``results`` records no rate for:
    its runs' epochs cost what the estimate measured for the same model and condition."""
    from .estimate import schedule_seconds
    from .sweep import unswept_models

    models = unswept_models(config, results)
    if not config.lr_sweep or not models:
        return 0.0
    epoch = {run[:2]: seconds for run, seconds in estimate.epoch_seconds.items()}
    durations = sorted(
        (config.sweep_epochs * epoch[(m, c)] for m in models for c in config.conditions
         if (m, c) in epoch),
        reverse=True,
    )  # fmt: skip
    jobs = max(1, min(estimate.jobs, len(durations)))
    return len(config.lr_sweep) * schedule_seconds(durations, jobs)


def reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.restart_broken and not args.resume:
        parser.error("argument --restart-broken: only with --resume, which reads checkpoints")
    config = resolve_config(args, parser)
    _check_extras(config)
    out = args.out or Path("runs") / f"{config.experiment}-{config.preset}"

    from .estimate import epochs_left, worth_estimating
    from .files import ExperimentError, Interrupted
    from .interrupts import sigterm_interrupts, stopping_signal
    from .lock import folder_lock
    from .report import write_report
    from .resume import check_checkpoints
    from .runner import is_global_zero, prepare_output, run_experiment

    held = contextlib.ExitStack()
    try:
        # Before the check of --out: the protocol that --resume compares is the settled one.
        config = TASKS[config.experiment].prepare(config)
        estimate = None
        if is_global_zero():
            # Refuse a wrong --out before spending minutes on the estimate.
            results = prepare_output(config, out, args.resume)
            if not args.dry_run:
                # Held until the command ends: no second command trains into the same folder.
                held.enter_context(folder_lock(out, note=_note))
            if args.resume and not (args.dry_run and args.restart_broken):
                # (A dry run renames nothing; the estimate counts a broken run in full.)
                check_checkpoints(
                    config, out, results, restart_broken=args.restart_broken, note=_note
                )
            if args.resume and not (out / "config.json").exists():
                print(
                    f"{PROG}: --resume: {out} holds no results yet; starting fresh",
                    file=sys.stderr,
                    flush=True,
                )
            runs = TASKS[config.experiment].runs(config)
            print(
                f"{PROG}: {config.experiment}, preset {config.preset}: {len(runs)} runs "
                f"({', '.join(config.models)} x {', '.join(config.conditions)} x seeds "
                f"{', '.join(map(str, config.seeds))}), {config.epochs} epochs of "
                f"{config.samples_per_epoch} examples -> {out}",
                file=sys.stderr,
                flush=True,
            )
            left = epochs_left(config, results, out if args.resume else None)
            if config.preset == "paper" or args.dry_run or worth_estimating(config, left):
                estimate = _print_estimate(config, left, results)
        if args.dry_run:
            return 0
        with sigterm_interrupts():
            run_experiment(
                config,
                out,
                resume=args.resume,
                on_update=write_report,
                epoch_seconds=estimate.epoch_seconds if estimate else None,
                expected_seconds=estimate.seconds if estimate else None,
            )
    except Interrupted as error:
        _exit_interrupted(str(error), stopping_signal())
    except ExperimentError as error:
        raise SystemExit(f"{PROG}: error: {error}") from None
    except KeyboardInterrupt:
        # Stopped between runs: every finished run is in results.json already. Outside the
        # handler's block a KeyboardInterrupt is Python's own, from SIGINT.
        _exit_interrupted(
            "interrupted; rerun the same command with --resume to continue",
            stopping_signal() or signal.SIGINT,
        )
    finally:
        held.close()
    return 0


def _exit_interrupted(message: str, signum: int | None) -> NoReturn:
    """End with ``message`` and the status shells and job schedulers read for a process that a
    signal stopped, 128 + its number (130 for SIGINT, 143 for SIGTERM); 1 when no signal did
    (a worker process that died)."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum if signum else 1) from None


def bench(bench_args: list[str]) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as error:
        raise SystemExit(f"{PROG}: error: the benchmark is not available ({error})") from None
    return bench_main(bench_args) or 0


def build_kernels(build_args: list[str]) -> int:
    from phased_lstm.ops.build import main as build_main

    return build_main(build_args, prog=f"{PROG} build-kernels")


def data(name: str, data_args: list[str], parser: argparse.ArgumentParser) -> int:
    builder = DATASET_BUILDERS.get(name)
    if builder is None:
        choices = f"choose from {', '.join(DATASET_BUILDERS)}" if DATASET_BUILDERS else "none yet"
        parser.error(f"argument NAME: unknown dataset {name!r}; {choices}")
    return builder.main(data_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "bench":
        # Everything after `bench` belongs to the benchmark's own parser, --help included.
        return bench(argv[1:])
    if argv and argv[0] == "build-kernels":
        return build_kernels(argv[1:])
    if argv and argv[0] == "rate-shift":
        from .rate_shift import main as rate_shift_main

        return rate_shift_main(argv[1:], prog=f"{PROG} rate-shift")
    if len(argv) > 1 and argv[0] == "data" and not argv[1].startswith("-"):
        # The same for a dataset builder: everything after its name is its own.
        return data(argv[1], argv[2:], parser)
    args = parser.parse_args(argv)
    if args.command == "data":
        return data(args.name, args.data_args, parser)
    return reproduce(args, parser)


if __name__ == "__main__":
    sys.exit(main())
