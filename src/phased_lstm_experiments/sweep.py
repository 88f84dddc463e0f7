"""The learning-rate sweep: each model's rate chosen on the validation split before its runs.

With ``config.lr_sweep``, every model trains ``config.sweep_epochs`` epochs at each of the
rates on the first seed, evaluated on the validation split alone (the test split is not read);
the rate of the best validation accuracy over those epochs (the lowest validation loss, for
regression; the first rate listed on ties) is the model's rate in the runs. Each rate is an
experiment of its own in ``OUT/sweep/lr-RATE/`` (its own ``results.json``, checkpoints and
``--resume``), run by the same runner; the choice is recorded in the main ``results.json`` as
``learning_rates`` with the scores behind it under ``sweep``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .config import ExperimentConfig, run_name


def sweep_config(config: ExperimentConfig, rate: float) -> ExperimentConfig:
    """The experiment that tries ``rate`` for every model of ``config``."""
    return dataclasses.replace(
        config,
        learning_rate=rate,
        learning_rates={},
        lr_sweep=[],
        sweep_epochs=0,
        epochs=config.sweep_epochs,
        seeds=config.seeds[:1],
        patience=0,
        min_delta=0.0,
        test_sets="never",
    )


def sweep_folder(out: Path, rate: float) -> Path:
    return out / "sweep" / f"lr-{rate:g}"


def validation_score(record: dict) -> float:
    """The best validation accuracy (minus the lowest validation loss, for regression) over a
    sweep run's epochs."""
    rows = record["history"]
    if any("val_acc" in row for row in rows):
        return max(row["val_acc"] for row in rows if "val_acc" in row)
    return -min(row["val_loss"] for row in rows)


def choose_rates(
    config: ExperimentConfig, swept: dict[float, dict]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """From the results of each rate's experiment: each model's rate, and the scores per model
    and rate (``{model: {"0.001": score}}``) over its conditions' runs (their mean)."""
    chosen: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}
    for model in config.models:
        for rate in config.lr_sweep:
            runs = swept[rate]["runs"]
            values = [
                validation_score(runs[run_name(model, condition, config.seeds[0])])
                for condition in config.conditions
            ]
            scores.setdefault(model, {})[f"{rate:g}"] = sum(values) / len(values)
        best = max(config.lr_sweep, key=lambda rate: scores[model][f"{rate:g}"])
        chosen[model] = best
    return chosen, scores


def unswept_models(config: ExperimentConfig, results: dict) -> list[str]:
    """The models of ``config`` for which ``results`` records no swept rate yet."""
    chosen = results.get("learning_rates", {})
    return [model for model in config.models if model not in chosen]


def sweep_learning_rates(
    config: ExperimentConfig,
    out: Path,
    results: dict,
    resume: bool,
    run: Callable[..., dict],
) -> ExperimentConfig:
    """``config`` with each model's swept rate in ``learning_rates``: read from ``results``
    when an earlier command chose it, else found by running (``run``: the runner's
    ``run_experiment``) each rate's experiment for the models without one, and recorded in
    ``results`` beside the rates chosen before."""
    chosen = dict(results.get("learning_rates", {}))
    missing = unswept_models(config, results)
    if missing:
        # Only the models no earlier command swept (a model added to a folder with --resume);
        # the rates and scores recorded for the others stay as they were.
        unswept = dataclasses.replace(config, models=missing)
        swept = {}
        for rate in config.lr_sweep:
            folder = sweep_folder(out, rate)
            again = resume and (folder / "config.json").exists()
            swept[rate] = run(sweep_config(unswept, rate), folder, resume=again)
        new, scores = choose_rates(unswept, swept)
        chosen.update(new)
        results["learning_rates"] = chosen
        recorded = results.get("sweep", {}).get("scores", {})
        results["sweep"] = {
            "epochs": config.sweep_epochs,
            "seed": config.seeds[0],
            "scores": {**recorded, **scores},
        }
    return dataclasses.replace(config, learning_rates={m: chosen[m] for m in config.models})


__all__ = [
    "choose_rates",
    "sweep_config",
    "sweep_folder",
    "sweep_learning_rates",
    "unswept_models",
    "validation_score",
]
