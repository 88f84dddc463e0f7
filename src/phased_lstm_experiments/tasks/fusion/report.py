"""The fusion task's report: the accuracy table at 25 and 30 Hz video, convergence and state
updates, the changes under other sensors (:mod:`.rate_tests`), the paper's claims and the targets
of the fair comparison with the Phased LSTM's ablations, and the figures (the two streams of one
utterance, accuracy bars, learning curves)."""

from __future__ import annotations

import math

import numpy as np

from phased_lstm.data import merge_streams

from ...tables import (
    accuracy_bars,
    cell,
    epochs_text,
    epochs_to_reach,
    final_metric,
    learning_curves,
    mean_std,
    model_title,
)
from ..base import Task
from .data import (
    CLASS_SHAPES,
    CLASS_WORDS,
    N_LANDMARKS,
    N_MFCC,
    STREAM_CEILING,
    STREAMS,
    TEST_SENSORS,
    TEST_VIDEO_RATE,
    Sensors,
    audio_video_examples,
)
from .inputs import grid_batch, reads_events
from .rate_tests import (
    TEST_RATE_SET,
    change_cell,
    mean_se,
    rate_change_table,
    rate_changes,
)

# The target of the fair comparison: the Phased LSTM within this many points of the best
# baseline at the end.
_WITHIN_POINTS = 1.0


# Convergence: the first epoch at which a run reached this share of the best final accuracy
# among the models of its condition (tables.epochs_to_reach).
_CONVERGED_SHARE = 0.9


def fusion_tables(task: Task, config, results: dict) -> list[str]:
    """The accuracy table (25 and 30 Hz video, convergence, updates) and the paper's claims."""
    accuracy = final_metric(results, "test_acc")
    at_30 = final_metric(results, f"{TEST_RATE_SET}_acc")
    updates = final_metric(results, "updates_per_neuron")
    open_share = final_metric(results, "update_fraction")
    reached = epochs_to_reach(results, _CONVERGED_SHARE)
    share = f"{100 * _CONVERGED_SHARE:.0f}%"
    lines = [
        f"## Test accuracy after {epochs_text(config, results)} (%)",
        "",
        f"Ten classes (chance 10%). Either stream alone can tell at most half of them apart (a "
        f"ceiling of {100 * STREAM_CEILING:.0f}%), both streams all of them. *Video at 30 Hz*: "
        "the same test utterances filmed at 30 frames per second, to which no model was "
        "trained (the baselines' grid ticks at 100 Hz whatever the camera's rate; only the "
        f"moments at which their held video values change move). *Epochs to {share}*: the "
        f"first epoch whose test accuracy reached {share} of "
        "the best final accuracy among the models of that condition (the same target for "
        "every model: a run's own final accuracy would let a run stuck at chance or on a low "
        "plateau count as converged at once); *not reached* within the epochs run. *Updates "
        "per neuron*: state updates of one neuron in one test utterance, at evaluation (the "
        "Phased LSTM's open neuron-steps; every step of the others).",
        "",
        f"| condition | model | accuracy | video at 30 Hz | change (points) | epochs to {share} "
        "| updates per neuron |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition in config.conditions:
        for model in config.models:
            key = (model, condition)
            values = accuracy.get(key, [])
            change = "—"
            if at_30.get(key) and values:
                change = cell([b - a for a, b in zip(values, at_30[key], strict=True)], 100.0)
            lines.append(
                f"| {task.condition_titles[condition]} | {model_title(model)} "
                f"| {cell(values, 100.0)} | {cell(at_30[key], 100.0) if key in at_30 else '—'} "
                f"| {change} | {_epochs_cell(reached.get(key))} "
                f"| {_updates_cell(updates.get(key), open_share.get(key))} |"
            )
    rates = rate_change_table(task, config, results)
    claims = _claim_lines(config, accuracy, reached, rate_changes(results))
    return lines + ([""] + rates if rates else []) + ["", *claims]


def _updates_cell(updates: list[float] | None, open_share: list[float] | None) -> str:
    if not updates:
        return "—"
    mean = mean_std(updates)[0]
    if open_share:
        return f"{mean:.0f} (open at {100 * mean_std(open_share)[0]:.1f}% of the steps)"
    return f"{mean:.0f}"


def _epochs_cell(epochs: list[int | None] | None) -> str:
    if not epochs:
        return "not run"
    kept = [float(e) for e in epochs if e is not None]
    if not kept:
        return "not reached"
    text = cell(kept, digits=1)
    return text if len(kept) == len(epochs) else f"{text}, {len(epochs) - len(kept)} not reached"


def _claim_lines(config, accuracy, reached, changes) -> list[str]:
    """The paper's claims, and the targets of this reproduction, each with our numbers."""

    def mean(table, key) -> float | None:
        values = table.get(key)
        return 100 * mean_std(values)[0] if values else None

    lines = ["## The claims, checked", ""]
    fusion_rows = []
    for model in config.models:
        fused, audio, video = (mean(accuracy, (model, c)) for c in ("fused", "audio", "video"))
        if fused is None or audio is None and video is None:
            continue
        alone = [(name, a) for name, a in (("audio", audio), ("video", video)) if a is not None]
        verdict = "met" if all(fused > a for _, a in alone) else "**missed**"
        fusion_rows.append(
            f"{model_title(model)} {fused:.1f} against "
            + " and ".join(f"{a:.1f} ({name})" for name, a in alone)
            + f" ({verdict})"
        )
    if fusion_rows:
        lines.append(
            "- Fusion beats each stream alone (audio + video against each stream alone, %): "
            + "; ".join(fusion_rows)
            + "."
        )
    # A run that never reached the target counts as one epoch past the last: a lower bound.
    speed = {
        model: mean_std([float(e) if e is not None else config.epochs + 1.0 for e in epochs])[0]
        for model in config.models
        if (epochs := reached.get((model, "fused")))
    }
    if "plstm" in speed and len(speed) > 1:
        others = [m for m in speed if m != "plstm"]
        verdict = "met" if all(speed["plstm"] < speed[m] for m in others) else "**missed**"
        lines.append(
            f"- The Phased LSTM converges in fewer epochs (audio + video, epochs to "
            f"{100 * _CONVERGED_SHARE:.0f}% of the best final accuracy; not reached counts as "
            f"{config.epochs + 1}): "
            + ", ".join(f"{model_title(m)} {speed[m]:.1f}" for m in speed)
            + f" ({verdict})."
        )
    final = {m: a for m in config.models if (a := mean(accuracy, (m, "fused"))) is not None}
    baselines = [m for m in final if not reads_events(m)]
    if "plstm" in final and baselines:
        best = max(baselines, key=final.get)
        verdict = "met" if final["plstm"] >= final[best] - _WITHIN_POINTS else "**missed**"
        lines.append(
            f"- Target: the Phased LSTM within {_WITHIN_POINTS:g} point of the best baseline at "
            f"the end (audio + video, %): {final['plstm']:.1f} against {model_title(best)} "
            f"{final[best]:.1f} ({verdict})."
        )
    if "plstm" in speed and "lstm" in speed:
        verdict = "met" if speed["plstm"] <= speed["lstm"] else "**missed**"
        lines.append(
            f"- Target: the Phased LSTM in no more epochs than the LSTM to "
            f"{100 * _CONVERGED_SHARE:.0f}% (audio + video): {speed['plstm']:.1f} against "
            f"{speed['lstm']:.1f} ({verdict})."
        )
    lines += _rate_claims(config, accuracy, changes)
    lines += _ablation_lines(config, final, speed, changes)
    # At p = 0.5 the binomial standard error is largest: 0.5 / sqrt(n).
    lines += [
        "",
        f"Each accuracy is measured on {config.test_samples} test utterances, with a standard "
        f"error of up to {50 / math.sqrt(config.test_samples):.1f} points per seed; a change "
        "under other sensors compares the same utterances and is less noisy than that.",
    ]
    return lines


def _rate_claims(config, accuracy, changes) -> list[str]:
    """Per test sensor (audio + video): does the Phased LSTM lose less than each baseline? A
    change within its noise (two standard errors over seeds; with one seed, the binomial noise
    of :func:`_change_noise`) for every model shows nothing."""
    lines = []
    for key, (title, _, _) in TEST_SENSORS.items():
        drops = {
            m: values
            for m in config.models
            if (values := changes.get((m, "fused"), {}).get(key))
            and (m == "plstm" or not reads_events(m))
        }
        if "plstm" not in drops or len(drops) < 2:
            continue
        means = {m: 100 * mean_se(v)[0] for m, v in drops.items()}
        others = [m for m in drops if m != "plstm"]
        verdict = "met" if all(means["plstm"] > means[m] for m in others) else "**missed**"
        noise = {m: _noise(v, accuracy.get((m, "fused"), []), config) for m, v in drops.items()}
        if all(abs(means[m]) < noise[m] for m in drops):
            verdict = (
                "not shown: no model's change exceeds two standard errors "
                f"({max(noise.values()):.1f} points at most), so none loses measurably"
            )
        lines.append(
            f"- Target: the Phased LSTM loses less than each baseline with {title} at test time "
            "(audio + video, change in points): "
            + ", ".join(f"{model_title(m)} {change_cell(v)}" for m, v in drops.items())
            + f" ({verdict})."
        )
    return lines


def _noise(changes: list[float], accuracies: list[float], config) -> float:
    """Two standard errors (points) of a model's mean change: over its seeds, or with one seed
    :func:`_change_noise` of its accuracies as trained and under the test sensors."""
    se = mean_se(changes)[1]
    if se is not None:
        return 200 * se
    tested = [a + c for a, c in zip(accuracies, changes, strict=True)]
    return _change_noise(accuracies, tested, config)


def _ablation_lines(config, final, speed, changes) -> list[str]:
    """The Phased LSTM's ablations beside it (audio + video): what each setting changes."""
    rows = [m for m in config.models if reads_events(m) and m in final]
    if len(rows) < 2:
        return []

    def text(model: str) -> str:
        parts = [f"{final[model]:.1f}%"]
        if model in speed:
            parts.append(f"{speed[model]:.1f} epochs to {100 * _CONVERGED_SHARE:.0f}%")
        row = changes.get((model, "fused"), {})
        if row:
            worst = min(row, key=lambda key: mean_se(row[key])[0])
            loss = 100 * mean_se(row[worst])[0]
            parts.append(f"largest loss {loss:+.1f} points ({TEST_SENSORS[worst][0]})")
        return f"{model_title(model)}: " + ", ".join(parts)

    return [
        "- Ablations of the Phased LSTM (audio + video; where a target above is missed, the "
        "row that meets it says which setting explains it): "
        + "; ".join(map(text, rows))
        + f" (not reached counts as {config.epochs + 1} epochs)."
    ]


def _change_noise(trained: list[float], tested: list[float], config) -> float:
    """Two standard errors (points) of the mean change from the training sensors to the test
    sensors, as if the two accuracies were measured on independent utterances: they are the
    same utterances, so this overstates the noise."""
    variance = sum(p * (1 - p) for p in (mean_std(trained)[0], mean_std(tested)[0]))
    return 200 * math.sqrt(variance / (len(trained) * config.test_samples))


def streams_figure():
    """One utterance: its audio and its video at their own rates, and the sequence each model
    reads (the merged events, and the baselines' 100 Hz grid)."""
    import matplotlib.pyplot as plt

    examples = audio_video_examples(1, [7], labels=np.array([3]))
    video_30 = audio_video_examples(
        1, [7], labels=np.array([3]), sensors=Sensors(video_rate=TEST_VIDEO_RATE)
    )
    (audio_times, mfcc), (video_times, landmarks) = examples.audio[0], examples.video[0]
    figure, axes = plt.subplots(
        3, 1, figsize=(8, 7), gridspec_kw={"height_ratios": [2, 1.3, 1.3]}, sharex=False
    )
    axes[0].pcolormesh(audio_times, np.arange(N_MFCC), mfcc.T, shading="nearest", cmap="magma")
    axes[0].set_ylabel("coefficient")
    axes[0].set_title(
        f"class 3: audio word {CLASS_WORDS[3]} (three bursts), 13 MFCC-like coefficients at 100 Hz",
        fontsize=9,
    )
    opening = landmarks[:, 5] - landmarks[:, 7]
    width = landmarks[:, 2] - landmarks[:, 0]
    axes[1].plot(video_times, opening, "o-", markersize=3, label="mouth opening, 25 Hz")
    axes[1].plot(video_times, width, "s-", markersize=3, label="mouth width, 25 Hz")
    times_30, landmarks_30 = video_30.video[0]
    axes[1].plot(
        times_30, landmarks_30[:, 5] - landmarks_30[:, 7], "x", color="0.4", markersize=3,
        label="opening at 30 Hz (test only)",
    )  # fmt: skip
    axes[1].set_title(f"video: mouth shape {CLASS_SHAPES[3]}, 8 lip landmarks", fontsize=9)
    axes[1].legend(fontsize=7, ncol=3, loc="upper right")
    axes[1].set_xlim(axes[0].get_xlim())
    # A window of the sequences as the models read them.
    merged_times, merged = (array.numpy() for array in merge_streams(examples.streams()[0]))
    audio_rows = merged[:, N_MFCC + N_LANDMARKS] == 1.0  # the audio stream's indicator
    start = float(audio_times[0]) + 300.0
    window = (start, start + 200.0)
    for times, row, color, label in (
        (merged_times[audio_rows], 2, "tab:blue", "audio events"),
        (merged_times[~audio_rows], 1.7, "tab:orange", "video events"),
        (grid_batch(examples, STREAMS)[1][0].numpy(), 1, "0.5", "100 Hz grid (LSTM, BN-LSTM)"),
    ):
        shown = times[(times >= window[0]) & (times <= window[1])]
        axes[2].vlines(shown, row - 0.25, row + 0.25, color=color, label=label)
    axes[2].set_xlim(*window)
    axes[2].set_yticks([1, 1.85])
    axes[2].set_yticklabels(["grid", "merged"])
    axes[2].set_title(
        "200 ms of the sequences read: the Phased LSTM's merged events at their own "
        "timestamps, the baselines' grid",
        fontsize=9,
    )
    axes[2].legend(fontsize=7, ncol=3, loc="upper right")
    axes[2].set_ylim(0.5, 2.6)
    axes[2].set_xlabel("clock time (ms)")
    figure.tight_layout()
    return figure


def figures(task, config, results):
    """The figures of results.md: the streams, and with runs the accuracy bars and curves."""
    figures = [("streams.png", streams_figure)]
    if results["runs"]:
        figures += [
            ("accuracy_bars.png", lambda: accuracy_bars(task, config, results, ylim=(0, 102))),
            (
                "learning_curves.png",
                lambda: learning_curves(task, config, results, ylim=(0, 101)),
            ),
        ]
    return figures
