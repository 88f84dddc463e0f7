"""Experiment configurations: what each experiment runs, and the ``quick``/``paper`` presets.

A configuration is a plain dataclass that the CLI fills from a preset and the options given
explicitly; it is written to ``config.json`` in the output folder and checked on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from phased_lstm.data import FREQUENCY_CONDITIONS

from .models import GATE_CLIP_MODELS, MODEL_NAMES, ModelSpec

EXPERIMENTS = ("freq", "freq2", "adding")
PRESETS = ("quick", "paper")
# "gates": the gradient of the gate pre-activations is clipped inside the recurrence, as the
# authors' Lasagne code did (models without such gates, CfC, clip their parameter gradients);
# "value": every parameter gradient is clipped by value after backpropagation (Lightning's).
GRADIENT_CLIP_MODES = ("gates", "value")
# "direct": Adam steps the Phased LSTM's period and r_on in their own units, as the authors' code
# did (phased_lstm_experiments.optim.TimeGateAdam); "stored": plain Adam on the layer's stored
# log_period and logit_r_on, whose steps are relative (r_on then learns ~20x slower).
TIME_GATE_ADAM_MODES = ("direct", "stored")

# The adding task compares Phased LSTMs initialised with these period ranges, tau = exp(U(a, b))
# in steps (fig. 4); each is a "condition" of the plstm model. The baselines run once.
ADDING_PERIOD_RANGES = {"tau0-2": (0, 2), "tau2-4": (2, 4), "tau4-6": (4, 6), "tau6-8": (6, 8)}
ADDING_BASELINE_CONDITION = "adding"

CONDITIONS = {
    "freq": FREQUENCY_CONDITIONS,
    "freq2": ("async",),
    "adding": tuple(ADDING_PERIOD_RANGES),
}

# Mean sequence length of each task, to schedule the costly runs first.
MEAN_STEPS = {
    ("freq", "standard"): 70,
    ("freq", "highres"): 700,
    ("freq", "async"): 70,
    ("freq2", "async"): 550,
}
_ADDING_MEAN_STEPS = 500

# Protocol fields: runs made with different values are not comparable, so a --resume into a
# folder written with other values is refused. The others (epochs, models, conditions, seeds,
# devices) may grow on resume.
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


@dataclass
class TrainerOptions:
    """Options passed through to ``lightning.Trainer``."""

    accelerator: str = "cpu"
    devices: str = "1"
    num_nodes: int = 1
    strategy: str = "auto"
    progress_bar: bool = True
    jobs: int = 1


@dataclass
class ExperimentConfig:
    """One experiment: which runs to make and the training protocol they share.

    Every (model, condition, seed) triple is one run. For ``adding``, the conditions are the
    Phased LSTM period ranges; baseline models run once, under the condition ``"adding"``.
    ``condition_samples`` overrides ``samples_per_epoch`` for some conditions (the quick preset
    gives the ten times longer high-resolution sequences fewer examples).
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        data = dict(data)
        # Folders written before the mode existed were trained with parameter clipping.
        data.setdefault("gradient_clip_mode", "value")
        data.setdefault("time_gate_adam", "stored")
        data["trainer"] = TrainerOptions(**data.get("trainer", {}))
        return cls(**data)

    def runs(self) -> list[tuple[str, str, int]]:
        """Every (model, condition, seed) of this experiment, in the order they are run."""
        runs = []
        for seed in self.seeds:
            for model in self.models:
                if self.experiment == "adding" and model != "plstm":
                    runs.append((model, ADDING_BASELINE_CONDITION, seed))
                else:
                    runs.extend((model, condition, seed) for condition in self.conditions)
        return runs

    def samples_for(self, condition: str) -> int:
        """Training examples per epoch under ``condition``."""
        return self.condition_samples.get(condition, self.samples_per_epoch)

    def run_cost(self, condition: str) -> int:
        """Steps of one epoch under ``condition``, a relative measure of a run's duration."""
        steps = MEAN_STEPS.get((self.experiment, condition), _ADDING_MEAN_STEPS)
        return self.samples_for(condition) * steps


def model_spec(config: ExperimentConfig, model: str, condition: str) -> ModelSpec:
    """What ``model`` needs to know about the task of ``config`` under ``condition``."""
    gate_clip = config.gradient_clip if config.gradient_clip_mode == "gates" else None
    if config.experiment == "adding":
        low, high = ADDING_PERIOD_RANGES.get(condition, ADDING_PERIOD_RANGES["tau0-2"])
        return ModelSpec(
            input_size=2,
            num_outputs=1,
            classify=False,
            hidden_size=config.hidden_size,
            period_range=(math.exp(low), math.exp(high)),
            shift_range=None,
            time_as_input=False,
            max_steps=510,
            grad_clip=gate_clip,
        )
    # Frequency tasks: the authors' time gate, tau = exp(U(1, 3)) ms and s ~ U(0, 100) ms.
    return ModelSpec(
        input_size=1,
        num_outputs=2,
        classify=True,
        hidden_size=config.hidden_size,
        period_range=(math.e, math.e**3),
        shift_range=(0.0, 100.0),
        time_as_input=True,
        max_steps=1250 if config.experiment == "freq" else 1000,
        grad_clip=gate_clip,
    )


def parameter_clip(config: ExperimentConfig, model: str) -> float | None:
    """The bound on every parameter gradient of ``model``'s runs (Lightning's clipping by
    value), or ``None`` when its recurrence clips the gate gradients itself."""
    if config.gradient_clip_mode == "gates" and model in GATE_CLIP_MODELS:
        return None
    return config.gradient_clip


def preset_config(experiment: str, preset: str) -> ExperimentConfig:
    """The configuration of ``experiment`` under ``preset``, before explicit CLI options."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {experiment!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    conditions = list(CONDITIONS[experiment])
    if preset == "paper":
        epochs = {"freq": 70, "freq2": 300, "adding": 30}[experiment]
        return ExperimentConfig(
            experiment=experiment,
            preset=preset,
            models=["plstm", "lstm", "bnlstm-input", "bnlstm"]
            if experiment != "adding"
            else ["plstm", "lstm"],
            conditions=conditions,
            seeds=[1, 2, 3, 4, 5],
            epochs=epochs,
            samples_per_epoch=5000,
            test_samples=500,
        )
    # Sized to finish within 20 minutes on a 2-core CPU with the fused backend (two runs side by
    # side): the Phased LSTM needs ~3000-4000 batches on standard and async sampling to pass
    # 90%, and ~400-800 on the high resolution, whose every example costs ten times more.
    quick = {
        "freq": dict(
            epochs=10,
            samples_per_epoch=12800,
            test_samples=500,
            condition_samples={"highres": 2560},
        ),
        # Not sized to reach the paper's numbers: the two-frequency task takes the Phased LSTM
        # ~50 epochs of 5000 examples, and the adding task's Phased LSTMs with long periods
        # only start to learn after ~1500 batches (the LSTM later still).
        "freq2": dict(epochs=10, samples_per_epoch=1920, test_samples=500),
        "adding": dict(epochs=10, samples_per_epoch=8000, test_samples=500),
    }[experiment]
    return ExperimentConfig(
        experiment=experiment,
        preset=preset,
        models=["plstm", "lstm", "bnlstm-input"] if experiment != "adding" else ["plstm", "lstm"],
        conditions=conditions,
        seeds=[1],
        # Not the authors' clipping and Adam steps (the paper preset's): this short protocol
        # stops the high-resolution run after 800 batches, where its test accuracy still swings
        # by 10-30 points from epoch to epoch. Seed 1 after epoch 10: 91.0% with these
        # settings (94.6% in an earlier run that differed only in float rounding); 82.2% with
        # clipping inside the recurrence, 85.2% with direct Adam steps, 54.8% with both
        # (docs/reproduction.md).
        gradient_clip_mode="value",
        time_gate_adam="stored",
        **quick,
    )


__all__ = [
    "ADDING_PERIOD_RANGES",
    "CONDITIONS",
    "EXPERIMENTS",
    "GRADIENT_CLIP_MODES",
    "TIME_GATE_ADAM_MODES",
    "MODEL_NAMES",
    "PRESETS",
    "PROTOCOL_FIELDS",
    "ExperimentConfig",
    "TrainerOptions",
    "model_spec",
    "parameter_clip",
    "preset_config",
]
