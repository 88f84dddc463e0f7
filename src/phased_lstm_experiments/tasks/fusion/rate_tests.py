"""The fusion task's test under other sensors: how much each trained model's accuracy changes when
the test utterances are recorded at other frame rates or by jittered clocks (``TEST_SENSORS``),
per model and condition, with its standard error over seeds; for ``results.json`` and results.md.

Changes are in accuracy (a fraction, as ``results.json`` records accuracies): the accuracy under
the test sensors minus the accuracy on the same utterances as trained, per seed; a mean over the
seeds, and its standard error ``std / sqrt(seeds)`` (none with one seed).
"""

from __future__ import annotations

import math
import statistics

from ...tables import model_title
from .data import TEST_SENSORS

TEST_RATE_SET = "test_video30"


def rate_accuracies(record: dict) -> dict[str, float]:
    """A run's accuracy under each test sensor it measured: the 30 Hz video from its last
    epoch's evaluation, the others from its ``measures`` (taken once, after training)."""
    accuracies = {}
    measures = record.get("measures", {})
    for key in TEST_SENSORS:
        if key == "video30":
            value = record["final"].get(f"{TEST_RATE_SET}_acc")
        else:
            value = measures.get(f"test_{key}_acc")
        if value is not None:
            accuracies[key] = value
    return accuracies


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and its standard error over them, ``None`` for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def rate_changes(results: dict) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(model, condition) -> test sensor -> every seed's change of accuracy (in the order of
    the runs)."""
    table: dict[tuple[str, str], dict[str, list[float]]] = {}
    for record in results["runs"].values():
        base = record["final"].get("test_acc")
        if base is None:
            continue
        row = table.setdefault((record["model"], record["condition"]), {})
        for key, value in rate_accuracies(record).items():
            row.setdefault(key, []).append(value - base)
    return table


def rate_change_summary(task, config, results: dict) -> dict:
    """``{"rate_changes": ...}`` for ``results.json``: the test sensors (key -> title), and per
    model and condition (in the report's order) the mean change, its standard error and every
    seed's value; ``{}`` before any run measured one."""
    table = rate_changes(results)
    rows = []
    for condition in config.conditions:
        for model in config.models:
            changes = table.get((model, condition), {})
            if not changes:
                continue
            cells = {}
            for key, values in changes.items():
                mean, se = mean_se(values)
                cells[key] = {"mean": mean, "se": se, "values": values}
            rows.append({"model": model, "condition": condition, "changes": cells})
    if not rows:
        return {}
    tests = {key: title for key, (title, _, _) in TEST_SENSORS.items()}
    return {"rate_changes": {"tests": tests, "rows": rows}}


def change_cell(values: list[float] | None) -> str:
    """``mean ± SE (k seeds)`` in points, ``mean (1 seed)``, or "—"."""
    if not values:
        return "—"
    mean, se = mean_se([100 * v for v in values])
    if se is None:
        return f"{mean:+.1f} (1 seed)"
    return f"{mean:+.1f} ± {se:.1f} ({len(values)} seeds)"


def rate_change_table(task, config, results: dict) -> list[str]:
    """The markdown table of :func:`rate_changes`: a row per condition and model, a column per
    test sensor that changes a stream of one of the folder's conditions."""
    table = rate_changes(results)
    if not table:
        return []
    keys = [k for k in TEST_SENSORS if any(k in task.rate_tests(c) for c in config.conditions)]
    lines = [
        "## Accuracy change under sensors no model was trained on (points)",
        "",
        "The same test utterances recorded otherwise: each run's accuracy there minus its "
        "accuracy as trained (audio 100 Hz, video 25 Hz), mean ± standard error over seeds. "
        "The baselines read every sensor on their 100 Hz grid, each stream holding its last "
        "value; the Phased LSTMs read every frame at its own time. A negative change is a loss.",
        "",
        "| condition | model | " + " | ".join(TEST_SENSORS[k][0] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for condition in config.conditions:
        for model in config.models:
            changes = table.get((model, condition))
            if changes is None:
                continue
            cells = [change_cell(changes.get(k)) for k in keys]
            lines.append(
                f"| {task.condition_titles[condition]} | {model_title(model)} | "
                + " | ".join(cells)
                + " |"
            )
    return lines


__all__ = [
    "TEST_RATE_SET",
    "change_cell",
    "mean_se",
    "rate_accuracies",
    "rate_change_summary",
    "rate_change_table",
    "rate_changes",
]
