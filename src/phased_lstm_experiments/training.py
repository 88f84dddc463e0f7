"""Lightning pieces of one run: the task's data, and the model's training and evaluation steps.

Generic over the tasks (:mod:`.tasks`): the task says what the data of an epoch is, what the
test sets are and how batches are collated; this module turns them into loaders, losses and a
per-epoch history. Training batches are taken in the order the task's dataset gives them (for
the synthetic tasks, fresh random draws of the generator every epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .optim import TimeGateAdam
from .tasks import Task


class TaskData(L.LightningDataModule):
    """One run's data: the task's training examples of each epoch, its fixed test sets."""

    def __init__(self, task: Task, config, model: str, condition: str, seed: int):
        super().__init__()
        self.task, self.config = task, config
        self.model, self.condition, self.seed = model, condition, seed
        self.test_sets: dict | None = None

    @property
    def test_names(self) -> list[str]:
        return list(self.test_sets or {"test": None})

    def setup(self, stage: str) -> None:
        if self.test_sets is None:
            sets = self.task.test_data(self.config, self.model, self.condition, self.seed)
            if not sets or next(iter(sets)) != "test":
                raise ValueError(
                    f"{type(self.task).__name__}.test_data must return the main set first, "
                    f'under "test"; got {list(sets)}'
                )
            self.test_sets = sets

    def _loader(self, data) -> DataLoader:
        return DataLoader(
            data, batch_size=self.config.batch_size, collate_fn=self.task.collate(self.model)
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        data = self.task.train_data(self.config, self.model, self.condition, self.seed, epoch)
        return self._loader(data)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(data) for data in self.test_sets.values()]
        return loaders[0] if len(loaders) == 1 else loaders


class TaskModule(L.LightningModule):
    """One network on one task: cross-entropy and accuracy, or the mean squared error.

    Each epoch appends a row to ``history`` (also kept in checkpoints): the mean training loss
    (and accuracy), the loss (and accuracy) on every test set, the task's evaluation metrics
    (the Phased LSTM's share of state updates), and the wall time so far. The test sets are
    Lightning's validation loop, run after every epoch.

    Args:
        network: the model, called as ``network(*inputs)`` on a batch ``(*inputs, targets)``.
        classify: class scores and integer targets (else predictions and real targets).
        learning_rate: Adam's.
        time_gate_adam: "direct" (:class:`.optim.TimeGateAdam`) or "stored" (plain Adam).
        evaluation_metrics: ``(network, batch) -> {name: (sum, count)}``, measured on every
            test batch (:meth:`.tasks.Task.evaluation_metrics`).
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        classify: bool,
        learning_rate: float,
        time_gate_adam: str = "direct",
        evaluation_metrics: Callable[[nn.Module, tuple], dict] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "evaluation_metrics"])
        # The attribute keeps its name: checkpoints hold the weights under "model.".
        self.model = network
        self.classify = classify
        self.learning_rate = learning_rate
        self.time_gate_adam = time_gate_adam
        self.evaluation_metrics = evaluation_metrics
        self.history: list[dict] = []
        self._sums: dict[str, Tensor] = {}
        self._epoch_start = 0.0
        self._elapsed = 0.0
        # Called with each epoch's row on the process that writes files (progress display).
        self.epoch_listener: Callable[[dict], None] | None = None

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(*inputs)

    def configure_optimizers(self):
        if self.time_gate_adam == "direct":
            return TimeGateAdam(self.named_parameters(), lr=self.learning_rate)
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    def _step(self, batch, stage: str) -> Tensor:
        *inputs, targets = batch
        out = self(*inputs)
        n = float(targets.shape[0])
        if self.classify:
            loss = F.cross_entropy(out, targets)
            self._add(f"{stage}_acc", (out.argmax(-1) == targets).float().sum(), n)
        else:
            loss = F.mse_loss(out, targets)
        self._add(f"{stage}_loss", loss.detach() * n, n)
        return loss

    def _add(self, name: str, total: Tensor | float, count: float) -> None:
        total = torch.as_tensor(total).detach().double().cpu()
        pair = torch.stack([total, torch.tensor(count, dtype=torch.float64)])
        self._sums[name] = self._sums.get(name, torch.zeros(2, dtype=torch.float64)) + pair

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "test_names", ["test"])
        stage = names[dataloader_idx]
        self._step(batch, stage)
        if self.evaluation_metrics is not None:
            # The main set's metrics keep the names of earlier versions (update_fraction).
            prefix = "" if stage == "test" else f"{stage}_"
            for name, (total, count) in self.evaluation_metrics(self.model, batch).items():
                self._add(prefix + name, total, count)

    def on_train_epoch_start(self) -> None:
        self._sums = {}
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # Validation has run by now (it closes the epoch), so every sum of the epoch is in.
        self._elapsed += time.perf_counter() - self._epoch_start
        row: dict[str, float] = {"epoch": self.current_epoch + 1}
        for name in sorted(self._sums):
            pair = self._sums[name].to(self.device)
            total, count = self.trainer.strategy.reduce(pair, reduce_op="sum").tolist()
            row[name] = total / count
        row["wall_s"] = self._elapsed
        self.history.append(row)
        self.log_dict({k: v for k, v in row.items() if k != "epoch"}, sync_dist=False)
        if self.epoch_listener is not None and self.trainer.is_global_zero:
            self.epoch_listener(row)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        checkpoint["elapsed"] = self._elapsed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("history", []))
        self._elapsed = float(checkpoint.get("elapsed", 0.0))


__all__ = ["TaskData", "TaskModule"]
