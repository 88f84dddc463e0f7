"""The N-MNIST task: its presets and options, data and models of each run, the measures after
training (state updates, inference time), as the runner asks for them."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from phased_lstm.data import (
    NMNIST,
    Compose,
    SubsampleEvents,
    ToFrames,
    collate_events,
)

from ...event_models import (
    EMBEDDING_DIM_PER_LEVEL,
    EMBEDDING_LEVELS,
    EMBEDDING_SIZE,
    EMBEDDING_STD,
    FRAME_SCALE,
    EventSequenceModel,
    FrameCNN,
    MultiResolutionEmbedding,
)
from ...files import ExperimentError
from ...gap_scaling import GAP_SCALED, GAP_SCALED_TEXT
from ...models import ModelSpec, build_model
from ...rate_shift import augment_of
from ..base import Task, TaskOption, fraction_option, share_range_option
from . import report
from .data import (
    EXTRA_TEST_RATES,
    SHIFT_TESTS,
    TRAINING_RATES,
    _collate_frames,
    _stream_seed,
    data_root_option,
    describe_data,
)
from .report import _share_text

# Phased LSTM periods, log-uniform in this range (ms), shifts uniform in [0, period): about one
# saccade (105 ms), the paper's "tau 100 ms", so that every neuron opens once in each saccade,
# for r_on = 5% of it (~50 events at rho = 0.75). docs/reproduction.md compares it, on held-out
# training digits, with (2, 105) ms and with suggest_period_range's (1.9, 315) ms.
PERIOD_RANGE_MS = (80.0, 125.0)
R_ON = 0.05
# The baselines read each event's timestamp as an extra input, in units of 100 ms (about one
# saccade): 0 to ~3.2 over a digit, on the scale of the embedding, so that it cannot saturate
# the gates as raw milliseconds would (the frequency task's LSTM failed on raw times).
BASELINE_TIME_UNIT_MS = 100.0
# Digits whose inference is timed after training (dense against sparse path, one at a time).
TIMED_DIGITS = 50

_TRAIN_STREAM, _TEST_STREAM, _VALIDATION_STREAM, _SPLIT_STREAM = 0, 1, 2, 3
_EVENT_MODELS = ("plstm", "lstm", "bnlstm-input")


class NMNISTTask(Task):
    name = "nmnist"
    title = "event-camera digits (Task 3, Table 1)"
    help = "event-camera digits, N-MNIST-sim or --data ROOT (Table 1)"
    conditions = tuple(TRAINING_RATES)
    condition_titles = {"rate75": "trained at rho = 0.75"}
    models = ("plstm", "lstm", "bnlstm-input", "cnn", GAP_SCALED)
    options = (
        TaskOption(
            "data",
            "a folder in N-MNIST's layout (Train/<digit>/*.bin, Test/<digit>/*.bin, or under "
            "NMNIST/): the real N-MNIST works as it is; by default N-MNIST-sim, built on first "
            "use in ~/.cache/phased-lstm (or $PHASED_LSTM_DATA)",
            type=data_root_option,
            metavar="ROOT",
        ),
        TaskOption(
            "event_share",
            "keep only this share of every recording's events, at every rate (each digit then "
            "keeps rho x SHARE of its events): a shorter protocol for short runs",
            type=fraction_option,
            default=1.0,
            metavar="SHARE",
        ),
        TaskOption(
            "rate_augment",
            "every training digit keeps a random share of its events, drawn uniformly in "
            "[LOW, HIGH], instead of rho = 0.75, for every model; validation and test untouched",
            type=share_range_option,
            metavar="LOW,HIGH",
            described=True,
        ),
    )
    paper_protocol = (
        "(recalled, not verified) N-MNIST's 60,000 training and 10,000 test digits, trained at "
        "event rate rho = 0.75 and tested at 0.4, 0.75 and 1.0; a Phased LSTM (tau 100 ms) "
        "reading one event per step against a BN-LSTM and a CNN on accumulated frames; the "
        "paper does not give the epochs, batch, embedding or layer sizes"
    )
    presets = {
        # The whole training split every epoch and the whole test split, 3 seeds, trained as the
        # authors' code trained (the ExperimentConfig defaults): the clipping of the gate
        # gradients inside the recurrence and Adam's steps on the period in its own units.
        # Batches of 16 (the paper does not say): each digit is a sequence of thousands of
        # events, and a batch of 16 costs about half of one of 32 on a CPU, so twice the steps.
        "paper": dict(
            models=["bnlstm-input", "lstm", "plstm", "cnn"],
            seeds=[1, 2, 3],
            epochs=10,
            samples_per_epoch=60_000,
            test_samples=10_000,
            batch_size=16,
        ),
        # Every model to its plateau, fairly (docs/reproduction.md): 10% of each digit class
        # held out of the training split for validation; each model's learning rate chosen
        # from 3e-4, 1e-3 and 3e-3 by its validation accuracy after 3 epochs (seed 1); then
        # 2 seeds trained until their validation accuracy has not improved by 0.3 points in 5
        # epochs (at most 60), and the test split read once, at the end, by the weights of the
        # best validation epoch (and by those after epoch 1, for Table 1's first row). The
        # authors' clipping of the gate gradients for every recurrent model, the paper
        # preset's batch and time-gate steps.
        "long": dict(
            models=["bnlstm-input", "lstm", "plstm", "cnn"],
            seeds=[1, 2],
            epochs=60,
            samples_per_epoch=60_000,
            test_samples=10_000,
            batch_size=16,
            validation_share=0.1,
            test_sets="at-end",
            patience=5,
            min_delta=0.003,
            lr_sweep=[3e-4, 1e-3, 3e-3],
            sweep_epochs=3,
        ),
        # Sized to finish within 20 minutes on a 2-core CPU, two runs side by side (the
        # costliest listed first, so that they start first): 2 epochs of 2,000 digits with every
        # event (~3,360 per digit at rho = 0.75), and a learning rate of 3e-3, which brought
        # every model further than 1e-3 in short runs on held-out training digits. Thinning
        # the recordings (--event-share 0.25) buys more digits in the same time, but costs the
        # Phased LSTM its robustness to the test rate (docs/reproduction.md). The settings of
        # the other quick presets (parameter clipping, plain Adam).
        "quick": dict(
            models=["bnlstm-input", "lstm", "plstm", "cnn"],
            seeds=[1],
            epochs=2,
            samples_per_epoch=2000,
            test_samples=500,
            batch_size=16,
            learning_rate=3e-3,
            gradient_clip_mode="value",
            time_gate_adam="stored",
        ),
    }

    # ------------------------------------------------------------------ prepare and data
    def prepare(self, config):
        """Settle the data folder (N-MNIST-sim, built if missing, by default) and clamp the
        examples per epoch and the test examples to what its splits hold."""
        root = config.options.get("data")
        if root is None:
            from ...nmnist_sim import NMNISTSimError, ensure_nmnist_sim

            try:
                root = str(ensure_nmnist_sim())
            except NMNISTSimError as error:
                raise ExperimentError(f"N-MNIST-sim: {error}") from None
        try:
            train, test = (len(NMNIST(root, train=flag)) for flag in (True, False))
        except ValueError as error:
            raise ExperimentError(f"--data: {error}") from None
        if config.validates:
            train -= len(
                self.validation_split(dataclasses.replace(config, options={"data": root}))[1]
            )
        settled = dataclasses.replace(
            config,
            options={**config.options, "data": root},
            samples_per_epoch=min(config.samples_per_epoch, train),
            condition_samples={c: min(n, train) for c, n in config.condition_samples.items()},
            test_samples=min(config.test_samples, test),
        )
        if settled != config:
            print(f"nmnist: data: {describe_data(root)}", file=sys.stderr, flush=True)
        return settled

    @staticmethod
    def data_root(config) -> Path:
        root = config.options.get("data")
        if root is None:
            raise ValueError("the nmnist task's config has no data folder: prepare it first")
        return Path(root)

    @staticmethod
    def validation_split(config) -> tuple[list[int], list[int]]:
        """The training split's indices as (training, validation): ``config.validation_share``
        of each digit class held out (rounded), drawn once for every run and model alike;
        everything is training when the runs do not validate."""
        targets = np.asarray(NMNIST(NMNISTTask.data_root(config), train=True).targets)
        if not config.validates:
            return list(range(len(targets))), []
        rng = np.random.default_rng(np.random.SeedSequence([_SPLIT_STREAM]))
        held = []
        for label in np.unique(targets):
            members = rng.permutation(np.flatnonzero(targets == label))
            held += members[: round(config.validation_share * len(members))].tolist()
        held_out = set(held)
        return [i for i in range(len(targets)) if i not in held_out], sorted(held)

    def evaluation_samples(self, config) -> int:
        if config.validates:
            return len(self.validation_split(config)[1])
        return config.test_samples

    @staticmethod
    def _transform(config, model: str, rate: float, seed: int, augment: bool = False):
        """Each digit keeps its events with probability ``rate`` (times ``--event-share``), or,
        with ``augment`` and ``--rate-augment LOW,HIGH``, a share drawn in [LOW, HIGH] (times
        ``--event-share``); the CNN then counts them into a frame."""
        share = config.options.get("event_share", 1.0)
        keep = augment_of(config) if augment else None
        if keep is None:
            subsample = SubsampleEvents(rate * share, seed=seed)
        else:
            subsample = SubsampleEvents(share=(keep[0] * share, keep[1] * share), seed=seed)
        return Compose((subsample, ToFrames())) if model == "cnn" else subsample

    def train_data(self, config, model, condition, seed, epoch) -> Dataset:
        """The training digits in a new order each epoch (a random subset when
        ``samples_per_epoch`` is smaller than the split), each keeping a new random share rho
        of its events (a share drawn in ``--rate-augment``'s range, with it): both drawn from
        (seed, epoch), so a resumed run sees the same data."""
        transform = self._transform(
            config,
            model,
            TRAINING_RATES[condition],
            _stream_seed(seed, _TRAIN_STREAM, epoch),
            augment=True,
        )
        dataset = NMNIST(self.data_root(config), train=True, transform=transform)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TRAIN_STREAM, epoch]))
        if not config.validates:
            order = rng.permutation(len(dataset))[: config.samples_for(condition)]
            return Subset(dataset, order.tolist())
        training = np.asarray(self.validation_split(config)[0])
        order = training[rng.permutation(len(training))[: config.samples_for(condition)]]
        return Subset(dataset, order.tolist())

    def validation_data(self, config, model, condition, seed) -> Dataset:
        """The held-out training digits (:meth:`validation_split`) at the training rate, their
        kept events drawn once per seed from each recording's content (as the test digits'),
        in order of length for the event models."""
        rate = TRAINING_RATES[condition]
        transform = self._transform(config, model, rate, _stream_seed(seed, _VALIDATION_STREAM))
        dataset = NMNIST(self.data_root(config), train=True, transform=transform)
        held = self.validation_split(config)[1]
        if model != "cnn":
            lengths = [len(dataset[i][0]) for i in held]
            held = [held[j] for j in np.argsort(lengths, kind="stable")]
        return Subset(dataset, held)

    def test_data(self, config, model, condition, seed) -> dict[str, Dataset]:
        """The same ``test_samples`` test digits at the training rate (``"test"``), at 0.2, 0.4
        and 1.0 (never thinned by ``--rate-augment``). The kept events are drawn once per seed,
        from each recording's content, so every model of a seed sees the same events, and a
        rate's events include those of every lower rate. Event streams are evaluated in order of
        length (less padding)."""
        rates = {"test": TRAINING_RATES[condition], **EXTRA_TEST_RATES}
        seed_of_events = _stream_seed(seed, _TEST_STREAM)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TEST_STREAM]))
        sets = {}
        for name, rate in rates.items():
            transform = self._transform(config, model, rate, seed_of_events)
            dataset = NMNIST(self.data_root(config), train=False, transform=transform)
            if not sets:
                picked = rng.permutation(len(dataset))[: config.test_samples].tolist()
            order = picked
            if model != "cnn":
                lengths = [len(dataset[i][0]) for i in picked]
                order = [picked[j] for j in np.argsort(lengths, kind="stable")]
            sets[name] = Subset(dataset, order)
        return sets

    def collate(self, model):
        return _collate_frames if model == "cnn" else collate_events

    # --------------------------------------------------------------------------- models
    def model_spec(self, config, model, condition) -> ModelSpec:
        return ModelSpec(
            input_size=EMBEDDING_SIZE,
            num_outputs=10,
            classify=True,
            hidden_size=config.hidden_size,
            period_range=PERIOD_RANGE_MS,
            shift_range=None,
            learn_r_on=False,
            time_as_input=True,
            grad_clip=self.gate_clip(config),
        )

    def build_model(self, model, spec) -> nn.Module:
        if model == "cnn":
            return FrameCNN(spec.num_outputs)
        embedding = MultiResolutionEmbedding()
        time_unit = 1.0 if model in ("plstm", GAP_SCALED) else BASELINE_TIME_UNIT_MS
        return EventSequenceModel(embedding, build_model(model, spec), time_unit)

    def evaluation_metrics(self, network, batch) -> dict[str, tuple[float, float]]:
        """``updates_per_neuron`` (per digit) for the event models, and the Phased LSTM's
        ``update_fraction`` (the share of neuron-steps whose gate is open)."""
        if not isinstance(network, EventSequenceModel):
            return {}
        _, times, lengths, _ = batch
        digits, events = float(lengths.numel()), float(lengths.sum())
        metrics = {"updates_per_neuron": (network.updates_per_neuron(times, lengths), digits)}
        if hasattr(network.rnn, "update_fraction"):
            fraction = network.rnn.update_fraction(times, lengths)
            metrics["update_fraction"] = (fraction * events, events)
        return metrics

    def final_measures(self, config, model, condition, seed, network) -> dict[str, float]:
        """For the Phased LSTM: the wall-clock time of classifying one test digit (rho = 0.75),
        alone, without gradients, through the dense path (``backend="fused"``: every neuron at
        every event) and the sparse one (``"sparse"``: only the neurons whose gate is open);
        medians over :data:`TIMED_DIGITS` digits, the two paths interleaved."""
        if model != "plstm":
            return {}
        test = self.test_data(config, model, condition, seed)["test"]
        picks = np.linspace(0, len(test) - 1, min(TIMED_DIGITS, len(test))).round().astype(int)
        network = copy.deepcopy(network).cpu().eval()
        try:
            timings = time_inference(network, [test[int(i)] for i in picks])
        except RuntimeError as error:
            # The sparse path needs the compiled kernels; without them there is nothing to time.
            print(f"nmnist: inference not timed: {error}", file=sys.stderr, flush=True)
            return {}
        return timings

    # ------------------------------------------------------------------- rate-shift matrix
    def shift_tests(self, config) -> dict[str, str]:
        return {key: title for key, (title, _) in SHIFT_TESTS.items()}

    def shift_accuracies(self, record) -> dict[str, float]:
        final = record["final"]
        return {key: final[metric] for key, (_, metric) in SHIFT_TESTS.items() if metric in final}

    def training_title(self, condition, augment) -> str:
        if augment is None:
            return f"rho = {TRAINING_RATES[condition]:g}"
        return f"random shares (instead of rho = {TRAINING_RATES[condition]:g})"

    # --------------------------------------------------------------------------- report
    def examples_text(self, config) -> str:
        rates = sorted({*TRAINING_RATES.values(), *EXTRA_TEST_RATES.values()})
        augment = augment_of(config)
        kept = (
            f"a new random share rho = {TRAINING_RATES['rate75']:g}"
            if augment is None
            else f"a new random share drawn uniformly in [{augment[0]:g}, {augment[1]:g}] "
            "(`--rate-augment`; validation and test digits untouched)"
        )
        return (
            f"{config.epochs} epochs of {config.samples_per_epoch} training digits (the training "
            f"split in a new order each epoch, each digit keeping {kept} of its events), "
            f"{config.test_samples} test digits at rho = {', '.join(f'{r:g}' for r in rates)}"
            f"{_share_text(config)}"
        )

    def protocol_lines(self, config) -> list[str]:
        root = config.options.get("data")
        low, high = PERIOD_RANGE_MS
        return [
            f"- data: {describe_data(root) if root else 'not prepared'}",
            f"- every model reads the events of a digit one per step, in time order; the "
            f"address (x, y, polarity) through a learned multi-resolution embedding: "
            f"{len(EMBEDDING_LEVELS)} tables of {EMBEDDING_DIM_PER_LEVEL} for blocks of "
            f"{', '.join(f'{r}x{r}' for r in EMBEDDING_LEVELS)} pixels, concatenated "
            f"({EMBEDDING_SIZE} values, drawn from N(0, {EMBEDDING_STD:g})); classified by a "
            "dense layer with a leaky ReLU on the state at the last event",
            f"- Phased LSTM: one layer of {config.hidden_size} units with peepholes, the event's "
            f"timestamp (ms) drives the time gate; r_on fixed at {R_ON:g} (not learned); "
            f"periods log-uniform in ({low:g}, {high:g}) ms, about one saccade (105 ms; the "
            "paper's tau 100 ms), so that each neuron opens once in every saccade; shifts uniform "
            "in [0, period); leak 1e-3 in training, 0 at evaluation",
            f"- LSTM and BN-LSTM (`bnlstm-input`, the authors' input batch-normalisation over "
            f"batch and time): the same embedding plus the timestamp in units of "
            f"{BASELINE_TIME_UNIT_MS:g} ms (0 to ~3.2 over a digit) as one more input; the "
            "LSTM-family models start from the authors' Lasagne initialisation",
            f"- CNN: the digit's events (at the same rho) accumulated into one 2x34x34 frame of "
            f"OFF and ON counts / {FRAME_SCALE:g}; conv 3x3 (32) - ReLU - max-pool 2 - conv 3x3 "
            "(64) - ReLU - max-pool 2 - dropout 0.5 - dense 128 - ReLU - dense 10",
            "- state updates per neuron per digit, on the test digits at evaluation: for the "
            "Phased LSTM, the events at which a neuron's time gate is open, averaged over its "
            "neurons (and layers); for an LSTM, the number of events",
            f"- inference time: after training, {TIMED_DIGITS} test digits one at a time "
            "(batch 1, no gradients, the run's threads), through the Phased LSTM's dense and "
            "sparse paths interleaved; medians",
        ] + ([GAP_SCALED_TEXT] if GAP_SCALED in config.models else [])

    def tables(self, config, results) -> list[str]:
        return report.tables(self, config, results)

    def figures(self, config, results):
        return report.figures(self, config, results)


def time_inference(
    network: EventSequenceModel, digits: Sequence[tuple[np.ndarray, int]]
) -> dict[str, float]:
    """Median wall-clock milliseconds per digit of ``network`` (a Phased LSTM classifier in
    eval mode) through its dense and sparse paths, one digit at a time, without gradients.

    The two paths alternate which goes first from one digit to the next, so that neither always
    runs on a warm cache; one digit is run through both before timing starts.
    """
    rnn = network.rnn
    backend = rnn.backend
    seconds: dict[str, list[float]] = {"fused": [], "sparse": []}
    try:
        with torch.no_grad():
            batches = [collate_events([digit])[:3] for digit in digits]
            for path in seconds:  # warm-up
                rnn.backend = path
                network(*batches[0])
            for index, inputs in enumerate(batches):
                order = list(seconds) if index % 2 == 0 else list(reversed(seconds))
                for path in order:
                    rnn.backend = path
                    start = time.perf_counter()
                    network(*inputs)
                    seconds[path].append(time.perf_counter() - start)
    finally:
        rnn.backend = backend
    dense, sparse = (1000 * statistics.median(seconds[path]) for path in ("fused", "sparse"))
    return {
        "inference_dense_ms": dense,
        "inference_sparse_ms": sparse,
        "inference_digits": float(len(batches)),
        "inference_events": float(statistics.median(int(b[2][0]) for b in batches)),
        "inference_threads": float(torch.get_num_threads()),
    }


TASK = NMNISTTask()
