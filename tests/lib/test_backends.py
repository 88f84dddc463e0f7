"""The backend registry and its planner: one decision for the gate and the recurrence, made
from declared capabilities; a backend registered here is used as declared."""

import math

import pytest
import torch

from phased_lstm import PhasedLSTM, ops
from phased_lstm.ops import _planner as backends
from phased_lstm.ops import reference_recurrence
from phased_lstm.ops._cpu import kernels
from phased_lstm.ops._triton import backend as triton_backend

f64 = torch.float64
built = kernels.build_error() is None
needs_kernels = pytest.mark.skipif(not built, reason=f"C++ kernels: {kernels.build_error()}")


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that the backends a test adds do not leak."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    return backends._REGISTRY


def recording(name, calls):
    def run(*args):
        calls.append(name)
        return reference_recurrence(*args)

    return run


@pytest.mark.parametrize(
    "device, dtype, grad, expected",
    [
        ("cpu", torch.float32, True, "fused"),
        ("cpu", f64, False, "sparse"),
        ("cpu", torch.bfloat16, True, "fused"),  # computes in float32
        ("cpu", torch.float16, False, "sparse"),
        ("meta", torch.float32, True, "reference"),
        ("cuda", torch.float32, False, "triton"),
        ("cuda", torch.bfloat16, True, "triton"),  # computes in float32
    ],
)
def test_auto_plan_by_device_dtype_and_gradient(device, dtype, grad, expected):
    if expected == "triton" and triton_backend.unavailable() is not None:
        expected = "reference"
    elif not built and expected not in ("reference", "triton"):
        expected = "reference"
    plan = backends.plan("auto", device=device, dtype=dtype, needs_grad=grad)
    assert plan.backend.name == expected
    assert plan.kernel_gate == (expected != "reference")
    assert plan.compute_dtype == (torch.float32 if dtype.itemsize == 2 else dtype)


@needs_kernels
def test_timestamps_that_need_a_gradient_take_the_readable_gate():
    plan = backends.plan("auto", device="cpu", dtype=f64, needs_grad=True, times_need_grad=True)
    assert plan.backend.name == "fused" and not plan.kernel_gate


def test_a_registered_backend_is_chosen_where_it_fits_and_nowhere_else(registry):
    calls = []
    backends.register_backend(
        backends.Backend(
            "fake_gpu",
            recording("fake_gpu", calls),
            devices=("meta",),
            dtypes=(torch.float32,),
            gradients=True,
            priority=15,
        )
    )
    assert "fake_gpu" in ops.available_backends()
    plan = backends.plan("auto", device="meta", dtype=torch.float32, needs_grad=True)
    assert plan.backend.name == "fake_gpu" and not plan.kernel_gate
    assert backends.plan("auto", device="meta", dtype=f64, needs_grad=True).backend.name == (
        "reference"
    )
    # Through the layer: the planner's choice runs the recurrence of every layer-direction.
    layer = PhasedLSTM(2, 3, 2, bidirectional=True).to("meta")
    out, _ = layer(torch.randn(4, 2, 2, device="meta"), torch.zeros(4, 2, device="meta"))
    assert out.shape == (4, 2, 6) and calls == ["fake_gpu"] * 4


def test_an_unavailable_backend_is_passed_over_by_auto_and_explained_when_asked(registry):
    backends.register_backend(
        backends.Backend(
            "missing",
            reference_recurrence,
            priority=99,
            unavailable=lambda: "the package 'nothing' is not installed",
            fix="pip install nothing",
        )
    )
    assert backends.plan("auto", device="meta", dtype=f64, needs_grad=False).backend.name == (
        "reference"
    )
    with pytest.raises(RuntimeError, match=r"backend='missing' cannot run here: the package"):
        backends.plan("missing", device="meta", dtype=f64, needs_grad=False)


def test_an_inference_backend_is_never_chosen_for_gradients(registry):
    backends.register_backend(
        backends.Backend("fast_eval", reference_recurrence, gradients=False, priority=99)
    )
    assert backends.plan("auto", device="meta", dtype=f64, needs_grad=True).backend.name != (
        "fast_eval"
    )
    assert backends.plan("auto", device="meta", dtype=f64, needs_grad=False).backend.name == (
        "fast_eval"
    )
    with pytest.raises(RuntimeError, match=r"backend='fast_eval' is for inference.*no_grad"):
        backends.plan("fast_eval", device="meta", dtype=f64, needs_grad=True)


@pytest.mark.parametrize(
    "name, error",
    [("auto", ValueError), ("bad name", ValueError), (3, TypeError)],
    ids=["auto", "space", "int"],
)
def test_register_rejects_bad_backends(registry, name, error):
    with pytest.raises(error):
        if isinstance(name, str):
            backends.register_backend(backends.Backend(name, reference_recurrence))
        else:
            backends.register_backend(name)


@needs_kernels
def test_explicit_backend_on_a_device_it_does_not_run_says_so():
    with pytest.raises(
        RuntimeError,
        match=r"backend='fused' cannot run these inputs: they run "
        r"on the CPU, got a tensor on meta; use backend='reference'",
    ):
        backends.plan("fused", device="meta", dtype=f64, needs_grad=True)


def test_a_device_bound_backend_takes_the_tensors_of_one_device_only(registry):
    # Two GPUs are one device type: the planner still refuses a kernel tensors it cannot read.
    backends.register_backend(
        backends.Backend("one_gpu", reference_recurrence, devices=("cuda",), priority=99)
    )
    two = backends.Call("cuda", torch.float32, False, devices_seen=("cuda:0", "cuda:1"))
    with pytest.raises(
        RuntimeError,
        match=r"backend='one_gpu' cannot run these inputs: they take tensors on one device, "
        r"got cuda:0, cuda:1",
    ):
        backends._require("one_gpu", two)
    assert backends._best(two).name == "reference"
    one = backends.Call("cuda", torch.float32, False, devices_seen=("cuda:1",))
    assert backends._require("one_gpu", one).name == "one_gpu"


def test_layer_backend_and_grad_clip_are_validated_when_assigned():
    layer = PhasedLSTM(2, 3)
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'reference'"):
        layer.backend = "cuda"
    with pytest.raises(ValueError, match=r"grad_clip must be None or > 0, got -1.0"):
        layer.grad_clip = -1.0
    with pytest.raises(ValueError, match=r"grad_clip must be finite, got inf"):
        layer.grad_clip = math.inf
    assert layer.backend == "auto" and layer.grad_clip is None  # unchanged by the failures
    layer.backend, layer.grad_clip = "reference", 2.5
    assert layer.settings.backend == "reference" and "grad_clip=2.5" in repr(layer)
