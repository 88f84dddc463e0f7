"""The experiment package: baselines, batch norms, the CLI end to end, resume, DDP, errors."""

import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm.data import frequency_task  # noqa: E402
from phased_lstm_experiments import estimate, runner  # noqa: E402
from phased_lstm_experiments.cli import main  # noqa: E402
from phased_lstm_experiments.config import (  # noqa: E402
    ExperimentConfig,
    parameter_clip,
)
from phased_lstm_experiments.files import ExperimentError  # noqa: E402
from phased_lstm_experiments.models import (  # noqa: E402
    MaskedBatchNorm,
    ModelSpec,
    RecurrentBNLSTM,
    StepwiseBatchNorm,
    build_model,
    step_mask,
)
from phased_lstm_experiments.tasks import TASKS, preset_config  # noqa: E402

SPEC = ModelSpec(input_size=1, num_outputs=2, classify=True, hidden_size=12, max_steps=40)
TINY = ["--epochs", "1", "--samples-per-epoch", "32", "--test-samples", "32"]
TINY += ["--jobs", "1", "--threads", "1", "--no-progress-bar"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def padded_batch(n=6, steps=30, seed=0):
    """Random values and times with lengths from 1 to ``steps``, garbage in the padding."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(1, steps, n).round().long()
    values = torch.randn(n, steps, 1, generator=generator)
    times = torch.rand(n, steps, generator=generator, dtype=torch.float64).cumsum(1)
    return values, times, lengths


# Baselines and batch normalisation --------------------------------------------------------


@pytest.mark.parametrize("name", ["plstm", "lstm", "bnlstm-input", "bnlstm"])
def test_eval_padded_batch_equals_each_sample_alone(name):
    torch.manual_seed(0)
    model = build_model(name, SPEC)
    values, times, lengths = padded_batch()
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        model(values, times, lengths)
    model.eval()
    with torch.no_grad():
        batch = model(values, times, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(values[i : i + 1, :n], times[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(batch[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "bnlstm-input", "bnlstm"])
def test_padding_content_never_matters_in_training(name):
    torch.manual_seed(0)
    model = build_model(name, SPEC)
    values, times, lengths = padded_batch()
    mask = step_mask(lengths, values.shape[1]).t()
    noisy = torch.where(mask.unsqueeze(-1), values, torch.full_like(values, 1e3))
    noisy_times = torch.where(mask, times, torch.full_like(times, -7.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(values, times, lengths)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    out_noisy = model(noisy, noisy_times, lengths)
    torch.testing.assert_close(out, out_noisy)
    for key, value in model.state_dict().items():  # running statistics too
        torch.testing.assert_close(value, after[key])


def test_masked_batch_norm_uses_valid_steps_only():
    norm = MaskedBatchNorm(2, momentum=1.0)
    x = torch.randn(3, 5, 2)
    lengths = torch.tensor([5, 2, 1])
    out = norm(x, lengths)
    valid = torch.cat([x[0, :5], x[1, :2], x[2, :1]])
    torch.testing.assert_close(norm.running_mean, valid.mean(0))
    torch.testing.assert_close(norm.running_var, valid.var(0))
    mask = step_mask(lengths, 5).t()
    normalised = out[mask]
    torch.testing.assert_close(normalised.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert torch.all(out[~mask] == 0)


def test_stepwise_batch_norm_statistics_per_step():
    norm = StepwiseBatchNorm(3, max_steps=4, gamma=1.0, momentum=1.0)
    x = torch.randn(6, 5, 3)  # (S, N, F)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[2:, 3:] = False  # two samples end after step 1
    mask[3:, 1:] = False  # from step 3 on one valid sample: its variance says nothing
    out = norm(x, mask)
    for step in range(3):
        valid = x[step][mask[step]]
        # Training: normalised with the batch statistics of the step's valid samples.
        torch.testing.assert_close(out[step][mask[step]].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(norm.running_mean[step], valid.mean(0))
        torch.testing.assert_close(norm.running_var[step], valid.var(0))
    assert norm.steps_seen.tolist() == [1, 1, 1, 0]
    # Steps with a single valid sample use what evaluation would: the last step seen.
    expected = (x[4] - norm.running_mean[2]) / torch.sqrt(norm.running_var[2] + norm.eps)
    torch.testing.assert_close(out[4], expected)
    # Evaluation: running statistics per step, the last one seen past the cap or the seen steps.
    norm.eval()
    out_eval = norm(x, mask)
    for step in range(6):
        used = min(step, 2)
        expected = (x[step] - norm.running_mean[used]) / torch.sqrt(
            norm.running_var[used] + norm.eps
        )
        torch.testing.assert_close(out_eval[step], expected)


def test_recurrent_bn_lstm_train_and_eval_statistics_differ():
    torch.manual_seed(0)
    rnn = RecurrentBNLSTM(2, 8, max_steps=10)
    assert torch.allclose(rnn.norm_h.weight, torch.full((32,), 0.1))  # gamma init 0.1
    x, lengths = torch.randn(5, 10, 2), torch.tensor([10, 8, 6, 4, 2])
    train_out = rnn(x, lengths)
    assert rnn.norm_c.steps_seen.tolist() == [1] * 8 + [0] * 2  # steps with >= 2 samples
    rnn.eval()
    with torch.no_grad():
        eval_out = rnn(x, lengths)
    assert not torch.allclose(train_out, eval_out)


def test_cfc_reads_per_sample_time_gaps():
    pytest.importorskip("ncps")
    torch.manual_seed(0)
    model = build_model("cfc", SPEC).eval()
    values, times, lengths = padded_batch()
    with torch.no_grad():
        batch = model(values, times, lengths)
        shifted = model(values, times * 3, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(values[i : i + 1, :n], times[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(batch[i], alone[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch, shifted)


def test_authors_initialisation():
    model = build_model("plstm", ModelSpec(input_size=1, num_outputs=2, classify=True))
    rnn = model.encoder.rnn
    hidden = rnn.hidden_size
    assert torch.all(rnn.bias_ih_l0[:hidden] == -0.1) and torch.all(rnn.bias_ih_l0[hidden:] == 0)
    assert torch.all(rnn.bias_hh_l0 == 0)
    assert abs(float(rnn.weight_hh_l0.detach().std()) - 0.1) < 0.01
    period = rnn.period_l0.detach()
    assert float(period.min()) >= torch.e - 1e-4 and float(period.max()) <= torch.e**3 + 1e-3
    assert torch.allclose(rnn.r_on_l0, torch.full_like(rnn.r_on_l0, 0.05))
    assert rnn.logit_r_on_l0.requires_grad  # the authors learned r_on too


@pytest.mark.parametrize("name", ["plstm", "lstm", "bnlstm-input", "bnlstm"])
def test_forget_gate_bias(name):
    spec = ModelSpec(input_size=1, num_outputs=2, classify=True, hidden_size=4, max_steps=5)
    for forget_bias in (0.0, 1.0):
        model = build_model(name, dataclasses.replace(spec, forget_bias=forget_bias))
        rnn = model.encoder.rnn
        bias = {"plstm": "bias_ih_l0", "bnlstm": "bias"}.get(name, "bias_ih")
        expected = torch.tensor([-0.1] * 4 + [forget_bias] * 4 + [0.0] * 8)
        assert torch.equal(getattr(rnn, bias).detach(), expected)


@pytest.mark.parametrize("name", ["plstm", "lstm", "bnlstm-input", "bnlstm"])
def test_gate_gradient_clipping_reaches_the_recurrence(name):
    # The gradient of a recurrent bias sums the gate gradients over steps and samples, so with
    # the gate gradient clipped at c it is at most c * L * N; without clipping it is far more.
    values, times, lengths = padded_batch()
    clip = 1e-6
    biggest = {}
    for bound in (None, clip):
        torch.manual_seed(0)
        model = build_model(name, dataclasses.replace(SPEC, grad_clip=bound)).double()
        model(values.double(), times, lengths).pow(2).sum().mul(1e3).backward()
        rnn = model.encoder.rnn
        bias = next(p for n, p in rnn.named_parameters() if n in ("bias_ih_l0", "bias_ih", "bias"))
        biggest[bound] = float(bias.grad.abs().max())
    steps, batch = values.shape[1], values.shape[0]
    assert biggest[clip] <= clip * steps * batch < biggest[None]


def test_parameter_clipping_only_where_the_recurrence_does_not_clip():
    paper = preset_config("freq", "paper")
    assert paper.gradient_clip_mode == "gates" and paper.time_gate_adam == "direct"
    assert preset_config("freq", "quick").gradient_clip_mode == "value"
    config = paper
    assert parameter_clip(config, "plstm") is None and parameter_clip(config, "bnlstm") is None
    assert parameter_clip(config, "cfc") == 10.0  # CfC has no LSTM gates to clip
    assert TASKS["freq"].model_spec(config, "plstm", "async").grad_clip == 10.0
    config.gradient_clip_mode = "value"
    assert parameter_clip(config, "plstm") == 10.0
    assert TASKS["freq"].model_spec(config, "plstm", "async").grad_clip is None
    # A folder written before the mode existed was trained with parameter clipping.
    old = config.to_dict()
    del old["gradient_clip_mode"], old["time_gate_adam"]
    assert ExperimentConfig.from_dict(old).gradient_clip_mode == "value"
    assert ExperimentConfig.from_dict(old).time_gate_adam == "stored"


# The command line -------------------------------------------------------------------------


def run_cli(*argv):
    return main(["reproduce", *argv])


def process_group(pgid: int) -> list[int]:
    """The live processes of group ``pgid``, from /proc (zombies are not alive)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry))
    return members


def wait_for(condition, timeout: float) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (checked every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def subnormals_flushed() -> bool:
    """Whether this process's CPU treats a subnormal float32 as zero."""
    return float(torch.tensor([1e-39]) * 2) == 0.0


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
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
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
            "unknown model 'gru' for freq; choose from plstm, lstm, bnlstm-input, bnlstm, cfc\n",
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


def test_frequency_task_feeds_the_models():
    values, times, lengths, labels = frequency_task(4, "async", seed=0)
    for name in ("plstm", "lstm", "bnlstm-input", "bnlstm"):
        logits = build_model(name, SPEC)(values, times, lengths)
        assert logits.shape == (4, 2)
