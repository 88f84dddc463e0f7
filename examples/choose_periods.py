"""Choosing period_range and r_on on real data: the measured table of docs/guide.md.

Five small UCR/UEA classification sets that ship inside the ``sktime`` package (no network),
with half of each series' points dropped at random, so that the events are irregular. For each,
a small Phased LSTM classifier is trained with the same budget under three settings:

* ``default``: the layer's defaults, period log-uniform in (e, e^3) and r_on = 0.05, whatever the
  data's time units;
* ``suggested``: ``phased_lstm.suggest_period_range`` on the training times, with
  ``r_on = max(0.05, 2 / events per sequence)`` so that a neuron gets about two updates per
  sequence (the README's rule);
* ``suggested, learned r_on``: the same, with ``learn_r_on=True`` and
  ``phased_lstm.optim.TimeGateAdam`` (the time gate stepped in its own units, at lr 1e-3);
* ``default periods, rule's r_on``: where that rule raises r_on (short sequences), the default
  periods with the raised r_on, to tell the two changes apart.

It prints a markdown table: the data's time scales, the settings, the compute share
``layer.eval().update_fraction(times, lengths)`` on the test set, the share of (test sequence,
neuron) pairs in which the neuron never opens at evaluation, and the test accuracy after
training (mean +- standard deviation over seeds).

    pip install -e ".[examples]"                # or: pip install --no-deps sktime (its files)
    python examples/choose_periods.py            # the README's table, ~10 min on one thread
    python examples/choose_periods.py --quick    # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from phased_lstm import PhasedLSTM, suggest_period_range, time_scales
from phased_lstm.functional import time_gate
from phased_lstm.optim import TimeGateAdam


@dataclasses.dataclass(frozen=True)
class DataSet:
    name: str
    unit: str  # the time unit of the timestamps we give the layer
    step: float  # time between two points of the original series, in that unit


# The sampling is documented in the sets' headers: BasicMotions at 10 Hz, ItalyPowerDemand
# hourly; the others are read on the index of their points.
DATA_SETS = {
    d.name: d
    for d in (
        DataSet("ItalyPowerDemand", "hours", 1.0),
        DataSet("JapaneseVowels", "frames", 1.0),
        DataSet("BasicMotions", "seconds", 0.1),
        DataSet("GunPoint", "frames", 1.0),
        DataSet("ArrowHead", "points", 1.0),
    )
}
SETTINGS = (
    "default",
    "default periods, rule's r_on",
    "suggested",
    "suggested, learned r_on",
)
DEFAULT_PERIOD_RANGE = (math.e, math.e**3)
DEFAULT_R_ON = 0.05
KEEP = 0.5  # share of points kept


@dataclasses.dataclass
class Split:
    values: Tensor  # (N, L, C) float32, zero padding
    times: Tensor  # (N, L) float64, in the data set's unit
    lengths: Tensor  # (N,)
    labels: Tensor  # (N,)


def sktime_data() -> Path | None:
    """The folder of the data sets that ship inside sktime, found without importing it: only
    its files are read, so ``pip install --no-deps sktime`` is enough (sktime itself caps
    pandas below the version a development environment may hold)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def load_series(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The series of one split as (length, channels) arrays, and their labels, read from the
    set's .ts file: after ``@data``, a line per series, its channels separated by ':' (each a
    comma-separated list of values; lengths may differ between series), then its label."""
    path = sktime_data() / name / f"{name}_{split.upper()}.ts"
    series, labels, data = [], [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not data or not line or line.startswith("#"):
            data = data or line.lower() == "@data"
            continue
        *channels, label = line.split(":")
        values = [np.array(channel.split(","), dtype=np.float64) for channel in channels]
        series.append(np.stack(values, axis=1))
        labels.append(label.strip())
    return series, np.asarray(labels)


def drop_points(series, labels, classes, step, mean, std, rng) -> Split:
    """Keep each point with probability KEEP (at least two per series); times = index * step."""
    kept = []
    for x in series:
        keep = rng.random(len(x)) < KEEP
        if keep.sum() < 2:
            keep[rng.choice(len(x), 2, replace=False)] = True
        index = np.flatnonzero(keep)
        kept.append(((x[index] - mean) / std, index * step))
    length = max(len(t) for _, t in kept)
    values = torch.zeros(len(kept), length, series[0].shape[1])
    times = torch.zeros(len(kept), length, dtype=torch.float64)
    for n, (x, t) in enumerate(kept):
        values[n, : len(t)] = torch.from_numpy(x)
        times[n, : len(t)] = torch.from_numpy(t)
    lengths = torch.tensor([len(t) for _, t in kept])
    label_index = {c: i for i, c in enumerate(classes)}
    return Split(values, times, lengths, torch.tensor([label_index[c] for c in labels]))


def load_data_set(data: DataSet, seed: int) -> tuple[Split, Split, int]:
    rng = np.random.default_rng(seed)
    train_x, train_y = load_series(data.name, "train")
    test_x, test_y = load_series(data.name, "test")
    points = np.concatenate(train_x)
    mean, std = points.mean(0), points.std(0) + 1e-8
    classes = sorted(set(train_y))
    train = drop_points(train_x, train_y, classes, data.step, mean, std, rng)
    test = drop_points(test_x, test_y, classes, data.step, mean, std, rng)
    return train, test, len(classes)


class Classifier(nn.Module):
    def __init__(self, inputs: int, classes: int, hidden: int, **gate) -> None:
        super().__init__()
        self.rnn = PhasedLSTM(inputs, hidden, batch_first=True, **gate)
        self.head = nn.Linear(hidden, classes)

    def forward(self, values: Tensor, times: Tensor, lengths: Tensor) -> Tensor:
        _, (h_n, _) = self.rnn(values, times, lengths=lengths)
        return self.head(h_n[-1])


def never_open_share(layer: PhasedLSTM, times: Tensor, lengths: Tensor) -> float:
    """Share of (sequence, neuron) pairs whose gate is closed at every valid event (no leak)."""
    with torch.no_grad():
        k = time_gate(times, layer.period_l0, layer.shift_l0, layer.r_on_l0, 0.0)
    valid = torch.arange(times.shape[1]) < lengths.unsqueeze(1)
    opened = ((k > 0) & valid.unsqueeze(-1)).any(dim=1)
    return 1.0 - opened.double().mean().item()


def train_and_measure(train, test, classes, gate, learn_r_on, args, seed) -> dict:
    torch.manual_seed(seed)
    model = Classifier(train.values.shape[2], classes, args.hidden, **gate)
    if learn_r_on:
        named = list(model.named_parameters())
        time_gate_params = [(n, p) for n, p in named if n.startswith(("rnn.log_", "rnn.logit_"))]
        others = [(n, p) for n, p in named if (n, p) not in time_gate_params]
        optimizer = TimeGateAdam(
            [{"params": time_gate_params, "lr": args.gate_lr}, {"params": others}], lr=args.lr
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        for start in range(0, len(order), args.batch_size):
            i = order[start : start + args.batch_size]
            logits = model(train.values[i], train.times[i], train.lengths[i])
            loss = nn.functional.cross_entropy(logits, train.labels[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(test.values, test.times, test.lengths).argmax(1)
    return {
        "accuracy": (predicted == test.labels).double().mean().item(),
        "update_fraction": model.rnn.update_fraction(test.times, test.lengths),
        "never_open": never_open_share(model.rnn, test.times, test.lengths),
        "r_on": model.rnn.r_on_l0.detach().mean().item(),
    }


def gate_settings(train: Split) -> dict[str, tuple[dict, bool]]:
    """The settings: layer keywords and whether r_on is learned."""
    events = time_scales(train.times, train.lengths, batch_first=True).events
    # Two updates per neuron and sequence on average: r_on x events >= 2.
    r_on = max(DEFAULT_R_ON, math.ceil(100 * 2 / events) / 100)
    period_range = suggest_period_range(train.times, train.lengths, batch_first=True, r_on=r_on)
    default = {"period_range": DEFAULT_PERIOD_RANGE, "r_on": DEFAULT_R_ON}
    suggested = {"period_range": period_range, "r_on": r_on}
    settings = {"default": (default, False)}
    if r_on != DEFAULT_R_ON:
        settings["default periods, rule's r_on"] = ({**default, "r_on": r_on}, False)
    settings["suggested"] = (suggested, False)
    settings["suggested, learned r_on"] = ({**suggested, "learn_r_on": True}, True)
    return settings


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = np.asarray(values) * scale
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def run(args) -> str:
    lines = [
        "| data set (time unit), train / test | events per sequence | duration | mean gap "
        "| setting | period_range | r_on: start → mean at end | update_fraction | "
        "never open in a sequence | test accuracy (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.datasets:
        data = DATA_SETS[name]
        train, test, classes = load_data_set(data, seed=0)
        scales = time_scales(train.times, train.lengths, batch_first=True)
        first = True
        for setting, (gate, learn_r_on) in gate_settings(train).items():
            if setting not in args.settings:
                continue
            started = time.process_time()
            results = [
                train_and_measure(train, test, classes, gate, learn_r_on, args, seed)
                for seed in range(args.seeds)
            ]
            seconds = time.process_time() - started
            low, high = gate["period_range"]
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{name} ({data.unit}), {len(train.labels)} / {len(test.labels)}"
                        if first
                        else "",
                        f"{scales.events:g}" if first else "",
                        f"{scales.duration:.3g}" if first else "",
                        f"{scales.gap:.3g}" if first else "",
                        setting,
                        f"({low:.3g}, {high:.3g})",
                        f"{gate['r_on']:g} → {np.mean([r['r_on'] for r in results]):.3f}",
                        mean_sd([r["update_fraction"] for r in results], 100) + "%",
                        mean_sd([r["never_open"] for r in results], 100) + "%",
                        mean_sd([r["accuracy"] for r in results], 100),
                    ]
                )
                + " |"
            )
            first = False
            print(f"{name}, {setting}: {seconds:.0f} s CPU", file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATA_SETS), help="default: all")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    parser.add_argument(
        "--gate-lr", type=float, default=1e-3, help="TimeGateAdam's, on period and r_on"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 3 epochs, 2 data sets unless --datasets"
    )
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 1, 3
        args.datasets = args.datasets or ["ItalyPowerDemand", "BasicMotions"]
    args.datasets = args.datasets or list(DATA_SETS)
    if min(args.seeds, args.epochs, args.hidden, args.batch_size, args.threads) < 1:
        parser.error("--seeds, --epochs, --hidden, --batch-size and --threads must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if sktime_data() is None:
        print(
            "this example reads data sets that ship inside sktime: pip install -e '.[examples]', "
            "or, to leave this environment's packages as they are, pip install --no-deps sktime",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(args.threads)
    started = time.process_time()
    table = run(args)
    print(table, end="")
    seconds = time.process_time() - started
    print(
        f"total: {seconds:.0f} s CPU, torch {torch.__version__}, {args.threads} thread(s)",
        file=sys.stderr,
    )
    if args.out:
        write_atomic(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
