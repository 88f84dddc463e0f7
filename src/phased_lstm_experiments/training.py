"""Lightning pieces of one run: the task's data and the model's training and evaluation steps.

Training samples are generated afresh every epoch from a seed derived from (run seed, epoch),
so a resumed run sees exactly the data it would have seen; the test set is fixed per seed.
Training batches are random, as the authors drew them; the test set is evaluated in order of
length, which saves most of its padding and changes nothing else: in eval mode every model's
output for an example is independent of its batch (batch norms use running statistics).
"""

from __future__ import annotations

import sys
import time

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from phased_lstm.data import adding_task, frequency_task, two_frequency_task

from .models import ModelSpec, build_model
from .optim import TimeGateAdam

_TRAIN_STREAM, _TEST_STREAM = 0, 1


def generate(experiment: str, condition: str, n: int, rng: np.random.Generator):
    """``n`` examples of ``experiment`` as ``(values, times, lengths, targets)``."""
    if experiment == "freq":
        return frequency_task(n, condition, generator=rng)
    if experiment == "freq2":
        return two_frequency_task(n, generator=rng)
    return adding_task(n, generator=rng)


def collate_trimmed(batch: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Stack examples and cut the padding beyond the longest sequence of this batch."""
    values, times, lengths, targets = (torch.stack(field) for field in zip(*batch, strict=True))
    steps = int(lengths.max())
    return values[:, :steps], times[:, :steps], lengths, targets


class TaskData(L.LightningDataModule):
    """Fresh training examples every epoch, a fixed test set, batches trimmed to their length."""

    def __init__(
        self,
        experiment: str,
        condition: str,
        seed: int,
        samples_per_epoch: int,
        test_samples: int,
        batch_size: int,
    ):
        super().__init__()
        self.experiment, self.condition, self.seed = experiment, condition, seed
        self.samples_per_epoch, self.test_samples = samples_per_epoch, test_samples
        self.batch_size = batch_size
        self.test_set: TensorDataset | None = None

    def _generate(self, n: int, *stream: int) -> tuple[Tensor, ...]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, *stream]))
        return generate(self.experiment, self.condition, n, rng)

    def setup(self, stage: str) -> None:
        if self.test_set is None:
            tensors = self._generate(self.test_samples, _TEST_STREAM)
            order = torch.argsort(tensors[2], stable=True)
            self.test_set = TensorDataset(*(tensor[order] for tensor in tensors))

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        data = TensorDataset(*self._generate(self.samples_per_epoch, _TRAIN_STREAM, epoch))
        return DataLoader(data, batch_size=self.batch_size, collate_fn=collate_trimmed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size, collate_fn=collate_trimmed)


class TaskModule(L.LightningModule):
    """One model on one task: cross-entropy and accuracy, or MSE for the adding task.

    Each epoch appends a row to ``history`` (also kept in checkpoints): the mean training and
    test loss (and accuracy), the Phased LSTM's share of state updates on the test set, and the
    wall time so far. The test set is Lightning's validation loop, run after every epoch.
    """

    def __init__(
        self, model: str, spec: dict, learning_rate: float, time_gate_adam: str = "direct"
    ):
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec(**spec)
        self.model = build_model(model, self.spec)
        self.learning_rate = learning_rate
        self.time_gate_adam = time_gate_adam
        self.history: list[dict] = []
        self._sums: dict[str, Tensor] = {}
        self._epoch_start = 0.0
        self._elapsed = 0.0
        # When set, each epoch's row is printed to stderr after this prefix.
        self.epoch_line_prefix: str | None = None

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        return self.model(values, times, lengths)

    def configure_optimizers(self):
        if self.time_gate_adam == "direct":
            return TimeGateAdam(self.named_parameters(), lr=self.learning_rate)
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    def _step(self, batch, stage: str) -> Tensor:
        values, times, lengths, targets = batch
        out = self(values, times, lengths)
        n = float(targets.shape[0])
        if self.spec.classify:
            loss = F.cross_entropy(out, targets)
            self._add(f"{stage}_acc", (out.argmax(-1) == targets).float().sum(), n)
        else:
            loss = F.mse_loss(out, targets)
        self._add(f"{stage}_loss", loss.detach() * n, n)
        return loss

    def _add(self, name: str, total: Tensor, count: float) -> None:
        pair = torch.stack(
            [total.detach().double().cpu(), torch.tensor(count, dtype=torch.float64)]
        )
        self._sums[name] = self._sums.get(name, torch.zeros(2, dtype=torch.float64)) + pair

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")
        rnn = getattr(self.model.encoder, "rnn", None)
        if hasattr(rnn, "update_fraction"):
            values, times, lengths, _ = batch
            steps = float(lengths.sum())
            fraction = rnn.update_fraction(times, lengths)
            self._add("update_fraction", torch.tensor(fraction * steps), steps)

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
        if self.epoch_line_prefix is not None and self.trainer.is_global_zero:
            shown = ("train_loss", "test_loss", "test_acc")
            metrics = ", ".join(f"{key} {row[key]:.4g}" for key in shown if key in row)
            print(
                f"{self.epoch_line_prefix}epoch {row['epoch']}/{self.trainer.max_epochs}: "
                f"{metrics} ({row['wall_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history
        checkpoint["elapsed"] = self._elapsed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("history", []))
        self._elapsed = float(checkpoint.get("elapsed", 0.0))
