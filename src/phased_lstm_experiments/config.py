"""Experiment configurations: the runs of an experiment and the protocol they share.

A configuration is a plain dataclass that the CLI fills from a preset of the experiment's task
(:mod:`.tasks`) and the options given explicitly; it is written to ``config.json`` in the output
folder and checked on ``--resume``. What differs between experiments is asked of the task
registry; nothing here names an experiment.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .models import GATE_CLIP_MODELS, MODEL_NAMES, ModelSpec
from .tasks import TASKS, get_task
from .tasks.adding import ADDING_PERIOD_RANGES

EXPERIMENTS = tuple(TASKS)
CONDITIONS = {name: task.conditions for name, task in TASKS.items()}
PRESETS = ("quick", "paper")
# "gates": the gradient of the gate pre-activations is clipped inside the recurrence, as the
# authors' Lasagne code did (models without such gates, CfC, clip their parameter gradients);
# "value": every parameter gradient is clipped by value after backpropagation (Lightning's).
GRADIENT_CLIP_MODES = ("gates", "value")
# "direct": Adam steps the Phased LSTM's period and r_on in their own units, as the authors' code
# did (phased_lstm_experiments.optim.TimeGateAdam); "stored": plain Adam on the layer's stored
# log_period and logit_r_on, whose steps are relative (r_on then learns ~20x slower).
TIME_GATE_ADAM_MODES = ("direct", "stored")

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
)
# Folders written before these fields existed were trained with parameter clipping and plain
# Adam on the stored time-gate parameters.
_LEGACY_DEFAULTS = {"gradient_clip_mode": "value", "time_gate_adam": "stored"}


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
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if not data["options"]:
            del data["options"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        data = {**_LEGACY_DEFAULTS, **data}
        data["trainer"] = TrainerOptions(**data.get("trainer", {}))
        return cls(**data)

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (model, condition, seed) of this experiment, in the order they are run."""
        return get_task(self.experiment).runs(self)

    def samples_for(self, condition: str) -> int:
        """Training examples per epoch under ``condition``."""
        return self.condition_samples.get(condition, self.samples_per_epoch)

    def run_cost(self, condition: str) -> float:
        """A relative measure of the duration of one epoch under ``condition``."""
        return get_task(self.experiment).run_cost(self, condition)

    def protocol(self) -> dict[str, Any]:
        """The values that runs in one folder must share (see ``PROTOCOL_FIELDS``)."""
        data = self.to_dict()
        values = {name: data[name] for name in PROTOCOL_FIELDS}
        for option in get_task(self.experiment).options:
            if option.protocol:
                values[option.flag] = self.options.get(option.name)
        return values


def protocol_of(data: dict) -> dict[str, Any]:
    """:meth:`ExperimentConfig.protocol` of a ``config.json`` as read from disk: fields that an
    older version did not write read as what it did, other missing ones as ``None``."""
    data = {**_LEGACY_DEFAULTS, **data}
    values = {name: data.get(name) for name in PROTOCOL_FIELDS}
    task = TASKS.get(data.get("experiment"))
    for option in task.options if task is not None else ():
        if option.protocol:
            values[option.flag] = data.get("options", {}).get(option.name)
    return values


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


def model_spec(config: ExperimentConfig, model: str, condition: str) -> ModelSpec:
    """What ``model`` needs to know about the task of ``config`` under ``condition``."""
    return get_task(config.experiment).model_spec(config, model, condition)


def parameter_clip(config: ExperimentConfig, model: str) -> float | None:
    """The bound on every parameter gradient of ``model``'s runs (Lightning's clipping by
    value), or ``None`` when its recurrence clips the gate gradients itself."""
    if config.gradient_clip_mode == "gates" and model in GATE_CLIP_MODELS:
        return None
    return config.gradient_clip


def preset_config(experiment: str, preset: str) -> ExperimentConfig:
    """The configuration of ``experiment`` under ``preset``, before explicit CLI options."""
    task = get_task(experiment)
    if preset not in task.presets:
        raise ValueError(f"preset must be one of {', '.join(task.presets)}, got {preset!r}")
    values = copy.deepcopy(task.presets[preset])
    options = {option.name: option.default for option in task.options}
    options.update(values.pop("options", {}))
    values.setdefault("conditions", list(task.conditions))
    return ExperimentConfig(experiment=experiment, preset=preset, options=options, **values)


__all__ = [
    "ADDING_PERIOD_RANGES",
    "CONDITIONS",
    "EXPERIMENTS",
    "GRADIENT_CLIP_MODES",
    "MODEL_NAMES",
    "PRESETS",
    "PROTOCOL_FIELDS",
    "TIME_GATE_ADAM_MODES",
    "ExperimentConfig",
    "TrainerOptions",
    "model_spec",
    "parameter_clip",
    "pending_runs",
    "preset_config",
    "protocol_of",
    "run_name",
]
