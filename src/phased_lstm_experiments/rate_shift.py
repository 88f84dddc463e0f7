"""The rate-shift matrix: every trained model tested under every sampling condition.

A row is a training setting, model x training condition x rate augmentation (the folder's
``--rate-augment``); a column is a test condition of the task (:meth:`.tasks.Task.shift_tests`:
freq's three samplings, nmnist's event rates); a cell is the test accuracy, mean ± std over
seeds, read from each run's record (:meth:`.tasks.Task.shift_accuracies`). One folder holds one
augmentation setting (it is part of the protocol), so the matrix of a folder is in its
``results.md`` and ``results.json`` (``"rate_shift"``), and ``phased-lstm rate-shift FOLDER ...
--out DIR`` puts the rows of several folders (one trained without, one with ``--rate-augment``)
into one table and one figure.

Neither Lightning nor the runner is imported; matplotlib only where the figure is drawn.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tables import COLORS, accuracy_spread, cell, mean_std, model_title

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .tasks.base import Task

FIGURE = "rate_shift.png"
_MARKERS = ("o", "s", "^", "D", "v")


def augment_of(config: ExperimentConfig) -> tuple[float, float] | None:
    """The folder's ``--rate-augment`` range, ``None`` without one (and in folders written
    before the option existed)."""
    keep = config.options.get("rate_augment")
    return None if keep is None else (float(keep[0]), float(keep[1]))


def augment_text(augment: tuple[float, float] | None) -> str:
    if augment is None:
        return "none"
    return f"shares in [{augment[0]:g}, {augment[1]:g}]"


@dataclasses.dataclass
class ShiftRow:
    """One training setting and its accuracies, per test condition, over its seeds."""

    model: str
    condition: str
    augment: tuple[float, float] | None
    seeds: list[int] = dataclasses.field(default_factory=list)
    values: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def label(self, task: Task) -> str:
        trained = task.training_title(self.condition, self.augment)
        augmented = "" if self.augment is None else f", augmented: {augment_text(self.augment)}"
        return f"{model_title(self.model)}, trained on {trained}{augmented}"


def shift_rows(task: Task, config: ExperimentConfig, results: dict) -> list[ShiftRow]:
    """The rows of one folder's runs, in the task's order of models and conditions; runs that
    measured none of the test conditions (a learning-rate sweep's) are left out."""
    augment = augment_of(config)
    tests = task.shift_tests(config)
    rows: dict[tuple[str, str], ShiftRow] = {}
    for record in results["runs"].values():
        accuracies = task.shift_accuracies(record)
        if not any(key in accuracies for key in tests):
            continue
        key = (record["model"], record["condition"])
        row = rows.setdefault(key, ShiftRow(record["model"], record["condition"], augment))
        row.seeds.append(record["seed"])
        for test in tests:
            if test in accuracies:
                row.values.setdefault(test, []).append(accuracies[test])

    return sorted(rows.values(), key=lambda row: _order(task, row))


def _order(task: Task, row: ShiftRow) -> tuple:
    """Rows by model, then training condition (the task's orders), then augmentation (none
    first): the same model and condition with and without augmentation side by side."""
    models, conditions = list(task.models), list(task.conditions)
    return (
        models.index(row.model) if row.model in models else len(models),
        conditions.index(row.condition) if row.condition in conditions else len(conditions),
        row.augment is not None,
        row.augment or (0.0, 0.0),
    )


def summary_of(tests: dict[str, str], rows: list[ShiftRow]) -> dict[str, Any]:
    """The matrix as ``results.json`` records it: the test conditions, then per row its
    setting and, per test condition, the mean, the std over seeds and every seed's value."""
    entries = []
    for row in rows:
        accuracy = {}
        for test in tests:
            values = row.values.get(test, [])
            if values:
                mean, std = mean_std(values)
                accuracy[test] = {"mean": mean, "std": std, "values": values}
        entries.append(
            {
                "model": row.model,
                "condition": row.condition,
                "rate_augment": None if row.augment is None else list(row.augment),
                "seeds": row.seeds,
                "accuracy": accuracy,
            }
        )
    return {"tests": dict(tests), "rows": entries}


def shift_summary(task: Task, config: ExperimentConfig, results: dict) -> dict[str, Any]:
    """:func:`summary_of` the rows of one folder."""
    return summary_of(task.shift_tests(config), shift_rows(task, config, results))


def shift_table(task: Task, tests: dict[str, str], rows: list[ShiftRow]) -> list[str]:
    """The matrix as markdown lines: a row per training setting, a column per test condition,
    the cells where the test condition is the training condition in bold, "—" where no run of
    the row measured it."""
    if not rows:
        return []
    header = ["model", "trained on", "rate augmentation", *tests.values()]
    lines = [
        "## Rate-shift matrix: test accuracy (%) under every test condition",
        "",
        "Every trained model tested under every test condition, mean ± std over seeds; in bold "
        "each run's own test set, that of its training condition. Rate augmentation: each "
        "training sequence kept a random share, drawn in the range shown, of its samples (its "
        "events); the test sets are never thinned.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = []
        for test in tests:
            values = row.values.get(test, [])
            text = cell(values, scale=100.0) if values else "—"  # a run of an older version
            cells.append(f"**{text}**" if test == row.condition else text)
        trained = task.training_title(row.condition, row.augment)
        lines.append(
            f"| {model_title(row.model)} | {trained} | {augment_text(row.augment)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def shift_figure(task: Task, tests: dict[str, str], rows: list[ShiftRow]):
    """Test accuracy against the test condition, one line per training setting (colour: model;
    marker: training condition; dashed: rate augmentation), error bars of ± one standard deviation
    over seeds, cut at 0 and 100 % (an accuracy has no other values)."""
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(2.0 + 1.5 * len(tests), 4.0))
    conditions = list(dict.fromkeys(row.condition for row in rows))
    x = np.arange(len(tests))
    for row in rows:
        stats = [mean_std([100 * v for v in row.values.get(test, [])]) for test in tests]
        axis.errorbar(
            x,
            [m for m, _ in stats],
            yerr=accuracy_spread(stats),
            color=COLORS.get(row.model),
            marker=_MARKERS[conditions.index(row.condition) % len(_MARKERS)],
            linestyle="--" if row.augment is not None else "-",
            capsize=3,
            label=row.label(task),
        )
    axis.set_xticks(x)
    axis.set_xticklabels(list(tests.values()), fontsize=8)
    axis.set_xlabel("test condition")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    axis.set_title("every trained model under every test condition", fontsize=9)
    # No tight_layout: the legend right of the axes is kept by the bounding box of the save.
    return figure


# ------------------------------------------------------------------ phased-lstm rate-shift


def _read_folder(folder: Path) -> tuple[ExperimentConfig, dict]:
    from .config import ExperimentConfig
    from .files import ExperimentError

    try:
        config = ExperimentConfig.from_dict(json.loads((folder / "config.json").read_text()))
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ExperimentError(
            f"argument FOLDER: {folder} holds no readable results of a phased-lstm experiment "
            f"(config.json and results.json): {error}"
        ) from None
    return config, results


def compare(folders: list[Path], out: Path) -> list[str]:
    """Write the matrix of the runs of ``folders`` (one experiment's) to ``out``:
    ``rate_shift.md``, ``rate_shift.json`` and the figure; return the file names."""
    from .files import ExperimentError, write_atomic, write_json
    from .tasks import get_task

    read = [(folder, *_read_folder(folder)) for folder in folders]
    experiments = sorted({config.experiment for _, config, _ in read})
    if len(experiments) > 1:
        raise ExperimentError(
            f"argument FOLDER: the folders hold different experiments ({', '.join(experiments)}); "
            "the matrix compares the runs of one"
        )
    task = get_task(experiments[0])
    tests = task.shift_tests(read[0][1])
    if not tests:
        raise ExperimentError(
            f"argument FOLDER: the {task.name} experiment has no rate-shift matrix (one test "
            "condition only)"
        )
    rows, seen = [], {}
    for folder, config, results in read:
        for row in shift_rows(task, config, results):
            for seed in row.seeds:
                key = (row.model, row.condition, row.augment, seed)
                if key in seen:
                    raise ExperimentError(
                        f"argument FOLDER: {folder} and {seen[key]} both hold {row.model} trained "
                        f"on {row.condition}, seed {seed}, rate augmentation "
                        f"{augment_text(row.augment)}; list each run once"
                    )
                seen[key] = folder
            rows.append(row)
    rows.sort(key=lambda row: _order(task, row))
    sources = [f"- `{folder}`: rate augmentation: {augment_text(augment_of(config))}"
               for folder, config, _ in read]  # fmt: skip
    lines = [f"# Phased LSTM reproduction: {task.title}, rate shift", "", "Folders:", ""]
    lines += [*sources, "", *shift_table(task, tests, rows)]
    names = []
    if rows:
        import matplotlib

        from .report import save_figure

        matplotlib.use("Agg")
        names.append(save_figure(shift_figure(task, tests, rows), out, FIGURE))
        lines += ["", f"![{FIGURE}]({FIGURE})"]
    write_atomic(out / "rate_shift.md", "\n".join(lines) + "\n")
    write_json(out / "rate_shift.json", {"experiment": task.name, **summary_of(tests, rows)})
    return ["rate_shift.md", "rate_shift.json", *names]


def main(argv: list[str], prog: str = "phased-lstm rate-shift") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="One rate-shift matrix from the runs of several output folders of the same "
        "experiment (say, one trained without and one with --rate-augment): rate_shift.md, "
        "rate_shift.json and rate_shift.png in --out.",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    parser.add_argument("--out", type=Path, required=True, help="where the matrix is written")
    args = parser.parse_args(argv)
    from .files import ExperimentError

    try:
        names = compare(args.folders, args.out)
    except ExperimentError as error:
        raise SystemExit(f"{prog}: error: {error}") from None
    print(f"{prog}: wrote {', '.join(names)} to {args.out}", file=sys.stderr)
    return 0


__all__ = [
    "FIGURE",
    "ShiftRow",
    "augment_of",
    "augment_text",
    "compare",
    "main",
    "shift_figure",
    "shift_rows",
    "shift_summary",
    "shift_table",
    "summary_of",
]
