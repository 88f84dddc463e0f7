"""How long a protocol will take: a miniature of each (model, condition) is trained the way the
run will be, under the run's own load, and its parts are scaled to the epochs still to train.

Timing a few training batches alone on an idle machine, as the first estimate did, came out
1.5-2x short on the 2-core machine: it left out what an epoch spends outside its training
batches (loading data, the test sets, logging, the checkpoint), what a run spends once (its
data, model and final measures), and that two workers side by side slow each other down. So
with ``jobs`` > 1 the miniatures run in ``jobs`` processes at once, each through every
(model, condition) in its own order, and the runs are then scheduled on the workers in the
runner's order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from .config import ExperimentConfig, TrainerOptions, is_finished, run_name
from .files import ExperimentError
from .interrupts import children_ignore_sigint
from .pool import _watch_parent, worker_threads
from .run import flush_denormals, quiet_lightning, train_run, trained_epochs
from .runner import (
    run_order,
)
from .tasks import get_task

Pair = tuple[str, str, int]  # (model, condition, seed): the run whose miniature is timed
# Epochs of a miniature: the first one warms up, the last two give the steady state.
MINIATURE_EPOCHS = 3
# The estimate is made before every command whose miniatures cost at most this share of its runs.
ESTIMATE_SHARE = 0.05


class _PhaseTimer(Callback):
    """When each epoch started, when its test pass started and ended, and when fit ended."""

    def __init__(self):
        self.epochs: list[dict[str, float]] = []
        self.fit_end = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epochs.append({"start": time.perf_counter()})

    def on_validation_start(self, trainer, module) -> None:
        self.epochs[-1]["testing"] = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        self.epochs[-1]["tested"] = time.perf_counter()

    def on_fit_end(self, trainer, module) -> None:
        self.fit_end = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class RunTiming:
    """Seconds of the parts of one run, measured on a miniature of it (:func:`time_run`).

    ``training_batch`` includes loading the batch; ``test_pass`` is one batch of every test
    set; ``epoch_rest`` is what an epoch spends besides (new loaders, logs, the checkpoint);
    ``fixed`` is what a run spends once (its data and model, the first epoch's warm-up, the
    task's final measures).
    """

    training_batch: float
    test_pass: float
    epoch_rest: float
    fixed: float

    def epoch_seconds(self, config: ExperimentConfig, condition: str) -> float:
        training = math.ceil(config.samples_for(condition) / config.batch_size)
        test = evaluation_batches(config)
        return training * self.training_batch + test * self.test_pass + self.epoch_rest

    def run_seconds(self, config: ExperimentConfig, condition: str, epochs: int) -> float:
        """Seconds of ``epochs`` epochs of a run under ``condition``, with its fixed part."""
        return self.fixed + epochs * self.epoch_seconds(config, condition)


def time_run(
    config: ExperimentConfig, model: str, condition: str, seed: int, batches: int
) -> RunTiming:
    """Train a miniature of this run in this process, with its current threads, on one device
    of the configured accelerator: 3 epochs of ``batches`` training batches, test sets of one
    batch, checkpoints and logs in a temporary folder, then the task's final measures. The last
    two epochs give the steady state; the rest of the time is the run's fixed part."""
    mini = dataclasses.replace(
        config,
        epochs=MINIATURE_EPOCHS,
        samples_per_epoch=batches * config.batch_size,
        condition_samples={},
        test_samples=config.batch_size,
        trainer=TrainerOptions(accelerator=config.trainer.accelerator, progress_bar=False),
    )
    quiet_lightning()
    flush_denormals()  # as the run's processes do
    timer = _PhaseTimer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="phased-lstm-estimate-") as folder:
        train_run(mini, model, condition, seed, Path(folder), False, callbacks=[timer])
        ended = time.perf_counter()
    steady = timer.epochs[1:]
    ends = [epoch["start"] for epoch in steady[1:]] + [timer.fit_end]
    training = statistics.fmean((e["testing"] - e["start"]) / batches for e in steady)
    test = statistics.fmean(e["tested"] - e["testing"] for e in steady)
    rest = statistics.fmean(end - e["tested"] for e, end in zip(steady, ends, strict=True))
    epoch = batches * training + test + rest
    # All but the two steady epochs, of which the first epoch is counted as a third one.
    fixed = (ended - started) - (timer.fit_end - steady[0]["start"]) - epoch
    return RunTiming(training, test, rest, max(0.0, fixed))


def _timing_worker(conn, parent_pid: int, threads: int, config: dict, pairs, batches) -> None:
    # CLOCK_MONOTONIC is the same clock in every process: the parent measures the start-up.
    ready = time.monotonic()
    _watch_parent(parent_pid)
    try:
        if threads:
            torch.set_num_threads(threads)
        settled = ExperimentConfig.from_dict(config)
        conn.send(("timed", ready, [time_run(settled, *pair, batches) for pair in pairs]))
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


def time_side_by_side(
    config: ExperimentConfig, pairs: Sequence[Pair], jobs: int, threads: int, batches: int
) -> tuple[dict[Pair, RunTiming], float]:
    """:func:`time_run` of every pair in ``jobs`` processes of ``threads`` threads at once (the
    mean over the processes), and the seconds a process takes to start (the slowest). Process
    k starts at the k-th pair, so that different models share the machine, as in the run.

    An interruption (Ctrl-C, or SIGTERM under :func:`.interrupts.sigterm_interrupts`) kills the
    timing processes before it propagates; a process that fails raises ``ExperimentError``.
    """
    pairs = list(pairs)
    context = multiprocessing.get_context("spawn")
    started = []
    timings: dict[Pair, list[RunTiming]] = {pair: [] for pair in pairs}
    startup = 0.0
    try:
        with children_ignore_sigint():
            for index in range(jobs):
                shift = index % len(pairs)
                order = pairs[shift:] + pairs[:shift]
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_timing_worker,
                    args=(send, os.getpid(), threads, config.to_dict(), order, batches),
                    name=f"phased-lstm-estimate-{index}",
                    daemon=True,
                )
                started.append((process, receive, order))
                starting = time.monotonic()
                process.start()
                send.close()
        for process, receive, order in started:
            try:
                message = receive.recv()
            except EOFError:
                process.join(timeout=5)
                raise ExperimentError(
                    f"a process timing runs for the estimate ended without an answer "
                    f"(exit code {process.exitcode})"
                ) from None
            if message[0] == "failed":
                raise ExperimentError(f"timing runs for the estimate failed:\n{message[1]}")
            startup = max(startup, message[1] - starting)
            for pair, timing in zip(order, message[2], strict=True):
                timings[pair].append(timing)
    finally:
        for process, receive, _ in started:
            if process.is_alive():
                process.kill()
            process.join(timeout=5)
            receive.close()
    return {pair: _mean_timing(values) for pair, values in timings.items()}, startup


def _mean_timing(timings: Sequence[RunTiming]) -> RunTiming:
    fields = [field.name for field in dataclasses.fields(RunTiming)]
    return RunTiming(
        **{name: statistics.fmean(getattr(t, name) for t in timings) for name in fields}
    )


def epochs_left(config: ExperimentConfig, results: dict, out: Path | None) -> dict[Pair, int]:
    """Epochs each run of ``config`` still has to train: none for a run that ``results``
    records as finished, those after the last finished epoch of a run with a checkpoint in
    ``out`` (what ``--resume`` continues), all of them otherwise."""
    left = {}
    for run in get_task(config.experiment).runs(config):
        if is_finished(config, results.get("runs", {}).get(run_name(*run))):
            left[run] = 0
            continue
        trained = trained_epochs(out, run_name(*run)) if out is not None else 0
        left[run] = max(0, config.epochs - trained)
    return left


def evaluation_batches(config: ExperimentConfig) -> int:
    """Batches of what every epoch evaluates: the validation split where the runs validate,
    else the test set (the task's ``evaluation_samples``)."""
    return math.ceil(get_task(config.experiment).evaluation_samples(config) / config.batch_size)


def worth_estimating(config: ExperimentConfig, left: dict[Pair, int], batches: int = 3) -> bool:
    """Whether the miniatures of :func:`estimate_time` cost at most ``ESTIMATE_SHARE`` of the
    runs they estimate, counted in batches (training and test): then every command gets the
    estimate, which its progress display starts from, not only ``--dry-run`` and the paper
    preset. A tiny run costs less than its miniature and goes without."""
    pairs = {run[:2] for run, epochs in left.items() if epochs > 0}
    miniatures = len(pairs) * MINIATURE_EPOCHS * (batches + 1)
    test = evaluation_batches(config)
    runs = sum(
        epochs * (math.ceil(config.samples_for(run[1]) / config.batch_size) + test)
        for run, epochs in left.items()
    )
    return 0 < miniatures <= ESTIMATE_SHARE * runs


def schedule_seconds(durations: Sequence[float], jobs: int, startup: float = 0.0) -> float:
    """Wall time of runs of these ``durations`` handed out in this order, each to the first
    of ``jobs`` workers that is free (what the runner does), the workers ready after
    ``startup`` seconds."""
    free_at = [startup] * max(1, jobs)
    for seconds in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + seconds)
    return max(free_at)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The estimated wall time of the runs, the seconds of one epoch of each run still to
    train, and the number of processes the runs go to."""

    seconds: float
    epoch_seconds: dict[Pair, float]
    jobs: int


def estimate_time(
    config: ExperimentConfig,
    batches: int = 3,
    left: dict[Pair, int] | None = None,
) -> Estimate:
    """Wall time of ``config``'s runs (of the epochs in ``left``, all of them by default):
    each (model, condition) timed on a miniature (:func:`time_side_by_side` when the runs go to
    several processes, :func:`time_run` here otherwise), the runs scheduled on the workers in
    the runner's order, after the time the timing processes took to start. Not counted: the
    report that the main process writes after every run (1-4 s with its figures)."""
    if left is None:
        left = {run: config.epochs for run in get_task(config.experiment).runs(config)}
    pending = [run for run in get_task(config.experiment).runs(config) if left.get(run, 0) > 0]
    if not pending:
        return Estimate(0.0, {}, 0)
    jobs = max(1, min(config.trainer.jobs, len(pending)))
    threads = worker_threads(config, jobs) if jobs > 1 else config.threads
    pairs: dict[tuple[str, str], Pair] = {}
    for model, condition, seed in pending:
        pairs.setdefault((model, condition), (model, condition, seed))
    startup = 0.0
    if jobs > 1:
        timed, startup = time_side_by_side(config, list(pairs.values()), jobs, threads, batches)
    else:
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            timed = {pair: time_run(config, *pair, batches) for pair in pairs.values()}
        finally:
            torch.set_num_threads(previous)
    timing = {run: timed[pairs[run[:2]]] for run in pending}
    epoch_seconds = {run: timing[run].epoch_seconds(config, run[1]) for run in pending}
    durations = [
        timing[run].run_seconds(config, run[1], left[run])
        for run in run_order(config, pending, epoch_seconds)
    ]
    return Estimate(schedule_seconds(durations, jobs, startup), epoch_seconds, jobs)
