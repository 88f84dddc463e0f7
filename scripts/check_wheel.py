"""Check that the package as a user installs it builds and runs its C++ kernels.

Run by ``.ci/run`` from the repository root: ``python3 scripts/check_wheel.py``. It

1. builds the wheel (``pip wheel --no-deps``) and the sdist of this checkout into a temporary
   folder and checks that both carry every kernel source of ``ops/_cpu/csrc``, headers included
   (an install without them silently falls back to the 10-100x slower reference loop);
2. installs the wheel, not editable, into a fresh virtual environment (torch pinned by
   ``.ci/constraints.txt``, as CI installs it);
3. in a process started there, outside the checkout and with an empty torch extension cache,
   imports the installed package, builds the kernels from its installed sources, and runs a
   forward and backward through them: the planner must pick the compiled backends and no
   fallback warning may be raised.

Exits with 0 when all holds, else prints what failed and exits with 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "src" / "phased_lstm" / "ops" / "_cpu" / "csrc"
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"

# Run by the installed package's Python, in an empty folder outside the checkout.
CHECK = textwrap.dedent(
    """
    import sys
    import warnings
    from pathlib import Path

    import torch

    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import phased_lstm
        from phased_lstm import PhasedLSTM, ops

        installed = Path(phased_lstm.__file__).resolve()
        assert Path(sys.argv[1]).resolve() not in installed.parents, installed
        print(f"phased_lstm {phased_lstm.__version__} from {installed.parent}")
        print(f"kernels built in {ops.build_kernels()}")
        for grad, want in ((True, "fused"), (False, "sparse")):
            chosen = ops.plan("auto", device="cpu", dtype=torch.float32, needs_grad=grad)
            assert chosen.backend.name == want and chosen.kernel_gate, (grad, chosen)
        torch.manual_seed(0)
        layer = PhasedLSTM(3, 8, num_layers=2, peepholes=True, batch_first=True)
        x = torch.randn(4, 20, 3, requires_grad=True)
        times = torch.rand(4, 20, dtype=torch.float64).mul(10).cumsum(1)
        lengths = torch.tensor([20, 17, 9, 3])
        out, (h_n, c_n) = layer(x, times, lengths=lengths)
        (out.square().sum() + h_n.sum()).backward()
        reference = PhasedLSTM(3, 8, num_layers=2, peepholes=True, batch_first=True)
        reference.load_state_dict(layer.state_dict())
        reference.backend = "reference"
        x_ref = x.detach().requires_grad_()
        out_ref, (h_ref, _) = reference(x_ref, times, lengths=lengths)
        (out_ref.square().sum() + h_ref.sum()).backward()
        torch.testing.assert_close(out, out_ref)
        torch.testing.assert_close(x.grad, x_ref.grad)
        with torch.no_grad():
            layer.eval()(x, times, lengths=lengths)
    problems = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not problems, problems
    print("forward and backward ran through the compiled kernels (fused, sparse)")
    """
)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def kernel_sources(names: list[str], marker: str) -> set[str]:
    """The file names under ``.../ops/_cpu/csrc/`` among an archive's member names."""
    return {Path(name).name for name in names if marker in name.replace("\\", "/")}


def clean_copy(destination: Path) -> Path:
    """The checkout without build outputs: ``pip wheel`` builds in the source tree, and a stale
    ``build/`` folder would slip files of an older layout into the wheel."""
    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "runs", "*.so", ".*_cache"
    )
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def main() -> int:
    expected = {path.name for path in CSRC.iterdir() if path.suffix in (".cpp", ".h")}
    marker = "phased_lstm/ops/_cpu/csrc/"
    with tempfile.TemporaryDirectory(prefix="phased-lstm-wheel-") as tmp:
        tmp = Path(tmp)
        dist, venv, work = tmp / "dist", tmp / "venv", tmp / "work"
        work.mkdir()
        source = clean_copy(tmp / "source")
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source])
        (wheel,) = dist.glob("phased_lstm-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            in_wheel = kernel_sources(archive.namelist(), marker)
        if expected - in_wheel:
            missing = ", ".join(sorted(expected - in_wheel))
            print(f"error: kernel sources missing from the wheel: {missing}", file=sys.stderr)
            return 1
        run([sys.executable, "-m", "venv", venv])
        python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
        pip = [python, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS]
        run([*pip, wheel])
        run([*pip, "setuptools>=64"])
        build_sdist = f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"
        run([python, "-c", build_sdist], cwd=source, stdout=subprocess.DEVNULL)
        (sdist,) = dist.glob("phased_lstm-*.tar.gz")
        with tarfile.open(sdist) as archive:
            in_sdist = kernel_sources(archive.getnames(), marker)
        if expected - in_sdist:
            missing = ", ".join(sorted(expected - in_sdist))
            print(f"error: kernel sources missing from the sdist: {missing}", file=sys.stderr)
            return 1
        print(f"wheel and sdist carry the kernel sources: {', '.join(sorted(expected))}")
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "TORCH_EXTENSIONS_DIR")
        }
        env["TORCH_EXTENSIONS_DIR"] = str(tmp / "torch_extensions")  # a build from scratch
        result = subprocess.run(
            [python, "-c", CHECK, ROOT], cwd=work, env=env, check=False, timeout=1200
        )
        if result.returncode != 0:
            print("error: the installed wheel did not build and run its kernels", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
