"""The compiled sequence gate against phased_lstm.functional.time_gate, values and gradients."""

import pytest
import torch

from phased_lstm.functional import time_gate
from phased_lstm.ops import fused
from phased_lstm.ops.gate import sequence_gate

f64 = torch.float64

pytestmark = pytest.mark.skipif(
    fused.build_error() is not None, reason=f"C++ kernels unavailable: {fused.build_error()}"
)


@pytest.mark.parametrize("dtype", [torch.float32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("offset", [0.0, -3e3, 1e6], ids=["t0", "tneg", "t1e6"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "padded"])
def test_compiled_gate_matches_time_gate(dtype, offset, masked):
    gen = torch.Generator().manual_seed(0)
    times = offset + torch.rand(40, 3, generator=gen, dtype=f64) * 200
    period = (torch.rand(17, generator=gen, dtype=f64) * 20 + 0.5).requires_grad_()
    shift = (torch.rand(17, generator=gen, dtype=f64) * 30 - 10).to(dtype).requires_grad_()
    r_on = (torch.rand(17, generator=gen, dtype=f64) * 0.5 + 0.05).requires_grad_()
    valid = torch.rand(40, 3, generator=gen) < 0.7 if masked else None
    weights = torch.randn(40, 3, 17, generator=gen, dtype=f64).to(dtype)

    def run(backend):
        for p in (period, shift, r_on):
            p.grad = None
        k = sequence_gate(times, period, shift, r_on, 0.01, valid, dtype, backend=backend)
        (k * weights).sum().backward()
        return k.detach(), [p.grad.clone() for p in (period, shift, r_on)]

    k_ref, grads_ref = run("reference")
    k, grads = run("auto")
    expected = time_gate(times, period, shift, r_on, 0.01, dtype=dtype).detach()
    if valid is not None:
        expected = expected * valid.unsqueeze(-1)
    torch.testing.assert_close(k_ref, expected, rtol=0, atol=0)
    torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-12 if dtype == f64 else 1e-6)
    for name, got, want in zip(("period", "shift", "r_on"), grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)


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
