"""Runs an experiment: every (model, condition, seed) through a Lightning Trainer, resumably.

The output folder holds ``config.json`` (the resolved configuration), ``results.json`` (one
record per finished run, with its per-epoch history), ``metrics.csv``, ``results.md``, the
figures, and ``runs/<run>/`` with each run's checkpoints and Lightning CSV logs
(TensorBoard logs go to ``tensorboard/<run>/``). ``--resume`` skips the runs recorded as
finished in ``results.json`` and continues the others from their ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .config import PROTOCOL_FIELDS, ExperimentConfig, model_spec, parameter_clip
from .training import TaskData, TaskModule

RESULTS_VERSION = 1


class ExperimentError(Exception):
    """A mistake the user can fix; the CLI prints its message alone, without a traceback."""


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


def run_name(model: str, condition: str, seed: int) -> str:
    return f"{model}-{condition}-seed{seed}"


def pending_runs(config: ExperimentConfig, results: dict) -> list[tuple[str, str, int]]:
    """The runs of ``config`` that ``results`` does not record as trained to ``config.epochs``."""
    pending = []
    for run in config.runs():
        done = results["runs"].get(run_name(*run))
        if done is None or done["epochs"] < config.epochs:
            pending.append(run)
    return pending


def is_global_zero() -> bool:
    """Whether this process is the one that writes files, before any Trainer exists.

    Lightning starts the other DDP processes by re-running the command with ``LOCAL_RANK``
    (and ``NODE_RANK`` on other nodes) set; they train but never write the output folder.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file so that a reader (or a crash) never sees it half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the mode of an ordinary new file.
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: object) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def prepare_output(config: ExperimentConfig, out: Path, resume: bool) -> dict:
    """Check that ``out`` may receive ``config``'s runs; return the results recorded there."""
    config_path, results_path = out / "config.json", out / "results.json"
    if not config_path.exists():
        if out.exists() and any(out.iterdir()):
            raise ExperimentError(
                f"--out {out} is not empty and holds no phased-lstm experiment; "
                "choose an empty or new folder"
            )
        return {"version": RESULTS_VERSION, "runs": {}}
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
    current = config.to_dict()
    changed = [
        f"{name} was {previous.get(name)!r}, now {current[name]!r}"
        for name in PROTOCOL_FIELDS
        if previous.get(name) != current[name]
    ]
    if changed:
        raise ExperimentError(
            f"--out {out} holds runs made with another protocol ({'; '.join(changed)}); "
            "resume with the same settings or choose another folder"
        )
    if not results_path.exists():
        return {"version": RESULTS_VERSION, "runs": {}}
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
    """A Trainer with the experiment's protocol for ``model`` and the user's device options."""
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
        enable_progress_bar=options.progress_bar,
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
    spec = model_spec(config, model, condition)
    module = TaskModule(
        model, dataclasses.asdict(spec), config.learning_rate, config.time_gate_adam
    )
    data = TaskData(
        config.experiment,
        condition,
        seed,
        config.samples_for(condition),
        config.test_samples,
        config.batch_size,
    )
    return module, data


def train_run(
    config: ExperimentConfig, model: str, condition: str, seed: int, out: Path, resume: bool
) -> dict:
    """Train one run to ``config.epochs`` (continuing from its last checkpoint) and return its
    record for ``results.json``."""
    name = run_name(model, condition, seed)
    run_dir = out / "runs" / name
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    module, data = build_run(config, model, condition, seed)
    if not config.trainer.progress_bar:
        # One line per epoch instead of the bar: what logs and side-by-side jobs can keep.
        module.epoch_line_prefix = f"[{name}] "
    trainer = make_trainer(
        config,
        model,
        max_epochs=config.epochs,
        run_dir=run_dir,
        tensorboard_dir=out / "tensorboard",
    )
    interrupted = ExperimentError(
        f"interrupted during {name}; rerun the same command with --resume to continue"
    )
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
    return {
        "model": model,
        "condition": condition,
        "seed": seed,
        "epochs": len(module.history),
        "history": module.history,
        "final": module.history[-1] if module.history else {},
    }


def run_experiment(
    config: ExperimentConfig,
    out: Path,
    *,
    resume: bool = False,
    on_update: Callable[[ExperimentConfig, dict, Path], None] | None = None,
) -> dict:
    """Make every run of ``config`` not yet finished in ``out``; return ``results.json``'s data.

    With ``config.trainer.jobs > 1`` the runs go to that many worker processes on one device
    each (independent runs, each seeded by itself, so the results do not depend on it), the
    costliest first. ``on_update`` (the report writer) is called after every run on the
    writing process.
    """
    quiet_lightning()
    writer = is_global_zero()
    results = prepare_output(config, out, resume) if writer else {"runs": {}}
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_dict())
    started = time.perf_counter()
    pending = pending_runs(config, results)

    def record(run: tuple[str, str, int], result: dict) -> None:
        results["runs"][run_name(*run)] = result
        if writer:
            results["config"] = config.to_dict()
            write_json(out / "results.json", results)
            if on_update is not None:
                on_update(config, results, out)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result["final"].items() if k != "epoch")
        _say(f"[{run_name(*run)}] done: {summary}", writer)

    jobs = min(config.trainer.jobs, len(pending))
    if jobs > 1:
        _run_parallel(config, pending, jobs, out, resume, record)
    else:
        for run in pending:
            _say(f"[{run_name(*run)}] training for {config.epochs} epochs", writer)
            record(run, train_run(config, *run, out, resume))
    if writer and on_update is not None:
        on_update(config, results, out)
    _say(f"finished in {time.perf_counter() - started:.0f} s; results in {out}", writer)
    return results


def _run_parallel(config, pending, jobs, out, resume, record) -> None:
    trainer = config.trainer
    if trainer.devices != "1" or trainer.num_nodes != 1 or trainer.strategy != "auto":
        raise ExperimentError(
            "--jobs > 1 runs whole runs side by side on one device each; it cannot be combined "
            "with --devices, --num-nodes or --strategy (use --jobs 1 for those)"
        )
    threads = config.threads or max(1, (os.cpu_count() or 1) // jobs)
    worker_config = dataclasses.replace(
        config,
        threads=threads,
        trainer=dataclasses.replace(trainer, progress_bar=False, jobs=1),
    )
    order = sorted(pending, key=lambda run: -config.run_cost(run[1]))
    _say(f"running {len(order)} runs in {jobs} processes of {threads} threads", True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_init_worker
    ) as pool:
        futures = {
            pool.submit(_train_in_worker, worker_config.to_dict(), *run, str(out), resume): run
            for run in order
        }
        try:
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(futures[future], future.result())
        except KeyboardInterrupt:
            # A terminal's Ctrl-C reaches the workers too; a kill of this process alone does not.
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise ExperimentError(
                "interrupted; rerun the same command with --resume to continue"
            ) from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# Worker processes turn SIGINT into KeyboardInterrupt only while they train, where Lightning
# stops gracefully (the last finished epoch's checkpoint stays); an idle worker just remembers
# it and refuses the runs still queued, so an interruption ends in one message.
_interrupted = False
_training = False


def _on_worker_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    if _training:
        raise KeyboardInterrupt


def _init_worker() -> None:
    signal.signal(signal.SIGINT, _on_worker_sigint)
    signal.signal(signal.SIGTERM, _on_worker_sigint)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM (``kill``, a batch scheduler's time limit) stops a run like
    Ctrl-C does: at the last finished epoch, ready for ``--resume``. A background job started
    from a script ignores SIGINT, so SIGTERM is how it is stopped."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_in_worker(config: dict, model: str, condition: str, seed: int, out: str, resume: bool):
    global _training
    if _interrupted:
        raise ExperimentError("interrupted")
    quiet_lightning()
    config = ExperimentConfig.from_dict(config)
    torch.set_num_threads(config.threads)
    _say(f"[{run_name(model, condition, seed)}] training for {config.epochs} epochs", True)
    _training = True
    try:
        return train_run(config, model, condition, seed, Path(out), resume)
    finally:
        _training = False


def _say(message: str, writer: bool) -> None:
    if writer:
        print(message, file=sys.stderr, flush=True)
