"""The networks compared in the paper's experiments, and the registry that builds them by name.

Every model is an encoder that reads a padded batch ``(values, times, lengths)`` laid out as
:mod:`phased_lstm.data` returns it and yields the hidden state at each sample's last valid step,
followed by the paper's read-out. The LSTM-family encoders start from the authors' Lasagne
initialisation: weights and peepholes ~ N(0, 0.1), biases 0 except the input gate's -0.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phased_lstm import PhasedLSTM
from phased_lstm.ops import recurrence

from .cfc import CfCEncoder
from .gap_scaling import GAP_SCALED, GapScaledInput

MODEL_NAMES = ("plstm", "lstm", "bnlstm-input", "bnlstm", "cfc")
# Ablations of the Phased LSTM, offered by the tasks that compare them (the fusion task): its
# input batch-normalised over batch and time as bnlstm-input's is, and its open ratio learned,
# or kept at its initial value, whatever the task's setting (ModelSpec.learn_r_on).
PLSTM_INPUT_BN = "plstm-input-bn"
PLSTM_LEARNED_R_ON = "plstm-learned-r-on"
PLSTM_FIXED_R_ON = "plstm-fixed-r-on"
# Models whose recurrence clips the gradient of its gate pre-activations (ModelSpec.grad_clip).
GATE_CLIP_MODELS = (
    "plstm", "lstm", "bnlstm-input", "bnlstm", GAP_SCALED, PLSTM_INPUT_BN, PLSTM_LEARNED_R_ON,
    PLSTM_FIXED_R_ON,
)  # fmt: skip
# How the baselines read the timestamp (ModelSpec.time_input).
TIME_INPUTS = ("raw", "scaled", "gap")
# The classifier's read-out (ModelSpec.readout): the authors' dense layer with a leaky ReLU on
# the class scores, or a plain dense layer (the read-out of ncps's CfC).
READOUTS = ("leaky", "linear")

_INIT_STD = 0.1
_INPUT_GATE_BIAS = -0.1


@dataclass(frozen=True)
class ModelSpec:
    """What a task asks of a model: its input, its read-out and its time-gate initialisation.

    Attributes:
        input_size: channels of ``values``.
        num_outputs: classes (cross-entropy) or 1 (regression).
        classify: a classification task: the read-out is dense + leaky ReLU, as the authors'.
        hidden_size: units of the recurrent layer.
        period_range: Phased LSTM period initialisation, log-uniform in it.
        shift_range: Phased LSTM shift initialisation, ``None`` for U(0, period).
        learn_r_on: train the open ratio too, as the authors' code did (all three time-gate
            parameters learnable).
        r_on: the Phased LSTM's initial open ratio (0.05 in the paper's tasks).
        time_as_input: the baselines read the timestamp as an extra input channel.
        time_input: what that channel holds (:data:`TIME_INPUTS`): ``"raw"`` the timestamp as
            it is, as the authors fed it; ``"scaled"`` the timestamp divided by ``time_unit``;
            ``"gap"`` the time since the sample's predecessor (0 at a sequence's first
            sample). CfC, which reads the time only as the gap its cell integrates over, takes
            its first gap as the timestamp itself under ``"raw"`` and as 0 otherwise, and
            divides its gaps by ``time_unit`` under ``"scaled"``.
        time_unit: the unit of ``"scaled"``, in the timestamps' units.
        readout: the classifier's read-out (:data:`READOUTS`): ``"leaky"``, the authors' dense
            layer with a leaky ReLU on the class scores, or ``"linear"``, the dense layer alone.
            Regression read-outs are always linear.
        max_steps: longest sequence of the task (per-step statistics of the recurrent BN-LSTM).
        grad_clip: bound on the gradient of the gate pre-activations inside the recurrence
            (Lasagne's ``grad_clipping``, as the authors trained), or ``None``; models not in
            :data:`GATE_CLIP_MODELS` ignore it.
        forget_bias: the forget gate's initial bias in the LSTM-family models. 0 as in the
            authors' code, where a neuron's memory halves at every step until training moves
            it; 1 (Gers et al. 2000) starts with memory that lasts a few steps more. CfC
            ignores it.
    """

    input_size: int
    num_outputs: int
    classify: bool
    hidden_size: int = 110
    period_range: tuple[float, float] = (math.e, math.e**3)
    shift_range: tuple[float, float] | None = None
    learn_r_on: bool = True
    r_on: float = 0.05
    time_as_input: bool = True
    time_input: str = "raw"
    time_unit: float = 1.0
    readout: str = "leaky"
    max_steps: int = 1250
    grad_clip: float | None = None
    forget_bias: float = 0.0

    def __post_init__(self):
        if self.time_input not in TIME_INPUTS:
            raise ValueError(
                f"time_input must be one of {', '.join(TIME_INPUTS)}, got {self.time_input!r}"
            )
        if not (math.isfinite(self.time_unit) and self.time_unit > 0):
            raise ValueError(f"time_unit must be a positive number, got {self.time_unit!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")


class SequenceModel(nn.Module):
    """An encoder followed by the paper's dense read-out on the last valid step (``leaky``: with
    a leaky ReLU on the class scores, as the authors' classifier)."""

    def __init__(
        self,
        encoder: nn.Module,
        hidden_size: int,
        num_outputs: int,
        classify: bool,
        leaky: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.readout = nn.Linear(hidden_size, num_outputs)
        self.classify = classify
        self.leaky = leaky

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self.encoder(values, times, lengths))

    def head(self, state: Tensor) -> Tensor:
        """The read-out of an encoder's state ``(N, H)``: class scores, or predictions."""
        out = self.readout(state)
        # The authors' classifier is a dense layer with a leaky ReLU before the softmax; the
        # regression target of the adding task can be negative, so its read-out stays linear.
        if not self.classify:
            return out.squeeze(-1)
        return F.leaky_relu(out) if self.leaky else out


class PhasedLSTMEncoder(nn.Module):
    """The Phased LSTM reads the values; the timestamps drive its time gate only. With
    ``input_norm``, the values are first batch-normalised over batch and time
    (:class:`MaskedBatchNorm`), as the authors' BN-LSTM normalised its input."""

    def __init__(self, spec: ModelSpec, input_norm: bool = False):
        super().__init__()
        self.input_norm = MaskedBatchNorm(spec.input_size) if input_norm else None
        self.rnn = PhasedLSTM(
            spec.input_size,
            spec.hidden_size,
            batch_first=True,
            peepholes=True,
            r_on=spec.r_on,
            period_range=spec.period_range,
            shift_range=spec.shift_range,
            learn_r_on=spec.learn_r_on,
            grad_clip=spec.grad_clip,
        )
        authors_init(self.rnn, suffix="_l0", forget_bias=spec.forget_bias)

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        if self.input_norm is not None:
            values = self.input_norm(values, lengths)
        _, (h_n, _) = self.rnn(values, times, lengths=lengths)
        return h_n[-1]


class _LSTMWeights(nn.Module):
    """What the baseline LSTM layers share: the input and recurrent weights of the four gates,
    stacked (i, f, g, o) as nn.LSTM stacks them, and the bound on the gate gradients (``None``:
    none). Each layer adds its biases (and peepholes or batch norms) after them."""

    def __init__(self, input_size: int, hidden_size: int, grad_clip: float | None):
        super().__init__()
        self.hidden_size = hidden_size
        self.grad_clip = grad_clip
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))


class PeepholeLSTM(_LSTMWeights):
    """One LSTM layer with diagonal peepholes, as Lasagne's LSTMLayer that the authors ran.

    It is the Phased LSTM recurrence with the time gate open (``k = 1``) at every valid step and
    shut (``k = 0``) on padding, so the state at the last valid step is carried to the end.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        grad_clip: float | None = None,
        forget_bias: float = 0.0,
    ):
        super().__init__(input_size, hidden_size, grad_clip)
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.weight_ch = nn.Parameter(torch.empty(3 * hidden_size))
        authors_init(self, forget_bias=forget_bias)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``x`` (N, L, H_in), ``lengths`` (N,) -> state at the last valid step (N, H)."""
        # Longest first, the valid samples of each step are the leading rows, and the
        # recurrence computes only those (batch_sizes), as the Phased LSTM layer does.
        order = torch.argsort(lengths, descending=True, stable=True)
        x, lengths = x[order].transpose(0, 1), lengths[order]
        gates_x = F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)
        mask = step_mask(lengths, x.shape[0])
        k = mask.to(x.dtype).unsqueeze(-1).expand(-1, -1, self.hidden_size)
        h0 = x.new_zeros(x.shape[1], self.hidden_size)
        _, h_n, _ = recurrence(
            gates_x,
            k,
            self.weight_hh,
            self.weight_ch,
            h0,
            h0,
            grad_clip=self.grad_clip,
            batch_sizes=mask.sum(1).cpu(),
        )
        return h_n[torch.argsort(order)]


class MaskedBatchNorm(nn.Module):
    """Batch normalisation of ``(N, L, C)`` over batch and time, padded steps excluded.

    This is the authors' "BN-LSTM" input normalisation (Lasagne's BatchNormLayer over axes
    (0, 1)), except that their left padding entered the statistics and here it does not.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-4):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = step_mask(lengths, x.shape[1]).t()  # (N, L)
        if self.training:
            valid = x[mask]
            mean, var = valid.mean(0), valid.var(0, unbiased=False)
            with torch.no_grad():
                count = valid.shape[0]
                unbiased = var * count / max(count - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        out = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return out * mask.unsqueeze(-1)


class LSTMEncoder(nn.Module):
    """The authors' baselines: the peephole LSTM reading ``[value, time]``, optionally with
    its input batch-normalised over batch and time (their "BN-LSTM")."""

    def __init__(self, spec: ModelSpec, input_norm: bool):
        super().__init__()
        features = spec.input_size + int(spec.time_as_input)
        self.spec = spec
        self.input_norm = MaskedBatchNorm(features) if input_norm else None
        self.rnn = PeepholeLSTM(features, spec.hidden_size, spec.grad_clip, spec.forget_bias)

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        x = baseline_input(values, times, self.spec)
        if self.input_norm is not None:
            x = self.input_norm(x, lengths)
        return self.rnn(x, lengths)


class StepwiseBatchNorm(nn.Module):
    """Batch normalisation with separate statistics for every time step (Cooijmans et al. 2016).

    Statistics are taken over the samples still valid at a step. Running statistics are kept
    for steps ``0 .. max_steps - 1``; a step at evaluation that training never reached (or past
    ``max_steps``) uses the statistics of the last step that training did reach. A training
    step with fewer than two valid samples, whose batch variance says nothing, uses the same
    statistics as evaluation would.
    """

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        *,
        gamma: float = 0.1,
        shift: bool = True,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.max_steps, self.momentum, self.eps = max_steps, momentum, eps
        self.weight = nn.Parameter(torch.full((num_features,), gamma))
        self.bias = nn.Parameter(torch.zeros(num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(max_steps, num_features))
        self.register_buffer("running_var", torch.ones(max_steps, num_features))
        self.register_buffer("steps_seen", torch.zeros(max_steps, dtype=torch.long))

    def forward(self, x: Tensor, mask: Tensor, first_step: int = 0) -> Tensor:
        """Normalise ``x`` (S, N, F) of steps ``first_step .. first_step + S - 1``.

        ``mask`` (S, N) marks the valid samples; padded entries come out as given by the
        statistics but never enter them.
        """
        steps = x.shape[0]
        if self.training:
            weight = mask.to(x.dtype).unsqueeze(-1)
            count = weight.sum(1)  # (S, 1)
            batch_mean = (x * weight).sum(1) / count.clamp(min=1)
            batch_var = ((x - batch_mean.unsqueeze(1)) ** 2 * weight).sum(1) / count.clamp(min=1)
            self._update(first_step, batch_mean, batch_var, count)
            fallback_mean, fallback_var = self._eval_stats(first_step, steps)
            usable = count >= 2
            mean = torch.where(usable, batch_mean, fallback_mean)
            var = torch.where(usable, batch_var, fallback_var)
        else:
            mean, var = self._eval_stats(first_step, steps)
        out = (x - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + self.eps) * self.weight
        return out if self.bias is None else out + self.bias

    def _eval_stats(self, first_step: int, steps: int) -> tuple[Tensor, Tensor]:
        seen = int(self.steps_seen.gt(0).sum())
        # Steps are reached in order (every sequence starts at step 0), so the seen ones are a
        # prefix; later steps reuse the statistics of the last one.
        last = max(seen, 1) - 1
        index = torch.arange(first_step, first_step + steps, device=self.steps_seen.device)
        index = index.clamp(max=last)
        return self.running_mean[index], self.running_var[index]

    @torch.no_grad()
    def _update(self, first_step: int, mean: Tensor, var: Tensor, count: Tensor) -> None:
        stop = min(first_step + mean.shape[0], self.max_steps)
        if stop <= first_step:
            return
        rows = slice(first_step, stop)
        n = count[: stop - first_step]
        usable = n >= 2
        unbiased = var[: stop - first_step] * n / (n - 1).clamp(min=1)
        new_mean = self.running_mean[rows].lerp(mean[: stop - first_step], self.momentum)
        new_var = self.running_var[rows].lerp(unbiased, self.momentum)
        self.running_mean[rows] = torch.where(usable, new_mean, self.running_mean[rows])
        self.running_var[rows] = torch.where(usable, new_var, self.running_var[rows])
        self.steps_seen[rows] += usable.squeeze(-1).long()


class RecurrentBNLSTM(_LSTMWeights):
    r"""The recurrent batch-normalised LSTM of Cooijmans et al. (2016), one layer.

    .. math::
        (i, f, g, o) = BN(W_h h_{t-1}; \gamma_h) + BN(W_x x_t; \gamma_x) + b \\
        c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g), \qquad
        h_t = \sigma(o) \tanh(BN(c_t; \gamma_c, \beta_c))

    with per-time-step statistics (:class:`StepwiseBatchNorm`) and every gamma initialised to
    0.1. As in that paper it has no peepholes. Padded steps keep the state and stay out of the
    statistics, so in eval mode a sample's result does not depend on its batch.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        max_steps: int,
        grad_clip: float | None = None,
        forget_bias: float = 0.0,
    ):
        super().__init__(input_size, hidden_size, grad_clip)
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.norm_x = StepwiseBatchNorm(4 * hidden_size, max_steps, shift=False)
        self.norm_h = StepwiseBatchNorm(4 * hidden_size, max_steps, shift=False)
        self.norm_c = StepwiseBatchNorm(hidden_size, max_steps)
        with torch.no_grad():
            self.weight_ih.normal_(0.0, _INIT_STD)
            self.weight_hh.normal_(0.0, _INIT_STD)
            self.bias.zero_()
            self.bias[:hidden_size] = _INPUT_GATE_BIAS
            self.bias[hidden_size : 2 * hidden_size] = forget_bias

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``x`` (N, L, H_in), ``lengths`` (N,) -> state at the last valid step (N, H)."""
        x = x.transpose(0, 1)
        mask = step_mask(lengths, x.shape[0])
        gates_x = self.norm_x(F.linear(x, self.weight_ih), mask) + self.bias
        h = c = x.new_zeros(x.shape[1], self.hidden_size)
        clamp = None
        if self.grad_clip is not None:
            bound = self.grad_clip

            def clamp(grad: Tensor) -> Tensor:  # the gate gradient, as the other LSTMs clip it
                return grad.clamp(-bound, bound)

        # unbind, not gates_x[step]: the backward of an index writes a full-size gradient per
        # step, which makes the loop quadratic in the sequence length.
        for step, (gates_xt, valid_t) in enumerate(zip(gates_x.unbind(0), mask, strict=True)):
            valid = valid_t.unsqueeze(0)
            gates_h = self.norm_h(F.linear(h, self.weight_hh).unsqueeze(0), valid, step)[0]
            gates = gates_xt + gates_h
            if clamp is not None and gates.requires_grad:
                gates.register_hook(clamp)
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_norm = self.norm_c(c_new.unsqueeze(0), valid, step)[0]
            h_new = torch.sigmoid(o) * torch.tanh(c_norm)
            keep = valid[0].unsqueeze(-1)
            h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        return h


class RecurrentBNLSTMEncoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        features = spec.input_size + int(spec.time_as_input)
        self.rnn = RecurrentBNLSTM(
            features, spec.hidden_size, spec.max_steps, spec.grad_clip, spec.forget_bias
        )

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        return self.rnn(baseline_input(values, times, self.spec), lengths)


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """(L, N) bool, True where step < length."""
    return torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths


def time_channel(times: Tensor, spec: ModelSpec) -> Tensor:
    """The time a baseline reads beside the values, per step ``(N, L)`` in the dtype of
    ``times``: the timestamp, scaled by ``spec.time_unit``, or the gap since the step before
    (0 at the first step), as ``spec.time_input`` says."""
    if spec.time_input == "gap":
        return torch.diff(times, dim=1, prepend=times[:, :1])
    if spec.time_input == "scaled":
        return times / spec.time_unit
    return times


def baseline_input(values: Tensor, times: Tensor, spec: ModelSpec) -> Tensor:
    """``[value, time]`` per step (:func:`time_channel`), as the authors fed their LSTM
    baselines; the values alone when ``spec.time_as_input`` is off."""
    if not spec.time_as_input:
        return values
    channel = time_channel(times, spec).to(values.dtype).unsqueeze(-1)
    return torch.cat([values, channel], dim=-1)


def authors_init(module: nn.Module, suffix: str = "", forget_bias: float = 0.0) -> None:
    """Lasagne's defaults as the authors used them: N(0, 0.1) weights and peepholes, zero
    biases but the input gate's -0.1 (one bias vector: ``bias_hh`` is zeroed); ``forget_bias``
    for the forget gate (0 in the authors' code)."""
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "weight_ch"):
            getattr(module, name + suffix).normal_(0.0, _INIT_STD)
        bias_ih, bias_hh = getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix)
        bias_ih.zero_()
        bias_hh.zero_()
        hidden = bias_ih.shape[0] // 4
        bias_ih[:hidden] = _INPUT_GATE_BIAS
        bias_ih[hidden : 2 * hidden] = forget_bias


_ENCODERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "plstm": PhasedLSTMEncoder,
    PLSTM_INPUT_BN: lambda spec: PhasedLSTMEncoder(spec, input_norm=True),
    PLSTM_LEARNED_R_ON: lambda spec: PhasedLSTMEncoder(replace(spec, learn_r_on=True)),
    PLSTM_FIXED_R_ON: lambda spec: PhasedLSTMEncoder(replace(spec, learn_r_on=False)),
    "lstm": lambda spec: LSTMEncoder(spec, input_norm=False),
    "bnlstm-input": lambda spec: LSTMEncoder(spec, input_norm=True),
    "bnlstm": RecurrentBNLSTMEncoder,
    "cfc": CfCEncoder,
    # An ablation, offered by the tasks that measure sampling rates (gap_scaling.py).
    GAP_SCALED: lambda spec: GapScaledInput(PhasedLSTMEncoder(spec)),
}


def build_model(name: str, spec: ModelSpec) -> SequenceModel:
    """The model called ``name`` (one of :data:`MODEL_NAMES`, or an ablation:
    ``"plstm-gapscaled"``, :data:`PLSTM_INPUT_BN`, :data:`PLSTM_LEARNED_R_ON`,
    :data:`PLSTM_FIXED_R_ON`) for a task described by ``spec``."""
    if name not in _ENCODERS:
        raise ValueError(f"model must be one of {', '.join(_ENCODERS)}, got {name!r}")
    encoder = _ENCODERS[name](spec)
    leaky = spec.readout == "leaky"
    return SequenceModel(encoder, spec.hidden_size, spec.num_outputs, spec.classify, leaky)
