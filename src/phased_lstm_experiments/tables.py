"""Pieces of results.md and of the figures that several tasks share.

Cells with mean ± std over seeds, the accuracy table beside the paper's numbers, the Phased
LSTM's open share, bar charts and learning curves. Everything reads the records of
``results.json``; matplotlib is imported only where a figure is drawn.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .tasks.base import Task

MODEL_TITLES = {
    "plstm": "Phased LSTM",
    "lstm": "LSTM",
    "bnlstm-input": "BN-LSTM (input BN, as the authors ran it)",
    "bnlstm": "BN-LSTM (recurrent BN, Cooijmans et al.)",
    "cfc": "CfC (ncps)",
    "cnn": "CNN (event frames)",
    "plstm-gapscaled": "Phased LSTM, input scaled by its time gap",
    "plstm-input-bn": "Phased LSTM, input BN",
    "plstm-learned-r-on": "Phased LSTM, learned r_on",
    "plstm-fixed-r-on": "Phased LSTM, fixed r_on",
}
COLORS = {
    "plstm": "tab:red",
    "lstm": "tab:gray",
    "bnlstm-input": "tab:blue",
    "bnlstm": "tab:cyan",
    "cfc": "tab:green",
    "cnn": "tab:olive",
    "plstm-gapscaled": "tab:orange",
    "plstm-input-bn": "tab:purple",
    "plstm-learned-r-on": "tab:pink",
    "plstm-fixed-r-on": "tab:brown",
}


def model_title(model: str) -> str:
    return MODEL_TITLES.get(model, model)


def final_metric(results: dict, metric: str) -> dict[tuple[str, str], list[float]]:
    """(model, condition) -> the last epoch's ``metric`` of every seed."""
    table: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in results["runs"].values():
        value = record["final"].get(metric)
        if value is not None:
            table[(record["model"], record["condition"])].append(value)
    return table


def epochs_to_reach(
    results: dict, share: float = 0.9, metric: str = "test_acc"
) -> dict[tuple[str, str], list[int | None]]:
    """(model, condition) -> per seed, the first epoch (1-based) whose ``metric`` reached
    ``share`` of the best last-epoch ``metric`` among the models of that condition and seed,
    or ``None`` where it never did.

    One target for every model of a comparison: a run's own last epoch would be no target at
    all, since a run stuck at chance, or on a low plateau, "reaches" its own level at once.
    Runs whose last epoch has no finite ``metric`` set no target."""
    finals: dict[tuple[str, int], float] = {}
    for record in results["runs"].values():
        history = record["history"]
        final = history[-1].get(metric, math.nan) if history else math.nan
        if math.isfinite(final):
            key = (record["condition"], record["seed"])
            finals[key] = max(finals.get(key, -math.inf), final)
    table: dict[tuple[str, str], list[int | None]] = defaultdict(list)
    for record in results["runs"].values():
        target = finals.get((record["condition"], record["seed"]))
        if target is None or not record["history"]:
            continue
        reached = (
            row["epoch"]
            for row in record["history"]
            if row.get(metric, -math.inf) >= share * target
        )
        table[(record["model"], record["condition"])].append(next(reached, None))
    return table


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def accuracy_spread(stats: list[tuple[float, float]]) -> list[list[float]]:
    """Error bars of ± one standard deviation around each ``(mean, std)`` accuracy in %, cut
    at 0 and 100 (an accuracy has no other values): ``yerr`` for matplotlib, below and above."""
    return [[min(s, m) for m, s in stats], [min(s, 100 - m) for m, s in stats]]


def cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std (k seeds)``, or "not run"."""
    if not values:
        return "not run"
    mean, std = mean_std([v * scale for v in values])
    if len(values) == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)} seeds)"


def epochs_text(config: ExperimentConfig, results: dict) -> str:
    """'epoch N' when every recorded run stopped at N, else "each run's last epoch"."""
    ends = {r["epochs"] for r in results["runs"].values()}
    if not ends or ends == {config.epochs}:
        return f"epoch {config.epochs}"
    if len(ends) == 1:
        return f"epoch {ends.pop()}"
    return "each run's last epoch"


def accuracy_table(
    task: Task,
    config: ExperimentConfig,
    results: dict,
    *,
    intro: str,
    paper_header: str,
    paper: Callable[[str, str], str],
    note: Callable[[str, str, list[float]], str] | None = None,
) -> list[str]:
    """Test accuracy per condition and model, ours beside ``paper(condition, model)``.

    ``note(condition, model, accuracies)`` may explain in one line why a number differs from
    the paper's; the table gets a note column when any row has one.
    """
    accuracy = final_metric(results, "test_acc")
    rows = []
    for condition in config.conditions:
        for model in config.models:
            values = accuracy.get((model, condition), [])
            rows.append(
                (
                    task.condition_titles.get(condition, condition),
                    model_title(model),
                    cell(values, scale=100.0),
                    paper(condition, model),
                    note(condition, model, values) if note is not None and values else "",
                )
            )
    with_notes = any(row[-1] for row in rows)
    columns = ["condition", "model", "ours", paper_header] + (["note"] if with_notes else [])
    lines = [
        f"## Test accuracy after {epochs_text(config, results)} (%), ours vs. the paper",
        "",
        intro,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join(row if with_notes else row[:-1]) + " |")
    return lines + open_share_lines(task, config, results)


def open_share_lines(task: Task, config: ExperimentConfig, results: dict) -> list[str]:
    """The Phased LSTM's share of open neuron-steps on the test set, per condition."""
    updates = final_metric(results, "update_fraction")
    rows = [(c, updates[("plstm", c)]) for c in config.conditions if ("plstm", c) in updates]
    if not rows:
        return []
    lines = [
        "",
        "Phased LSTM: share of neuron-steps whose time gate is open on the test set "
        "(the state updates needed at inference; r_on = 0.05 gives ~5%):",
        "",
        "| condition | open share (%) |",
        "|---|---|",
    ]
    lines += [
        f"| {task.condition_titles.get(condition, condition)} "
        f"| {cell(values, scale=100.0, digits=2)} |"
        for condition, values in rows
    ]
    return lines


def model_protocol_lines(gate_init: str, baseline_input: str, r_on: float = 0.05) -> list[str]:
    """The "Protocol actually run" bullets on the models, shared by the tasks of this paper:
    ``gate_init`` is the time gate's initialisation, ``baseline_input`` what the baselines read,
    ``r_on`` the Phased LSTM's initial open ratio.
    """
    return [
        f"- Phased LSTM: {gate_init}, r_on {r_on:g} and learned (the authors' code learns all "
        "three time-gate parameters), leak 1e-3 in training, peepholes; every LSTM-family model "
        "starts from the authors' Lasagne initialisation (weights N(0, 0.1), input-gate bias "
        "-0.1); read-out: dense layer on the last valid step (leaky ReLU for the classes)",
        f"- baselines read {baseline_input}; training batches are random draws of the generator, "
        "padded to their longest example and masked",
    ]


# Figures ----------------------------------------------------------------------------------


def history_curves(results: dict, metric: str) -> dict[tuple[str, str], list[list[float]]]:
    """(model, condition) -> per seed, ``metric`` of every epoch."""
    curves: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for record in results["runs"].values():
        curve = [row.get(metric, math.nan) for row in record["history"]]
        curves[(record["model"], record["condition"])].append(curve)
    return curves


def plot_band(axis, curves: list[list[float]], scale: float, **style) -> None:
    """Mean over seeds, with a ±1 std band when there are several."""
    import numpy as np

    length = min(len(c) for c in curves)
    data = np.array([c[:length] for c in curves]) * scale
    epochs = np.arange(1, length + 1)
    mean = data.mean(0)
    axis.plot(epochs, mean, **style)
    if len(curves) > 1:
        std = data.std(0, ddof=1)
        axis.fill_between(epochs, mean - std, mean + std, color=style.get("color"), alpha=0.2)


def accuracy_bars(
    task: Task,
    config: ExperimentConfig,
    results: dict,
    paper: Callable[[str, str], float] | None = None,
    paper_label: str = "paper",
    *,
    ylim: tuple[float, float] = (40, 102),
):
    """Final test accuracy per condition and model, error bars over seeds; the paper's value
    ``paper(condition, model)`` (NaN where it has none) as a black mark. ``ylim`` in %: the
    default suits two classes."""
    import matplotlib.pyplot as plt
    import numpy as np

    accuracy = final_metric(results, "test_acc")
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(config.conditions), 3.6))
    width = 0.8 / len(config.models)
    for index, model in enumerate(config.models):
        stats = [
            mean_std([100 * v for v in accuracy.get((model, c), [])]) for c in config.conditions
        ]
        x = np.arange(len(config.conditions)) + (index - (len(config.models) - 1) / 2) * width
        axis.bar(
            x,
            [m for m, _ in stats],
            width,
            yerr=accuracy_spread(stats),
            capsize=3,
            color=COLORS.get(model),
            label=model_title(model),
        )
        if paper is not None:
            marks = [paper(c, model) for c in config.conditions]
            axis.plot(x, marks, "k_", markersize=12, markeredgewidth=2)
    if paper is not None:
        axis.plot([], [], "k_", markersize=12, markeredgewidth=2, label=paper_label)
    axis.set_xticks(range(len(config.conditions)))
    axis.set_xticklabels([task.condition_titles.get(c, c) for c in config.conditions], fontsize=8)
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(*ylim)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    axis.set_title(f"test accuracy after {epochs_text(config, results)}", fontsize=9)
    return figure


def learning_curves(
    task: Task,
    config: ExperimentConfig,
    results: dict,
    *,
    ylim: tuple[float, float] = (40, 101),
):
    """Test accuracy per epoch, one panel per condition, mean and std band over seeds; ``ylim``
    in % (the default suits two classes)."""
    import matplotlib.pyplot as plt

    curves = history_curves(results, "test_acc")
    count = len(config.conditions)
    figure, axes = plt.subplots(1, count, figsize=(4 * count, 3.2), squeeze=False)
    for axis, condition in zip(axes[0], config.conditions, strict=True):
        for model in config.models:
            runs = curves.get((model, condition))
            if runs:
                plot_band(axis, runs, 100.0, color=COLORS.get(model), label=model_title(model))
        axis.set_title(task.condition_titles.get(condition, condition), fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylim(*ylim)
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = {}
    for axis in axes[0]:
        handles.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    figure.tight_layout()
    if handles:
        # Below the panels: inside one, it covered the curves that end in its corner (the
        # LSTM's, still rising at the bottom right of the standard panel).
        legend = figure.legend(
            list(handles.values()), list(handles), fontsize=7, loc="lower center",
            ncol=min(len(handles), 2 * count), frameon=False,
        )  # fmt: skip
        figure.canvas.draw()
        height = legend.get_window_extent().height / figure.bbox.height
        figure.tight_layout(rect=(0, height + 0.02, 1, 1))
    return figure


__all__ = [
    "COLORS",
    "MODEL_TITLES",
    "accuracy_bars",
    "accuracy_spread",
    "accuracy_table",
    "cell",
    "epochs_text",
    "epochs_to_reach",
    "final_metric",
    "history_curves",
    "learning_curves",
    "mean_std",
    "model_protocol_lines",
    "model_title",
    "open_share_lines",
    "plot_band",
]
