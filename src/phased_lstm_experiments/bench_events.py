"""The streaming configs of ``phased-lstm bench`` (``events-*``): one event per call.

The ``events-*`` configs time streaming instead: one event per call, B = 1, I = 40, models in
eval mode under ``torch.inference_mode()``, r_on 0.05, periods in the units of the event times
(the default range, e to e^3) and events about one unit apart, so that every gate opens and
closes many times. PhasedLSTMCell is timed against nn.LSTMCell; a 2-layer PhasedLSTM called
per event (``layer(x[j:j+1], t[j:j+1], hx)``) and its :class:`~phased_lstm.PhasedLSTMStream`
against nn.LSTM called per event and two stacked nn.LSTMCells (the fastest way to stream an
LSTM in PyTorch). The ratio is against the fastest baseline; run with ``--threads 1`` and
``--threads 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from phased_lstm import PhasedLSTM, PhasedLSTMCell

from .bench_measure import _num, _time_interleaved


@dataclass(frozen=True)
class EventConfig:
    """One streaming shape: a cell (``num_layers`` 0) or a layer called once per event."""

    name: str
    num_layers: int
    hidden_size: int
    events: int
    input_size: int = 40
    r_on: float = 0.05
    # The targets: PhasedLSTM time / the fastest baseline's.
    target: float | None = None

    def describe(self) -> str:
        model = "cell" if self.num_layers == 0 else f"{self.num_layers}-layer"
        return f"{self.name}: {model} per event B=1 I={self.input_size} H={self.hidden_size}"


EVENT_MODELS = ("plstm", "stream", "lstm", "lstm_cell", "cells")


def _event_steps(config: EventConfig, seed: int = 0) -> tuple[dict[str, Callable[[], None]], float]:
    """One callable per model that runs all of the config's events, one call per event, and
    the share of neuron-events whose gate was open (update fraction)."""
    c = config
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(c.events, 1, c.input_size, generator=gen)
    gaps = torch.empty(c.events, 1, dtype=torch.float64).exponential_(1.0, generator=gen)
    times = gaps.cumsum(0)
    hidden = c.hidden_size
    steps: dict[str, Callable[[], None]] = {}
    if c.num_layers == 0:
        cell = PhasedLSTMCell(c.input_size, hidden, r_on=c.r_on).eval()
        lstm_cell = nn.LSTMCell(c.input_size, hidden).eval()

        def plstm_cell() -> None:
            h = c_ = torch.zeros(1, hidden)
            for j in range(c.events):
                h, c_ = cell(x[j], times[j], (h, c_))

        def baseline_cell() -> None:
            h = c_ = torch.zeros(1, hidden)
            for j in range(c.events):
                h, c_ = lstm_cell(x[j], (h, c_))

        steps = {"plstm": plstm_cell, "lstm_cell": baseline_cell}
        layer = PhasedLSTM(c.input_size, hidden, r_on=c.r_on)
        layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    else:
        layer = PhasedLSTM(c.input_size, hidden, c.num_layers, r_on=c.r_on).eval()
        lstm = nn.LSTM(c.input_size, hidden, c.num_layers).eval()
        cells = [nn.LSTMCell(c.input_size if n == 0 else hidden, hidden).eval() for n in range(2)]
        zeros = torch.zeros(c.num_layers, 1, hidden)

        def plstm_layer() -> None:
            hx = (zeros, zeros)
            for j in range(c.events):
                _, hx = layer(x[j : j + 1], times[j : j + 1], hx)

        def plstm_stream() -> None:
            stream = layer.stream()
            for j in range(c.events):
                stream(x[j], times[j])

        def lstm_layer() -> None:
            hx = (zeros, zeros)
            for j in range(c.events):
                _, hx = lstm(x[j : j + 1], hx)

        def two_cells() -> None:
            states = [(zeros[0], zeros[0]), (zeros[0], zeros[0])]
            for j in range(c.events):
                inp = x[j]
                for n, lstm_cell in enumerate(cells):
                    states[n] = lstm_cell(inp, states[n])
                    inp = states[n][0]

        steps = {
            "plstm": plstm_layer,
            "stream": plstm_stream,
            "lstm": lstm_layer,
            "cells": two_cells,
        }
    return steps, layer.eval().update_fraction(times)


@dataclass(frozen=True)
class EventRow:
    config: EventConfig
    us: dict[str, float]  # microseconds per event, by model
    update_fraction: float

    def baseline(self) -> float:
        return min(self.us[m] for m in ("lstm", "lstm_cell", "cells") if m in self.us)

    def ratio(self, model: str = "plstm") -> float:
        return self.us[model] / self.baseline()


def run_event_config(config: EventConfig, *, warmup: int, repeats: int) -> EventRow:
    steps, fraction = _event_steps(config)
    with torch.inference_mode():
        times = _time_interleaved(steps, warmup, repeats)
    us = {name: 1e3 * ms / config.events for name, ms in times.items()}
    return EventRow(config, us, fraction)


def format_event_table(rows: list[EventRow]) -> str:
    header = (
        "| config | PhasedLSTM us/event | PhasedLSTMStream us/event | nn.LSTMCell us/event "
        "| nn.LSTM us/event | 2 nn.LSTMCells us/event | ratio | stream ratio | target "
        "| PhasedLSTM events/s | gates open |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        us = row.us
        stream_ratio = row.ratio("stream") if "stream" in us else None
        lines.append(
            "| "
            + " | ".join(
                [
                    row.config.describe(),
                    _num(us.get("plstm")),
                    _num(us.get("stream")),
                    _num(us.get("lstm_cell")),
                    _num(us.get("lstm")),
                    _num(us.get("cells")),
                    _num(row.ratio(), ".2f"),
                    _num(stream_ratio, ".2f"),
                    "-" if row.config.target is None else f"<= {row.config.target:g}",
                    _num(1e6 / us["plstm"], ",.0f"),
                    f"{row.update_fraction:.1%}",
                ]
            )
            + " |"
        )
    for row in rows:
        if row.config.num_layers == 2 and row.config.hidden_size == 110:
            lines.append(
                f"\nThroughput of a 2-layer H=110 stream: {1e6 / row.us['plstm']:,.0f} events/s "
                f"calling the layer per event, {1e6 / row.us['stream']:,.0f} events/s with "
                f"PhasedLSTMStream (nn.LSTM per event: {1e6 / row.us['lstm']:,.0f}, two "
                f"nn.LSTMCells: {1e6 / row.us['cells']:,.0f})."
            )
    return "\n".join(lines)
