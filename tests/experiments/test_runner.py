"""The generic experiment machinery: the task registry, results.json and config.json as earlier
versions wrote them, the report, the progress display, interruptions of parallel runs, and the
CLI's errors about --out."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

pytest.importorskip("lightning")

from phased_lstm_experiments import datasets  # noqa: E402
from phased_lstm_experiments.cli import main  # noqa: E402
from phased_lstm_experiments.models import ModelSpec  # noqa: E402
from phased_lstm_experiments.progress import Progress  # noqa: E402
from phased_lstm_experiments.report import reported_config, results_markdown  # noqa: E402
from phased_lstm_experiments.tasks import (  # noqa: E402
    TASKS,
    Task,
    TaskOption,
    preset_config,  # noqa: E402
)
from tests.experiments.helpers import (  # noqa: E402
    TINY,
    process_group,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# results.json and config.json: the fields that earlier versions wrote --------------------------

# Written down from folders of the version before the task registry (the same commands).
CONFIG_KEYS = {
    "experiment",
    "preset",
    "models",
    "conditions",
    "seeds",
    "epochs",
    "samples_per_epoch",
    "test_samples",
    "batch_size",
    "learning_rate",
    "gradient_clip",
    "gradient_clip_mode",
    "time_gate_adam",
    "hidden_size",
    "condition_samples",
    "threads",
    "trainer",
    # Added with the validation split, early stopping and the learning-rate sweep; folders
    # without them read as the defaults (tests/experiments/test_validation.py).
    "validation_share",
    "test_sets",
    "patience",
    "min_delta",
    "learning_rates",
    "lr_sweep",
    "sweep_epochs",
}
TRAINER_KEYS = {"accelerator", "devices", "num_nodes", "strategy", "progress_bar", "jobs"}
RUN_KEYS = {"model", "condition", "seed", "epochs", "history", "final"}
# Each row also says where the epoch's time went (added with the epoch-time breakdown).
TIMES = {"time_model_s", "time_eval_s", "time_epoch_s"}
CLASSIFICATION_ROW = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "wall_s"} | TIMES
REGRESSION_ROW = {"epoch", "train_loss", "test_loss", "wall_s"} | TIMES
# The one addition: the wall time of every command that trained.
RESULTS_KEYS = {"version", "runs", "config", "sessions"}
# What freq adds (with --rate-augment and the rate-shift matrix): the option in config.json, the
# accuracies under the other samplings as each run's measures, the matrix in results.json.
FREQ_EXTRA = {"config": {"options"}, "run": {"measures"}, "results": {"rate_shift"}}
NO_EXTRA = {"config": set(), "run": set(), "results": set()}
# A session also says whether its processes flushed subnormal floats (older ones do not).
SESSION_KEYS = {"started", "ended", "seconds", "runs", "jobs", "status", "subnormals"}


@pytest.mark.parametrize(
    "experiment, condition, baseline_run, row, figures, extra",
    [
        (
            "freq",
            "standard",
            "lstm-standard-seed1",
            CLASSIFICATION_ROW,
            {"accuracy_bars.png", "learning_curves.png", "sampling_conditions.png"}
            | {"rate_shift.png"},
            FREQ_EXTRA,
        ),
        (
            "freq2",
            "async",
            "lstm-async-seed1",
            CLASSIFICATION_ROW,
            {"accuracy_bars.png", "learning_curves.png"},
            NO_EXTRA,
        ),
        ("adding", "tau0-2", "lstm-adding-seed1", REGRESSION_ROW, {"adding_mse.png"}, NO_EXTRA),
    ],
)
@pytest.mark.slow
def test_results_and_config_keep_their_fields(
    tmp_path, experiment, condition, baseline_run, row, figures, extra
):
    out = tmp_path / experiment
    run_cli(
        experiment, "--condition", condition, "--models", "plstm,lstm", *TINY, "--out", str(out)
    )
    config = read_json(out / "config.json")
    assert set(config) == CONFIG_KEYS | extra["config"]
    assert set(config["trainer"]) == TRAINER_KEYS
    results = read_json(out / "results.json")
    assert set(results) == RESULTS_KEYS | extra["results"]
    assert results["version"] == 1 and results["config"] == config
    plstm_run = f"plstm-{condition}-seed1"
    assert set(results["runs"]) == {plstm_run, baseline_run}
    for name, expected_row in ((plstm_run, row | {"update_fraction"}), (baseline_run, row)):
        record = results["runs"][name]
        assert set(record) == RUN_KEYS | extra["run"]
        assert set(record["history"][0]) == expected_row and record["final"] == record["history"][0]
    [session] = results["sessions"]
    assert set(session) == SESSION_KEYS and session["status"] == "finished"
    assert session["runs"] == 2 and session["jobs"] == 1
    names = {path.name for path in out.iterdir()}
    assert (
        names
        == {"config.json", "results.json", "metrics.csv", "results.md", "runs"}
        | {"tensorboard"}
        | figures
    )


@pytest.mark.slow
def test_resume_reads_a_folder_of_an_older_version(tmp_path, capsys):
    out = tmp_path / "old"
    args = ["freq", "--condition", "standard", "--models", "lstm", *TINY, "--out", str(out)]
    run_cli(*args)
    # As the versions before the clipping modes and the sessions wrote it.
    config = read_json(out / "config.json")
    del config["gradient_clip_mode"], config["time_gate_adam"]
    (out / "config.json").write_text(json.dumps(config))
    results = read_json(out / "results.json")
    del results["sessions"], results["config"]["gradient_clip_mode"]
    (out / "results.json").write_text(json.dumps(results))
    run_cli(*args, "--resume", "--epochs", "2")
    resumed = read_json(out / "results.json")
    assert [r["epoch"] for r in resumed["runs"]["lstm-standard-seed1"]["history"]] == [1, 2]
    assert [s["runs"] for s in resumed["sessions"]] == [1]


@pytest.mark.slow
def test_resume_into_a_missing_folder_starts_fresh(tmp_path, capsys):
    out = tmp_path / "not-yet"
    run_cli(
        "freq", "--condition", "standard", "--models", "lstm", *TINY, "--resume", "--out", str(out)
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "starting fresh" in line]
    assert lines == [f"phased-lstm: --resume: {out} holds no results yet; starting fresh"]
    assert list(read_json(out / "results.json")["runs"]) == ["lstm-standard-seed1"]


# --out that cannot be written ----------------------------------------------------------------


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    """The lock file of a command that died (its PID gone, no flock held) is neither user
    content nor a holder: the next command takes it over, says so, and removes it at the end."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = json.dumps({"pid": dead.pid, "started": "2026-12-01 10:00:00+00:00"})
    (out / ".phased-lstm.lock").write_text(stale)
    run_cli("freq", "--condition", "standard", "--models", "lstm", *TINY, "--out", str(out))
    err = capsys.readouterr().err
    note = f"took over the lock of PID {dead.pid}, started 2026-12-01 10:00:00+00:00, which is"
    assert note in err, err
    assert read_json(out / "results.json")["runs"]
    assert not (out / ".phased-lstm.lock").exists()
    # A folder without a lock file (as every folder written before locks) resumes.
    run_cli("freq", "--condition", "standard", "--models", "lstm", *TINY, "--out", str(out),
            "--resume", "--epochs", "2")  # fmt: skip
    assert read_json(out / "results.json")["runs"]["lstm-standard-seed1"]["epochs"] == 2
    assert "took over" not in capsys.readouterr().err


def test_out_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker / "results", blocker):
        with pytest.raises(SystemExit) as exit_info:
            run_cli("freq", *TINY, "--out", str(out))
        message = str(exit_info.value.code)
        assert message.startswith(f"phased-lstm: error: --out {out} "), message
        assert "which is a file" in message or "is not a folder" in message, message
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_out_in_an_unwritable_place_is_a_clear_error(tmp_path):
    # /proc refuses new entries whoever asks, root included (chmod does not stop root).
    out = Path("/proc/self/phased-lstm-results")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("freq", *TINY, "--out", str(out), "--dry-run")
    message = str(exit_info.value.code)
    assert message.startswith(f"phased-lstm: error: --out {out} cannot be written"), message
    assert "Traceback" not in message


# The report ---------------------------------------------------------------------------------


def _record(model, condition, seed, accuracy, wall=100.0, epochs=3):
    history = [
        {"epoch": e, "test_acc": accuracy, "train_loss": 0.1, "wall_s": wall * e / epochs}
        for e in range(1, epochs + 1)
    ]
    return {
        "model": model,
        "condition": condition,
        "seed": seed,
        "epochs": epochs,
        "history": history,
        "final": history[-1],
    }


def _row(markdown: str, *cells: str) -> str:
    rows = [
        line
        for line in markdown.splitlines()
        if [c.strip() for c in line.split("|")[1 : 1 + len(cells)]] == list(cells)
    ]
    assert len(rows) == 1, (cells, rows)
    return rows[0]


def test_report_rows_carry_the_numbers_of_their_runs():
    config = preset_config("freq", "paper")
    config.epochs = 3
    records = [
        _record("plstm", "standard", 1, 0.90),
        _record("plstm", "standard", 2, 0.95),
        _record("lstm", "standard", 1, 0.99),
        _record("lstm", "async", 1, 0.518),
    ]
    results = {
        "version": 1,
        "runs": {f"{r['model']}-{r['condition']}-seed{r['seed']}": r for r in records},
        "sessions": [
            {"started": "s1", "ended": "e1", "seconds": 120.0, "runs": 3, "jobs": 2},
            {"started": "s2", "ended": "e2", "seconds": 50.4, "runs": 1, "jobs": 1},
        ],
    }
    for session in results["sessions"]:
        session["status"] = "finished"
    markdown = results_markdown(reported_config(config, results), results, [], selected=config)
    plstm = _row(markdown, "standard (1 ms)", "Phased LSTM")
    assert "| 92.5 ± 3.5 (2 seeds) | 99.2 (99.3) |" in plstm
    lstm = _row(markdown, "standard (1 ms)", "LSTM")
    assert "| 99.0 (1 seed) | 99.0 (89.3) |" in lstm and "timestamp" not in lstm
    # Far below the paper: the row says why, in one line.
    stuck = _row(markdown, "asynchronous", "LSTM")
    assert "| 51.8 (1 seed) | 63.1 (69.0) |" in stuck and "raw timestamp" in stuck
    assert "| not run |" in _row(markdown, "asynchronous", "Phased LSTM")
    assert "| 400 |" in _row(markdown, "all runs: sum of run times")
    assert "| 170 |" in _row(markdown, "wall time of the 2 commands that trained")
    # A folder of an older version has no record of its commands.
    del results["sessions"]
    markdown = results_markdown(config, results, [], selected=config)
    assert "not recorded" in _row(markdown, "wall time of the commands")


def test_learning_curves_legend_covers_no_curve():
    """The legend sits outside every panel: inside the first one (lower right) it covered the
    LSTM's curve, which ends there, still rising, in the standard condition."""
    import matplotlib

    matplotlib.use("Agg")
    from phased_lstm_experiments.tables import learning_curves

    config = preset_config("freq", "quick")
    config.models = ["plstm", "lstm", "bnlstm-input"]
    finals = {"plstm": 0.99, "lstm": 0.6, "bnlstm-input": 0.8}
    runs = {
        f"{model}-{condition}-seed1": {
            "model": model,
            "condition": condition,
            "seed": 1,
            "history": [{"epoch": e, "test_acc": 0.5 + (end - 0.5) * e / 10} for e in range(1, 11)],
        }
        for model, end in finals.items()
        for condition in config.conditions
    }
    figure = learning_curves(TASKS["freq"], config, {"runs": runs})
    figure.canvas.draw()
    legends = figure.legends + [a.get_legend() for a in figure.axes if a.get_legend()]
    assert len(legends) == 1
    box = legends[0].get_window_extent()
    assert len(legends[0].get_texts()) == 3
    for axis in figure.axes:
        assert not box.overlaps(axis.get_window_extent()), axis.get_title()
    # Within the figure, not cut off at its edge.
    assert 0 <= box.y0 and box.x0 >= 0 and box.x1 <= figure.bbox.width


def test_report_imports_without_lightning():
    code = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"  # any import of lightning fails
        "import phased_lstm_experiments.report, phased_lstm_experiments.cli\n"
        "print('lightning' in sys.modules and sys.modules['lightning'] is not None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


# A new experiment is one module: a toy task with its own option and a second test set ----------


class ToyTask(Task):
    """Is the mean of five values above ``--level``? Also tested on the negated values."""

    name = "toy"
    title = "toy task"
    help = "a toy"
    conditions = ("plain",)
    models = ("lstm",)
    presets = {"quick": dict(models=["lstm"], seeds=[1], epochs=1, samples_per_epoch=32,
                             test_samples=32)}  # fmt: skip
    options = (TaskOption("level", "the threshold", type=float, default=0.0),)

    def _examples(self, config, n, *stream):
        rng = np.random.default_rng(np.random.SeedSequence(stream))
        values = torch.from_numpy(rng.normal(size=(n, 5, 1)).astype(np.float32))
        times = torch.arange(5, dtype=torch.float64).expand(n, 5)
        targets = (values.mean((1, 2)) > config.options["level"]).long()
        return values, times, torch.full((n,), 5), targets

    def train_data(self, config, model, condition, seed, epoch):
        return TensorDataset(*self._examples(config, config.samples_per_epoch, seed, 0, epoch))

    def test_data(self, config, model, condition, seed):
        values, times, lengths, targets = self._examples(config, config.test_samples, seed, 1)
        return {
            "test": TensorDataset(values, times, lengths, targets),
            "test_negated": TensorDataset(-values, times, lengths, targets),
        }

    def model_spec(self, config, model, condition):
        return ModelSpec(input_size=1, num_outputs=2, classify=True, hidden_size=8,
                         time_as_input=False, max_steps=5)  # fmt: skip

    def tables(self, config, results):
        return ["## Toy", "", f"level {config.options['level']}"]


@pytest.mark.slow
def test_a_task_module_plugs_into_cli_runner_and_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS, "toy", ToyTask())
    out = tmp_path / "toy"
    args = ["toy", "--epochs", "1", "--jobs", "1", "--threads", "1", "--out", str(out)]
    run_cli(*args, "--level", "0.5")
    config = read_json(out / "config.json")
    assert config["options"] == {"level": 0.5}
    row = read_json(out / "results.json")["runs"]["lstm-plain-seed1"]["final"]
    assert {"test_acc", "test_loss", "test_negated_acc", "test_negated_loss"} <= set(row)
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_negated_acc" in header
    markdown = (out / "results.md").read_text()
    assert "# Phased LSTM reproduction: toy task" in markdown and "level 0.5" in markdown
    assert "- --level: 0.5" in markdown
    # The option is part of the protocol: a resume with another value is refused.
    with pytest.raises(SystemExit, match=r"another protocol \(--level was 0.5, now 0.7\)"):
        run_cli(*args, "--level", "0.7", "--resume")
    # An option of one experiment is not one of another.
    with pytest.raises(SystemExit):
        run_cli("freq", "--level", "1", *TINY, "--out", str(tmp_path / "freq"))
    assert "argument --level: not an option of freq" in capsys.readouterr().err


def test_data_command_dispatches_to_a_registered_builder(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["data", "nothing-here"])
    assert "unknown dataset 'nothing-here'" in capsys.readouterr().err
    calls = []
    module = types.ModuleType("toy_builder")
    module.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "toy_builder", module)
    monkeypatch.setitem(
        datasets.DATASET_BUILDERS, "toy", datasets.DatasetBuilder("toy", "", "toy_builder")
    )
    assert main(["data", "toy", "--out", "x", "--help"]) == 0
    assert calls == [["--out", "x", "--help"]]


# Progress ------------------------------------------------------------------------------------


def test_progress_lines_without_a_terminal():
    stream = StringIO()
    progress = Progress({"a": 1.0, "b": 3.0}, epochs=2, stream=stream, bar=False, interval=0.0)
    progress.start("a", 0)
    progress.start("b", 1)  # resumed after its first epoch
    progress.epoch("a", {"epoch": 1, "test_acc": 0.5, "wall_s": 1.0})
    progress.epoch("a", {"epoch": 2, "test_acc": 0.75, "wall_s": 2.0})
    progress.run_done("a", "[a] done")
    text = stream.getvalue()
    assert "[b] training for 2 epochs, continuing after epoch 1" in text
    assert "[a] epoch 2/2: test_acc 0.75 (2 s)" in text
    last = text.splitlines()[-1]
    assert last.startswith("progress: 1 of 2 runs done, 3 of 4 epochs, ") and "ETA " in last
    # Weighed by cost: a's 2 epochs (weight 1) took the time; b's last one weighs 3.
    assert "ETA unknown" not in last and "\r" not in text
    assert progress.fraction() == pytest.approx((2 * 1 + 1 * 3) / (2 * 1 + 2 * 3))


def test_progress_counts_resumed_epochs_of_runs_still_waiting_for_a_worker(monkeypatch):
    """--resume with more runs than workers: a run that has not started in this command yet
    still has its checkpoint's epochs done (once showed 37 of 480 with 77 trained)."""
    clock_now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock_now[0])
    resumed = {"a": 3, "b": 2, "c": 0}
    progress = Progress(dict.fromkeys("abc", 1.0), 4, stream=StringIO(), bar=False, resumed=resumed)
    assert " 5 of 12 epochs" in progress.summary()
    assert progress.fraction() == pytest.approx(5 / 12)
    progress.start("a", 3)
    clock_now[0] += 100.0
    progress.epoch("a", {"epoch": 4, "wall_s": 100.0})
    assert " 6 of 12 epochs" in progress.summary()
    # Only the epoch trained in this command sets the pace: 6 epochs left at 100 s each.
    assert progress.summary().endswith("ETA 10:00")


def test_progress_shows_the_estimate_until_training_is_measured(monkeypatch):
    clock_now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock_now[0])
    progress = Progress({"a": 1.0}, epochs=2, stream=StringIO(), bar=False, expected=3600.0)
    clock_now[0] += 600.0
    assert progress.summary().endswith("10:00 elapsed, ETA 50:00 (estimated)")
    progress.start("a", 0)
    # Once an epoch is measured, its pace counts as much as the estimate's (which left 50 min
    # for the 2 epochs when training began): 1 epoch in 10 min leaves (25 + 10) / 2 = 17.5 min.
    clock_now[0] += 600.0
    progress.epoch("a", {"epoch": 1, "wall_s": 600.0})
    assert progress.summary().endswith("20:00 elapsed, ETA 17:30")
    # Without an estimate: unknown until an epoch ends, then the measured pace alone.
    progress = Progress({"a": 1.0}, epochs=2, stream=StringIO(), bar=False)
    progress.start("a", 0)
    clock_now[0] += 5.0
    progress.advance("a", 0.01)  # a few seconds of warm-up make no figure
    assert progress.summary().endswith("ETA unknown")
    clock_now[0] += 595.0
    progress.epoch("a", {"epoch": 1, "wall_s": 600.0})
    assert progress.summary().endswith("ETA 10:00")


def _eta_seconds(summary: str) -> float:
    text = summary.split("ETA ", 1)[1].split()[0]
    seconds = 0
    for part in text.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds


@pytest.mark.parametrize("misestimate", [0.75, 1.3], ids=["estimate-short", "estimate-long"])
def test_progress_eta_stays_near_the_truth_from_the_first_update(monkeypatch, misestimate):
    """A fake clock through a schedule of uneven runs, one after the other, with what made the
    ETA wild (8:35:05 in the first seconds of a 12-minute job): processes that take seconds to
    start, a slow first batch per run, per-epoch costs the estimate got 10-20% wrong, either
    way, and a total it got 25-30% wrong. From the first update to the end the ETA stays within
    a factor 1.5 of the time actually left (5 s of slack for the last run's final measures)."""
    clock_now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock_now[0])
    estimated = {"a": 10.0, "b": 60.0, "c": 25.0}  # seconds per epoch, as the estimate says
    actual = {"a": 12.0, "b": 54.0, "c": 28.0}
    epochs, batches, warm_up, setup, final = 3, 10, 5.0, 4.0, 3.0
    # The schedule: (time, event), the runs one after the other.
    events, now = [], 8.0  # the worker process starts
    for name, epoch_seconds in actual.items():
        now += setup
        events.append((now, ("start", name, 0)))
        for epoch in range(epochs):
            for batch in range(batches):
                now += epoch_seconds / batches + (warm_up if epoch == batch == 0 else 0.0)
                if batch < batches - 1:
                    events.append((now, ("batch", name, epoch + (batch + 1) / batches)))
            events.append((now, ("epoch", name, {"epoch": epoch + 1, "wall_s": 0.0})))
        now += final
        events.append((now, ("done", name, None)))
    end = now
    progress = Progress(estimated, epochs, stream=StringIO(), bar=False, expected=misestimate * end)
    checked = []
    for at, (kind, name, value) in [(0.0, ("none", "", None))] + events:
        clock_now[0] = at
        if kind == "done":
            progress.run_done(name, f"[{name}] done")
        elif kind != "none":
            progress.handle((kind, name, value))
        eta, truth = _eta_seconds(progress.summary()), end - at
        checked.append((at, eta, truth))
        assert truth / 1.5 - 5 <= eta <= truth * 1.5 + 5, (at, kind, name, eta, truth)
    assert len(checked) == 1 + 3 * (2 + epochs * batches)


def test_progress_bar_on_a_terminal_redraws_one_line():
    stream = StringIO()
    progress = Progress({"a": 1.0}, epochs=4, stream=stream, bar=True)
    progress.start("a", 0)
    progress.advance("a", 2.0)
    progress.epoch("a", {"epoch": 3, "wall_s": 3.0})
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "[a] epoch 3/4" in text and "75% 0 of 1 runs done" in text
    assert "progress:" not in text  # no summary lines where the bar is


# Interruptions of parallel runs --------------------------------------------------------------


def test_pool_interrupted_while_starting_ends_the_started_workers(monkeypatch):
    """Ctrl-C or SIGTERM between two worker starts: the worker already started is ended (it
    would otherwise fail loudly, its parent gone) and the interruption goes on up."""
    import multiprocessing

    from phased_lstm_experiments import pool

    real = multiprocessing.get_context("spawn")
    started = []

    class Context:
        Pipe = staticmethod(real.Pipe)

        def Process(self, *args, **kwargs):  # noqa: N802 (multiprocessing's name)
            if started:
                raise KeyboardInterrupt
            process = real.Process(target=time.sleep, args=(60,))
            started.append(process)
            return process

    monkeypatch.setattr(pool.multiprocessing, "get_context", lambda method: Context())
    with pytest.raises(KeyboardInterrupt):
        pool._WorkerPool(2, {}, "unused", resume=False)
    assert len(started) == 1
    started[0].join(timeout=10)
    assert not started[0].is_alive() and started[0].exitcode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("moment", ["workers-starting", "main-killed"])
def test_interrupted_parallel_run_leaves_no_process(tmp_path, moment):
    """SIGTERM while the workers are still starting (not yet training: idle, their runs
    queued), or SIGKILL of the main process while they train: everything ends within seconds.
    (SIGTERM while they train: test_cli's test_signal_mid_run...[2-SIGTERM].)"""
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    args = ["freq", "--condition", "standard,async", "--models", "lstm", "--epochs", "400"]
    args += ["--samples-per-epoch", "32", "--test-samples", "32", "--threads", "1"]
    args += ["--jobs", "2", "--no-progress-bar", "--out", str(out)]
    command = [sys.executable, "-m", "phased_lstm_experiments.cli", "reproduce", *args]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stderr=stderr, start_new_session=True)
    group = process.pid
    try:
        if moment == "workers-starting":
            assert wait_for(lambda: "running 2 runs" in log.read_text(), 120), log.read_text()
            signal_sent = signal.SIGTERM
        else:
            checkpoints = [out / "runs" / f"lstm-{c}-seed1" / "checkpoints" / "last.ckpt"
                           for c in ("standard", "async")]  # fmt: skip
            assert wait_for(lambda: all(c.exists() for c in checkpoints), 240), log.read_text()
            signal_sent = signal.SIGKILL
        sent = time.monotonic()
        process.send_signal(signal_sent)
        process.wait(timeout=30)
        assert wait_for(lambda: not process_group(group), 30), process_group(group)
        assert time.monotonic() - sent < 35
    finally:
        for pid in process_group(group):
            os.kill(pid, signal.SIGKILL)
        process.kill()
    text = log.read_text()
    if moment == "workers-starting":
        assert process.returncode == 128 + signal.SIGTERM
        assert "interrupted; rerun the same command with --resume" in text, text[-2000:]
        assert "Traceback" not in text, text[-2000:]
        session = read_json(out / "results.json")["sessions"][-1]
        assert session["status"] == "interrupted" and session["runs"] == 0
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))


def test_nmnist_sim_is_a_data_command(tmp_path, capsys):
    assert "nmnist-sim" in datasets.DATASET_BUILDERS
    # A bad option reaches the builder's own parser, whose prog names the command.
    with pytest.raises(SystemExit):
        main(["data", "nmnist-sim", "--per-class", "zero"])
    assert "phased-lstm data nmnist-sim" in capsys.readouterr().err


def test_build_kernels_command_forwards_to_the_library(monkeypatch):
    import phased_lstm.ops.build as build

    calls = []
    monkeypatch.setattr(build, "build_kernels", lambda verbose: calls.append(verbose) or "DIR")
    assert main(["build-kernels", "--verbose"]) == 0
    assert calls == [True]
