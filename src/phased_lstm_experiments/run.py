"""One run of an experiment through a Lightning Trainer: build its seeded model and data, train
it to ``config.epochs`` from its last checkpoint, checkpoint every epoch atomically, and return
its ``results.json`` record.

The runner (:mod:`.runner`) calls it in its own process, the workers of :mod:`.pool` in theirs,
the estimate (:mod:`.estimate`) on miniatures.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .config import (
    ExperimentConfig,
    parameter_clip,
    run_name,
)
from .files import Interrupted
from .tasks import get_task
from .training import TaskData, TaskModule

# Batch progress is reported at most this often (seconds).
_BATCH_REPORT_S = 1.0


INTERRUPTED = "interrupted; rerun the same command with --resume to continue"


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
    interrupted = Interrupted(f"interrupted during {name}; {INTERRUPTED}")
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


def trained_epochs(out: Path, name: str) -> int:
    """Epochs run ``name`` in ``out`` has finished by its checkpoint (what ``--resume``
    continues after); 0 without a checkpoint or with one that cannot be read (the runner says
    so when it resumes)."""
    checkpoint = checkpoint_path(out, name)
    if not checkpoint.exists():
        return 0
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception:
        return 0
    return len(state.get("history", []))
