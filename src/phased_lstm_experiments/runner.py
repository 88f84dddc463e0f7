"""Runs an experiment: every (model, condition, seed) through a Lightning Trainer, resumably.

The output folder holds ``config.json`` (the resolved configuration), ``results.json`` (one
record per finished run, with its per-epoch history, and one entry per command that trained,
with its wall time), ``metrics.csv``, ``results.md``, the figures, and ``runs/<run>/`` with each
run's checkpoints and Lightning CSV logs (TensorBoard logs go to ``tensorboard/<run>/``).
``--resume`` skips the runs recorded as finished in ``results.json`` and continues the others
from their ``last.ckpt``.

With ``--jobs N > 1`` the runs go to N worker processes. The main process owns them: it hands
out the runs, shows their progress, records their results, and on SIGTERM or Ctrl-C stops
them all (each stops at its last finished epoch), waits a bounded time and kills what is
left. A worker whose main process dies (even by SIGKILL) notices within a second and stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait as wait_for
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .config import (
    ExperimentConfig,
    parameter_clip,
    pending_runs,
    protocol_of,
    run_name,
)
from .files import ExperimentError, Interrupted, check_writable, write_atomic, write_json
from .lock import LOCK_NAME
from .progress import Progress
from .sweep import sweep_learning_rates
from .tasks import get_task
from .training import TaskData, TaskModule

RESULTS_VERSION = 1
# How long stopped workers may take to finish their graceful stop before they are killed.
STOP_GRACE_S = 15.0
# Batch progress is reported at most this often (seconds).
_BATCH_REPORT_S = 1.0

_INTERRUPTED = "interrupted; rerun the same command with --resume to continue"


def quiet_lightning() -> None:
    """Keep Lightning's advertising and the warnings that do not concern these runs off stderr."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        r".*isinstance\(treespec, LeafSpec\)",
        r".*does not have many workers",
        r".*smaller than the logging interval",
        r".*Checkpoint directory .* exists and is not empty",
        r".*Experiment logs directory .* exists and is not empty",
        # Epoch rows are reduced across processes before they are logged.
        r".*It is recommended to use `self.log\(.*sync_dist=True",
    ):
        warnings.filterwarnings("ignore", message=message)


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


class EpochCheckpoint(Checkpoint):
    """Save ``path`` after every epoch, atomically, for ``--resume``.

    Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only when
    training ends (Lightning 2.6), so an interrupted run started again from epoch 0; and it
    writes in place, so a kill during the write left a truncated file. This callback is a
    ``Checkpoint``, which Lightning runs after ``LightningModule.on_train_epoch_end``: the saved
    state holds the epoch's row of the history.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Every rank calls save_checkpoint (it gathers state); rank zero writes the file.
        try:
            trainer.save_checkpoint(partial)
            if trainer.is_global_zero:
                os.replace(partial, self.path)
        except BaseException:
            # An interruption (SIGTERM, Ctrl-C) in the middle of the write: the previous
            # checkpoint is intact, and the half-written one must not be left beside it.
            if trainer.is_global_zero:
                partial.unlink(missing_ok=True)
            raise
        trainer.strategy.barrier("phased_lstm.epoch_checkpoint")


class _ProgressReporter(Callback):
    """Sends a run's start and its share of the current epoch to the progress display."""

    def __init__(self, name: str, report: Callable[[tuple], None]):
        self.name, self.report = name, report
        self._last = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.report(("start", self.name, trainer.current_epoch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last < _BATCH_REPORT_S:
            return
        self._last = now
        batches = trainer.num_training_batches
        if isinstance(batches, int | float) and 0 < batches < float("inf"):
            done = trainer.current_epoch + (batch_idx + 1) / batches
            self.report(("batch", self.name, done))


def make_trainer(
    config: ExperimentConfig,
    model: str,
    *,
    max_epochs: int,
    run_dir: Path | None = None,
    tensorboard_dir: Path | None = None,
    callbacks: list[Callback] | None = None,
    **overrides,
) -> L.Trainer:
    """A Trainer with the experiment's protocol for ``model`` and the user's device options.

    Lightning's own progress bar stays off: the experiment's display covers all runs.
    """
    options = config.trainer
    clip = parameter_clip(config, model)
    callbacks = list(callbacks or [])
    loggers: list = []
    if run_dir is not None:
        callbacks.append(EpochCheckpoint(run_dir / "checkpoints" / "last.ckpt"))
        loggers = [CSVLogger(run_dir, name="lightning", version="")]
        if tensorboard_dir is not None:
            loggers.append(TensorBoardLogger(tensorboard_dir, name=run_dir.name, version=""))
    settings = dict(
        max_epochs=max_epochs,
        accelerator=options.accelerator,
        devices=_devices(options.devices),
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        gradient_clip_val=clip,
        gradient_clip_algorithm="value" if clip is not None else None,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=run_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        default_root_dir=run_dir,
    )
    settings.update(overrides)
    return L.Trainer(**settings)


def _devices(devices: str) -> int | str | list[int]:
    if devices == "auto":
        return devices
    if "," in devices:
        return [int(d) for d in devices.split(",") if d]
    return int(devices)


def build_run(config: ExperimentConfig, model: str, condition: str, seed: int):
    """The seeded LightningModule and DataModule of one run."""
    L.seed_everything(seed, workers=True, verbose=False)
    task = get_task(config.experiment)
    spec = task.model_spec(config, model, condition)
    module = TaskModule(
        task.build_model(model, spec),
        classify=spec.classify,
        learning_rate=config.learning_rate_for(model),
        time_gate_adam=config.time_gate_adam,
        evaluation_metrics=task.evaluation_metrics,
        patience=config.patience,
        min_delta=config.min_delta,
    )
    return module, TaskData(task, config, model, condition, seed)


def train_run(
    config: ExperimentConfig,
    model: str,
    condition: str,
    seed: int,
    out: Path,
    resume: bool,
    report: Callable[[tuple], None] | None = None,
    callbacks: list[Callback] | None = None,
) -> dict:
    """Train one run to ``config.epochs`` (continuing from its last checkpoint) and return its
    record for ``results.json``, with the task's ``final_measures`` of the trained network as
    ``measures`` when it has any. ``report`` receives its progress events (:mod:`.progress`);
    ``callbacks`` go to the Trainer besides the run's own.

    A run that validates (``config.test_sets`` "at-end") may stop early (``stopped_early``);
    its ``final`` is then the test sets' metrics of the weights of its best validation epoch
    (``best_epoch``, with that epoch's validation metrics), and ``first`` those of the weights
    after epoch 1. With "never", ``final`` is the last epoch's row, validation only."""
    name = run_name(model, condition, seed)
    run_dir = out / "runs" / name
    checkpoint = checkpoint_path(out, name)
    module, data = build_run(config, model, condition, seed)
    callbacks = list(callbacks or [])
    if report is not None:
        callbacks.append(_ProgressReporter(name, report))
        module.epoch_listener = lambda row: report(("epoch", name, row))
    trainer = make_trainer(
        config,
        model,
        max_epochs=config.epochs,
        run_dir=run_dir,
        tensorboard_dir=out / "tensorboard",
        callbacks=callbacks,
    )
    interrupted = Interrupted(f"interrupted during {name}; {_INTERRUPTED}")
    try:
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=checkpoint if resume and checkpoint.exists() else None,
        )
    except SystemExit:
        # Lightning ends a fit interrupted by KeyboardInterrupt with sys.exit(1), after its
        # graceful shutdown; the checkpoint of the last finished epoch stays.
        if trainer.interrupted:
            raise interrupted from None
        raise
    if trainer.interrupted:
        raise interrupted
    record = {
        "model": model,
        "condition": condition,
        "seed": seed,
        "epochs": len(module.history),
        "history": module.history,
        "final": module.history[-1] if module.history else {},
    }
    if config.learning_rates or config.lr_sweep:
        record["learning_rate"] = config.learning_rate_for(model)
    if config.patience > 0:
        record["stopped_early"] = module.should_stop()
    if trainer.is_global_zero and config.test_sets == "at-end" and module.best_state is not None:
        # The test split is read here only, by the weights the validation split chose.
        loaders = data.test_loaders()
        best = {k: v for k, v in module.history[module.best_epoch - 1].items() if k != "epoch"}
        if module.first_state is not None:
            record["first"] = module.evaluate(loaders, module.first_state)
        record["best_epoch"] = module.best_epoch
        record["final"] = {
            "epoch": module.best_epoch,
            **best,
            **module.evaluate(loaders, module.best_state),
        }
    if trainer.is_global_zero:
        task = get_task(config.experiment)
        measures = task.final_measures(config, model, condition, seed, module.model)
        if measures:
            record["measures"] = measures
    return record


def flush_denormals() -> bool:
    """Make this process's CPU treat subnormal floats (below ~1.2e-38 in float32) as zero, as
    every process of the experiments that trains does; return whether the CPU can.

    Trained, saturated LSTM gates produce such numbers, and x86 CPUs compute with them on a slow
    path: on N-MNIST-sim the baselines' training batches took 2.3-5.1 s after a few epochs
    instead of about 1 s. The compiled kernels of the library flush them inside their own calls;
    this covers PyTorch's ops around them (the embedding, batch norm, the CNN). Results change
    by values below 1.2e-38 only."""
    return bool(torch.set_flush_denormal(True))


def checkpoint_path(out: Path, name: str) -> Path:
    """Where run ``name`` of the experiment in ``out`` keeps its last finished epoch."""
    return out / "runs" / name / "checkpoints" / "last.ckpt"


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


@contextlib.contextmanager
def children_ignore_sigint():
    """Processes started within the block ignore SIGINT from their start (the disposition is
    inherited through exec): a terminal's Ctrl-C reaches this process only, which stops them."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def worker_threads(config: ExperimentConfig, jobs: int) -> int:
    """Torch threads of each of ``jobs`` worker processes: ``--threads``, or a share of the
    cores."""
    return config.threads or max(1, (os.cpu_count() or 1) // jobs)


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


# Parallel runs ------------------------------------------------------------------------------


def _check_parallel_options(config: ExperimentConfig) -> None:
    trainer = config.trainer
    if trainer.devices != "1" or trainer.num_nodes != 1 or trainer.strategy != "auto":
        raise ExperimentError(
            "--jobs > 1 runs whole runs side by side on one device each; it cannot be combined "
            "with --devices, --num-nodes or --strategy (use --jobs 1 for those)"
        )


def _run_parallel(config, order, jobs, out, resume, record, progress) -> None:
    trainer = config.trainer
    threads = worker_threads(config, jobs)
    worker_config = dataclasses.replace(
        config, threads=threads, trainer=dataclasses.replace(trainer, progress_bar=False, jobs=1)
    )
    progress.say(f"running {len(order)} runs in {jobs} processes of {threads} threads")
    try:
        pool = _WorkerPool(jobs, worker_config.to_dict(), str(out), resume)
    except KeyboardInterrupt:
        raise Interrupted(_INTERRUPTED) from None
    try:
        pool.run(deque(order), record, progress.handle)
    except KeyboardInterrupt:
        raise Interrupted(_INTERRUPTED) from None
    finally:
        pool.stop(record)


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    run: tuple[str, str, int] | None = None
    open: bool = True


class _WorkerPool:
    """Worker processes that train the runs the main process hands them, one at a time.

    Each worker has its own pipe (no lock shared between processes that a killed one could
    leave held). Workers start with SIGINT ignored: a terminal's Ctrl-C reaches the main
    process, which stops them all the same way as on SIGTERM.
    """

    def __init__(self, count: int, config: dict, out: str, resume: bool):
        context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        with children_ignore_sigint():
            try:
                for index in range(count):
                    parent_end, child_end = context.Pipe()
                    process = context.Process(
                        target=_worker_main,
                        args=(child_end, os.getpid(), config, out, resume),
                        name=f"phased-lstm-worker-{index}",
                    )
                    process.start()
                    self.workers.append(_Worker(process, parent_end))
                    child_end.close()
            except BaseException:
                # Interrupted while starting them: a worker still unpickling its pipe would fail
                # loudly (EOFError) once this process is gone, so end the started ones first.
                for worker in self.workers:
                    worker.process.kill()
                    worker.process.join(timeout=5)
                    worker.conn.close()
                raise

    def _receive(self, worker: _Worker):
        """The worker's next message, or None when its pipe is closed."""
        try:
            return worker.conn.recv()
        except Exception:
            # Closed, or cut in the middle of a message by the worker's end.
            worker.open = False
            return None

    def _send(self, worker: _Worker, message) -> None:
        with contextlib.suppress(OSError):
            worker.conn.send(message)

    def _readable(self, timeout: float) -> list[_Worker]:
        """Workers with a message or a closed pipe, waiting at most ``timeout``."""
        by_handle = {}
        for worker in self.workers:
            if worker.open:
                by_handle[worker.conn] = worker
        if not by_handle:
            return []
        return [by_handle[handle] for handle in wait_for(list(by_handle), timeout)]

    def run(self, queue: deque, record, report) -> None:
        """Hand out the runs in ``queue`` until every one is recorded."""
        while any(worker.open for worker in self.workers):
            for worker in self._readable(timeout=1.0):
                message = self._receive(worker)
                if message is None:
                    self._check_ended(worker)
                    continue
                kind = message[0]
                if kind in ("ready", "done"):
                    if kind == "done":
                        worker.run = None
                        record(message[1], message[2])
                    worker.run = queue.popleft() if queue else None
                    self._send(worker, worker.run)
                elif kind == "failed":
                    _, run, text, user_error = message
                    if user_error:
                        raise ExperimentError(f"{run_name(*run)}: {text}")
                    raise RuntimeError(f"{run_name(*run)} failed in a worker process:\n{text}")
                elif kind == "interrupted":
                    raise Interrupted(_INTERRUPTED)
                else:
                    report(message)

    def _check_ended(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        if worker.run is not None:
            code = worker.process.exitcode
            raise Interrupted(
                f"the worker process training {run_name(*worker.run)} ended (exit code {code}) "
                f"before the run did; {_INTERRUPTED}"
            )

    def stop(self, record=None, grace: float = STOP_GRACE_S) -> None:
        """Stop every worker that is still alive: SIGTERM, which stops a training at its last
        finished epoch, then SIGKILL after ``grace`` seconds, or at once on a second signal.
        Runs that finish meanwhile are still recorded."""
        alive = [w for w in self.workers if w.process.is_alive()]
        if alive:
            hurry = threading.Event()
            previous = {
                signum: signal.signal(signum, lambda *_: hurry.set())
                for signum in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                for worker in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGTERM)
                deadline = time.monotonic() + grace
                while not hurry.is_set() and time.monotonic() < deadline:
                    if not any(w.process.is_alive() for w in self.workers):
                        break
                    for worker in self._readable(timeout=0.2):
                        message = self._receive(worker)
                        if message is not None and message[0] == "done" and record is not None:
                            with contextlib.suppress(Exception):
                                record(message[1], message[2])
                    if not any(w.open for w in self.workers):
                        time.sleep(0.1)
                for worker in self.workers:
                    if worker.process.is_alive():
                        worker.process.kill()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        for worker in self.workers:
            worker.process.join(timeout=5)
            worker.conn.close()
            worker.open = False


# Worker side: SIGTERM raises KeyboardInterrupt once, where Lightning stops gracefully (the last
# finished epoch's checkpoint stays); a worker blocked waiting for its next run just ends.
_stopping = False


def _stop_worker(signum, frame) -> None:
    global _stopping
    if not _stopping:
        _stopping = True
        raise KeyboardInterrupt


def _watch_parent(parent_pid: int) -> None:
    """Stop this worker when the main process is gone (killed, even by SIGKILL): a worker is
    never left behind, orphaned."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_main(conn, parent_pid: int, config: dict, out: str, resume: bool) -> None:
    signal.signal(signal.SIGTERM, _stop_worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(parent_pid)

    def send(message) -> None:
        with contextlib.suppress(OSError):
            conn.send(message)

    run = None
    try:
        quiet_lightning()
        config = ExperimentConfig.from_dict(config)
        torch.set_num_threads(config.threads)
        flush_denormals()
        send(("ready",))
        while (run := conn.recv()) is not None:
            record = train_run(config, *run, Path(out), resume, report=send)
            send(("done", run, record))
            run = None
    except (KeyboardInterrupt, EOFError):
        send(("interrupted",))
    except ExperimentError as error:
        send(("interrupted",) if _stopping else ("failed", run, str(error), True))
    except SystemExit as error:
        if _stopping:
            send(("interrupted",))
        else:
            send(("failed", run, str(error.code), isinstance(error.code, str)))
    except BaseException:
        send(("failed", run, traceback.format_exc(), False))
    finally:
        conn.close()


# Interruptions of the main process -------------------------------------------------------------


# The signal that stopped this process, for its exit status (128 + the signal's number).
_stopped_by: int | None = None


def _raise_keyboard_interrupt(signum, frame) -> None:
    global _stopped_by
    _stopped_by = signum
    raise KeyboardInterrupt


def stopping_signal() -> int | None:
    """The signal (SIGINT, SIGTERM) received within :func:`sigterm_interrupts`, if any."""
    return _stopped_by


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM (``kill``, ``timeout``, a batch scheduler's time limit) stops a
    run like Ctrl-C does: at the last finished epoch, ready for ``--resume``. A background job
    started from a script ignores SIGINT, so SIGTERM is how it is stopped. Either signal is
    remembered (:func:`stopping_signal`): shells and schedulers read 128 + its number."""
    global _stopped_by
    _stopped_by = None  # a process may run several commands (the tests do)
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)  # never where it is ignored (a background job)
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _say(message: str, writer: bool) -> None:
    if writer:
        print(message, file=sys.stderr, flush=True)


__all__ = [
    "EpochCheckpoint",
    "ExperimentError",
    "Interrupted",
    "build_run",
    "is_global_zero",
    "make_trainer",
    "pending_runs",
    "prepare_output",
    "quiet_lightning",
    "run_experiment",
    "run_name",
    "sigterm_interrupts",
    "stopping_signal",
    "train_run",
    "write_atomic",
    "write_json",
]
