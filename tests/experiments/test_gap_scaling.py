"""The gap-scaled Phased LSTM (``plstm-gapscaled``, an ablation): its input weights against
hand-computed ones, the mean gap it keeps, and why it is there: a window's sum of weights that
does not follow the sampling rate."""

import pytest
import torch

from phased_lstm_experiments.config import ExperimentConfig, parameter_clip
from phased_lstm_experiments.gap_scaling import GAP_SCALED, GapScaledInput, gap_weights
from phased_lstm_experiments.models import ModelSpec, PhasedLSTMEncoder, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = ModelSpec(input_size=2, num_outputs=2, classify=True, hidden_size=6, period_range=(1, 4))
# Two sequences: gaps 1, 2 and 0.5 ms; gap 2 ms, then padding that repeats the last time.
TIMES = torch.tensor([[0.0, 1.0, 3.0, 3.5], [0.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
LENGTHS = torch.tensor([4, 2])
# Mean training gap (1 + 2 + 0.5 + 2) / 4 = 1.375 = 11/8; weights: gap / (11/8) = 8 gap / 11,
# 1 at each first step, 0 on padding.
WEIGHTS = torch.tensor([[1.0, 8 / 11, 16 / 11, 4 / 11], [1.0, 16 / 11, 0.0, 0.0]])


def encoder_pair() -> tuple[GapScaledInput, PhasedLSTMEncoder]:
    torch.manual_seed(0)
    inner = PhasedLSTMEncoder(SPEC)
    return GapScaledInput(inner), inner


def test_training_reads_inputs_scaled_by_hand_computed_weights():
    scaled, inner = encoder_pair()
    values = torch.randn(2, 4, 2)
    out = scaled.train()(values, TIMES, LENGTHS)
    expected = inner.train()(values * WEIGHTS.unsqueeze(-1), TIMES, LENGTHS)
    torch.testing.assert_close(out, expected)
    assert float(scaled.gap_total) == 5.5 and float(scaled.gap_count) == 4
    # Without the weights the output differs: the scaling is what the check sees.
    assert not torch.allclose(out, inner(values, TIMES, LENGTHS))


def test_evaluation_keeps_the_training_mean_gap():
    scaled, inner = encoder_pair()
    scaled.train()(torch.randn(2, 4, 2), TIMES, LENGTHS)
    scaled.eval()
    inner.eval()
    times = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    values = torch.randn(1, 3, 2)
    out = scaled(values, times, torch.tensor([3]))
    # Gaps of 0.5 ms over the mean training gap of 11/8 ms: 4/11 each.
    weights = torch.tensor([[1.0, 4 / 11, 4 / 11]])
    torch.testing.assert_close(out, inner(values * weights.unsqueeze(-1), times, torch.tensor([3])))
    assert float(scaled.gap_total) == 5.5 and float(scaled.gap_count) == 4  # not updated
    state = scaled.state_dict()
    assert float(state["gap_total"]) == 5.5 and float(state["gap_count"]) == 4


def test_an_untrained_model_uses_the_mean_gap_of_its_batch():
    scaled, inner = encoder_pair()
    scaled.eval()
    inner.eval()
    times = torch.tensor([[0.0, 2.0, 3.0]], dtype=torch.float64)
    values = torch.randn(1, 3, 2)
    weights = torch.tensor([[1.0, 4 / 3, 2 / 3]])  # gaps 2 and 1 over their mean 1.5
    out = scaled(values, times, torch.tensor([3]))
    torch.testing.assert_close(out, inner(values * weights.unsqueeze(-1), times, torch.tensor([3])))


def test_a_windows_sum_of_weights_follows_its_length_not_its_samples():
    """At 1 ms and at 0.1 ms sampling, with the mean gap of 1 ms sampling, the steps in
    (2, 7] ms weigh 5 in all: five steps of 1, or fifty of 0.1."""
    standard = torch.arange(0, 11, dtype=torch.float64)[None]
    highres = torch.arange(0, 101, dtype=torch.float64)[None] / 10
    for times in (standard, highres):
        weights = gap_weights(times, torch.tensor([times.shape[1]]), 1.0)
        window = (times > 2.0 + 1e-9) & (times <= 7.0 + 1e-9)
        assert float(weights[window].sum()) == pytest.approx(5.0)


def test_the_model_is_built_by_name_and_clips_its_gates_as_the_phased_lstm():
    network = build_model(GAP_SCALED, SPEC)
    assert isinstance(network.encoder, GapScaledInput)
    assert hasattr(network.encoder.rnn, "update_fraction")  # its open share is measured
    out = network(torch.randn(2, 4, 2), TIMES, LENGTHS)
    assert out.shape == (2, 2)
    config = ExperimentConfig("freq", "paper", [GAP_SCALED], ["standard"], [1], 1, 32, 32)
    assert parameter_clip(config, GAP_SCALED) is None  # clipped inside the recurrence
    with pytest.raises(ValueError, match="plstm-gapscaled, got 'gru'"):
        build_model("gru", SPEC)
