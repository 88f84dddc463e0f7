"""The compiled sequence gate against an independent float64 transcription of the paper's gate
(tests/paper_reference.py), values and gradients."""

import pytest
import torch

from phased_lstm.ops import sequence_gate
from phased_lstm.ops._cpu import backend as fused
from tests.lib.paper_reference import gate as reference_gate

f64 = torch.float64
LEAK = 0.01

pytestmark = pytest.mark.skipif(
    fused.build_error() is not None, reason=f"C++ kernels unavailable: {fused.build_error()}"
)


def reference_k(times, period, shift, r_on, valid):
    """k of every (step, sample, neuron) from the transcription, one timestamp at a time, in
    float64 with autograd through the parameters; zero where ``valid`` is False."""
    rows = []
    for step in range(times.shape[0]):
        row = []
        for sample in range(times.shape[1]):
            k = reference_gate(times[step, sample], period, shift, r_on, LEAK)
            if valid is not None and not valid[step, sample]:
                k = torch.zeros_like(k)
            row.append(k)
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("offset", [0.0, -3e3, 1e6], ids=["t0", "tneg", "t1e6"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "padded"])
def test_compiled_gate_matches_the_paper(dtype, offset, masked):
    gen = torch.Generator().manual_seed(0)
    times = offset + torch.rand(12, 3, generator=gen, dtype=f64) * 200
    period = (torch.rand(7, generator=gen, dtype=f64) * 20 + 0.5).requires_grad_()
    shift = (torch.rand(7, generator=gen, dtype=f64) * 30 - 10).to(dtype).requires_grad_()
    r_on = (torch.rand(7, generator=gen, dtype=f64) * 0.5 + 0.05).requires_grad_()
    valid = torch.rand(12, 3, generator=gen) < 0.7 if masked else None
    weights = torch.randn(12, 3, 7, generator=gen, dtype=f64).to(dtype)

    k = sequence_gate(times, period, shift, r_on, LEAK, valid, dtype, backend="auto")
    assert k.dtype == dtype
    (k * weights).sum().backward()
    grads = [p.grad for p in (period, shift, r_on)]

    # The transcription sees the very same parameter values, in float64.
    ref_params = [p.detach().to(f64).requires_grad_() for p in (period, shift, r_on)]
    expected = reference_k(times, *ref_params, valid)
    (expected * weights.to(f64)).sum().backward()
    # Both compute the phase in float64, each rounding |t - s| to a few ulps in its own way; k
    # magnifies that by its steepest slope, 2 / (r_on * period). float32 rounds k itself.
    slope = float((2 / (r_on * period)).detach().max())
    phase_tol = 8 * torch.finfo(f64).eps * float((times.abs().max() + 10) * slope)
    atol = phase_tol + (0 if dtype == f64 else 1e-6)
    torch.testing.assert_close(k.detach().to(f64), expected.detach(), rtol=0, atol=atol)
    for name, got, ref in zip(("period", "shift", "r_on"), grads, ref_params, strict=True):
        want = ref.grad.to(got.dtype)
        tol = 1e-9 if got.dtype == f64 else 1e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=name)


def test_compiled_gate_eval_is_exactly_zero_when_closed():
    times = torch.linspace(-50, 50, 1001, dtype=f64).unsqueeze(1)
    period, shift, r_on = (
        torch.tensor([7.0], dtype=f64),
        torch.tensor([1.5], dtype=f64),
        torch.tensor([0.1], dtype=f64),
    )
    k = sequence_gate(times, period, shift, r_on, 0.0, None, torch.float32)
    phase = torch.remainder(times - 1.5, 7.0) / 7.0
    closed = (phase > 0.1 + 1e-9).unsqueeze(-1)
    assert bool((k[closed] == 0).all())
    inside = ((phase > 1e-9) & (phase < 0.1 - 1e-9)).unsqueeze(-1)
    assert bool((k[inside] > 0).all())
