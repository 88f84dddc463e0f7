"""Compile every kernel the "triton" backend launches, for a GPU target, without a GPU.

    PYTHONPATH=src python scripts/triton_compile_check.py [--arch 90] [--hidden 12,20,110,256,512]

Runs the backend's own host code (forward and backward, training and inference, with and without
peepholes, float32 IEEE and TF32, bfloat16, float64, and the time gate) on CPU tensors with
Triton's driver replaced by a stand-in for a GPU of the given compute capability: each launch
goes through Triton's real argument binding and compiler, but stops before running (a "warmup").
For every distinct kernel it prints the registers, the stack (register spills) and the shared
memory that cuobjdump (shipped with Triton) reads from the cubin, and whether the products use
the tensor cores (mma/wgmma) or FMAs, and the barriers in its code. Nothing runs: the outputs
are garbage.

This is how the tile sizes of ``ops._triton.launch.default_plan`` were checked under Triton 3.6
and 3.9: a kernel must stay within 255 registers per thread, and a stack above a few bytes means
spills.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction


class _StandInDriver:
    """Just enough of a Triton driver for compiling: a target, device 0, stream 0."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _usage(kernel) -> str:
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        report = subprocess.run(
            [os.path.join(tools, "cuobjdump"), "-res-usage", cubin.name],
            capture_output=True,
            text=True,
        ).stdout
    fields = dict(re.findall(r"(REG|STACK):(\d+)", report))
    ptx = kernel.asm["ptx"]
    unit = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "fma"
    # Barriers in the code: each layout change through shared memory, and the step barrier.
    barriers = len(re.findall(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx))
    return (
        f"regs {fields.get('REG', '?'):>3}  stack {fields.get('STACK', '?'):>4}  "
        f"shared {kernel.metadata.shared:>6}  barriers {barriers:>4}  {unit}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability (default 90)")
    parser.add_argument(
        "--hidden", default="12,20,110,256,512", help="hidden sizes (default 12,20,110,256,512)"
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        parser.error(
            "unset TRITON_INTERPRET: this compiles the kernels, it does not interpret them"
        )
    driver.set_active(_StandInDriver(args.arch))
    seen: dict[str, str] = {}
    context = {"case": ""}

    def launch_compiles_only(self, grid):
        def launch(*call_args, **kwargs):
            kernel = self.warmup(*call_args, grid=grid, **kwargs)
            if kernel.hash not in seen:
                seen[kernel.hash] = _usage(kernel)
                print(f"{context['case']:24s} {self.fn.__name__:21s} {seen[kernel.hash]}")
            return kernel

        return launch

    JITFunction.__getitem__ = launch_compiles_only
    # The host launch code itself, not the ops: these are CPU tensors, for which the ops (CUDA
    # kernels, outside the interpreter) are not registered.
    from phased_lstm.ops._triton import gate as triton_gate
    from phased_lstm.ops._triton import launch

    print(f"triton {triton.__version__}, sm_{args.arch}")
    cases = [
        ("f32", torch.float32, "highest"),
        ("tf32", torch.float32, "high"),
        ("bf16", torch.bfloat16, "highest"),
        ("f64", torch.float64, "highest"),
    ]
    length, batch = 3, args.batch
    for hidden in (int(h) for h in args.hidden.split(",")):
        for name, dtype, precision in cases:
            torch.set_float32_matmul_precision(precision)
            plan = launch.default_plan(batch, hidden, dtype)
            mode = "stepwise" if plan.stepwise else f"BN{plan.block_rows} BK{plan.block_k}"
            for peepholes in (False, True):
                context["case"] = f"H={hidden} {name} {mode}{' peep' if peepholes else ''}"
                inputs = [
                    torch.randn(length, batch, 4 * hidden, dtype=dtype),
                    torch.rand(length, batch, hidden, dtype=dtype),
                    torch.randn(4 * hidden, hidden, dtype=dtype),
                    torch.randn(3 * hidden, dtype=dtype) if peepholes else None,
                    torch.zeros(batch, hidden, dtype=dtype),
                    torch.zeros(batch, hidden, dtype=dtype),
                ]
                launch.forward(*inputs, None, plan, save=False)
                batch_sizes = torch.tensor([batch] * length)
                h, c, acts = launch.forward(*inputs, batch_sizes, plan, save=True)
                grads = (torch.ones_like(h), torch.ones_like(h[0]), torch.ones_like(h[0]))
                launch.backward(
                    *grads, *inputs[1:], h, c, acts, 1.0, batch_sizes, plan, weight_hh_grad=True
                )
    torch.set_float32_matmul_precision("highest")
    for dtype in (torch.float32, torch.bfloat16):
        context["case"] = f"time gate {str(dtype)[6:]}"
        period = torch.rand(110, dtype=torch.float64).add(1)
        times = torch.rand(8, 4, dtype=torch.float64)
        k = triton_gate.forward(times, period, period, period, 1e-3, None, dtype)
        triton_gate.backward(torch.ones_like(k), times, period, period, period, 1e-3, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
