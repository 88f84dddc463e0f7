"""The frequency task's baselines reading the time as a user would feed it (``--baseline-time``):
the time channel against hand-computed values, CfC's gaps, the option and the ``baselines``
preset, and folders written before the option resuming with the authors' raw timestamps."""

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm.data import frequency_task  # noqa: E402
from phased_lstm_experiments.config import ExperimentConfig, protocol_of  # noqa: E402
from phased_lstm_experiments.files import ExperimentError  # noqa: E402
from phased_lstm_experiments.models import (  # noqa: E402
    LSTMEncoder,
    ModelSpec,
    build_model,
    time_channel,
)
from phased_lstm_experiments.runner import prepare_output  # noqa: E402
from phased_lstm_experiments.tasks import get_task, preset_config  # noqa: E402
from tests.experiments.helpers import run_cli  # noqa: E402

FREQ = get_task("freq")
pytestmark = pytest.mark.usefixtures("one_thread")

TIMES = torch.tensor([[2.0, 3.0, 5.0, 9.0], [0.5, 0.75, 1.0, 1.0]], dtype=torch.float64)


def spec(time_input: str, unit: float = 1.0) -> ModelSpec:
    return ModelSpec(input_size=1, num_outputs=2, classify=True, time_input=time_input,
                     time_unit=unit, hidden_size=8)  # fmt: skip


@pytest.mark.parametrize(
    ("time_input", "unit", "expected"),
    [
        ("raw", 1.0, [[2.0, 3.0, 5.0, 9.0], [0.5, 0.75, 1.0, 1.0]]),
        ("scaled", 4.0, [[0.5, 0.75, 1.25, 2.25], [0.125, 0.1875, 0.25, 0.25]]),
        ("gap", 4.0, [[0.0, 1.0, 2.0, 4.0], [0.0, 0.25, 0.25, 0.0]]),  # gaps are never scaled
    ],
)
def test_time_channel_against_hand_computed_values(time_input, unit, expected):
    channel = time_channel(TIMES, spec(time_input, unit))
    assert channel.dtype == torch.float64
    assert channel.tolist() == expected


def test_the_lstm_reads_the_values_beside_its_time_channel():
    torch.manual_seed(0)
    encoder = LSTMEncoder(spec("gap"), input_norm=False)
    values = torch.randn(2, 4, 1)
    lengths = torch.tensor([4, 3])
    gaps = torch.tensor([[0.0, 1.0, 2.0, 4.0], [0.0, 0.25, 0.25, 0.0]])
    expected = encoder.rnn(torch.cat([values, gaps.unsqueeze(-1)], -1), lengths)
    assert torch.equal(encoder(values, TIMES, lengths), expected)


def test_cfc_integrates_over_its_gaps():
    pytest.importorskip("ncps")
    cfc = {name: build_model("cfc", spec(name, 4.0)).encoder for name in ("raw", "scaled", "gap")}
    # raw: the first gap is the timestamp itself, as the encoder always fed it before.
    assert cfc["raw"].gaps(TIMES).tolist() == [[2.0, 1.0, 2.0, 4.0], [0.5, 0.25, 0.25, 0.0]]
    assert cfc["gap"].gaps(TIMES).tolist() == [[0.0, 1.0, 2.0, 4.0], [0.0, 0.25, 0.25, 0.0]]
    assert cfc["scaled"].gaps(TIMES).tolist() == [[0.0, 0.25, 0.5, 1.0], [0.0, 0.0625, 0.0625, 0.0]]


@pytest.mark.parametrize("model", ["lstm", "bnlstm-input", "cfc"])
@pytest.mark.parametrize("time_input", ["scaled", "gap"])
def test_the_baselines_train_a_step_on_the_frequency_task(model, time_input):
    if model == "cfc":
        pytest.importorskip("ncps")
    config = preset_config("freq", "baselines")
    config.options["baseline_time"] = time_input
    model_spec = FREQ.model_spec(config, model, "async")
    assert model_spec.time_input == time_input and model_spec.time_unit == 125.0
    torch.manual_seed(0)
    network = FREQ.build_model(model, model_spec)
    values, times, lengths, labels = frequency_task(8, "async", seed=1)
    loss = torch.nn.functional.cross_entropy(network(values, times, lengths), labels)
    loss.backward()
    gradients = [p.grad for p in network.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
    assert any(float(g.abs().sum()) > 0 for g in gradients)


def test_spec_refuses_an_unknown_time_input_unit_or_readout():
    with pytest.raises(ValueError, match="time_input must be one of raw, scaled, gap, got 'ms'"):
        spec("ms")
    with pytest.raises(ValueError, match="time_unit must be a positive number, got 0.0"):
        spec("scaled", 0.0)
    with pytest.raises(ValueError, match="readout must be one of leaky, linear, got 'relu'"):
        ModelSpec(input_size=1, num_outputs=2, classify=True, readout="relu")


def test_readout_own_gives_cfc_a_plain_dense_layer_and_keeps_the_others_leaky():
    pytest.importorskip("ncps")
    config = preset_config("freq", "baselines")
    assert config.options["readout"] == "own"
    torch.manual_seed(0)
    state = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    for model, leaky in (("cfc", False), ("lstm", True), ("plstm", True)):
        model_spec = FREQ.model_spec(config, model, "standard")
        assert model_spec.readout == ("leaky" if leaky else "linear")
        network = build_model(model, replace(model_spec, hidden_size=2))
        with torch.no_grad():
            network.readout.weight.copy_(torch.eye(2))
            network.readout.bias.zero_()
        # By hand: leaky ReLU with slope 0.01 on the negative scores, or the scores as they are.
        expected = [[1.0, -0.02], [-0.03, 0.5]] if leaky else [[1.0, -2.0], [-3.0, 0.5]]
        torch.testing.assert_close(network.head(state), torch.tensor(expected))
    config.options["readout"] = "paper"
    assert FREQ.model_spec(config, "cfc", "standard").readout == "leaky"
    config.options["readout"] = "linear"
    assert {FREQ.model_spec(config, m, "async").readout for m in ("plstm", "lstm", "cfc")} == {
        "linear"
    }


def test_baselines_preset():
    config = preset_config("freq", "baselines")
    assert config.models == ["lstm", "cfc"] and config.conditions == ["standard", "async"]
    assert config.seeds == [1, 2, 3, 4, 5] and config.epochs == 70
    assert config.lr_sweep == [1e-4, 3e-4, 1e-3] and config.sweep_epochs == 5
    assert config.options["baseline_time"] == "gap" and config.test_sets == "every-epoch"
    assert config.options["readout"] == "own"
    assert FREQ.model_spec(config, "lstm", "standard").time_input == "gap"
    lines = "\n".join(FREQ.protocol_lines(config))
    assert "[value, ms since the sample before (0 at the first)] (`--baseline-time gap`)" in lines
    # The paper preset keeps the authors' raw timestamps.
    paper = preset_config("freq", "paper")
    assert paper.options["baseline_time"] == "raw" and paper.options["readout"] == "paper"
    assert FREQ.model_spec(paper, "lstm", "standard").time_input == "raw"
    assert "baselines read [value, time in ms] (the authors' input)" in "\n".join(
        FREQ.protocol_lines(paper)
    )


def test_an_old_freq_folder_resumes_with_raw_timestamps(tmp_path):
    config = preset_config("freq", "paper")
    written = config.to_dict()
    del written["options"]["baseline_time"]  # as the version before the options wrote it
    del written["options"]["readout"]
    out = tmp_path / "freq-paper"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(written))
    assert protocol_of(written, FREQ)["--baseline-time"] == "raw"
    assert protocol_of(written, FREQ)["--readout"] == "paper"
    assert prepare_output(config, out, resume=True) == {"version": 1, "runs": {}}
    old = ExperimentConfig.from_dict(written)
    assert FREQ.model_spec(old, "lstm", "async").time_input == "raw"
    assert FREQ.model_spec(old, "cfc", "async").readout == "leaky"
    config.options["baseline_time"] = "gap"
    with pytest.raises(ExperimentError, match="--baseline-time was 'raw', now 'gap'"):
        prepare_output(config, out, resume=True)


def test_baseline_time_errors_name_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("freq", "--baseline-time", "ms", "--out", str(tmp_path / "out"))
    assert "argument --baseline-time: expected one of raw, scaled, gap; got 'ms'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        run_cli("fusion", "--baseline-time", "gap", "--out", str(tmp_path / "out"))
    assert "argument --baseline-time: not an option of fusion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("freq", "--readout", "softmax", "--out", str(tmp_path / "out"))
    assert "argument --readout: expected one of paper, own, linear; got 'softmax'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("preset", "says", "never"),
    [
        ("baselines", "reads the gap since the sample before", "reads the raw timestamp"),
        ("paper", "reads the raw timestamp (up to 125 ms)", "reads the gap"),
    ],
)
def test_the_lstm_note_names_the_time_it_read(preset, says, never):
    config = replace(preset_config("freq", preset), models=["lstm"], conditions=["standard"])
    runs = {
        f"lstm-standard-seed{seed}": {
            "model": "lstm",
            "condition": "standard",
            "seed": seed,
            "epochs": 70,
            "final": {"epoch": 70, "test_acc": accuracy},
            "history": [{"epoch": 70, "test_acc": accuracy}],
        }
        for seed, accuracy in ((1, 0.478), (2, 0.992))
    }
    table = "\n".join(FREQ.tables(config, {"runs": runs}))
    row = next(line for line in table.splitlines() if line.startswith("| standard"))
    assert says in row and never not in row
