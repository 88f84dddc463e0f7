"""Frequency discrimination (the paper's Task 1, fig. 3a-d): ``phased-lstm reproduce freq``.

Is a sine's period in [5, 6] ms? The same waves under three samplings: every 1 ms, every
0.1 ms (ten times longer sequences), and at random times. The protocol and the paper's numbers
are described in docs/paper.md; what we measured, in docs/reproduction.md.
"""

from __future__ import annotations

import math

from phased_lstm.data import FREQUENCY_CONDITIONS, frequency_task

from ..models import ModelSpec
from ..tables import accuracy_bars, accuracy_table, learning_curves, model_protocol_lines
from .base import PAPER_PRESET, QUICK_PRESET, SyntheticTask

# Fig. 3d, test accuracy (%) after 70 epochs, and the authors' later rerun (docs/paper.md).
# The paper's "BN-LSTM" is what the authors' code ran: our bnlstm-input.
PAPER_FREQ = {
    "standard": {"plstm": (99.2, 99.3), "bnlstm-input": (99.2, 99.0), "lstm": (99.0, 89.3)},
    "highres": {"plstm": (99.4, 99.6), "bnlstm-input": (62.0, 62.4), "lstm": (51.5, 51.7)},
    "async": {"plstm": (98.1, 97.9), "bnlstm-input": (65.4, 74.3), "lstm": (63.1, 69.0)},
}

# Why our LSTM can fall far below the paper's, shown next to its number in results.md.
_LSTM_NOTE = (
    "our LSTM reads the raw timestamp (up to 125 ms) beside the value, as the authors' did; "
    "such inputs saturate its gates and a seed can stay at the majority class (51.8%): see "
    "docs/reproduction.md"
)
# A baseline this many points below the paper's number gets the note.
_NOTE_GAP = 5.0

# The authors' time gate on this task: tau = exp(U(1, 3)) ms, s ~ U(0, 100) ms.
FREQUENCY_PERIOD_RANGE = (math.e, math.e**3)
FREQUENCY_SHIFT_RANGE = (0.0, 100.0)
FREQUENCY_GATE_TEXT = "tau = exp(U(1, 3)) ms, s ~ U(0, 100) ms (the authors' code)"
BASELINE_INPUT_TEXT = "[value, time]"


class FrequencyTask(SyntheticTask):
    name = "freq"
    title = "frequency discrimination (Task 1, fig. 3a-d)"
    help = "frequency discrimination (fig. 3a-d)"
    conditions = FREQUENCY_CONDITIONS
    condition_titles = {
        "standard": "standard (1 ms)",
        "highres": "high resolution (0.1 ms)",
        "async": "asynchronous",
    }
    mean_steps = {"standard": 70, "highres": 700, "async": 70}
    paper_protocol = (
        "70 epochs of 5000 fresh training examples, 500 test examples, batch 32, 5 seeds "
        "(Adam 1e-3, 110 units)"
    )
    presets = {
        "paper": dict(PAPER_PRESET, models=["plstm", "lstm", "bnlstm-input", "bnlstm"], epochs=70),
        # Sized to finish within 20 minutes on a 2-core CPU (fused backend, two runs side by
        # side) with the Phased LSTM past 90% under every sampling; the high resolution, whose
        # every example costs ten times more, gets fewer examples. The batches each sampling
        # needs and the accuracies behind these choices: docs/reproduction.md.
        "quick": dict(
            QUICK_PRESET,
            models=["plstm", "lstm", "bnlstm-input"],
            epochs=10,
            samples_per_epoch=12800,
            condition_samples={"highres": 2560},
        ),
    }
    max_steps = 1250

    def generate(self, condition, n, rng):
        return frequency_task(n, condition, generator=rng)

    def model_spec(self, config, model, condition) -> ModelSpec:
        return ModelSpec(
            input_size=1,
            num_outputs=2,
            classify=True,
            hidden_size=config.hidden_size,
            period_range=FREQUENCY_PERIOD_RANGE,
            shift_range=FREQUENCY_SHIFT_RANGE,
            time_as_input=True,
            max_steps=self.max_steps,
            grad_clip=self.gate_clip(config),
        )

    def protocol_lines(self, config) -> list[str]:
        return model_protocol_lines(FREQUENCY_GATE_TEXT, BASELINE_INPUT_TEXT)

    def tables(self, config, results) -> list[str]:
        def paper(condition: str, model: str) -> str:
            numbers = PAPER_FREQ.get(condition, {}).get(model)
            return f"{numbers[0]} ({numbers[1]})" if numbers else "—"

        def note(condition: str, model: str, accuracies: list[float]) -> str:
            numbers = PAPER_FREQ.get(condition, {}).get(model)
            mean = 100 * sum(accuracies) / len(accuracies)
            if model == "lstm" and numbers and mean < numbers[0] - _NOTE_GAP:
                return _LSTM_NOTE
            return ""

        return accuracy_table(
            self,
            config,
            results,
            intro="Paper: fig. 3d after 70 epochs (verified), the authors' later rerun in "
            "brackets. The paper's BN-LSTM is `bnlstm-input`; `bnlstm` and `cfc` have no "
            "paper number.",
            paper_header="paper (rerun)",
            paper=paper,
            note=note,
        )

    def figures(self, config, results):
        figures = [("sampling_conditions.png", lambda: sampling_figure(self))]
        if results["runs"]:

            def paper(condition: str, model: str) -> float:
                return PAPER_FREQ[condition].get(model, (math.nan,))[0]

            figures += [
                (
                    "accuracy_bars.png",
                    lambda: accuracy_bars(self, config, results, paper, "paper (fig. 3d)"),
                ),
                ("learning_curves.png", lambda: learning_curves(self, config, results)),
            ]
        return figures


def sampling_figure(task: FrequencyTask):
    """Fig. 3a-c: one wave of the target class under the three sampling conditions."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(7, 5.5), sharex=True)
    # The same seed draws the same waves under every condition; only the sampling differs.
    # Show a wave of the target class in a window of about 40 ms, as the paper's figure does.
    dense = frequency_task(16, "highres", seed=3)
    distance = (dense[2] - 400).abs() + 10_000 * (dense[3] == 0)
    example = int(distance.argmin())
    steps = int(dense[2][example])
    for axis, condition in zip(axes, FREQUENCY_CONDITIONS, strict=True):
        values, times, lengths, _ = frequency_task(16, condition, seed=3)
        n = int(lengths[example])
        axis.plot(dense[1][example, :steps], dense[0][example, :steps, 0], color="0.8", linewidth=1)
        axis.plot(times[example, :n], values[example, :n, 0], "o", markersize=2.5, color="tab:red")
        axis.set_title(f"{task.condition_titles[condition]}: {n} points", fontsize=9)
        axis.set_ylabel("y")
    axes[-1].set_xlabel("time (ms)")
    figure.tight_layout()
    return figure


TASK = FrequencyTask()
