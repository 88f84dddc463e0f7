"""Smoke test of the benchmark's event-streaming configs (timings are never asserted)."""

from phased_lstm_experiments import bench


def test_event_config_prints_its_row_and_ratios(capsys):
    argv = ["--configs", "events-smoke", "--no-memory", "--repeats", "1", "--warmup", "0"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| config | PhasedLSTM us/event | PhasedLSTMStream us/event |" in out
    row = next(line for line in out.splitlines() if line.startswith("| events-smoke"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert float(cells[1]) > 0 and float(cells[2]) > 0  # PhasedLSTM and the stream
    assert float(cells[4]) > 0 and float(cells[5]) > 0  # nn.LSTM and two cells
    assert float(cells[6]) > 0 and cells[-1].endswith("%")
