"""The kernel build: named after what it is built from, a stale lock ends the wait with a
message naming the file, a failed build falls back with one warning, and the ahead-of-time
build. The failure paths run in subprocesses with their own TORCH_EXTENSIONS_DIR."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from phased_lstm.ops import build
from phased_lstm.ops._cpu import kernels

SRC = str(Path(kernels.__file__).resolve().parents[3])


def run_python(code, tmp_path, **env):
    environment = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), **env)
    environment["PYTHONPATH"] = SRC + os.pathsep + environment.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def test_the_name_follows_sources_flags_and_versions(tmp_path):
    source = tmp_path / "a.cpp"
    source.write_text("int f() { return 1; }\n")
    header = tmp_path / "a.h"
    header.write_text("#pragma once\n")
    spec = kernels.BuildSpec((source,), (header,), ("-O3",), ())
    assert spec.name == kernels.BuildSpec((source,), (header,), ("-O3",), ()).name
    assert spec.name.startswith("phased_lstm_kernels_")
    assert spec.name != kernels.BuildSpec((source,), (header,), ("-O2",), ()).name
    header.write_text("#pragma once\n// changed\n")
    assert spec.name != kernels.BuildSpec((source,), (header,), ("-O3",), ()).name
    # The real spec covers every source and header of csrc.
    real = kernels.build_spec()
    assert {p.name for p in real.sources} >= set(kernels.SOURCES)
    assert {p.name for p in real.headers} >= set(kernels.HEADERS)
    assert {"train.cpp", "infer.cpp", "time_gate.cpp", "stream.cpp"} <= set(kernels.SOURCES)


def test_a_lock_left_by_a_killed_build_ends_the_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    spec = kernels.build_spec()
    spec.directory.mkdir(parents=True)
    spec.lock.touch()
    start = time.monotonic()
    with pytest.raises(kernels.BuildLockTimeout) as error:
        kernels.wait_for_lock(spec, timeout=0.3, poll=0.05)
    assert 0.25 < time.monotonic() - start < 5
    assert f"delete {spec.lock}" in str(error.value)
    # A lock untouched for long is stale at once; a released one ends the wait.
    old = time.time() - 3600
    os.utime(spec.lock, (old, old))
    with pytest.raises(kernels.BuildLockTimeout, match="untouched for 3600 s"):
        kernels.wait_for_lock(spec, timeout=600)
    spec.lock.unlink()
    kernels.wait_for_lock(spec, timeout=0.0)


def test_a_stale_lock_falls_back_with_a_message_naming_the_file(tmp_path):
    code = """
    import warnings, torch
    from phased_lstm import PhasedLSTM
    from phased_lstm.ops._cpu import kernels
    spec = kernels.build_spec()
    spec.directory.mkdir(parents=True)
    spec.lock.touch()
    layer = PhasedLSTM(2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out, _ = layer(torch.randn(4, 1, 2), torch.rand(4, 1, dtype=torch.float64).cumsum(0))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    print(len(messages))
    print(messages[0])
    print(spec.lock)
    """
    result = run_python(code, tmp_path, PHASED_LSTM_BUILD_LOCK_TIMEOUT="1")
    assert result.returncode == 0, result.stderr
    count, message, lock = result.stdout.strip().splitlines()[-3:]
    assert count == "1"
    assert "could not be built" in message and "reference loop" in message
    assert f"delete {lock}" in message and kernels.LOCK_TIMEOUT_ENV in message


def test_a_failed_build_falls_back_to_the_reference_with_one_warning(tmp_path):
    code = """
    import warnings, torch
    from phased_lstm import PhasedLSTM
    torch.manual_seed(0)
    layer = PhasedLSTM(2, 3)
    x, t = torch.randn(5, 2, 2), torch.rand(5, 2, dtype=torch.float64).cumsum(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _ = layer(x, t)
        out.sum().backward()
        with torch.no_grad():
            layer(x, t)
    messages = [str(w.message) for w in caught if "could not be built" in str(w.message)]
    layer.backend = "reference"
    want, _ = layer(x, t)
    print(len(messages), torch.equal(out, want))
    print(messages[0])
    """
    result = run_python(code, tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert result.returncode == 0, result.stderr
    first, message = result.stdout.strip().splitlines()[-2:]
    assert first == "1 True"
    assert "could not be built" in message and "g++" in message and "ninja" in message


@pytest.mark.skipif(kernels.build_error() is not None, reason="C++ kernels unavailable")
def test_ahead_of_time_build_reports_its_folder(capsys):
    assert build.main([]) == 0
    out = capsys.readouterr().out
    directory = kernels.build_spec().directory
    assert f"built in {directory}" in out
    assert (directory / "phased_lstm_build_done").exists()
