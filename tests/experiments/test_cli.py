"""The ``phased-lstm reproduce`` command end to end: runs, resume, signals, the estimate and its
schedule, DDP, errors a user can make."""

import json
import multiprocessing
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm_experiments import estimate, runner  # noqa: E402
from phased_lstm_experiments.cli import main  # noqa: E402
from phased_lstm_experiments.files import ExperimentError  # noqa: E402
from phased_lstm_experiments.tasks import TASKS, preset_config  # noqa: E402
from tests.experiments.helpers import (
    TINY,
    process_group,
    read_results,
    run_cli,
    subnormals_flushed,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "freq"
    assert not subnormals_flushed()  # reset after every test (conftest.py)
    run_cli(
        "freq", "--condition", "standard,async", "--models", "plstm,lstm", *TINY, "--out", str(out)
    )
    results = read_results(out)
    assert sorted(results["runs"]) == [
        "lstm-async-seed1",
        "lstm-standard-seed1",
        "plstm-async-seed1",
        "plstm-standard-seed1",
    ]
    run = results["runs"]["plstm-async-seed1"]
    assert run["epochs"] == 1 and 0 <= run["final"]["test_acc"] <= 1
    assert 0 < run["final"]["update_fraction"] < 0.2
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 1 and config["samples_per_epoch"] == 32
    assert config["condition_samples"] == {}  # the explicit option beat the preset
    for name in (
        "results.md",
        "metrics.csv",
        "accuracy_bars.png",
        "learning_curves.png",
        "sampling_conditions.png",
    ):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "results.md").read_text()
    # Each row carries its own run's accuracy.
    for model, title in (("plstm", "Phased LSTM"), ("lstm", "LSTM")):
        for condition, condition_title in (("standard", "standard (1 ms)"), ("async", "asynch")):
            accuracy = results["runs"][f"{model}-{condition}-seed1"]["final"]["test_acc"]
            row = [r for r in markdown.splitlines() if r.startswith(f"| {condition_title}")]
            row = [r for r in row if r.split("|")[2].strip() == title]
            assert len(row) == 1 and f"| {100 * accuracy:.1f} (1 seed) |" in row[0], row
    # The quick preset's protocol; the paper preset's is the authors' (gates, direct).
    assert config["gradient_clip_mode"] == "value" and config["time_gate_adam"] == "stored"
    assert "clipped by value at 10" in markdown
    assert "plain Adam on the stored log period" in markdown
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 4
    assert (out / "runs" / "plstm-async-seed1" / "checkpoints" / "last.ckpt").exists()
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary file
    # The training process flushed subnormal floats, and the report says so.
    assert subnormals_flushed() and results["sessions"][-1]["subnormals"] == "flushed"
    assert "| subnormal floats |" in markdown and "| finished | flushed |" in markdown


@pytest.mark.slow
def test_cli_adding_and_freq2(tmp_path):
    out = tmp_path / "adding"
    run_cli(
        "adding", "--condition", "tau0-2,tau6-8", "--models", "plstm,lstm", *TINY, "--out", str(out)
    )
    assert sorted(read_results(out)["runs"]) == [
        "lstm-adding-seed1",
        "plstm-tau0-2-seed1",
        "plstm-tau6-8-seed1",
    ]
    assert (out / "adding_mse.png").exists()
    assert "exp(U(6, 8))" in (out / "results.md").read_text()
    out2 = tmp_path / "freq2"
    clip_args = ["--gradient-clip-mode", "gates", "--time-gate-adam", "direct"]
    run_cli("freq2", "--models", "plstm", *clip_args, *TINY, "--out", str(out2))
    assert list(read_results(out2)["runs"]) == ["plstm-async-seed1"]
    markdown = (out2 / "results.md").read_text()
    assert "clipped at ±10 inside the recurrence" in markdown
    assert "period and r_on in their own units" in markdown


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(tmp_path, capsys):
    out = tmp_path / "resume"
    args = ["freq", "--condition", "async", "--models", "plstm,lstm", *TINY, "--out", str(out)]
    run_cli(*args)
    first = read_results(out)
    # An interruption during lstm's second epoch: its last.ckpt holds epoch 1, results.json
    # does not know it yet.
    results = read_results(out)
    del results["runs"]["lstm-async-seed1"]
    (out / "results.json").write_text(json.dumps(results))
    # The estimate of a resumed folder counts what is left: plstm's second epoch (results.json)
    # and lstm's (its checkpoint), not the first ones again.
    run_cli(*args, "--resume", "--epochs", "2", "--dry-run")
    assert "estimated time left on this machine (2 of 4 epochs to train)" in capsys.readouterr().err
    run_cli(*args, "--resume", "--epochs", "2")
    second = read_results(out)
    for name in ("plstm-async-seed1", "lstm-async-seed1"):
        history = second["runs"][name]["history"]
        assert [row["epoch"] for row in history] == [1, 2]
        # Epoch 1 was not trained again: the continuation starts from the checkpoint.
        assert history[0] == first["runs"][name]["history"][0]
        ckpt = torch.load(out / "runs" / name / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 2  # one batch per epoch
    # Everything finished: a further resume trains nothing.
    run_cli(*args, "--resume", "--epochs", "2")
    assert read_results(out) == second
    run_cli(*args, "--resume", "--epochs", "2", "--dry-run")
    assert "every run is trained already" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_over_a_truncated_checkpoint(tmp_path, capsys):
    """A last.ckpt cut short: --resume says so in one line naming the file and the choice;
    --restart-broken trains that run again from scratch, keeps the broken file aside, and the
    other run still resumes from its checkpoint."""
    out = tmp_path / "broken"
    args = ["freq", "--condition", "async", "--models", "plstm,lstm", *TINY, "--out", str(out)]
    run_cli(*args)
    first = read_results(out)
    checkpoint = out / "runs" / "lstm-async-seed1" / "checkpoints" / "last.ckpt"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run_cli(*args, "--resume", "--epochs", "2")
    message = str(refused.value.code)
    assert message.startswith(f"phased-lstm: error: --resume: the checkpoint {checkpoint} is ")
    assert "--restart-broken" in message and "restore the file" in message, message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
    assert checkpoint.read_bytes() == whole[: len(whole) // 2]  # nothing touched
    run_cli(*args, "--resume", "--epochs", "2", "--restart-broken")
    err = capsys.readouterr().err
    assert "lstm-async-seed1 starts again from scratch" in err, err
    assert (checkpoint.parent / "last.ckpt.broken").read_bytes() == whole[: len(whole) // 2]
    assert "[lstm-async-seed1] training for 2 epochs\n" in err  # from epoch 0
    assert "[plstm-async-seed1] training for 2 epochs, continuing after epoch 1" in err
    second = read_results(out)
    assert second["runs"]["plstm-async-seed1"]["history"][0] == first["runs"]["plstm-async-seed1"][
        "history"][0]  # fmt: skip
    for name in ("lstm-async-seed1", "plstm-async-seed1"):
        assert [row["epoch"] for row in second["runs"][name]["history"]] == [1, 2]
        ckpt = torch.load(out / "runs" / name / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "jobs, signum", [("1", signal.SIGINT), ("2", signal.SIGTERM)], ids=["1-SIGINT", "2-SIGTERM"]
)
def test_signal_mid_run_then_resume_continues_from_the_last_epoch(tmp_path, jobs, signum, capsys):
    """A real interruption: SIGINT (Ctrl-C) or SIGTERM while training, then --resume. The
    command ends within seconds with the status 128 + the signal's number that shells and
    schedulers read, and leaves no process behind; the run continues from its last finished
    epoch (not from the start), and nothing is left half-written."""
    out = tmp_path / "killed"
    args = ["freq", "--condition", "standard,async", "--models", "lstm", "--epochs", "400"]
    args += ["--samples-per-epoch", "32", "--test-samples", "32", "--threads", "1"]
    args += ["--jobs", jobs, "--no-progress-bar", "--out", str(out)]
    command = [sys.executable, "-m", "phased_lstm_experiments.cli", "reproduce", *args]
    # A process group of its own, to find every process it started.
    # SIGINT at its default, as under a terminal: a test run started as a background job (`cmd &`
    # in a script) ignores SIGINT, its children inherit that, and the command then rightly
    # ignores Ctrl-C (nothing to test).
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = out / "runs" / "lstm-standard-seed1" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert checkpoint.exists(), "no checkpoint after the first epoch"
        # A second command on the folder in use: refused in one line naming the holder.
        capsys.readouterr()
        with pytest.raises(SystemExit) as second:
            run_cli(*args[:-2], "--resume", "--out", str(out))
        message = str(second.value.code)
        assert message.startswith(f"phased-lstm: error: --out {out} is in use by another "), message
        assert f"(PID {process.pid}, started 20" in message and "\n" not in message, message
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert time.monotonic() - sent < 30
        # multiprocessing's resource tracker ends on its own once the main process is gone.
        assert wait_for(lambda: not process_group(process.pid), 10), process_group(process.pid)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr[-2000:]  # 130, 143
    assert "interrupted" in stderr and "--resume" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    saved = torch.load(checkpoint, weights_only=False)
    done = len(saved["history"])
    assert 1 <= done < 400
    assert saved["global_step"] == done  # one batch per epoch: the checkpoint is whole
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    # Resume for two more epochs than the furthest run did (with two jobs the other one may be
    # ahead, its worker having started first on a busy machine): only those are trained.
    furthest = max(
        len(torch.load(path, weights_only=False)["history"])
        for path in out.glob("runs/*/checkpoints/last.ckpt")
    )
    resume = ["--resume", "--epochs", str(furthest + 2)]
    capsys.readouterr()
    run_cli(*[a for a in args if a not in ("--epochs", "400")], *resume)
    history = read_results(out)["runs"]["lstm-standard-seed1"]["history"]
    assert [row["epoch"] for row in history] == list(range(1, furthest + 3))
    assert history[:done] == saved["history"]
    # One progress display across the runs, whatever the number of jobs.
    progress = [line for line in capsys.readouterr().err.splitlines() if "runs done" in line]
    assert progress[-1].startswith("progress: 2 of 2 runs done, ") and "ETA 0:00" in progress[-1]
    assert any(line.startswith("progress: 1 of 2 runs done") for line in progress), progress
    statuses = [session["status"] for session in read_results(out)["sessions"]]
    assert statuses == ["interrupted", "finished"]


@pytest.mark.slow
def test_resume_with_another_condition_keeps_the_earlier_runs_in_the_report(tmp_path):
    out = tmp_path / "grow"
    run_cli("freq", "--condition", "standard", "--models", "lstm", *TINY, "--out", str(out))
    # The long condition added later, for one model and another seed only.
    grow = ["--condition", "highres", "--models", "plstm", "--seeds", "2", "--resume"]
    run_cli("freq", *grow, *TINY, "--out", str(out))
    assert sorted(read_results(out)["runs"]) == ["lstm-standard-seed1", "plstm-highres-seed2"]
    rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    lstm_standard = [r for r in rows if r.startswith("| standard (1 ms) | LSTM |")]
    plstm_highres = [r for r in rows if r.startswith("| high resolution (0.1 ms) | Phased LSTM |")]
    assert len(lstm_standard) == 1 and "(1 seed)" in lstm_standard[0]
    assert len(plstm_highres) == 1 and "(1 seed)" in plstm_highres[0]
    # Pairs never run are shown as such, not as numbers.
    assert any(r.startswith("| standard (1 ms) | Phased LSTM | not run |") for r in rows)
    markdown = (out / "results.md").read_text()
    assert "selection: 1 of 1; runs recorded in this folder: 2" in markdown


def test_paper_preset_prints_its_estimate(tmp_path, capsys):
    run_cli(
        "freq",
        "--preset",
        "paper",
        "--condition",
        "standard",
        "--models",
        "lstm",
        "--jobs",
        "1",
        "--out",
        str(tmp_path / "paper"),
        "--dry-run",
    )
    err = capsys.readouterr().err
    assert "5 runs" in err and "70 epochs of 5000 examples" in err
    assert "estimated time on this machine" in err
    assert not (tmp_path / "paper").exists()


def test_every_command_worth_it_gets_the_estimate():
    """The quick presets are estimated before they train (their progress starts from it); a
    tiny run, cheaper than its miniatures, is not."""
    for experiment in ("freq", "adding", "nmnist"):
        config = preset_config(experiment, "quick")
        assert estimate.worth_estimating(
            config, {run: config.epochs for run in TASKS[experiment].runs(config)}
        )
    config = preset_config("freq", "quick")
    config.epochs, config.samples_per_epoch, config.test_samples = 1, 32, 32
    config.condition_samples = {}
    assert not estimate.worth_estimating(config, {run: 1 for run in TASKS["freq"].runs(config)})
    assert not estimate.worth_estimating(config, {run: 0 for run in TASKS["freq"].runs(config)})


def test_worth_estimating_counts_what_each_epoch_evaluates(monkeypatch):
    # A validating run evaluates its validation split every epoch, not the test set: a tiny
    # training set with a large validation split is worth its miniatures, with a tiny one not.
    config = preset_config("freq", "quick")
    config.epochs, config.samples_per_epoch, config.test_samples = 1, 32, 32
    config.condition_samples = {}
    left = {run: 1 for run in TASKS["freq"].runs(config)}
    monkeypatch.setattr(type(TASKS["freq"]), "evaluation_samples", lambda self, c: 100_000)
    assert estimate.worth_estimating(config, left)
    monkeypatch.setattr(type(TASKS["freq"]), "evaluation_samples", lambda self, c: 32)
    assert not estimate.worth_estimating(config, left)


def test_schedule_hands_each_run_to_the_first_free_worker():
    # Worker A: 3, then 1 at t=3, then 1 at t=4; worker B: 3, then 1 at t=3: the last ends at 5,
    # not at the 4.5 of the total shared evenly.
    assert estimate.schedule_seconds([3, 3, 1, 1, 1], jobs=2) == 5
    assert estimate.schedule_seconds([1, 5], jobs=2) == 5
    assert estimate.schedule_seconds([1, 5], jobs=1) == 6
    assert estimate.schedule_seconds([], jobs=2) == 0
    assert estimate.schedule_seconds([3, 3, 1, 1, 1], jobs=2, startup=2) == 7


def test_estimate_schedules_the_longest_epochs_first(monkeypatch):
    config = preset_config("freq", "quick")
    config.models, config.conditions, config.seeds = ["plstm", "lstm"], ["standard"], [1, 2]
    config.epochs, config.batch_size, config.samples_per_epoch = 2, 32, 32
    config.test_samples, config.trainer.jobs = 32, 2
    per_batch = {"plstm": 1.0, "lstm": 3.0}

    def timed(config, pairs, jobs, threads, batches):
        return {p: estimate.RunTiming(per_batch[p[0]], 0.0, 0.0, 0.0) for p in pairs}, 0.0

    monkeypatch.setattr(estimate, "time_side_by_side", timed)
    result = estimate.estimate_time(config)
    assert result.epoch_seconds == {
        (model, "standard", seed): per_batch[model] for model in per_batch for seed in (1, 2)
    }
    # Runs of 6 s (lstm) and 2 s (plstm), two each: the lstm runs first on both workers, then
    # the plstm ones, 8 s; in the experiment's order (plstm, lstm, plstm, lstm) it would be 10.
    assert result.seconds == 8
    order = runner.run_order(config, TASKS["freq"].runs(config), result.epoch_seconds)
    assert [run[0] for run in order] == ["lstm", "lstm", "plstm", "plstm"]
    # Without a measure for every run, the task's relative cost (equal here) keeps the order.
    runs = TASKS["freq"].runs(config)
    assert runner.run_order(config, runs, {order[0]: 1.0}) == runs


def test_run_seconds_scale_the_parts_of_a_miniature():
    config = preset_config("freq", "quick")
    config.batch_size, config.samples_per_epoch, config.test_samples = 10, 95, 21
    config.condition_samples = {"high": 200}
    timing = estimate.RunTiming(training_batch=2.0, test_pass=1.0, epoch_rest=0.5, fixed=7.0)
    # 10 training batches, 3 test passes and the rest: 23.5 s an epoch; 2 epochs and the fixed.
    assert timing.run_seconds(config, "standard", 2) == pytest.approx(7 + 2 * 23.5)
    assert timing.run_seconds(config, "high", 1) == pytest.approx(7 + 20 * 2 + 3 + 0.5)
    assert timing.run_seconds(config, "standard", 0) == pytest.approx(7)


def test_a_miniature_run_is_timed_in_parts(tmp_path, monkeypatch):
    config = preset_config("freq", "quick")
    config.batch_size, config.hidden_size = 4, 8
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    timing = estimate.time_run(config, "plstm", "standard", 1, batches=2)
    assert timing.training_batch > 0 and timing.test_pass > 0
    # What is left after the steady epochs, measured by difference: can be ~0 on a busy machine.
    assert timing.epoch_rest >= 0 and timing.fixed >= 0
    # Its checkpoints and logs went to a temporary folder, removed afterwards.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_runs_are_timed_in_parallel_processes(monkeypatch):
    """With several jobs, the timing happens in that many other processes at once; each times
    every pair, and an error in one of them is an ExperimentError, with no process left."""
    config = preset_config("freq", "quick")
    config.batch_size, config.hidden_size = 4, 8

    def here(*args):
        raise AssertionError("timed in the main process")

    monkeypatch.setattr(estimate, "time_run", here)
    pairs = [("plstm", "standard", 1), ("lstm", "standard", 1)]
    timed, startup = estimate.time_side_by_side(config, pairs, jobs=2, threads=1, batches=1)
    assert set(timed) == set(pairs) and 0 < startup < 60
    assert all(0 < timing.training_batch < 30 for timing in timed.values())
    with pytest.raises(ExperimentError, match="timing runs for the estimate failed"):
        estimate.time_side_by_side(config, [("nope", "standard", 1)], jobs=2, threads=1, batches=1)
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "phased_lstm_experiments.cli",
        "reproduce",
        "freq",
        "--condition",
        "standard",
        "--models",
        "lstm",
        "--epochs",
        "1",
        "--samples-per-epoch",
        "128",
        "--test-samples",
        "64",
        "--no-progress-bar",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    run = read_results(out)["runs"]["lstm-standard-seed1"]
    assert run["epochs"] == 1
    ckpt = torch.load(
        out / "runs" / "lstm-standard-seed1" / "checkpoints" / "last.ckpt", weights_only=False
    )
    # 128 examples split over 2 processes: 2 batches of 32 each, not 4.
    assert ckpt["global_step"] == 2
    assert "strategy ddp" in (out / "results.md").read_text()


# Errors a user can make: one line, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        # The chosen experiment's own choices, not every experiment's mixed together.
        (
            ["freq", "--condition", "fast"],
            "unknown condition 'fast' for freq; choose from standard, highres, async\n",
        ),
        (
            ["adding", "--condition", "highres"],
            "unknown condition 'highres' for adding; choose from tau0-2, tau2-4, tau4-6, tau6-8\n",
        ),
        (
            ["freq", "--models", "plstm,gru"],
            "unknown model 'gru' for freq; choose from plstm, lstm, bnlstm-input, bnlstm, cfc, "
            "plstm-gapscaled\n",
        ),
        (["freq", "--condition", ","], "argument --condition: expected comma-separated"),
        (["freq", "--seeds", "a"], "comma-separated non-negative integers"),
        (["freq", "--epochs", "0"], "expected a positive integer"),
    ],
    ids=["condition", "condition-of-other-experiment", "model", "empty", "seeds", "epochs"],
)
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_output_folder_errors(tmp_path):
    out = tmp_path / "shared"
    run_cli("freq", "--condition", "standard", "--models", "lstm", *TINY, "--out", str(out))
    cases = [
        (["adding", "--models", "lstm"], "holds the results of another experiment ('freq'"),
        (["freq", "--condition", "standard", "--models", "lstm"], "pass --resume to continue"),
        (
            [
                "freq",
                "--condition",
                "standard",
                "--models",
                "lstm",
                "--resume",
                "--batch-size",
                "16",
            ],
            "another protocol (batch_size was 32, now 16)",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(*argv, *TINY, "--out", str(out))
        assert message in str(exit_info.value.code), argv
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds no phased-lstm experiment"):
        run_cli("freq", *TINY, "--out", str(stranger))


def test_missing_optional_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ncps", None)  # import ncps raises ImportError
    with pytest.raises(SystemExit, match=r"pip install phased-lstm\[cfc\]"):
        run_cli("freq", "--models", "cfc", *TINY, "--out", str(tmp_path / "cfc"))


def test_bench_subcommand_is_forwarded(monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("phased_lstm_experiments.bench")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "phased_lstm_experiments.bench", fake)
    assert main(["bench", "--repeats", "2"]) == 0
    assert calls == [["--repeats", "2"]]
