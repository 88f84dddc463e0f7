"""Lightning pieces of one run: the task's data, and the model's training and evaluation steps.

Generic over the tasks (:mod:`.tasks`): the task says what the data of an epoch is, what the
test sets are and how batches are collated; this module turns them into loaders, losses and a
per-epoch history. Training batches are taken in the order the task's dataset gives them (for
the synthetic tasks, fresh random draws of the generator every epoch).

Each epoch's row also says where its time went: ``time_model_s`` (the network's forward and
backward passes on the training batches), ``time_eval_s`` (the evaluation after the epoch) and
``time_epoch_s`` (the whole epoch, both included, with data loading, optimiser steps and
logging).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .optim import TimeGateAdam
from .tasks import Task


class TaskData(L.LightningDataModule):
    """One run's data: the task's training examples of each epoch, and the sets evaluated after
    every epoch: the task's fixed test sets, or its validation split when the config validates
    (``config.test_sets`` is not ``"every-epoch"``; the test sets are then read once, after
    training, through :meth:`test_loaders`)."""

    def __init__(self, task: Task, config, model: str, condition: str, seed: int):
        super().__init__()
        self.task, self.config = task, config
        self.model, self.condition, self.seed = model, condition, seed
        self.test_sets: dict | None = None

    @property
    def test_names(self) -> list[str]:
        """The names of the sets evaluated after every epoch."""
        return list(self.test_sets or {"val" if self.config.validates else "test": None})

    def setup(self, stage: str) -> None:
        if self.test_sets is None:
            if self.config.validates:
                data = self.task.validation_data(self.config, self.model, self.condition, self.seed)
                self.test_sets = {"val": data}
            else:
                self.test_sets = self._task_test_sets()

    def _task_test_sets(self) -> dict:
        sets = self.task.test_data(self.config, self.model, self.condition, self.seed)
        if not sets or next(iter(sets)) != "test":
            raise ValueError(
                f"{type(self.task).__name__}.test_data must return the main set first, "
                f'under "test"; got {list(sets)}'
            )
        return sets

    def test_loaders(self) -> dict[str, DataLoader]:
        """The task's test sets, as loaders by name (the main one, ``"test"``, first)."""
        return {name: self._loader(data) for name, data in self._task_test_sets().items()}

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

    With a validation split (the sets evaluated after each epoch are called ``"val"``), the
    module keeps the weights of the epoch with the best validation accuracy (the lowest loss,
    for regression; the first such epoch on ties) and those after epoch 1, in its checkpoints
    too, and with ``patience > 0`` asks the trainer to stop once the best of the last
    ``patience`` epochs is not ``min_delta`` better than the best before them.

    Args:
        network: the model, called as ``network(*inputs)`` on a batch ``(*inputs, targets)``.
        classify: class scores and integer targets (else predictions and real targets).
        learning_rate: Adam's.
        time_gate_adam: "direct" (:class:`.optim.TimeGateAdam`) or "stored" (plain Adam).
        evaluation_metrics: ``(network, batch) -> {name: (sum, count)}``, measured on every
            test batch (:meth:`.tasks.Task.evaluation_metrics`).
        patience, min_delta: the stopping rule above (0: train every epoch).
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        classify: bool,
        learning_rate: float,
        time_gate_adam: str = "direct",
        evaluation_metrics: Callable[[nn.Module, tuple], dict] | None = None,
        patience: int = 0,
        min_delta: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "evaluation_metrics"])
        # The attribute keeps its name: checkpoints hold the weights under "model.".
        self.model = network
        self.classify = classify
        self.learning_rate = learning_rate
        self.time_gate_adam = time_gate_adam
        self.evaluation_metrics = evaluation_metrics
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.history: list[dict] = []
        # Weights (CPU copies of the state_dict) of the best validation epoch and of epoch 1.
        self.best_state: dict[str, Tensor] | None = None
        self.best_epoch = 0
        self.first_state: dict[str, Tensor] | None = None
        self._sums: dict[str, Tensor] = {}
        self._epoch_start = 0.0
        self._elapsed = 0.0
        self._seconds: dict[str, float] = {}
        self._eval_start = 0.0
        # Called with each epoch's row on the process that writes files (progress display).
        self.epoch_listener: Callable[[dict], None] | None = None

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(*inputs)

    def _time(self, name: str, since: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - since

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        start = time.perf_counter()
        super().backward(loss, *args, **kwargs)
        self._time("model", start)

    def configure_optimizers(self):
        if self.time_gate_adam == "direct":
            return TimeGateAdam(self.named_parameters(), lr=self.learning_rate)
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    def _step(self, batch, stage: str) -> Tensor:
        *inputs, targets = batch
        start = time.perf_counter()
        out = self(*inputs)
        if stage == "train":
            self._time("model", start)
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

    def on_train_start(self) -> None:
        # A run resumed from the checkpoint of the epoch that met its stopping rule trains no more.
        if self.should_stop():
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        self._sums = {}
        self._seconds = {}
        self._epoch_start = time.perf_counter()

    def on_validation_epoch_start(self) -> None:
        self._eval_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        self._time("eval", self._eval_start)

    def on_train_epoch_end(self) -> None:
        # Validation has run by now (it closes the epoch), so every sum of the epoch is in.
        epoch_seconds = time.perf_counter() - self._epoch_start
        self._elapsed += epoch_seconds
        row: dict[str, float] = {"epoch": self.current_epoch + 1}
        for name in sorted(self._sums):
            pair = self._sums[name].to(self.device)
            total, count = self.trainer.strategy.reduce(pair, reduce_op="sum").tolist()
            row[name] = total / count
        row["wall_s"] = self._elapsed
        row["time_model_s"] = self._seconds.get("model", 0.0)
        row["time_eval_s"] = self._seconds.get("eval", 0.0)
        row["time_epoch_s"] = epoch_seconds
        self.history.append(row)
        self._keep_weights(row)
        self.log_dict({k: v for k, v in row.items() if k != "epoch"}, sync_dist=False)
        if self.should_stop():
            self.trainer.should_stop = True
        if self.epoch_listener is not None and self.trainer.is_global_zero:
            self.epoch_listener(row)

    # -------------------------------------------------------------- validation and stopping
    @property
    def _monitor(self) -> tuple[str, float]:
        """The validation metric that picks the best epoch, and its sign (+1: higher is better)."""
        return ("val_acc", 1.0) if self.classify else ("val_loss", -1.0)

    def _scores(self) -> list[float]:
        name, sign = self._monitor
        return [sign * row[name] for row in self.history if name in row]

    def _keep_weights(self, row: dict) -> None:
        name, sign = self._monitor
        if name not in row:
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if len(self.history) == 1:
            self.first_state = state
        scores = self._scores()
        if scores[-1] > max(scores[:-1], default=-float("inf")):
            self.best_state, self.best_epoch = state, int(row["epoch"])

    def should_stop(self) -> bool:
        """Whether the history meets the stopping rule (``patience`` epochs without an
        improvement of ``min_delta`` over the best before them)."""
        scores = self._scores()
        if self.patience <= 0 or len(scores) <= self.patience:
            return False
        before, recent = scores[: -self.patience], scores[-self.patience :]
        return max(recent) < max(before) + self.min_delta

    @torch.no_grad()
    def evaluate(
        self, loaders: Mapping[str, DataLoader], state: Mapping[str, Tensor] | None = None
    ) -> dict[str, float]:
        """Loss, accuracy and the task's metrics on each of ``loaders`` (named as the test
        sets of the history: ``test_acc``, ``test_rate40_acc``, ...) of the network with the
        weights ``state`` (its current ones by default), in eval mode. The network is left with
        the weights ``state`` and in eval mode."""
        network = self.model
        if state is not None:
            network.load_state_dict(state)
        network.eval()
        self._sums = {}
        for name, loader in loaders.items():
            prefix = "" if name == "test" else f"{name}_"
            for batch in loader:
                batch = [
                    item.to(self.device) if isinstance(item, Tensor) else item for item in batch
                ]
                self._step(batch, name)
                if self.evaluation_metrics is not None:
                    for metric, (total, count) in self.evaluation_metrics(network, batch).items():
                        self._add(prefix + metric, total, count)
        row = {name: float(total / count) for name, (total, count) in sorted(self._sums.items())}
        self._sums = {}
        return row

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        checkpoint["elapsed"] = self._elapsed
        if self.best_state is not None:
            checkpoint["best_state"] = self.best_state
            checkpoint["best_epoch"] = self.best_epoch
        if self.first_state is not None:
            checkpoint["first_state"] = self.first_state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("history", []))
        self._elapsed = float(checkpoint.get("elapsed", 0.0))
        self.best_state = checkpoint.get("best_state")
        self.best_epoch = int(checkpoint.get("best_epoch", 0))
        self.first_state = checkpoint.get("first_state")


__all__ = ["TaskData", "TaskModule"]
