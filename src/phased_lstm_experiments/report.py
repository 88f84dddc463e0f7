"""Reports of an experiment: ``results.md`` beside the paper's numbers, ``metrics.csv`` and figures.

Everything here is recomputed from ``results.json`` and written atomically, so a report is
always consistent with the runs finished so far. The frame (protocol, wall time, figures) is
the same for every experiment; the tables and figures are the task's (:mod:`.tasks`). Neither
Lightning nor the runner is imported: a report can be rewritten from a results folder alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
from pathlib import Path

from .config import ExperimentConfig, pending_runs
from .files import write_atomic
from .models import GATE_CLIP_MODELS
from .tasks import get_task

_METRIC_COLUMNS = (
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "update_fraction",
    "wall_s",
)


def write_report(config: ExperimentConfig, results: dict, out: Path) -> None:
    """Write ``metrics.csv``, the figures and ``results.md`` from ``results``.

    The report covers every run recorded in the folder, not only the current command's
    selection: a ``--resume`` that adds a condition or a model keeps the earlier ones in view.
    """
    view = reported_config(config, results)
    write_atomic(out / "metrics.csv", metrics_csv(results))
    figures = write_figures(view, results, out)
    write_atomic(out / "results.md", results_markdown(view, results, figures, selected=config))


def reported_config(config: ExperimentConfig, results: dict) -> ExperimentConfig:
    """``config`` with its models, conditions and seeds widened to the runs in ``results``."""
    task = get_task(config.experiment)
    records = list(results["runs"].values())
    models = {r["model"] for r in records} | set(config.models)
    conditions = {r["condition"] for r in records} | set(config.conditions)
    seeds = {r["seed"] for r in records} | set(config.seeds)
    return dataclasses.replace(
        config,
        models=[m for m in task.models if m in models],
        conditions=[c for c in task.conditions if c in conditions],
        seeds=sorted(seeds),
    )


def metrics_csv(results: dict) -> str:
    """Every epoch of every run; the columns of every metric any run recorded."""
    extra = sorted(
        {key for record in results["runs"].values() for row in record["history"] for key in row}
        - {"epoch", *_METRIC_COLUMNS}
    )
    columns = (*_METRIC_COLUMNS[:-1], *extra, _METRIC_COLUMNS[-1])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("run", "model", "condition", "seed", "epoch", *columns))
    for name, record in results["runs"].items():
        for row in record["history"]:
            values = [_format(row.get(column)) for column in columns]
            writer.writerow(
                (name, record["model"], record["condition"], record["seed"], row["epoch"], *values)
            )
    return buffer.getvalue()


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def results_markdown(
    config: ExperimentConfig,
    results: dict,
    figures: list[str],
    *,
    selected: ExperimentConfig | None = None,
) -> str:
    """The report; ``config`` is what it covers, ``selected`` the last command's selection."""
    task = get_task(config.experiment)
    lines = [f"# Phased LSTM reproduction: {task.title}", ""]
    lines += _protocol_lines(config, results, selected or config)
    lines += task.tables(config, results)
    lines += _sweep_lines(config, results)
    lines += _timing_lines(results)
    lines += _epoch_time_lines(config, results)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def _protocol_lines(
    config: ExperimentConfig, results: dict, selected: ExperimentConfig
) -> list[str]:
    task = get_task(config.experiment)
    seeds = ", ".join(str(s) for s in config.seeds)
    trainer = config.trainer
    options = [
        f"- {option.flag}: {config.options.get(option.name)}"
        for option in task.options
        if option.name in config.options and not option.described
    ]
    return [
        "## Protocol actually run",
        "",
        f"- preset `{config.preset}`; this report covers models {', '.join(config.models)}; "
        f"conditions {', '.join(config.conditions)}; seeds {seeds}",
        f"- {task.examples_text(config)}, batch {config.batch_size}, "
        f"Adam lr {_rates_text(config, results)}, {config.hidden_size} units",
        *_validation_lines(config),
        *options,
        f"- gradient clipping: {_clip_text(config)}",
        f"- Adam on the Phased LSTM's time gate: {_time_gate_adam_text(config)}",
        *task.protocol_lines(config),
        f"- Trainer: accelerator {trainer.accelerator}, devices {trainer.devices}, "
        f"nodes {trainer.num_nodes}, strategy {trainer.strategy}",
        f"- the paper's protocol: {task.paper_protocol} (docs/paper.md in the phased-lstm "
        "repository describes it)",
        f"- finished runs of the last command's selection: {_finished(selected, results)} of "
        f"{len(task.runs(selected))}; runs recorded in this folder: {len(results['runs'])}",
        "",
    ]


def _rates_text(config: ExperimentConfig, results: dict) -> str:
    rates = {**config.learning_rates, **results.get("learning_rates", {})}
    if not rates:
        return f"{config.learning_rate:g}"
    chosen = ", ".join(f"{m} {rates[m]:g}" for m in config.models if m in rates)
    if config.lr_sweep:
        return f"per model, chosen by the sweep below: {chosen}"
    return chosen


def _validation_lines(config: ExperimentConfig) -> list[str]:
    if not config.validates:
        return ["- the test sets evaluated after every epoch (the curves are test accuracy)"]
    lines = [
        f"- validation: {config.validation_share:g} of the training examples held out and "
        "evaluated after every epoch (the curves are validation accuracy)"
    ]
    if config.test_sets == "at-end":
        lines.append(
            "- the test sets read once, after training, by the weights of each run's best "
            "validation epoch (and by those after epoch 1)"
        )
    if config.patience > 0:
        lines.append(
            f"- early stopping: a run stops once its validation accuracy has not improved by "
            f"{100 * config.min_delta:g} points in {config.patience} epochs (at most "
            f"{config.epochs} epochs)"
        )
    return lines


def _sweep_lines(config: ExperimentConfig, results: dict) -> list[str]:
    sweep = results.get("sweep")
    if not sweep:
        return []
    rates = sorted({rate for scores in sweep["scores"].values() for rate in scores}, key=float)
    chosen = results.get("learning_rates", {})
    lines = [
        "",
        "## Learning-rate sweep",
        "",
        f"Best validation accuracy (%) within {sweep['epochs']} epochs of seed {sweep['seed']}, "
        "per model and Adam learning rate; the chosen rate in bold. The test split is not read.",
        "",
        "| model | " + " | ".join(rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for model, scores in sweep["scores"].items():
        cells = []
        for rate in rates:
            text = f"{100 * scores[rate]:.1f}" if rate in scores else "—"
            if model in chosen and f"{chosen[model]:g}" == rate:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _epoch_time_lines(config: ExperimentConfig, results: dict) -> list[str]:
    """Where an epoch's time went, per model: the network's forward and backward passes, the
    evaluation, and the rest (data, optimiser, logs, checkpoint), as means over epochs."""
    per_model: dict[str, list[dict]] = {}
    for record in results["runs"].values():
        rows = [row for row in record["history"] if "time_epoch_s" in row]
        per_model.setdefault(record["model"], []).extend(rows)
    if not any(per_model.values()):
        return []
    lines = [
        "",
        "## Where an epoch's time goes",
        "",
        "Means over every epoch of every run (runs side by side share the cores): the "
        "network's forward and backward passes on the training batches, the evaluation after "
        "the epoch, everything else (loading and collating batches, optimiser steps, logs), and "
        "the epoch's wall time over the forward and backward time.",
        "",
        "| model | epochs | forward+backward (s) | evaluation (s) | rest (s) | epoch (s) | epoch / "
        "forward+backward |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in config.models:
        rows = per_model.get(model)
        if not rows:
            continue
        model_s = sum(r["time_model_s"] for r in rows) / len(rows)
        eval_s = sum(r["time_eval_s"] for r in rows) / len(rows)
        epoch_s = sum(r["time_epoch_s"] for r in rows) / len(rows)
        ratio = f"{epoch_s / model_s:.2f}" if model_s > 0 else "—"
        lines.append(
            f"| {model} | {len(rows)} | {model_s:.1f} | {eval_s:.1f} | "
            f"{epoch_s - model_s - eval_s:.1f} | {epoch_s:.1f} | {ratio} |"
        )
    return lines


def _finished(config: ExperimentConfig, results: dict) -> int:
    task = get_task(config.experiment)
    return len(task.runs(config)) - len(pending_runs(task, config, results))


def _time_gate_adam_text(config: ExperimentConfig) -> str:
    if config.time_gate_adam == "direct":
        return (
            "steps taken on the period and r_on in their own units, as in the authors' code "
            "(the layer stores log period and logit r_on)"
        )
    return (
        "plain Adam on the stored log period and logit r_on (relative steps: r_on learns ~20x "
        "slower than in the authors' code)"
    )


def _clip_text(config: ExperimentConfig) -> str:
    bound = f"{config.gradient_clip:g}"
    if config.gradient_clip_mode == "gates":
        text = (
            f"the gradient of the gate pre-activations clipped at ±{bound} inside the recurrence, "
            "as in the authors' code (Lasagne's `grad_clipping`)"
        )
        others = [m for m in config.models if m not in GATE_CLIP_MODELS]
        if others:
            text += (
                f"; {', '.join(others)} (no such gates): every parameter gradient clipped by "
                f"value at {bound}"
            )
        return text
    return (
        f"every parameter gradient clipped by value at {bound} (Lightning's "
        f"`gradient_clip_val`, algorithm `value`); the authors clip the gradient of the gate "
        f"pre-activations at ±{bound} inside the recurrence instead"
    )


def _timing_lines(results: dict) -> list[str]:
    """Each run's training time, their sum, and the wall time of the commands that ran them
    (runs side by side make the sum larger than the wall time)."""
    if not results["runs"]:
        return []
    lines = ["", "## Wall time", "", "| run | epochs | wall time (s) |", "|---|---|---|"]
    total = 0.0
    for name, record in results["runs"].items():
        last = record["history"][-1] if record["history"] else record["final"]
        wall = last.get("wall_s", 0.0)
        total += wall
        lines.append(f"| {name} | {record['epochs']} | {wall:.0f} |")
    lines.append(f"| all runs: sum of run times | | {total:.0f} |")
    sessions = results.get("sessions", [])
    if sessions:
        seconds = sum(session["seconds"] for session in sessions)
        count = len(sessions)
        commands = "1 command" if count == 1 else f"{count} commands"
        lines.append(f"| wall time of the {commands} that trained | | {seconds:.0f} |")
        lines += [
            "",
            "| command started (UTC) | jobs | runs finished | wall time (s) | ended "
            "| subnormal floats |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['started']} | {s['jobs']} | {s['runs']} | {s['seconds']:.0f} | {s['status']} "
            f"| {s.get('subnormals', 'kept (older version)')} |"
            for s in sessions
        ]
    else:
        lines.append("| wall time of the commands | | not recorded (older version) |")
    return lines


def write_figures(config: ExperimentConfig, results: dict, out: Path) -> list[str]:
    """Draw the task's figures into ``out``; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    figures = get_task(config.experiment).figures(config, results)
    saved = []
    for name, draw in figures:
        # A figure that cannot be drawn from the runs so far must not end the command that
        # trains them: it is left out of this report, with the reason on stderr.
        try:
            saved.append(save_figure(draw(), out, name))
        except Exception as error:  # noqa: BLE001
            print(f"phased-lstm: figure {name} not drawn: {error!r}", file=sys.stderr, flush=True)
    return saved


def save_figure(figure, out: Path, name: str) -> str:
    """Write ``figure`` to ``out / name`` as a PNG, atomically, and close it; return ``name``."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_atomic(out / name, buffer.getvalue())
    return name


__all__ = [
    "metrics_csv",
    "reported_config",
    "results_markdown",
    "save_figure",
    "write_figures",
    "write_report",
]
