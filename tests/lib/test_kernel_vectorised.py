"""The element-wise loops of the compiled kernels vectorise for float32 with the build's own
flags. They are most of the time outside the matrix products: the backward loop once stayed
scalar because GCC gave up on the runtime alias checks of its strided rows, and training at the
paper's shape ran 1.5x slower without any test noticing. GCC reports each loop it vectorised
(-fopt-info-vec); this compiles the loops' float instantiations alone and reads that report."""

import shutil
import subprocess
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

from phased_lstm.ops._cpu import kernels

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or "-mavx2" not in kernels.build_spec().cflags,
    reason="needs g++ and a CPU with AVX2 (the flags under which the loops are vectorised)",
)

SIGNATURES = {
    "forward_cols": "(const float*, int64_t, const float*, const float*, int64_t, float*, "
    "int64_t, const float*, const float*, const float*, const float*, int64_t, float*, float*, "
    "int64_t)",
    "backward_cols": "(const float*, int64_t, const float*, const float*, const float*, "
    "const float*, int64_t, const float*, float*, const float*, float*, float*, int64_t, float*, "
    "int64_t, float*, double*, float, int64_t)",
}
# Every float instantiation the kernels use: (peephole, acts mode, bias) and (peephole, copy).
INSTANCES = [
    ("forward_cols", f"float, {peep}, {acts}, {bias}")
    for peep in ("false", "true")
    for acts, bias in (("0", "false"), ("1", "false"), ("2", "false"), ("2", "true"))
] + [
    ("backward_cols", f"float, {peep}, {copy}")
    for peep in ("false", "true")
    for copy in ("false", "true")
]


def loop_line(name: str) -> int:
    """The line of the `for` over the neurons in the body of `name`, in lstm_math.h."""
    lines = (kernels.CSRC / "lstm_math.h").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if f"void {name}(" in line)
    return next(i for i in range(start, len(lines)) if "for (int64_t j = 0;" in lines[i]) + 1


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> list[str]:
    """GCC's report on one file holding every instantiation (one compile: ATen's headers alone
    take seconds)."""
    folder = tmp_path_factory.mktemp("vectorised")
    source = folder / "loops.cpp"
    source.write_text(
        f'#include "{kernels.CSRC / "lstm_math.h"}"\n'
        + "".join(f"template void phased_lstm::{n}<{a}>{SIGNATURES[n]};\n" for n, a in INSTANCES)
    )
    includes = [f"-I{p}" for p in (*include_paths(), sysconfig.get_paths()["include"])]
    command = ["g++", "-std=c++17", *kernels.build_spec().cflags, *includes, "-c", str(source),
               "-o", str(folder / "loops.o"), "-fopt-info-vec-optimized"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr.splitlines()


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_float_instance_of_the_loop_is_vectorised(report, name):
    line = loop_line(name)
    wanted = sum(n == name for n, _ in INSTANCES)
    vectorised = [r for r in report if f"lstm_math.h:{line}:" in r and "32 byte vectors" in r]
    # GCC reports the loop once per instantiation it vectorised, all at the same line.
    assert len(vectorised) == wanted, (
        f"{name}: {len(vectorised)} of its {wanted} float instantiations vectorised at "
        f"lstm_math.h:{line}; GCC said: {[r for r in report if f'lstm_math.h:{line}:' in r]}"
    )
