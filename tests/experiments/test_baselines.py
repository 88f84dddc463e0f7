"""The baselines of the experiments (LSTM, BN-LSTMs, CfC) and their batch norms: padding never
matters, statistics, initialisation, gradient clipping."""

import dataclasses

import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm.data import frequency_task  # noqa: E402
from phased_lstm_experiments.config import (  # noqa: E402
    ExperimentConfig,
    parameter_clip,
)
from phased_lstm_experiments.models import (  # noqa: E402
    MaskedBatchNorm,
    ModelSpec,
    RecurrentBNLSTM,
    StepwiseBatchNorm,
    build_model,
    step_mask,
)
from phased_lstm_experiments.tasks import TASKS, preset_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = ModelSpec(input_size=1, num_outputs=2, classify=True, hidden_size=12, max_steps=40)


def padded_batch(n=6, steps=30, seed=0):
    """Random values and times with lengths from 1 to ``steps``, garbage in the padding."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(1, steps, n).round().long()
    values = torch.randn(n, steps, 1, generator=generator)
    times = torch.rand(n, steps, generator=generator, dtype=torch.float64).cumsum(1)
    return values, times, lengths


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


def test_frequency_task_feeds_the_models():
    values, times, lengths, labels = frequency_task(4, "async", seed=0)
    for name in ("plstm", "lstm", "bnlstm-input", "bnlstm"):
        logits = build_model(name, SPEC)(values, times, lengths)
        assert logits.shape == (4, 2)
