"""Compile every kernel variant of the "triton" backend for a GPU target, without a GPU.

    PYTHONPATH=src python scripts/triton_compile_check.py [--arch 90] [--hidden 110,256]

For the default plans of float32 (IEEE and TF32), bfloat16 and float64 at each hidden size (and
the stepwise kernels and the time gate), Triton compiles the kernel to a cubin, and cuobjdump
(shipped with Triton) reports its registers, stack (register spills) and shared memory. A
compiler error or crash is reported, not raised: each variant compiles in a forked process. This
is how the tile sizes of ``phased_lstm.ops.triton_rnn._plan`` were checked against Triton 3.6 and
3.9 (a stack above 0 means spills; a kernel must fit in 255 registers per thread).
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
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from phased_lstm.ops import triton_gate, triton_rnn

_NAMES = {tl.float32: "fp32", tl.float64: "fp64", tl.bfloat16: "bf16", tl.float16: "fp16"}
# Scalar (non-pointer) arguments of the kernels; every other argument is a pointer.
_INTS = {"L", "N", "R", "nb", "seed_rows", "rows_per_program"}


def _signature(kernel, constexprs: dict, pointer_types: dict) -> dict:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _INTS:
            signature[name] = "i32"
        else:
            signature[name] = "*" + pointer_types.get(name, pointer_types["default"])
    return signature


def _compile(kernel, constexprs, pointer_types, arch, num_warps, num_stages) -> str:
    source = ASTSource(kernel, _signature(kernel, constexprs, pointer_types), constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [os.path.join(tools, "cuobjdump"), "-res-usage", cubin.name],
            capture_output=True,
            text=True,
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", usage))
    ptx = compiled.asm["ptx"]
    unit = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "fma"
    return (
        f"regs {fields.get('REG', '?'):>3} stack {fields.get('STACK', '?'):>4} "
        f"shared {compiled.metadata.shared:>6} {unit}"
    )


def _isolated(label: str, *args) -> None:
    """Compile in a forked child: an LLVM assertion aborts the child, not this report."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            message = _compile(*args)
        except Exception as exc:  # report every failure, keep going
            message = f"ERROR {type(exc).__name__}: {str(exc)[:300]}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    print(f"{label:58s} {message or f'CRASHED (status {status})'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability (default 90)")
    parser.add_argument("--hidden", default="16,110,256,512", help="hidden sizes to compile")
    parser.add_argument("--batch", type=int, default=32, help="batch size for the plans")
    args = parser.parse_args(argv)
    print(f"triton {triton.__version__}, sm_{args.arch}")
    cases = [
        ("f32", torch.float32, "highest"),
        ("tf32", torch.float32, "high"),
        ("bf16", torch.bfloat16, "highest"),
        ("f64", torch.float64, "highest"),
    ]
    for hidden in (int(h) for h in args.hidden.split(",")):
        for name, dtype, precision in cases:
            torch.set_float32_matmul_precision(precision)
            plan = triton_rnn._plan(args.batch, hidden, dtype)
            ct = triton_rnn._TL_DTYPES[triton_rnn._compute_dtype(dtype)]
            rnd = triton_rnn._TL_DTYPES[dtype]
            types = {"default": _NAMES[ct], "bs_ptr": "i32"}
            types |= {n: _NAMES[rnd] for n in ("gx_ptr", "k_ptr", "w_ptr", "wch_ptr", "gh_ptr")}
            tiles = f"BN{plan.block_rows} BH{plan.block_hidden} BK{plan.block_k}"
            launch = (args.arch, plan.num_warps, plan.num_stages)
            for peep in (False, True):
                label = f"H={hidden} {name} {'peep ' if peep else ''}"
                if plan.stepwise:
                    step = dict(H=hidden, BN=plan.block_rows, BH=plan.block_hidden, CT=ct)
                    step["PEEP"] = peep
                    _isolated(label + "step fwd", triton_rnn._forward_step, step | {"SAVE": True},
                              types, *launch)  # fmt: skip
                    _isolated(label + "step bwd", triton_rnn._backward_step, step, types, *launch)
                    continue
                base = dict(H=hidden, BN=plan.block_rows, BH=plan.block_hidden, BK=plan.block_k)
                base |= triton_rnn._constexprs(dtype, plan) | {"PEEP": peep}
                for save in (True, False):
                    mode = "train" if save else "infer"
                    _isolated(f"{label}{tiles} fwd {mode}", triton_rnn._forward_persistent,
                              base | {"SAVE": save, "SKIP": not save}, types, *launch)  # fmt: skip
                _isolated(f"{label}{tiles} bwd", triton_rnn._backward_persistent, base, types,
                          *launch)  # fmt: skip
    gate = {"default": "fp64", "valid_ptr": "u8"}
    for dtype in (tl.float32, tl.bfloat16):
        types = gate | {"k_ptr": _NAMES[dtype], "grad_ptr": _NAMES[dtype]}
        tiles = dict(H=110, BR=triton_gate._BR, BH=triton_gate._BH, HAS_VALID=True)
        _isolated(f"gate fwd {_NAMES[dtype]}", triton_gate._gate_forward, tiles | {"OUT": dtype},
                  types, args.arch, 4, 1)  # fmt: skip
        _isolated(f"gate bwd {_NAMES[dtype]}", triton_gate._gate_backward, tiles, types,
                  args.arch, 4, 1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
