"""examples/choose_periods.py: its rule and measures by hand, its reader of sktime's .ts files, and
a tiny run where sktime's data sets are installed."""

import importlib.util
import math
import pathlib
import sys

import pytest
import torch

from phased_lstm import PhasedLSTM

PATH = pathlib.Path(__file__).resolve().parents[2] / "examples" / "choose_periods.py"
spec = importlib.util.spec_from_file_location("choose_periods", PATH)
choose_periods = importlib.util.module_from_spec(spec)
sys.modules["choose_periods"] = choose_periods  # dataclasses look their module up there
spec.loader.exec_module(choose_periods)


def grid_split(events: int, step: float) -> "choose_periods.Split":
    times = (torch.arange(events, dtype=torch.float64) * step).expand(4, events)
    return choose_periods.Split(
        torch.zeros(4, events, 1), times, torch.full((4,), events), torch.zeros(4)
    )


def test_settings_follow_the_readme_rule():
    # 12 events 2 apart: r_on = 2 / 12 rounded up to 0.17; periods (2 / 0.17, 22).
    settings = choose_periods.gate_settings(grid_split(12, 2.0))
    assert settings["default"] == ({"period_range": (math.e, math.e**3), "r_on": 0.05}, False)
    assert settings["default periods, rule's r_on"] == (
        {"period_range": (math.e, math.e**3), "r_on": 0.17},
        False,
    )
    gate, learned = settings["suggested"]
    assert gate["r_on"] == 0.17 and not learned
    assert gate["period_range"] == pytest.approx((2 / 0.17, 22.0))
    assert settings["suggested, learned r_on"] == ({**gate, "learn_r_on": True}, True)
    # 100 events: r_on stays at 0.05, periods (gap / 0.05, duration).
    settings = choose_periods.gate_settings(grid_split(100, 0.1))
    assert list(settings) == ["default", "suggested", "suggested, learned r_on"]
    gate, _ = settings["suggested"]
    assert gate["r_on"] == 0.05 and gate["period_range"] == pytest.approx((2.0, 9.9))


def test_never_open_share_by_hand():
    layer = PhasedLSTM(1, 2, r_on=0.1)
    with torch.no_grad():  # periods 10; open in phase [0, 0.1): times [s, s + 1) mod 10
        layer.log_period_l0.fill_(math.log(10.0))
        layer.shift_l0.copy_(torch.tensor([0.5, 5.5]))
    times = torch.tensor([[1.0, 2.0, 6.0], [2.0, 3.0, 6.0]], dtype=torch.float64)
    # Neuron 0 opens at t = 1 (phase 0.05); neuron 1 at t = 6 (phase 0.05), which the second
    # sequence holds only in its padding.
    share = choose_periods.never_open_share(layer, times, torch.tensor([3, 2]))
    assert share == pytest.approx(2 / 4)


def test_series_are_read_from_ts_files_without_importing_sktime(tmp_path, monkeypatch):
    """Only sktime's data files are read (sktime's own import would need its pinned pandas):
    a tiny .ts file, two channels, series of unequal lengths, string labels."""
    (tmp_path / "Tiny").mkdir()
    (tmp_path / "Tiny" / "Tiny_TRAIN.ts").write_text(
        "# a comment\n@problemName Tiny\n@univariate false\n@dimensions 2\n"
        "@equalLength false\n@classLabel true up down\n@data\n"
        "1.0,2.0,3.0:4.0,5.0,6.0:up\n-1.5,0.5:2.5,3.5:down\n"
    )
    monkeypatch.setitem(sys.modules, "sktime", None)  # import sktime raises ImportError
    monkeypatch.setattr(choose_periods, "sktime_data", lambda: tmp_path)
    series, labels = choose_periods.load_series("Tiny", "train")
    assert [x.shape for x in series] == [(3, 2), (2, 2)]
    assert series[0][:, 1].tolist() == [4.0, 5.0, 6.0] and series[1][0].tolist() == [-1.5, 2.5]
    assert labels.tolist() == ["up", "down"]


@pytest.mark.slow
@pytest.mark.skipif(
    choose_periods.sktime_data() is None,
    reason="needs the data sets that ship inside sktime (pip install --no-deps sktime)",
)
def test_a_tiny_run_prints_the_table(tmp_path, capsys):
    out = tmp_path / "table.md"
    argv = ["--quick", "--datasets", "ItalyPowerDemand", "--epochs", "1", "--out", str(out)]
    assert choose_periods.main(argv + ["--hidden", "4"]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = printed.splitlines()
    assert len(rows) == 2 + 4 and rows[2].startswith("| ItalyPowerDemand (hours), 67 / 1029 | 12 |")
