"""Runs an experiment: every (model, condition, seed) through a Lightning Trainer, resumably.

The output folder holds ``config.json`` (the resolved configuration), ``results.json`` (one
record per finished run, with its per-epoch history, one entry per command that trained, with
its wall time, and the task's tables derived from the runs, such as ``rate_shift``),
``metrics.csv``, ``results.md``, the figures, and ``runs/<run>/`` with each
run's checkpoints and Lightning CSV logs (TensorBoard logs go to ``tensorboard/<run>/``).
``--resume`` skips the runs recorded as finished in ``results.json`` and continues the others
from their ``last.ckpt``.

One run through Lightning is :mod:`.run`; with ``--jobs N > 1`` the runs go to the worker
processes of :mod:`.pool`; how SIGTERM and Ctrl-C stop a command is :mod:`.interrupts`. The
names of those modules that callers used from here are re-exported.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .config import (
    ExperimentConfig,
    pending_runs,
    protocol_of,
    run_name,
)
from .files import ExperimentError, Interrupted, check_writable, write_atomic, write_json
from .interrupts import sigterm_interrupts, stopping_signal
from .lock import LOCK_NAME
from .pool import _check_parallel_options, _run_parallel
from .progress import Progress
from .run import (
    EpochCheckpoint,
    build_run,
    checkpoint_path,
    flush_denormals,
    make_trainer,
    quiet_lightning,
    train_run,
    trained_epochs,
)
from .sweep import sweep_learning_rates
from .tasks import get_task

RESULTS_VERSION = 1


def is_global_zero() -> bool:
    """Whether this process is the one that writes files, before any Trainer exists.

    Lightning starts the other DDP processes by re-running the command with ``LOCAL_RANK``
    (and ``NODE_RANK`` on other nodes) set; they train but never write the output folder.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _fresh_results() -> dict:
    return {"version": RESULTS_VERSION, "runs": {}}


def prepare_output(config: ExperimentConfig, out: Path, resume: bool) -> dict:
    """Check that ``out`` may receive ``config``'s runs; return the results recorded there."""
    check_writable(out)
    config_path, results_path = out / "config.json", out / "results.json"
    if not config_path.exists():
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
            raise ExperimentError(
                f"--out {out} is not empty and holds no phased-lstm experiment; "
                "choose an empty or new folder"
            )
        return _fresh_results()
    try:
        previous = json.loads(config_path.read_text())
        previous_experiment = previous["experiment"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExperimentError(f"{config_path} is unreadable; choose another --out") from None
    if previous_experiment != config.experiment:
        raise ExperimentError(
            f"--out {out} holds the results of another experiment "
            f"({previous_experiment!r}, not {config.experiment!r}); choose another folder"
        )
    if not resume:
        raise ExperimentError(
            f"--out {out} already holds results of this experiment; "
            "pass --resume to continue them, or choose another folder"
        )
    task = get_task(config.experiment)
    before, now = protocol_of(previous, task), config.protocol(task)
    changed = [
        f"{name} was {before[name]!r}, now {now[name]!r}"
        for name in now
        if before[name] != now[name]
    ]
    if changed:
        raise ExperimentError(
            f"--out {out} holds runs made with another protocol ({'; '.join(changed)}); "
            "resume with the same settings or choose another folder"
        )
    if not results_path.exists():
        return _fresh_results()
    try:
        return json.loads(results_path.read_text())
    except ValueError:
        raise ExperimentError(f"{results_path} is unreadable; choose another --out") from None


def epoch_costs(
    config: ExperimentConfig, runs: list, epoch_seconds: dict | None = None
) -> dict[tuple[str, str, int], float]:
    """The cost of one epoch of each run: its measured seconds where ``epoch_seconds`` (the
    ``--dry-run`` estimate's) covers every run, the task's relative ``run_cost`` otherwise."""
    if epoch_seconds and all(run in epoch_seconds for run in runs):
        return {run: float(epoch_seconds[run]) for run in runs}
    task = get_task(config.experiment)
    return {run: task.run_cost(config, run[1]) for run in runs}


def run_order(
    config: ExperimentConfig, pending: list, epoch_seconds: dict | None = None
) -> list[tuple[str, str, int]]:
    """The order in which parallel workers take the ``pending`` runs: the costliest epochs
    first (:func:`epoch_costs`), otherwise in the experiment's order."""
    costs = epoch_costs(config, pending, epoch_seconds)
    return sorted(pending, key=lambda run: -costs[run])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_experiment(
    config: ExperimentConfig,
    out: Path,
    *,
    resume: bool = False,
    on_update: Callable[[ExperimentConfig, dict, Path], None] | None = None,
    epoch_seconds: dict[tuple[str, str, int], float] | None = None,
    expected_seconds: float | None = None,
) -> dict:
    """Make every run of ``config`` not yet finished in ``out``; return ``results.json``'s data.

    With ``config.trainer.jobs > 1`` the runs go to that many worker processes on one device
    each (independent runs, each seeded by itself, so the results do not depend on it), the
    costliest first. ``epoch_seconds`` (each run's epoch, as the estimate measured it) orders
    them and weighs their epochs in the progress display's ETA; without it the task's relative
    ``run_cost`` does; ``expected_seconds`` (the estimate's total) is the ETA until the first
    measured progress. ``on_update`` (the report writer) is called after every run on the
    writing process. A command that trains appends its wall time to ``results["sessions"]``,
    also when it is interrupted.
    """
    quiet_lightning()
    writer = is_global_zero()
    # The CLI has prepared it already (the task returns a prepared config unchanged).
    task = get_task(config.experiment)
    config = task.prepare(config)
    results = prepare_output(config, out, resume) if writer else _fresh_results()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    flushed = flush_denormals()
    if writer:
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", config.to_dict())
        except OSError as error:
            raise ExperimentError(
                f"--out {out} cannot be written: {error.strerror or error}"
            ) from None
    if config.lr_sweep:
        config = sweep_learning_rates(config, out, results, resume, run_experiment)
        if writer:
            write_json(out / "results.json", {**results, "config": config.to_dict()})
    pending = pending_runs(task, config, results)
    jobs = min(config.trainer.jobs, len(pending))
    if jobs > 1:
        _check_parallel_options(config)
    progress = None
    session = None
    if writer and pending:
        costs = epoch_costs(config, pending, epoch_seconds)
        progress = Progress(
            {run_name(*run): cost for run, cost in costs.items()},
            config.epochs,
            bar=None if config.trainer.progress_bar else False,
            expected=expected_seconds,
            resumed={run_name(*run): trained_epochs(out, run_name(*run)) for run in pending}
            if resume
            else None,
        )
        # "running" until the command ends; it stays so if the process was killed outright.
        session = {"started": _now(), "ended": None, "seconds": 0.0, "runs": 0, "jobs": jobs}
        session["subnormals"] = "flushed" if flushed else "kept (the CPU cannot flush them)"
        session["status"] = "running"
        results.setdefault("sessions", []).append(session)
    started = time.monotonic()

    def close_session(status: str) -> None:
        if session is not None:
            session.update(ended=_now(), seconds=round(time.monotonic() - started, 1))
            session["status"] = status

    def save(report: bool = True) -> None:
        results["config"] = config.to_dict()
        # Tables derived from the runs (the rate-shift matrix), kept beside them.
        results.update(task.summaries(config, results))
        write_json(out / "results.json", results)
        if report and on_update is not None:
            on_update(config, results, out)

    def record(run: tuple[str, str, int], result: dict) -> None:
        results["runs"][run_name(*run)] = result
        if writer:
            session["runs"] += 1
            close_session("running")
            save()
            summary = ", ".join(f"{k} {v:.4g}" for k, v in result["final"].items() if k != "epoch")
            progress.run_done(run_name(*run), f"[{run_name(*run)}] done: {summary}")

    try:
        if jobs > 1:
            order = run_order(config, pending, epoch_seconds)
            _run_parallel(config, order, jobs, out, resume, record, progress)
        else:
            for run in pending:
                report = progress.handle if progress is not None else None
                record(run, train_run(config, *run, out, resume, report))
    except BaseException as error:
        if session is not None:
            stopped = isinstance(error, KeyboardInterrupt | Interrupted)
            close_session("interrupted" if stopped else "failed")
            # The session only: an interrupted command ends fast, the next one writes the report.
            with contextlib.suppress(Exception):
                save(report=False)
        raise
    finally:
        if progress is not None:
            progress.close()
    if session is not None:
        close_session("finished")
        save()
    elif writer and on_update is not None:
        on_update(config, results, out)
    _say(f"finished in {time.monotonic() - started:.0f} s; results in {out}", writer)
    return results


def _say(message: str, writer: bool) -> None:
    if writer:
        print(message, file=sys.stderr, flush=True)


__all__ = [
    "EpochCheckpoint",
    "ExperimentError",
    "Interrupted",
    "build_run",
    "checkpoint_path",
    "flush_denormals",
    "is_global_zero",
    "make_trainer",
    "pending_runs",
    "prepare_output",
    "quiet_lightning",
    "run_experiment",
    "run_name",
    "run_order",
    "sigterm_interrupts",
    "stopping_signal",
    "train_run",
    "write_atomic",
    "write_json",
]
