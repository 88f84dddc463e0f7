"""Smoke test of the benchmark command on its tiny --quick configs (timings are never asserted)."""

import pytest

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
