"""What an experiment is: the :class:`Task` interface that every module of this package implements.

The runner, the report, the training loop and the CLI know nothing about any experiment in
particular: they ask the task of ``config.experiment`` (see :func:`get_task`) for its runs, its
data, its models, its presets, its tables and figures. A new experiment is one module (or, for a
larger one, a package read as data -> models -> task -> report, as ``nmnist`` and ``fusion``)
that defines a subclass of :class:`Task` (or of :class:`SyntheticTask`, for data drawn afresh
from a generator) and one line in ``tasks/__init__.py`` that registers its instance.

Nothing here imports Lightning, so the report can be written without it. Configurations are
``ExperimentConfig`` objects (``phased_lstm_experiments.config``), which know no task: whoever
needs a task's answer asks the task, handed to it or looked up in the registry.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from phased_lstm.data import random_rate

from ..config import ExperimentConfig
from ..models import MODEL_NAMES, ModelSpec, build_model
from ..rate_shift import shift_summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Run = tuple[str, str, int]
"""One run: (model, condition, seed)."""

FigureSpec = tuple[str, "Callable[[], Figure]"]
"""A figure of the report: its file name and a function that draws it."""


# What the presets of the paper's tasks share. "paper": the paper's protocol, 5 seeds of 5000
# fresh examples per epoch and 500 test examples, trained as the authors did (the
# ExperimentConfig defaults). "quick": one seed, parameter clipping and plain Adam on the
# stored time-gate parameters, which keep short protocols stable (docs/reproduction.md).
PAPER_PRESET = {"seeds": [1, 2, 3, 4, 5], "samples_per_epoch": 5000, "test_samples": 500}
QUICK_PRESET = {
    "seeds": [1],
    "test_samples": 500,
    "gradient_clip_mode": "value",
    "time_gate_adam": "stored",
}


def fraction_option(text: str) -> float:
    """A ``TaskOption.type`` for a number in (0, 1] (a share, an open ratio)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def finite_option(text: str) -> float:
    """A ``TaskOption.type`` for any finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def share_range_option(text: str) -> list[float]:
    """A ``TaskOption.type`` for ``LOW,HIGH``: the range a kept share is drawn from,
    ``0 < LOW <= HIGH <= 1`` (``--rate-augment``)."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH, two shares with 0 < LOW <= HIGH <= 1 such as 0.1,1; got {text!r}"
        ) from None
    if not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
        raise argparse.ArgumentTypeError(
            f"expected LOW and HIGH in (0, 1] (shares of the samples kept), got {text!r}"
        )
    if low > high:
        raise argparse.ArgumentTypeError(f"expected LOW <= HIGH, got {text!r}")
    return [low, high]


@dataclass(frozen=True)
class TaskOption:
    """An option that only some experiments have, such as ``--data ROOT``.

    The CLI offers it as ``--<name with dashes>``; its value lives in ``config.options[name]``
    (and so in ``config.json``). Presets may set it (``presets[preset]["options"]``).

    Attributes:
        name: the key in ``config.options``, a Python identifier (``data_root``).
        help: one line for ``--help``.
        type: turns the command-line text into the value (a JSON-serialisable one).
        default: the value when neither the preset nor the command line gives one.
        protocol: runs made with different values are not comparable: ``--resume`` into a
            folder written with another value is refused.
        metavar: how ``--help`` names the value.
        described: the task's own protocol lines say what the value means, so the report
            leaves out the plain ``--flag: value`` line.
        legacy: what a folder written before the option existed ran with: its ``config.json``
            has no value, and ``--resume`` compares this one (``None`` by default). Read the
            value of a config through :meth:`value`, which falls back on it.
    """

    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    protocol: bool = True
    metavar: str | None = None
    described: bool = False
    legacy: Any = None

    def value(self, config: ExperimentConfig) -> Any:
        """The option's value in ``config``, :attr:`legacy` where it has none (a configuration
        read from the ``config.json`` of an older version)."""
        return config.options.get(self.name, self.legacy)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def collate_trimmed(batch: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Stack ``(values, times, lengths, target)`` examples; cut the padding beyond the longest
    sequence of this batch."""
    values, times, lengths, targets = (torch.stack(field) for field in zip(*batch, strict=True))
    steps = int(lengths.max())
    return values[:, :steps], times[:, :steps], lengths, targets


class Task:
    """One experiment of the paper: everything the generic machinery asks about it.

    A subclass sets the class attributes and overrides the methods that have no default
    (:meth:`model_spec`, :meth:`train_data`, :meth:`test_data`, :meth:`tables`).

    Batches: every batch the task's data yields (through :meth:`collate`) is a tuple
    ``(*inputs, targets)``; the model built by :meth:`build_model` is called as
    ``model(*inputs)`` and returns class scores ``(N, C)`` (``spec.classify``: cross-entropy
    and accuracy are recorded) or predictions ``(N,)`` (mean squared error).

    Results: each epoch records, for the training data, ``train_loss`` (and ``train_acc``),
    and for every test set ``NAME`` of :meth:`test_data`, ``NAME_loss`` (and ``NAME_acc``) plus
    the sums of :meth:`evaluation_metrics`; the first test set is called ``"test"``, and its
    extra metrics carry no prefix (``update_fraction``), as in folders of earlier versions.
    """

    name: ClassVar[str]
    """The experiment's name on the command line (``phased-lstm reproduce NAME``)."""
    title: ClassVar[str]
    """The heading of results.md, after "Phased LSTM reproduction: "."""
    help: ClassVar[str]
    """One line for ``phased-lstm reproduce --help``."""
    conditions: ClassVar[tuple[str, ...]]
    """Every condition, in the order of the report; the default selection."""
    condition_titles: ClassVar[dict[str, str]] = {}
    """How the report names a condition; the condition itself where missing."""
    models: ClassVar[tuple[str, ...]] = MODEL_NAMES
    """The models ``--models`` may choose, in the order of the report."""
    presets: ClassVar[dict[str, dict[str, Any]]]
    """Preset name -> ``ExperimentConfig`` field values (``conditions`` defaults to all)."""
    options: ClassVar[tuple[TaskOption, ...]] = ()
    """Options of this experiment only."""
    paper_protocol: ClassVar[str] = ""
    """The paper's protocol in one sentence, for results.md."""

    # --------------------------------------------------------------------------- presets
    def preset_config(self, preset: str) -> ExperimentConfig:
        """The configuration of this experiment under ``preset``, before explicit CLI options."""
        if preset not in self.presets:
            raise ValueError(f"preset must be one of {', '.join(self.presets)}, got {preset!r}")
        values = copy.deepcopy(self.presets[preset])
        options = {option.name: option.default for option in self.options}
        options.update(values.pop("options", {}))
        values.setdefault("conditions", list(self.conditions))
        return ExperimentConfig(experiment=self.name, preset=preset, options=options, **values)

    # --------------------------------------------------------------------------- prepare
    def prepare(self, config: ExperimentConfig) -> ExperimentConfig:
        """Make ready what the runs need, once, in the process that starts them, before any run
        or estimate; return ``config`` with its values settled (a new object where they change).

        A task whose data must be fetched or built does it here, and may settle its options and
        sizes from what it found (a default data folder, the number of examples the data holds):
        the settled values go to ``config.json`` and are what ``--resume`` compares. It must be
        idempotent: a config it returned comes back unchanged. By default nothing changes.
        """
        return config

    # ------------------------------------------------------------------------------ runs
    def runs(self, config: ExperimentConfig) -> list[Run]:
        """Every (model, condition, seed) of ``config``, in the order they are run."""
        return [
            (model, condition, seed)
            for seed in config.seeds
            for model in config.models
            for condition in config.conditions
        ]

    def run_cost(self, config: ExperimentConfig, condition: str) -> float:
        """A relative measure of one epoch's duration under ``condition`` (the costliest runs
        start first, and the progress display weighs epochs with it)."""
        return float(config.samples_for(condition))

    # ---------------------------------------------------------------------------- models
    def model_spec(self, config: ExperimentConfig, model: str, condition: str) -> ModelSpec:
        """What ``model`` needs to know about this task under ``condition``."""
        raise NotImplementedError

    def build_model(self, model: str, spec: ModelSpec) -> nn.Module:
        """The network called ``model``; by default from :func:`models.build_model`."""
        return build_model(model, spec)

    @staticmethod
    def gate_clip(config: ExperimentConfig) -> float | None:
        """``ModelSpec.grad_clip`` for ``config``: the bound on the gate gradients inside the
        recurrence, or ``None`` when the parameter gradients are clipped instead."""
        return config.gradient_clip if config.gradient_clip_mode == "gates" else None

    # ------------------------------------------------------------------------------ data
    def train_data(
        self, config: ExperimentConfig, model: str, condition: str, seed: int, epoch: int
    ) -> Dataset:
        """The training examples of ``epoch`` (0-based) of one run. It must depend on nothing
        but its arguments: a resumed run sees exactly the data it would have seen."""
        raise NotImplementedError

    def test_data(
        self, config: ExperimentConfig, model: str, condition: str, seed: int
    ) -> dict[str, Dataset]:
        """The test sets of one run, evaluated after every epoch: ``{"test": ..., **extra}``.

        Extra sets (another event rate, a sensor left out) name their metrics: a set called
        ``"test_rate40"`` records ``test_rate40_loss`` and ``test_rate40_acc``.
        """
        raise NotImplementedError

    def validation_data(
        self, config: ExperimentConfig, model: str, condition: str, seed: int
    ) -> Dataset:
        """The validation set of one run, evaluated after every epoch when ``config.validates``:
        examples that :meth:`train_data` never yields, fixed for the run. A task without a
        validation split says so."""
        raise ValueError(
            f"the {self.name} experiment has no validation split; its runs test every epoch "
            '(test_sets "every-epoch")'
        )

    def evaluation_samples(self, config: ExperimentConfig) -> int:
        """Examples of the main set evaluated after every epoch: ``test_samples`` by default
        (the test set, or a validation set of that size)."""
        return config.test_samples

    def collate(self, model: str) -> Callable[[list], tuple[Tensor, ...]]:
        """The DataLoader's ``collate_fn`` for ``model``'s batches."""
        return collate_trimmed

    def evaluation_metrics(
        self, network: nn.Module, batch: Sequence[Tensor]
    ) -> dict[str, tuple[float, float]]:
        """Extra measures of one test batch, as ``name -> (sum, count)``; the epoch's value is
        the sum over the batches divided by the count.

        By default the Phased LSTM's ``update_fraction``: the share of neuron-steps whose gate
        is open (batches laid out as ``(values, times, lengths, targets)``).
        """
        rnn = getattr(getattr(network, "encoder", None), "rnn", None)
        if not hasattr(rnn, "update_fraction"):
            return {}
        _, times, lengths, _ = batch
        steps = float(lengths.sum())
        return {"update_fraction": (rnn.update_fraction(times, lengths) * steps, steps)}

    def final_measures(
        self, config: ExperimentConfig, model: str, condition: str, seed: int, network: nn.Module
    ) -> dict[str, float]:
        """Measures of a run's trained ``network`` taken once, when its last epoch is done (an
        inference time, say), recorded as the run's ``measures`` in ``results.json``; none by
        default. The network may be changed: the run is over."""
        return {}

    # ------------------------------------------------------------------- rate-shift matrix
    def shift_tests(self, config: ExperimentConfig) -> dict[str, str]:
        """The test conditions under which every trained model is tested, for the rate-shift
        matrix (:mod:`..rate_shift`): key -> title, in the report's order; the key of the
        training condition's own test is the condition. None by default."""
        return {}

    def shift_accuracies(self, record: dict) -> dict[str, float]:
        """A run's accuracy under each test condition of :meth:`shift_tests` that it measured,
        read from its ``results.json`` record."""
        return {}

    def training_title(self, condition: str, augment: tuple[float, float] | None) -> str:
        """What the runs of ``condition`` trained on, with the rate augmentation ``augment``
        (``None``: none), for the matrix; a test condition whose key is ``condition`` is the
        training condition itself. By default the condition's title."""
        return self.condition_titles.get(condition, condition)

    def summaries(self, config: ExperimentConfig, results: dict) -> dict[str, Any]:
        """Tables derived from the runs that ``results.json`` records beside them (rewritten
        with every run): the rate-shift matrix (``"rate_shift"``) where the task has one."""
        summary = shift_summary(self, config, results)
        return {"rate_shift": summary} if summary["rows"] else {}

    # ---------------------------------------------------------------------------- report
    def examples_text(self, config: ExperimentConfig) -> str:
        """What one epoch trains on and what is tested, for results.md's protocol."""
        return (
            f"{config.epochs} epochs of {_samples_text(config)} fresh training examples, "
            f"{config.test_samples} fixed test examples"
        )

    def protocol_lines(self, config: ExperimentConfig) -> list[str]:
        """Bullets of results.md's "Protocol actually run" that belong to this task."""
        return []

    def tables(self, config: ExperimentConfig, results: dict) -> list[str]:
        """The task's sections of results.md (markdown lines): ours beside the paper's."""
        raise NotImplementedError

    def figures(self, config: ExperimentConfig, results: dict) -> list[FigureSpec]:
        """The task's figures, as (file name, draw function) pairs; none by default."""
        return []


def _samples_text(config: ExperimentConfig) -> str:
    exceptions = [
        f"{n} for {c}" for c, n in config.condition_samples.items() if c in config.conditions
    ]
    return str(config.samples_per_epoch) + (f" ({', '.join(exceptions)})" if exceptions else "")


class SyntheticTask(Task):
    """A task whose examples a generator draws afresh: new training data every epoch, a test
    set fixed per seed.

    The random streams are ``SeedSequence([seed, 0, epoch])`` for training and
    ``SeedSequence([seed, 1])`` for the test set; the test set is evaluated in order of length,
    which saves most of its padding and changes nothing else (in eval mode every model's output
    for an example is independent of its batch).

    With the option ``rate_augment = [low, high]`` (``--rate-augment``, for the tasks that offer
    it) every training sequence keeps a random share in ``[low, high]`` of its samples
    (:func:`phased_lstm.data.random_rate`), drawn from ``SeedSequence([seed, 0, epoch, 3])``: the
    same waves as without it, thinned, and the same thinning on ``--resume``. Test and
    validation sets are never thinned.
    """

    mean_steps: ClassVar[dict[str, float]] = {}
    """Mean sequence length per condition, for :meth:`run_cost`."""
    default_mean_steps: ClassVar[float] = 100.0

    _TRAIN_STREAM, _TEST_STREAM, _VALIDATION_STREAM, _RATE_STREAM = 0, 1, 2, 3

    def generate(
        self, condition: str, n: int, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``n`` examples as ``(values, times, lengths, targets)``."""
        raise NotImplementedError

    def _draw(self, condition: str, n: int, seed: int, *stream: int) -> tuple[Tensor, ...]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, *stream]))
        return self.generate(condition, n, rng)

    def train_data(self, config, model, condition, seed, epoch) -> Dataset:
        n = config.samples_for(condition)
        values, times, lengths, targets = self._draw(condition, n, seed, self._TRAIN_STREAM, epoch)
        keep = config.options.get("rate_augment")
        if keep is not None:
            entropy = [seed, self._TRAIN_STREAM, epoch, self._RATE_STREAM]
            state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
            values, times, lengths = random_rate(
                values,
                times,
                lengths,
                keep=tuple(keep),
                batch_first=True,
                generator=torch.Generator().manual_seed(state),
            )
        return TensorDataset(values, times, lengths, targets)

    def test_data(self, config, model, condition, seed) -> dict[str, Dataset]:
        return {"test": self._fixed_set(condition, config.test_samples, seed, self._TEST_STREAM)}

    def validation_data(self, config, model, condition, seed) -> Dataset:
        """``test_samples`` examples of a stream of their own (``SeedSequence([seed, 2])``):
        the training data is drawn afresh, so it never holds them either."""
        return self._fixed_set(condition, config.test_samples, seed, self._VALIDATION_STREAM)

    def _fixed_set(self, condition: str, n: int, seed: int, stream: int) -> Dataset:
        tensors = self._draw(condition, n, seed, stream)
        order = torch.argsort(tensors[2], stable=True)
        return TensorDataset(*(tensor[order] for tensor in tensors))

    def run_cost(self, config, condition) -> float:
        steps = self.mean_steps.get(condition, self.default_mean_steps)
        return float(config.samples_for(condition) * steps)


__all__ = [
    "PAPER_PRESET",
    "QUICK_PRESET",
    "FigureSpec",
    "Run",
    "SyntheticTask",
    "Task",
    "TaskOption",
    "collate_trimmed",
    "share_range_option",
]
