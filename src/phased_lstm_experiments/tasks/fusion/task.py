"""The fusion task: its presets and options, the layout and period range of each model, the data
of each run, as the runner asks for them."""

from __future__ import annotations

import functools
import math

import torch
from torch.utils.data import Dataset, TensorDataset

from phased_lstm import suggest_period_range

from ...models import ModelSpec
from ...tables import (
    model_protocol_lines,
)
from ..base import PAPER_PRESET, QUICK_PRESET, Task, TaskOption, finite_option, fraction_option
from . import report
from .data import (
    NUM_CLASSES,
    TEST_VIDEO_RATE,
    VIDEO_RATE,
    AudioVideoExamples,
    _audio_source,
    audio_video_examples,
)
from .inputs import CONDITION_STREAMS, _layout, input_size, native_batch
from .report import TEST_RATE_SET, fusion_tables

_TRAIN_STREAM, _TEST_STREAM = 0, 1


R_ON = 0.2


# Examples on which the Phased LSTM's period range is measured (a stream of their own).
_RANGE_STREAM, _RANGE_EXAMPLES = 3, 500


@functools.cache
def period_range(
    condition: str, audio: str = "synthetic", r_on: float = R_ON
) -> tuple[float, float]:
    """The Phased LSTM's period initialisation for ``condition``: the library's
    :func:`~phased_lstm.suggest_period_range` (from the gap between events divided by
    ``r_on`` to the duration of a recording) on examples drawn for it alone."""
    examples = audio_video_examples(_RANGE_EXAMPLES, [0, _RANGE_STREAM], audio=audio)
    _, times, lengths = native_batch(examples, CONDITION_STREAMS[condition])
    low, high = suggest_period_range(times, lengths, batch_first=True, r_on=r_on)
    return round(low, 1), round(high, 1)


class FusionTask(Task):
    name = "fusion"
    title = "multi-rate sensor fusion (Task 4: synthetic audio at 100 Hz and video at 25 Hz)"
    help = "audio at 100 Hz and video at 25 Hz fused (Task 4, synthetic)"
    conditions = tuple(CONDITION_STREAMS)
    condition_titles = {"fused": "audio + video", "audio": "audio alone", "video": "video alone"}
    models = ("plstm", "lstm", "bnlstm-input")
    options = (
        TaskOption(
            "audio",
            "synthetic: bursts in MFCC-like features; espeak: five phrases spoken by espeak-ng "
            "(apt-get install espeak-ng), as 100 Hz MFCCs",
            type=_audio_source,
            default="synthetic",
            metavar="SOURCE",
        ),
        TaskOption(
            "forget_bias",
            "initial forget-gate bias of every model; 0 is the authors' initialisation, under "
            "which the LSTM and BN-LSTM stay at chance for many epochs on these sequences",
            type=finite_option,
            default=1.0,
            metavar="B",
        ),
        TaskOption(
            "r_on",
            "initial open ratio of the Phased LSTM's time gate (its periods start from "
            "suggest_period_range with this r_on)",
            type=fraction_option,
            default=R_ON,
            metavar="R",
        ),
    )
    paper_protocol = (
        "(recalled) lip reading on GRID: audio features at 100 Hz and video frames at 25 Hz "
        "fused; the Phased LSTM converged faster than the LSTM and BN-LSTM with competitive "
        "accuracy; no numbers in our notes"
    )
    presets = {
        # 30 epochs is our choice: the number of epochs of the paper's GRID runs is not known.
        "paper": dict(PAPER_PRESET, models=["plstm", "lstm", "bnlstm-input"], epochs=30),
        # Nine runs within 15 minutes on a 2-core CPU (6 min 13 s measured, two at a time;
        # docs/reproduction.md says how it was chosen). The authors' training settings, as in
        # the paper preset: nothing here needs the quick presets' parameter clipping, and
        # plain Adam on the stored time gate slowed the Phased LSTM (docs/reproduction.md).
        "quick": dict(
            QUICK_PRESET,
            models=["plstm", "lstm", "bnlstm-input"],
            epochs=20,
            samples_per_epoch=2400,
            gradient_clip_mode="gates",
            time_gate_adam="direct",
        ),
    }
    # Steps per example: the merged sequence, ~65 audio and ~16 video events; the grid ~65.
    _STEPS = {"fused": 81.0, "audio": 65.0, "video": 65.0}

    @staticmethod
    def _period_range(config, condition: str) -> tuple[float, float]:
        return period_range(condition, config.options["audio"], config.options["r_on"])

    def run_cost(self, config, condition) -> float:
        return float(config.samples_for(condition) * self._STEPS[condition])

    def model_spec(self, config, model, condition) -> ModelSpec:
        return ModelSpec(
            input_size=input_size(model, condition),
            num_outputs=NUM_CLASSES,
            classify=True,
            hidden_size=config.hidden_size,
            period_range=self._period_range(config, condition)
            if model == "plstm"
            else (math.e, math.e**3),
            shift_range=None,
            # On a regular grid the step index is the time; the raw clock time (up to ~3 s)
            # would saturate the LSTM, as it did on the frequency task.
            time_as_input=False,
            max_steps=256,
            grad_clip=self.gate_clip(config),
            forget_bias=config.options["forget_bias"],
            r_on=config.options["r_on"],
        )

    def _dataset(self, examples: AudioVideoExamples, model: str, condition: str) -> Dataset:
        values, times, lengths = _layout(model)(examples, CONDITION_STREAMS[condition])
        labels = torch.from_numpy(examples.labels)
        # In order of length: less padding per batch, the same results in eval mode.
        order = torch.argsort(lengths, stable=True)
        return TensorDataset(values[order], times[order], lengths[order], labels[order])

    def train_data(self, config, model, condition, seed, epoch) -> Dataset:
        examples = audio_video_examples(
            config.samples_for(condition),
            [seed, _TRAIN_STREAM, epoch],
            audio=config.options["audio"],
        )
        values, times, lengths = _layout(model)(examples, CONDITION_STREAMS[condition])
        return TensorDataset(values, times, lengths, torch.from_numpy(examples.labels))

    def test_data(self, config, model, condition, seed) -> dict[str, Dataset]:
        def draw(rate: float) -> Dataset:
            examples = audio_video_examples(
                config.test_samples,
                [seed, _TEST_STREAM],
                video_rate=rate,
                audio=config.options["audio"],
            )
            return self._dataset(examples, model, condition)

        sets = {"test": draw(VIDEO_RATE)}
        if "video" in CONDITION_STREAMS[condition]:
            sets[TEST_RATE_SET] = draw(TEST_VIDEO_RATE)
        return sets

    def evaluation_metrics(self, network, batch) -> dict[str, tuple[float, float]]:
        """The Phased LSTM's open share, and for every model the state updates per neuron and
        utterance: the open neuron-steps of the Phased LSTM, every valid step of the others."""
        metrics = super().evaluation_metrics(network, batch)
        _, _, lengths, _ = batch
        steps = float(lengths.sum())
        if "update_fraction" in metrics:
            updates = metrics["update_fraction"][0]  # the share times the steps
        else:
            updates = steps
        metrics["updates_per_neuron"] = (updates, float(lengths.numel()))
        return metrics

    def protocol_lines(self, config) -> list[str]:
        ranges = ", ".join(
            f"{self.condition_titles[c]} ({low:g}, {high:g}) ms"
            for c in config.conditions
            for low, high in [self._period_range(config, c)]
        )
        return model_protocol_lines(
            f"tau = exp(U(log low, log high)) with (low, high) from suggest_period_range on the "
            f"condition's merged timestamps: {ranges}; s ~ U(0, tau)",
            "the streams resampled on a 100 Hz grid (each holding its latest value), no time input",
            r_on=config.options["r_on"],
        ) + [
            "- test sets: the fixed test utterances with the video at 25 Hz (as trained) and "
            "the same utterances filmed at 30 Hz"
        ]

    def tables(self, config, results) -> list[str]:
        return fusion_tables(self, config, results)

    def figures(self, config, results):
        return report.figures(self, config, results)


TASK = FusionTask()
