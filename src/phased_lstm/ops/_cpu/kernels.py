"""Building and loading the C++ kernels: named after what they are built from, never hung.

The kernels (``csrc/*.cpp`` and ``*.h``) are compiled on first use with
:func:`torch.utils.cpp_extension.load` into torch's extension cache (``TORCH_EXTENSIONS_DIR``,
by default ``~/.cache/torch_extensions/<python>_<cpu or cuda>``). It needs a C++ compiler and
ninja, takes a minute or two once, and nothing is downloaded.

* The build is named after a hash of its sources, its compiler flags, the torch version and
  this package's version, so two checkouts or two versions never rebuild each other's kernels,
  and a process never loads kernels built from other sources.
* A build that finished is loaded straight from its folder the next time, without asking ninja.
* torch serialises builds with a ``lock`` file in the build's folder; a build killed midway
  leaves it behind, and torch would wait for it forever. Here a lock untouched for longer than
  ``PHASED_LSTM_BUILD_LOCK_TIMEOUT`` seconds (default 600; a build takes a minute or two) ends
  the wait with an error that names the file to delete.
* If the build fails, ``backend="auto"`` warns once and runs the reference loop; a compiled
  backend asked for by name raises with the reason and the fix.

To build ahead of time (a Docker image, a cluster's login node, a machine that should never
compile at first use), run ``python -m phased_lstm.ops.build`` or call
:func:`phased_lstm.ops.build_kernels`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from ..._version import __version__

CSRC = Path(__file__).with_name("csrc")
LOCK_TIMEOUT_ENV = "PHASED_LSTM_BUILD_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 600.0
FIX = (
    "install a C++ compiler (e.g. `apt-get install g++`) and ninja (`pip install ninja`), "
    "then restart Python"
)
# What the kernels are built from; an install that lacks one of them (a wheel built without its
# headers) cannot build, and says so instead of blaming the compiler.
SOURCES = ("train.cpp", "infer.cpp", "stream.cpp", "time_gate.cpp")
HEADERS = ("gate_math.h", "layout.h", "lstm_math.h")
# Written into the build's folder once the extension has been built and imported: its presence
# means the library beside it is complete (a killed link could leave half a file).
_DONE_MARKER = "phased_lstm_build_done"


def _cpu_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


@dataclass(frozen=True)
class BuildSpec:
    """What the kernels are built from, and the name and folder that follow from it."""

    sources: tuple[Path, ...]
    headers: tuple[Path, ...]
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    name: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for path in (*self.sources, *self.headers):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        for part in (*self.cflags, "|", *self.ldflags, "|", torch.__version__, __version__):
            digest.update(part.encode() + b"\0")
        digest.update(f"{sys.version_info[:2]} {platform.machine()}".encode())
        object.__setattr__(self, "name", f"phased_lstm_kernels_{digest.hexdigest()[:16]}")

    @property
    def directory(self) -> Path:
        from torch.utils.cpp_extension import get_default_build_root

        root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
        return Path(root) / self.name

    @property
    def lock(self) -> Path:
        """The file torch's build holds while it runs (``torch.utils.file_baton``)."""
        return self.directory / "lock"


def build_spec() -> BuildSpec:
    """The spec of the kernels for this machine: sources, flags and the name they give."""
    # Without trapping math and errno the compiler may if-convert and vectorise the loops of
    # transcendental functions; neither changes a result.
    cflags = ["-O3", "-fno-trapping-math", "-fno-math-errno"]
    ldflags: list[str] = []
    if _cpu_has_avx2():
        cflags += ["-mavx2", "-mfma"]
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for splits the elementwise work over torch's own OpenMP threads; the
        # `omp simd` reductions of the dot products need it too.
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    missing = [name for name in (*SOURCES, *HEADERS) if not (CSRC / name).is_file()]
    if missing:
        raise MissingSources(f"kernel sources missing from {CSRC}: {', '.join(missing)}")
    return BuildSpec(
        sources=tuple(sorted(CSRC.glob("*.cpp"))),
        headers=tuple(sorted(CSRC.glob("*.h"))),
        cflags=tuple(cflags),
        ldflags=tuple(ldflags),
    )


class MissingSources(RuntimeError):
    """Kernel sources absent from the installed package: no compiler can help."""

    fix = (
        "reinstall phased-lstm from a complete wheel or sdist (its package data must hold "
        "ops/_cpu/csrc/*.cpp and *.h), then restart Python"
    )


class BuildLockTimeout(RuntimeError):
    """A build lock that nobody released within the timeout."""


def lock_timeout() -> float:
    text = os.environ.get(LOCK_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"{LOCK_TIMEOUT_ENV} must be >= 0 seconds, got {text!r}")
    return value


def wait_for_lock(spec: BuildSpec, timeout: float, poll: float = 0.2) -> None:
    """Return once no build holds ``spec.lock``; raise if it stays untouched for ``timeout``.

    The age is that of the file (its modification time), so a lock left by a build killed
    long ago ends the wait at once, and one held by a live build is waited for.
    """
    lock = spec.lock
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > timeout:
            raise BuildLockTimeout(
                f"the kernel build in {spec.directory} is locked by {lock}, untouched for "
                f"{age:.0f} s (the limit is {timeout:g} s, set by {LOCK_TIMEOUT_ENV}). If no "
                f"other process is building the kernels, a build killed midway left it behind: "
                f"delete {lock} and run again"
            )
        time.sleep(poll)


def _import_built(spec: BuildSpec) -> ModuleType | None:
    """The finished build of ``spec``, imported without asking ninja; None if there is none."""
    directory = spec.directory
    if not (directory / _DONE_MARKER).exists() or spec.lock.exists():
        return None
    libraries = [p for p in directory.glob(f"{spec.name}*") if p.suffix in (".so", ".pyd")]
    if len(libraries) != 1:
        return None
    module_spec = importlib.util.spec_from_file_location(spec.name, libraries[0])
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def compile_and_load(spec: BuildSpec, verbose: bool = False) -> ModuleType:
    """Import the kernels of ``spec``, building them first if needed; raises on failure."""
    module = _import_built(spec)
    if module is not None:
        return module
    from torch.utils.cpp_extension import load

    spec.directory.mkdir(parents=True, exist_ok=True)
    wait_for_lock(spec, lock_timeout())
    module = load(
        name=spec.name,
        sources=[str(path) for path in spec.sources],
        extra_cflags=list(spec.cflags),
        extra_ldflags=list(spec.ldflags),
        extra_include_paths=[str(CSRC)],
        build_directory=str(spec.directory),
        is_python_module=True,
        verbose=verbose,
    )
    (spec.directory / _DONE_MARKER).write_text(f"{spec.name}\n")
    return module


def _summary(exc: BaseException) -> str:
    """The gist of a failed build: the compiler's error lines if there are any."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    text = "; ".join(errors[:3] if errors else lines[:3]) or "no message"
    if len(text) > 600:
        text = text[:600] + "..."
    return f"{type(exc).__name__}: {text}"


class KernelBuild:
    """The kernels' state in this process: not tried yet, loaded, or failed (and why).

    ``loader`` builds and imports them (tests replace it to simulate a failed build).
    """

    def __init__(self, loader: Callable[[], ModuleType] | None = None) -> None:
        self._loader = loader or (lambda: compile_and_load(build_spec()))
        self._lock = threading.Lock()
        self.tried = False
        self.module: ModuleType | None = None
        self.error: str | None = None
        self.fix = FIX
        self.warned = False

    def ensure(self) -> str | None:
        """Build and load once; ``None`` when the kernels are usable, else why not."""
        if not self.tried:
            with self._lock:
                if not self.tried:
                    try:
                        self.module = self._loader()
                        from . import library

                        library.register()
                    except Exception as exc:  # a failed build must never break the reference
                        self.error = _summary(exc)
                        self.fix = getattr(exc, "fix", FIX)
                    self.tried = True
        return self.error


_state = KernelBuild()


def build_error() -> str | None:
    """Build the kernels if not done yet; ``None`` when they are usable, else why not."""
    return _state.ensure()


def kernels_available(*, warn: bool = False) -> bool:
    """Whether the compiled backends can run; with ``warn``, warn once if they cannot."""
    state = _state
    error = state.ensure()
    if error is not None and warn and not state.warned:
        state.warned = True
        warnings.warn(
            f"phased_lstm: the C++ kernels could not be built ({error}); backend='auto' uses the "
            f"slower reference loop. To get them, {state.fix}.",
            RuntimeWarning,
            stacklevel=5,  # the caller of plan(): kernels_available <- passed_over <- _best <- plan
        )
    return error is None


def build_fix() -> str:
    """What a user can do about the build's failure (after :func:`build_error`)."""
    return _state.fix


def kernel_module() -> ModuleType | None:
    """The imported extension (its Python functions), or ``None`` if it could not be built."""
    return _state.module if _state.ensure() is None else None


def build_kernels(verbose: bool = False) -> Path:
    """Build the kernels now (or find them built) and return their folder.

    For machines that should not compile at first use: run it once where the package is
    installed, with the same ``TORCH_EXTENSIONS_DIR`` the users will have. Raises a
    RuntimeError with the compiler's complaint if the build fails.
    """
    try:
        spec = build_spec()
        compile_and_load(spec, verbose=verbose)
    except Exception as exc:
        fix = getattr(exc, "fix", FIX)
        raise RuntimeError(f"the C++ kernels could not be built ({_summary(exc)}); {fix}") from exc
    return spec.directory


__all__ = ["build_error", "build_kernels", "kernel_module", "kernels_available"]
