"""Worker processes that train the runs side by side (``--jobs N > 1``), and their signals.

The main process owns them: it hands out the runs, shows their progress, records their
results, and on SIGTERM or Ctrl-C stops them all (each stops at its last finished epoch), waits
a bounded time and kills what is left. A worker whose main process dies (even by SIGKILL)
notices within a second and stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import wait as wait_for
from pathlib import Path

import torch

from .config import (
    ExperimentConfig,
    run_name,
)
from .files import ExperimentError, Interrupted
from .interrupts import children_ignore_sigint
from .run import INTERRUPTED, flush_denormals, quiet_lightning, train_run

# How long stopped workers may take to finish their graceful stop before they are killed.
STOP_GRACE_S = 15.0


def worker_threads(config: ExperimentConfig, jobs: int) -> int:
    """Torch threads of each of ``jobs`` worker processes: ``--threads``, or a share of the
    cores."""
    return config.threads or max(1, (os.cpu_count() or 1) // jobs)


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
        raise Interrupted(INTERRUPTED) from None
    try:
        pool.run(deque(order), record, progress.handle)
    except KeyboardInterrupt:
        raise Interrupted(INTERRUPTED) from None
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
                    raise Interrupted(INTERRUPTED)
                else:
                    report(message)

    def _check_ended(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        if worker.run is not None:
            code = worker.process.exitcode
            raise Interrupted(
                f"the worker process training {run_name(*worker.run)} ended (exit code {code}) "
                f"before the run did; {INTERRUPTED}"
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
