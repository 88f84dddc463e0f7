"""The benchmark command on its tiny --quick configs (timings are never asserted), and its
peak-memory probe, which always runs in a process of its own."""

import subprocess
import sys

import pytest
import torch

from phased_lstm_experiments import bench


@pytest.mark.slow
def test_quick_benchmark_prints_the_table(capsys):
    assert bench.main(["--quick", "--no-memory", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "| config | PhasedLSTM ms | nn.LSTM ms | ratio |" in out
    rows = [line for line in out.splitlines() if line.startswith("| quick-")]
    assert len(rows) == 2
    train = rows[0].split("|")
    assert float(train[2]) > 0 and float(train[3]) > 0 and float(train[7]) > 0


def _peak_of(statement: str) -> float:
    """The probe's figure for a step that runs ``statement``, in a fresh interpreter (the probe
    resets the process's high-water mark, which must not be pytest's)."""
    code = (
        "import torch\n"
        "from phased_lstm_experiments.bench import peak_growth_mib\n"
        f"print(peak_growth_mib(lambda: {statement}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_memory_probe_measures_a_known_allocation():
    # 2**24 float32 values, written once: 64 MiB that must show, and not much more.
    assert 56 <= _peak_of("torch.ones(2**24).add_(1)") <= 80
    # A step that allocates nothing sizeable shows next to nothing.
    assert _peak_of("torch.ones(16).sum()") < 8


@pytest.mark.slow
def test_peak_memory_of_a_step_in_a_subprocess():
    peak = bench.peak_mib_in_subprocess(bench.CONFIGS["quick-train"], "plstm", "auto")
    assert peak is not None and peak < 100


def test_bad_options_are_reported(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--configs", "nope"])
    assert "unknown config 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--backend", "gpu"])


def test_cuda_device_option(capsys):
    # On a GPU both models run there, timed with CUDA events, with the GPU's peak memory;
    # without one the option is refused with the reason.
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main(["--quick", "--device", "cuda"])
        assert "--device cuda needs a CUDA GPU" in capsys.readouterr().err
        return
    assert bench.main(["--quick", "--device", "cuda", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "GPU: " in out and "cuDNN TF32" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| quick-")]
    assert len(rows) == 2
    assert all(float(row[2]) > 0 and float(row[3]) > 0 and float(row[9]) >= 0 for row in rows)
