"""The N-MNIST task's report: Table 1 beside the paper's numbers, the plateau, loss and
inference lines, and the figures (learning curves, digits seen, updates per neuron, the data)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from phased_lstm.data import (
    NMNIST,
    to_frames,
)

from ...gap_scaling import GAP_SCALED
from ...rate_shift import FIGURE, augment_of, augment_text, shift_figure, shift_rows, shift_table
from ...tables import (
    COLORS,
    cell,
    epochs_text,
    final_metric,
    history_curves,
    mean_std,
    model_title,
    plot_band,
)
from .convergence import convergence_target_lines, per_run_lines, plateau_lines
from .data import SHIFT_TESTS, TRAINING_RATES

# Table 1 of the paper, on the real N-MNIST (recalled, docs/paper.md): (mean, std) per row and
# model. The paper has no plain LSTM column; its BN-LSTM is our bnlstm-input.
PAPER_TABLE1 = {
    "first_epoch": {"cnn": (73.81, 3.5), "bnlstm-input": (40.87, 13.3), "plstm": (90.32, 2.3)},
    "rate75": {"cnn": (95.02, 0.3), "bnlstm-input": (96.93, 0.12), "plstm": (97.28, 0.1)},
    "rate40": {"cnn": (90.67, 0.3), "bnlstm-input": (94.79, 0.03), "plstm": (95.11, 0.2)},
    "rate100": {"cnn": (94.99, 0.3), "bnlstm-input": (96.55, 0.63), "plstm": (97.27, 0.1)},
    "updates": {"bnlstm-input": (3153.0, 0.0), "plstm": (159.0, 2.8)},
}


def _share_text(config) -> str:
    share = config.options.get("event_share", 1.0)
    if share == 1.0:
        return ""
    return (
        f"; every rate applied to a share of {share:g} of each recording's events "
        f"(`--event-share {share:g}`: rho = 0.75 keeps {0.75 * share:.4g} of them)"
    )


def _table1_when(config, results) -> str:
    if config.validates:
        return "at each run's best validation epoch (its plateau)"
    return f"after {epochs_text(config, results)}"


def _first_epoch(results: dict, metric: str) -> dict[str, list[float]]:
    """Per model, ``metric`` after the first epoch: from the history, or, for runs that
    validated, from the test of the weights after epoch 1 (``first``)."""
    table: dict[str, list[float]] = {}
    for record in results["runs"].values():
        first = record.get("first") or (record["history"][0] if record["history"] else {})
        if metric in first:
            table.setdefault(record["model"], []).append(first[metric])
    return table


def _by_model(results: dict, metric: str) -> dict[str, list[float]]:
    return {model: values for (model, _), values in final_metric(results, metric).items()}


def _trained_text(config) -> str:
    augment = augment_of(config)
    if augment is None:
        return "trained and tested at rho = 0.75"
    return f"tested at rho = 0.75 (trained at {augment_text(augment)}, `--rate-augment`)"


def table1_rows(config, results) -> list[tuple[str, dict[str, list[float]], str, float, int]]:
    """(title, model -> values over seeds, key of the paper's row, scale, digits)."""
    return [
        ("accuracy after epoch 1", _first_epoch(results, "test_acc"), "first_epoch", 100.0, 1),
        (_trained_text(config), _by_model(results, "test_acc"), "rate75", 100.0, 1),
        ("tested at rho = 0.4", _by_model(results, "test_rate40_acc"), "rate40", 100.0, 1),
        ("tested at rho = 1.0", _by_model(results, "test_rate100_acc"), "rate100", 100.0, 1),
        (
            "state updates per neuron per digit (rho = 0.75)",
            _by_model(results, "updates_per_neuron"),
            "updates",
            1.0,
            0,
        ),
    ]


def _paper_cell(row: str, model: str, digits: int) -> str:
    numbers = PAPER_TABLE1[row].get(model)
    if numbers is None:
        return "—"
    mean, std = numbers
    if row == "updates" and std == 0.0:
        return f"{mean:.0f}"
    return f"{mean:.{max(digits, 2)}f} ± {std:g}"


def _loss(results: dict, rate_metric: str) -> dict[str, list[float]]:
    """Per model, accuracy points lost from rho = 0.75 to another test rate, per seed."""
    table: dict[str, list[float]] = {}
    for record in results["runs"].values():
        final = record["final"]
        if "test_acc" in final and rate_metric in final:
            loss = 100 * (final["test_acc"] - final[rate_metric])
            table.setdefault(record["model"], []).append(loss)
    return table


def _rate_loss_lines(config, results) -> list[str]:
    lost = {"0.4": _loss(results, "test_rate40_acc"), "1.0": _loss(results, "test_rate100_acc")}
    if not any(lost.values()):
        return []
    # Under --rate-augment the training digits had no one rate: the losses are still from 0.75.
    augment = augment_of(config)
    if augment is None:
        reference = "the training rate (0.75)"
    else:
        reference = f"rho = 0.75 (trained at {augment_text(augment)})"
    lines = [
        "",
        f"Accuracy lost (points) when the test rate differs from {reference}, "
        "ours and the paper's:",
        "",
        "| model | tested at 0.4 | paper | tested at 1.0 | paper |",
        "|---|---|---|---|---|",
    ]
    for model in config.models:
        paper = [
            _paper_difference(model, row) if model in PAPER_TABLE1[row] else "—"
            for row in ("rate40", "rate100")
        ]
        ours = [cell(lost[rate].get(model, []), digits=2) for rate in ("0.4", "1.0")]
        lines.append(f"| {model_title(model)} | {ours[0]} | {paper[0]} | {ours[1]} | {paper[1]} |")
    return lines


def _paper_difference(model: str, row: str) -> str:
    return f"{PAPER_TABLE1['rate75'][model][0] - PAPER_TABLE1[row][model][0]:.2f}"


def _measures(results: dict, model: str) -> list[dict]:
    return [
        r["measures"] for r in results["runs"].values() if r["model"] == model and "measures" in r
    ]


def _inference_lines(results: dict) -> list[str]:
    measured = _measures(results, "plstm")
    if not measured:
        return []
    dense = [m["inference_dense_ms"] for m in measured]
    sparse = [m["inference_sparse_ms"] for m in measured]
    ratio = [d / s for d, s in zip(dense, sparse, strict=True)]
    events = statistics.median(m["inference_events"] for m in measured)
    threads = sorted({int(m["inference_threads"]) for m in measured})
    return [
        "",
        "Phased LSTM inference, one digit at a time without gradients (beyond the paper): median "
        f"wall-clock time per digit (~{events:.0f} events), {int(measured[0]['inference_digits'])} "
        f"test digits per run, {', '.join(map(str, threads))} thread(s), measured after "
        "training while other runs may share the machine:",
        "",
        "| dense path, every neuron at every event (ms) | sparse path, open neurons only (ms) "
        "| speed-up |",
        "|---|---|---|",
        f"| {cell(dense, digits=1)} | {cell(sparse, digits=1)} | {cell(ratio, digits=2)} |",
    ]


def _target_lines(config, results) -> list[str]:
    """The issue's targets on N-MNIST-sim, each with the numbers that decide it."""
    first = {m: mean_std(v)[0] for m, v in _first_epoch(results, "test_acc").items()}
    final = {m: mean_std(v)[0] for m, v in _by_model(results, "test_acc").items()}
    updates = {m: mean_std(v)[0] for m, v in _by_model(results, "updates_per_neuron").items()}
    baselines = [m for m in ("lstm", "bnlstm-input") if m in first]
    if "plstm" not in first or not baselines:
        return []

    def ahead(values: dict[str, float]) -> str:
        others = ", ".join(f"{model_title(m)} {100 * values[m]:.1f}" for m in baselines)
        met = all(values["plstm"] > values[m] for m in baselines)
        return f"{'met' if met else 'missed'} (Phased LSTM {100 * values['plstm']:.1f}; {others})"

    lines = [
        "",
        "Targets (the means over seeds):",
        "",
        f"- the Phased LSTM ahead of the LSTM and BN-LSTM after epoch 1: {ahead(first)}",
        f"- ... and at the end (the weights tested): {ahead(final)}",
        *convergence_target_lines(config, results),
    ]
    if "plstm" in updates and "lstm" in updates:
        ratio = updates["lstm"] / updates["plstm"]
        lines.append(
            f"- at least 15x fewer updates per neuron than the LSTM: "
            f"{'met' if ratio >= 15 else 'missed'} ({ratio:.1f}x: {updates['plstm']:.0f} "
            f"against {updates['lstm']:.0f})"
        )
    losses = {rate: _loss(results, f"test_rate{rate}_acc") for rate in ("40", "100")}
    for rate, lost in losses.items():
        if "plstm" not in lost:
            continue
        own = mean_std(lost["plstm"])[0]
        # The baselines: the gap-scaled Phased LSTM is an ablation of the Phased LSTM.
        others = {m: mean_std(v)[0] for m, v in lost.items() if m not in ("plstm", GAP_SCALED)}
        # Signed: a model that gains accuracy at the other rate loses less than one that drops.
        verdict = "met" if all(own < v for v in others.values()) else "missed"
        text = ", ".join(f"{model_title(m)} {v:+.2f}" for m, v in others.items())
        lines.append(
            f"- less accuracy lost than the baselines when tested at rho = {int(rate) / 100:g}: "
            f"{verdict} (Phased LSTM {own:+.2f} points; {text})"
        )
    measured = _measures(results, "plstm")
    if measured:
        dense = statistics.fmean(m["inference_dense_ms"] for m in measured)
        sparse = statistics.fmean(m["inference_sparse_ms"] for m in measured)
        lines.append(
            f"- the sparse inference path faster than the dense one per digit: "
            f"{'met' if sparse < dense else 'missed'} ({sparse:.1f} against {dense:.1f} ms)"
        )
    # At p = 0.5 the binomial standard error is largest: 0.5 / sqrt(n).
    lines += [
        "",
        f"Each accuracy is measured on {config.test_samples} test digits, with a standard error "
        f"of up to {50 / math.sqrt(config.test_samples):.1f} points per seed; the losses compare "
        "the same digits at two rates and are less noisy than that.",
    ]
    return lines


# The learning curves' panels: every test set of the rate-shift matrix, the training rate's marked.
_TEST_SETS = tuple(
    (metric, f"tested at {title}" + (" (the training rate)" if key in TRAINING_RATES else ""))
    for key, (title, metric) in SHIFT_TESTS.items()
)


def learning_curves_figure(config, results):
    """Test accuracy per epoch for each model, one panel per test rate."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(_TEST_SETS), figsize=(16, 3.4), sharey=True)
    for axis, (metric, title) in zip(axes, _TEST_SETS, strict=True):
        curves = history_curves(results, metric)
        for model in config.models:
            runs = [c for (m, _), group in curves.items() if m == model for c in group]
            if runs:
                style = {"color": COLORS.get(model), "label": model_title(model), "marker": "o"}
                plot_band(axis, runs, 100.0, markersize=3, **style)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def digits_seen_figure(config, results):
    """Validation accuracy against training digits seen (log axis), every run, for runs that
    validated; each run's test accuracy (rho = 0.75) at its best epoch as a star; the paper's
    Table 1 (real N-MNIST) after its first epoch at 60,000 digits, and at its end at the right
    edge (the paper does not say after how many epochs)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    samples = config.samples_per_epoch
    right = samples
    for model in config.models:
        color = COLORS.get(model)
        runs = [r for r in results["runs"].values() if r["model"] == model]
        for index, record in enumerate(runs):
            curve = [100 * row["val_acc"] for row in record["history"] if "val_acc" in row]
            seen = [samples * (i + 1) for i in range(len(curve))]
            right = max(right, seen[-1] if seen else right)
            label = model_title(model) if index == 0 else None
            axis.plot(seen, curve, color=color, linewidth=1.2, alpha=0.85, label=label)
            if "best_epoch" in record and "test_acc" in record["final"]:
                best = samples * record["best_epoch"]
                axis.plot(best, 100 * record["final"]["test_acc"], "*", color=color, markersize=9)
        paper_first = PAPER_TABLE1["first_epoch"].get(model)
        paper_end = PAPER_TABLE1["rate75"].get(model)
        if paper_first is not None:
            axis.plot(60_000, paper_first[0], "o", mfc="white", mec=color, markersize=7)
        if paper_end is not None:
            axis.plot(right * 1.6, paper_end[0], "s", mfc="white", mec=color, markersize=7)
    axis.plot([], [], "*", color="0.3", label="test, best validation epoch")
    axis.plot([], [], "o", mfc="white", mec="0.3", label="paper (N-MNIST), after epoch 1")
    axis.plot([], [], "s", mfc="white", mec="0.3", label="paper, at its end")
    axis.set_xscale("log")
    axis.set_xlabel("training digits seen")
    axis.set_ylabel("validation accuracy (%), rho = 0.75")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def updates_figure(config, results):
    """State updates per neuron per digit at evaluation, ours and the paper's, on a log scale."""
    import matplotlib.pyplot as plt

    updates = _by_model(results, "updates_per_neuron")
    models = [m for m in config.models if m in updates]
    figure, axis = plt.subplots(figsize=(2 + 1.3 * len(models), 3.4))
    x = np.arange(len(models))
    ours = [mean_std(updates[m])[0] for m in models]
    paper = [PAPER_TABLE1["updates"].get(m, (math.nan, 0.0))[0] for m in models]
    colors = [COLORS.get(m) for m in models]
    axis.bar(x - 0.2, ours, 0.4, color=colors, label="ours")
    axis.bar(x + 0.2, paper, 0.4, color="white", edgecolor="black", hatch="//", label="paper")
    for positions, values in ((x - 0.2, ours), (x + 0.2, paper)):
        for position, value in zip(positions, values, strict=True):
            if math.isfinite(value):
                axis.text(position, value * 1.15, f"{value:.0f}", ha="center", fontsize=8)
    axis.set_yscale("log")
    axis.set_ylim(10, 4 * max(v for v in ours + paper if math.isfinite(v)))
    axis.set_xticks(x)
    axis.set_xticklabels([model_title(m).split(" (")[0] for m in models], fontsize=8)
    axis.set_ylabel("state updates per neuron per digit")
    axis.set_title("at evaluation, rho = 0.75", fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return figure


def data_figure(root: Path, count: int = 3):
    """A few test digits as the events of each saccade (ON red, OFF blue), and their events
    per millisecond over the recording."""
    import matplotlib.pyplot as plt

    dataset = NMNIST(root, train=False)
    picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    figure, axes = plt.subplots(count, 4, figsize=(10, 0.4 + 2.4 * count), squeeze=False)
    figure.suptitle("test digits: the events of each third of the recording (ON red, OFF blue)")
    for row, index in zip(axes, picks, strict=True):
        events, label = dataset[int(index)]
        t = events["t"]
        end = int(t.max()) + 1 if len(t) else 1
        edges = np.linspace(0, end, 4).round().astype(int)
        for column in range(3):
            frame = to_frames(events, time_range=(int(edges[column]), int(edges[column + 1])))
            image = frame[1] - frame[0]
            limit = max(1.0, float(np.abs(image).max()))
            row[column].imshow(image, cmap="coolwarm", vmin=-limit, vmax=limit)
            row[column].set_xticks([])
            row[column].set_yticks([])
            row[column].set_title(
                f"digit {label}, {edges[column] / 1000:.0f}-{edges[column + 1] / 1000:.0f} ms",
                fontsize=8,
            )
        counts = np.bincount((t // 1000).astype(int), minlength=end // 1000 + 1)
        row[3].plot(counts, color="0.3", linewidth=0.8)
        row[3].set_title(f"{len(t):,} events: events per ms", fontsize=8)
        row[3].set_xlabel("time (ms)", fontsize=8)
    figure.tight_layout()
    return figure


def tables(task, config, results) -> list[str]:
    """Table 1 and the lines that go with it, then the rate-shift matrix, for results.md."""
    rows = table1_rows(config, results)
    columns = config.models
    lines = [
        f"## Table 1 {_table1_when(config, results)}: test accuracy (%), state updates",
        "",
        "Ours on the data above; the paper's on the real N-MNIST (recalled, not verified: "
        "docs/paper.md). The paper has no plain LSTM column; its BN-LSTM is our "
        f"`bnlstm-input`. An epoch is one pass over {config.samples_per_epoch:,} training "
        f"digits here (N-MNIST's has 60,000){_share_text(config)}.",
        "",
        "| row | " + " | ".join(model_title(m) for m in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for title, values, paper_key, scale, digits in rows:
        cells = [cell(values.get(m, []), scale=scale, digits=digits) for m in columns]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
        paper = [_paper_cell(paper_key, m, digits) for m in columns]
        lines.append("| paper, on N-MNIST | " + " | ".join(paper) + " |")
    lines += plateau_lines(config, results)
    lines += per_run_lines(config, results)
    lines += _rate_loss_lines(config, results)
    lines += _inference_lines(results)
    lines += _target_lines(config, results)
    matrix = shift_table(task, task.shift_tests(config), shift_rows(task, config, results))
    return lines + ([""] + matrix if matrix else [])


def figures(task, config, results):
    """The figures of results.md: file name and drawing function."""
    figures = []
    root = config.options.get("data")
    if root and Path(root).is_dir():
        figures.append(("event_digits.png", lambda: data_figure(Path(root))))
    if results["runs"] and config.validates:
        figures.append(("digits_seen.png", lambda: digits_seen_figure(config, results)))
    elif results["runs"]:
        figures.append(("learning_curves.png", lambda: learning_curves_figure(config, results)))
    if _by_model(results, "updates_per_neuron"):
        figures.append(("updates_per_neuron.png", lambda: updates_figure(config, results)))
    rows = shift_rows(task, config, results)
    if rows:
        tests = task.shift_tests(config)
        figures.append((FIGURE, lambda: shift_figure(task, tests, rows)))
    return figures
