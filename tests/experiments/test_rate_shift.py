"""The rate-shift matrix: freq's tests under the other samplings against the library's own test
draws, the matrix's rows, summary and table from hand-made records, nmnist's test rates, and the
``phased-lstm rate-shift`` command over several folders."""

import json
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phased_lstm.data import frequency_task
from phased_lstm_experiments.cli import main
from phased_lstm_experiments.rate_shift import shift_rows, shift_summary, shift_table
from phased_lstm_experiments.tasks import get_task, preset_config

pytestmark = pytest.mark.usefixtures("one_thread")

FREQ = get_task("freq")
NMNIST = get_task("nmnist")


class FirstValueSign(nn.Module):
    """Class 1 where a sequence's first value is positive: a rule whose accuracy on a test set
    can be computed from the data alone. It refuses to be called in training mode."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, values, times, lengths):
        assert not self.training, "tested in training mode"
        return F.one_hot((values[:, 0, 0] > 0).long(), 2).float()


def test_freq_tests_a_trained_model_under_the_other_samplings():
    config = preset_config("freq", "quick")
    config.test_samples, config.batch_size = 48, 16
    network = FirstValueSign().train()
    measures = FREQ.final_measures(config, "plstm", "highres", 2, network)
    assert set(measures) == {"test_standard_acc", "test_async_acc"}  # not its own sampling
    for condition in ("standard", "async"):
        # The test stream of seed 2 (SyntheticTask: SeedSequence([seed, 1])), drawn here.
        rng = np.random.default_rng(np.random.SeedSequence([2, 1]))
        values, _, _, targets = frequency_task(48, condition, generator=rng)
        expected = float(((values[:, 0, 0] > 0).long() == targets).float().mean())
        assert measures[f"test_{condition}_acc"] == pytest.approx(expected)
    assert not network.training
    # freq2 has one sampling: nothing to test it under.
    assert get_task("freq2").final_measures(config, "plstm", "async", 1, FirstValueSign()) == {}


def freq_record(model, condition, seed, own, **others):
    measures = {f"test_{name}_acc": value for name, value in others.items()}
    record = {"model": model, "condition": condition, "seed": seed, "final": {"test_acc": own}}
    return {**record, "measures": measures} if measures else record


def freq_results() -> dict:
    runs = [
        freq_record("plstm", "standard", 1, 0.9, highres=0.6, **{"async": 0.8}),
        freq_record("plstm", "standard", 2, 0.8, highres=0.5, **{"async": 0.7}),
        freq_record("lstm", "highres", 1, 0.55, standard=0.5, **{"async": 0.52}),
        freq_record("plstm", "async", 1, 0.7),  # an older version: no test under the others
    ]
    return {"runs": {f"run{index}": run for index, run in enumerate(runs)}}


def test_freq_matrix_from_hand_made_records():
    config = preset_config("freq", "rates")
    config.options["rate_augment"] = [0.1, 1.0]
    summary = shift_summary(FREQ, config, freq_results())
    assert summary["tests"] == {
        "standard": "standard (1 ms)",
        "highres": "high resolution (0.1 ms)",
        "async": "asynchronous",
    }
    first, second = summary["rows"]
    assert (first["model"], first["condition"], first["seeds"]) == ("plstm", "standard", [1, 2])
    assert first["rate_augment"] == [0.1, 1.0]
    assert first["accuracy"]["standard"]["values"] == [0.9, 0.8]
    for test, mean in (("standard", 0.85), ("highres", 0.55), ("async", 0.75)):
        assert first["accuracy"][test]["mean"] == pytest.approx(mean)
        assert first["accuracy"][test]["std"] == pytest.approx(statistics.stdev([0.0, 0.1]))
    assert (second["model"], second["condition"]) == ("lstm", "highres")
    assert {t: a["mean"] for t, a in second["accuracy"].items()} == {
        "standard": 0.5,
        "highres": 0.55,
        "async": 0.52,
    }
    table = shift_table(FREQ, summary["tests"], shift_rows(FREQ, config, freq_results()))
    assert table[-2] == (
        "| Phased LSTM | standard (1 ms) | shares in [0.1, 1] | **85.0 ± 7.1 (2 seeds)** | "
        "55.0 ± 7.1 (2 seeds) | 75.0 ± 7.1 (2 seeds) |"
    )
    assert table[-1] == (
        "| LSTM | high resolution (0.1 ms) | shares in [0.1, 1] | 50.0 (1 seed) | "
        "**55.0 (1 seed)** | 52.0 (1 seed) |"
    )
    # A folder without the option (older ones included) reads as no augmentation.
    del config.options["rate_augment"]
    assert shift_summary(FREQ, config, freq_results())["rows"][0]["rate_augment"] is None


def test_figure_error_bars_stay_within_0_and_100_percent():
    import matplotlib

    matplotlib.use("Agg")
    from phased_lstm_experiments.rate_shift import shift_figure

    # Seeds at 99.9% and 60%: mean 79.95, std 28.2, so mean + std would draw above 100%.
    runs = [
        freq_record("plstm", "standard", 1, 0.999, highres=0.5, **{"async": 0.05}),
        freq_record("plstm", "standard", 2, 0.6, highres=0.5, **{"async": 0.45}),
    ]
    results = {"runs": {f"run{index}": run for index, run in enumerate(runs)}}
    config = preset_config("freq", "rates")
    summary = shift_summary(FREQ, config, results)
    figure = shift_figure(FREQ, summary["tests"], shift_rows(FREQ, config, results))
    (container,) = figure.axes[0].containers
    (bars,) = container.lines[2]
    ends = [y for segment in bars.get_segments() for _, y in segment]
    spread = statistics.stdev([99.9, 60.0])
    assert max(ends) == pytest.approx(100.0)
    assert min(ends) == pytest.approx(0.0)  # async: mean 25, std 28.3, cut at 0
    assert sorted(ends)[1:3] == pytest.approx([50.0, 50.0])  # high resolution: no spread
    assert any(y == pytest.approx(79.95 - spread) for y in ends)  # standard's lower end is not cut


def test_accuracy_bars_error_bars_stay_within_0_and_100_percent():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    from phased_lstm_experiments.tables import accuracy_bars

    runs = [freq_record("plstm", "standard", 1, 0.999), freq_record("plstm", "standard", 2, 0.6)]
    for run in runs:
        run["epochs"] = 10
    results = {"runs": {f"run{index}": run for index, run in enumerate(runs)}}
    config = preset_config("freq", "rates")
    config.models, config.conditions = ["plstm"], ["standard"]
    figure = accuracy_bars(FREQ, config, results)
    (errorbar,) = [c for c in figure.axes[0].containers if isinstance(c, ErrorbarContainer)]
    (bars,) = errorbar.lines[2]
    ends = sorted(y for segment in bars.get_segments() for _, y in segment)
    assert ends == pytest.approx([79.95 - statistics.stdev([99.9, 60.0]), 100.0])


def test_nmnist_matrix_reads_the_four_test_rates():
    final = {"test_acc": 0.9, "test_rate20_acc": 0.5, "test_rate40_acc": 0.8}
    final["test_rate100_acc"] = 0.85
    record = {"model": "plstm", "condition": "rate75", "seed": 1, "final": final}
    assert NMNIST.shift_accuracies(record) == {
        "rate20": 0.5,
        "rate40": 0.8,
        "rate75": 0.9,
        "rate100": 0.85,
    }
    older = {**record, "final": {k: v for k, v in final.items() if k != "test_rate20_acc"}}
    config = preset_config("nmnist", "quick")
    rows = shift_rows(NMNIST, config, {"runs": {"a": older}})
    table = shift_table(NMNIST, NMNIST.shift_tests(config), rows)
    assert table[-3].endswith("| rho = 0.2 | rho = 0.4 | rho = 0.75 | rho = 1.0 |")
    assert table[-1] == (
        "| Phased LSTM | rho = 0.75 | none | — | 80.0 (1 seed) | **90.0 (1 seed)** | "
        "85.0 (1 seed) |"
    )
    config.options["rate_augment"] = [0.2, 1.0]
    rows = shift_rows(NMNIST, config, {"runs": {"a": record}})
    assert shift_table(NMNIST, NMNIST.shift_tests(config), rows)[-1].startswith(
        "| Phased LSTM | random shares (instead of rho = 0.75) | shares in [0.2, 1] |"
    )


# phased-lstm rate-shift ------------------------------------------------------------------------


def write_folder(folder, experiment, preset, augment, runs):
    config = preset_config(experiment, preset)
    if augment is not None:
        config.options["rate_augment"] = augment
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "results.json").write_text(json.dumps({"version": 1, "runs": runs}))


def test_rate_shift_command_puts_folders_into_one_matrix(tmp_path, capsys):
    plain, augmented = tmp_path / "plain", tmp_path / "augmented"
    write_folder(plain, "freq", "rates", None, freq_results()["runs"])
    runs = {"a": freq_record("plstm", "standard", 1, 0.7, highres=0.72, **{"async": 0.71})}
    write_folder(augmented, "freq", "rates", [0.1, 1.0], runs)
    out = tmp_path / "matrix"
    assert main(["rate-shift", str(augmented), str(plain), "--out", str(out)]) == 0
    assert "wrote rate_shift.md, rate_shift.json, rate_shift.png" in capsys.readouterr().err
    lines = (out / "rate_shift.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| Phased LSTM |") or "| LSTM |" in line]
    # The same model and condition with and without augmentation side by side, none first.
    assert rows == [
        "| Phased LSTM | standard (1 ms) | none | **85.0 ± 7.1 (2 seeds)** | 55.0 ± 7.1 (2 seeds) "
        "| 75.0 ± 7.1 (2 seeds) |",
        "| Phased LSTM | standard (1 ms) | shares in [0.1, 1] | **70.0 (1 seed)** | 72.0 (1 seed) "
        "| 71.0 (1 seed) |",
        "| LSTM | high resolution (0.1 ms) | none | 50.0 (1 seed) | **55.0 (1 seed)** "
        "| 52.0 (1 seed) |",
    ]
    assert f"- `{plain}`: rate augmentation: none" in lines
    summary = json.loads((out / "rate_shift.json").read_text())
    assert summary["experiment"] == "freq"
    assert [row["rate_augment"] for row in summary["rows"]] == [None, [0.1, 1.0], None]
    assert (out / "rate_shift.png").stat().st_size > 0


def test_rate_shift_command_errors(tmp_path, capsys):
    plain = tmp_path / "plain"
    write_folder(plain, "freq", "rates", None, freq_results()["runs"])
    two = tmp_path / "two"
    write_folder(two, "freq2", "quick", None, {})
    out = str(tmp_path / "out")
    cases = [
        ([str(plain), str(plain)], "both hold plstm trained on standard, seed 1, rate "
         "augmentation none; list each run once"),
        ([str(tmp_path / "missing")], f"argument FOLDER: {tmp_path / 'missing'} holds no "
         "readable results of a phased-lstm experiment"),
        ([str(plain), str(two)], "the folders hold different experiments (freq, freq2)"),
        ([str(two)], "the freq2 experiment has no rate-shift matrix"),
    ]  # fmt: skip
    for folders, message in cases:
        with pytest.raises(SystemExit) as error:
            main(["rate-shift", *folders, "--out", out])
        text = str(error.value.code)
        assert text.startswith("phased-lstm rate-shift: error: argument FOLDER: "), text
        assert message in text, folders
    assert not (tmp_path / "out").exists()
