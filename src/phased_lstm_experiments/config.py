"""Experiment configurations: the runs of an experiment and the protocol they share.

A configuration is a plain dataclass that the CLI fills from a preset of the experiment's task
(:mod:`.tasks`) and the options given explicitly; it is written to ``config.json`` in the output
folder and checked on ``--resume``. What differs between experiments is asked of the task, which
the caller hands in (:mod:`.tasks` holds the registry); nothing here names an experiment or
imports one.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models import GATE_CLIP_MODELS

if TYPE_CHECKING:
    from .tasks.base import Task

PRESETS = ("quick", "paper")
# "gates": the gradient of the gate pre-activations is clipped inside the recurrence, as the
# authors' Lasagne code did (models without such gates, CfC, clip their parameter gradients);
# "value": every parameter gradient is clipped by value after backpropagation (Lightning's).
GRADIENT_CLIP_MODES = ("gates", "value")
# "direct": Adam steps the Phased LSTM's period and r_on in their own units, as the authors' code
# did (phased_lstm_experiments.optim.TimeGateAdam); "stored": plain Adam on the layer's stored
# log_period and logit_r_on, whose steps are relative (r_on then learns ~20x slower).
TIME_GATE_ADAM_MODES = ("direct", "stored")
# When the test sets are read. "every-epoch": after every epoch, the history's curves (the paper's
# protocol, as every preset but the long ones ran). "at-end": a validation split held out of the
# training data is evaluated after every epoch instead, and the test sets once, after training,
# with the weights of the best validation epoch (and of epoch 1): the test split then chooses
# nothing. "never": validation only (the learning-rate sweep).
TEST_SETS_MODES = ("every-epoch", "at-end", "never")

# Protocol fields: runs made with different values are not comparable, so a --resume into a
# folder written with other values is refused. The others (epochs, models, conditions, seeds,
# devices) may grow on resume. A task's options say themselves whether they are protocol.
PROTOCOL_FIELDS = (
    "experiment",
    "samples_per_epoch",
    "condition_samples",
    "test_samples",
    "batch_size",
    "learning_rate",
    "gradient_clip",
    "gradient_clip_mode",
    "time_gate_adam",
    "hidden_size",
    "validation_share",
    "test_sets",
    "patience",
    "min_delta",
    "learning_rates",
    "lr_sweep",
    "sweep_epochs",
)
# Folders written before these fields existed were trained with parameter clipping and plain
# Adam on the stored time-gate parameters, tested every epoch, without a validation split, early
# stopping or a learning-rate sweep.
_LEGACY_DEFAULTS = {
    "gradient_clip_mode": "value",
    "time_gate_adam": "stored",
    "validation_share": 0.0,
    "test_sets": "every-epoch",
    "patience": 0,
    "min_delta": 0.0,
    "learning_rates": {},
    "lr_sweep": [],
    "sweep_epochs": 0,
}


@dataclass
class TrainerOptions:
    """Options passed through to ``lightning.Trainer``, and how the runs are laid out.

    ``progress_bar``: draw the overall progress as a bar on a terminal (else plain lines);
    ``jobs``: runs trained side by side, in separate processes.
    """

    accelerator: str = "cpu"
    devices: str = "1"
    num_nodes: int = 1
    strategy: str = "auto"
    progress_bar: bool = True
    jobs: int = 1


@dataclass
class ExperimentConfig:
    """One experiment: which runs to make and the training protocol they share.

    Every (model, condition, seed) triple the task lists (:meth:`runs`) is one run.
    ``condition_samples`` overrides ``samples_per_epoch`` for some conditions (the quick preset
    gives the ten times longer high-resolution sequences fewer examples). ``options`` holds the
    values of the task's own options (:class:`.tasks.TaskOption`); it is left out of
    ``config.json`` when empty, as folders of experiments without options always were.

    Validation and stopping: ``validation_share`` of the training examples are held out (the
    task's :meth:`~.tasks.Task.validation_data`) when ``test_sets`` is not ``"every-epoch"``
    (see :data:`TEST_SETS_MODES`). With ``patience > 0`` a run stops once its validation
    accuracy (loss, for regression) has not improved by ``min_delta`` within ``patience``
    epochs; ``epochs`` is then the most it trains. ``learning_rates`` overrides
    ``learning_rate`` per model; with ``lr_sweep``, each model first trains ``sweep_epochs``
    epochs at each of those rates on the first seed, and the rate of the best validation
    accuracy is its rate in the runs (recorded in ``results.json``).
    """

    experiment: str
    preset: str
    models: list[str]
    conditions: list[str]
    seeds: list[int]
    epochs: int
    samples_per_epoch: int
    test_samples: int
    batch_size: int = 32
    learning_rate: float = 1e-3
    gradient_clip: float = 10.0
    gradient_clip_mode: str = "gates"
    time_gate_adam: str = "direct"
    hidden_size: int = 110
    condition_samples: dict[str, int] = field(default_factory=dict)
    threads: int = 0
    validation_share: float = 0.0
    test_sets: str = "every-epoch"
    patience: int = 0
    min_delta: float = 0.0
    learning_rates: dict[str, float] = field(default_factory=dict)
    lr_sweep: list[float] = field(default_factory=list)
    sweep_epochs: int = 0
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if not data["options"]:
            del data["options"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        data = copy.deepcopy({**_LEGACY_DEFAULTS, **data})
        data["trainer"] = TrainerOptions(**data.get("trainer", {}))
        return cls(**data)

    @property
    def validates(self) -> bool:
        """Whether the runs evaluate a validation split after every epoch (not the test sets)."""
        return self.test_sets != "every-epoch"

    def learning_rate_for(self, model: str) -> float:
        """Adam's learning rate for ``model``'s runs."""
        return self.learning_rates.get(model, self.learning_rate)

    def samples_for(self, condition: str) -> int:
        """Training examples per epoch under ``condition``."""
        return self.condition_samples.get(condition, self.samples_per_epoch)

    def protocol(self, task: Task) -> dict[str, Any]:
        """The values that runs in one folder must share (see ``PROTOCOL_FIELDS``); ``task`` is
        this experiment's, whose options say themselves whether they are protocol."""
        data = self.to_dict()
        values = {name: data[name] for name in PROTOCOL_FIELDS}
        for option in task.options:
            if option.protocol:
                values[option.flag] = self.options.get(option.name)
        return values


def protocol_of(data: dict, task: Task | None) -> dict[str, Any]:
    """:meth:`ExperimentConfig.protocol` of a ``config.json`` as read from disk: fields that an
    older version did not write read as what it did, other missing ones as ``None``, and a
    missing task option as its ``legacy`` value. ``task`` is the experiment ``data`` names
    (``None`` for one this version does not know)."""
    data = {**_LEGACY_DEFAULTS, **data}
    values = {name: data.get(name) for name in PROTOCOL_FIELDS}
    for option in task.options if task is not None else ():
        if option.protocol:
            values[option.flag] = data.get("options", {}).get(option.name, option.legacy)
    return values


def run_name(model: str, condition: str, seed: int) -> str:
    return f"{model}-{condition}-seed{seed}"


def is_finished(config: ExperimentConfig, record: dict | None) -> bool:
    """Whether a run's ``results.json`` record is final: trained to ``config.epochs``, or
    stopped early by its validation accuracy."""
    if record is None:
        return False
    return record["epochs"] >= config.epochs or bool(record.get("stopped_early"))


def pending_runs(task: Task, config: ExperimentConfig, results: dict) -> list[tuple[str, str, int]]:
    """The runs of ``config`` (as its ``task`` lists them) that ``results`` does not record as
    finished."""
    runs = results["runs"]
    return [run for run in task.runs(config) if not is_finished(config, runs.get(run_name(*run)))]


def parameter_clip(config: ExperimentConfig, model: str) -> float | None:
    """The bound on every parameter gradient of ``model``'s runs (Lightning's clipping by
    value), or ``None`` when its recurrence clips the gate gradients itself."""
    if config.gradient_clip_mode == "gates" and model in GATE_CLIP_MODELS:
        return None
    return config.gradient_clip


__all__ = [
    "GRADIENT_CLIP_MODES",
    "PRESETS",
    "PROTOCOL_FIELDS",
    "TEST_SETS_MODES",
    "TIME_GATE_ADAM_MODES",
    "ExperimentConfig",
    "TrainerOptions",
    "is_finished",
    "parameter_clip",
    "pending_runs",
    "protocol_of",
    "run_name",
]
