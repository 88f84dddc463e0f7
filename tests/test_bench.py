"""Smoke test of the benchmark command on its tiny --quick configs (timings are never asserted)."""

import pytest
import torch

from phased_lstm_experiments import bench


def test_quick_benchmark_prints_the_table(capsys):
    assert bench.main(["--quick", "--no-memory", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "| config | PhasedLSTM ms | nn.LSTM ms | ratio |" in out
    rows = [line for line in out.splitlines() if line.startswith("| quick-")]
    assert len(rows) == 2
    train = rows[0].split("|")
    assert float(train[2]) > 0 and float(train[3]) > 0 and float(train[7]) > 0


def test_peak_memory_probe_reports_a_size():
    peak = bench.measure_peak_mib(bench.CONFIGS["quick-train"], "plstm", "auto")
    assert 0 <= peak < 100


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
