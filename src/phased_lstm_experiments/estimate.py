"""Timing of a few training batches, to estimate how long a protocol will take."""

from __future__ import annotations

import dataclasses
import statistics
import time

from lightning.pytorch.callbacks import Callback

from .config import ExperimentConfig, TrainerOptions
from .runner import build_run, make_trainer, quiet_lightning


class _BatchTimer(Callback):
    def __init__(self):
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.durations.append(time.perf_counter() - self._start)


def time_batches(
    config: ExperimentConfig, model: str, condition: str, seed: int, batches: int
) -> float:
    """Median seconds of one training batch of this run, after one warm-up batch.

    Runs on a single device of the configured accelerator, whatever the strategy, so that the
    estimate never launches other processes.
    """
    quiet_lightning()
    single = dataclasses.replace(
        config,
        trainer=TrainerOptions(accelerator=config.trainer.accelerator, progress_bar=False),
        samples_per_epoch=(batches + 1) * config.batch_size,
        condition_samples={},
    )
    module, data = build_run(single, model, condition, seed)
    timer = _BatchTimer()
    trainer = make_trainer(single, model, max_epochs=1, callbacks=[timer], limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    return statistics.median(timer.durations[1:] or timer.durations)
