"""``python -m phased_lstm.ops.build``: build the C++ kernels now, not at first use.

For machines that should not compile when a model first runs (a Docker image, a cluster's
login node): run it where the package is installed, with the ``TORCH_EXTENSIONS_DIR`` the users
will have; it prints the folder of the build, or the compiler's complaint and exits with 1.
The same from Python: :func:`phased_lstm.ops.build_kernels`.
"""

from __future__ import annotations

import argparse
import sys

from ._cpu.kernels import build_kernels, build_spec


def main(argv: list[str] | None = None, *, prog: str = "python -m phased_lstm.ops.build") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build phased_lstm's C++ kernels into torch's extension cache now.",
    )
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    try:
        directory = build_kernels(verbose=args.verbose)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"phased_lstm kernels {build_spec().name} built in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
