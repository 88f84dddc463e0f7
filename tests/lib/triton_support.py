"""What the tests of the "triton" backend share: where they run, their inputs, the comparison.

With CUDA the kernels run compiled on the GPU. Without, they run in Triton's CPU interpreter, on
tiny shapes (it executes each block operation in Python). Triton must see TRITON_INTERPRET=1
before it is first imported, and other test modules import it (through Lightning) when they are
collected, so without a GPU each Triton test file runs itself again in a child process with that
variable set (:func:`run_interpreted`): its tests are then reported by that one test, and nothing
else sees the variable. Test ids carry the device, so ``-k cuda`` selects the GPU runs.
"""

import os
import subprocess
import sys

import pytest
import torch

from phased_lstm.ops import recurrence
from phased_lstm.ops._triton import backend as triton_backend

f32, f64, bf16 = torch.float32, torch.float64, torch.bfloat16
CUDA = torch.cuda.is_available()
INTERPRETING = not CUDA and triton_backend.interpreted()
# Empty without a GPU outside the child process, which runs these tests instead.
DEVICES = ["cuda"] if CUDA else (["cpu"] if INTERPRETING else [])

# Relative to the largest magnitude of the expected tensor: the kernels compute the same
# expressions in another order, float32 exp/tanh to a few ulp.
TOL = {f32: 2e-5, f64: 1e-10}
# bfloat16 inputs against a float32 reference on the same (rounded) values: the kernel rounds h
# and dgates to bfloat16 as operands of the recurrent products (8 bits of mantissa) and returns
# h, gradients in bfloat16; over a few steps that stays within 3% of the largest value.
HALF_TOL = 3e-2


def on_device(test):
    """Parametrise ``test`` over DEVICES. Without any (the parent process on a machine without
    a GPU) the test is not collected at all, rather than reported as an empty skip: its child
    process runs it."""
    if not DEVICES:
        test.__test__ = False  # pytest's switch to leave a function out of collection
        return test
    return pytest.mark.parametrize("device", DEVICES, ids=DEVICES)(test)


def run_interpreted(path: str) -> None:
    """Run the test file ``path`` in a child process that interprets the kernels; fail with its
    output unless all its tests passed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", path, "-o", "addopts=-q", "-p", "no:cacheprovider"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary, result.stdout[-6000:] + result.stderr
    print(summary)


def assert_near(got, want, tol, what):
    got, want = got.detach().to(f64), want.detach().to(f64)
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=what)


def op_inputs(length, batch, hidden, dtype, device, *, peepholes, gate="train", seed=0):
    """Inputs of ops.recurrence, all requiring grad; `gate` picks what k looks like."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale).to(device, dtype)

    k = torch.rand(length, batch, hidden, generator=gen, dtype=f64)
    if gate == "sparse":  # eval mode: most gates exactly closed, whole steps too
        k = torch.where(torch.rand(k.shape, generator=gen) < 0.7, 0.0, k)
        k[length // 2] = 0
    inputs = {
        "gates_x": randn(length, batch, 4 * hidden),
        "k": k.to(device, dtype),
        "weight_hh": randn(4 * hidden, hidden, scale=hidden**-0.5),
        "weight_ch": randn(3 * hidden, scale=0.5) if peepholes else None,
        "h0": randn(batch, hidden, scale=0.5),
        "c0": randn(batch, hidden),
    }
    return {n: None if t is None else t.requires_grad_() for n, t in inputs.items()}


def run_op(backend, inputs, **options):
    """Outputs of the op and the gradients of every input for a random linear loss."""
    h, h_n, c_n = recurrence(*inputs.values(), backend=backend, **options)
    return outputs_and_grads((h, h_n, c_n), inputs)


def outputs_and_grads(outputs, inputs):
    """``outputs`` (h, h_n, c_n) and the gradients of every input for a random linear loss."""
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen).to(t.device, t.dtype) for t in outputs]
    loss = sum((t * w).sum() for t, w in zip(outputs, weights, strict=True))
    names = [n for n, t in inputs.items() if t is not None]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names])
    return dict(zip(("h", "h_n", "c_n"), outputs, strict=True)) | {
        f"grad {n}": g for n, g in zip(names, grads, strict=True)
    }
