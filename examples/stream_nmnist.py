"""Classify an event-camera digit event by event, as a sensor would deliver it.

A Phased LSTM trained by ``phased-lstm reproduce nmnist`` reads one event at a time through
``layer.stream()``: each call embeds the event's address, advances the layer's state over that
one event (computing only the neurons whose time gate is open), and the read-out gives the
prediction so far. The script prints the digit's true label, the running prediction beside it,
the final verdict (right or wrong), the latency per event, and checks that the last prediction
is the one the whole recording gives at once.

    phased-lstm reproduce nmnist --out runs/nmnist-quick      # train (quick preset)
    python examples/stream_nmnist.py --run runs/nmnist-quick  # stream a test digit through it
    python examples/stream_nmnist.py                          # no run: train a tiny model first

Without ``--run`` a small Phased LSTM is trained for a few seconds on N-MNIST-sim (built on
first use, see ``phased-lstm data nmnist-sim``) or on ``--data ROOT``: its predictions are
rough, the latencies are real.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from phased_lstm.data import NMNIST, NUM_ADDRESSES, SubsampleEvents, collate_events
from phased_lstm_experiments.config import ExperimentConfig, run_name
from phased_lstm_experiments.tasks import preset_config
from phased_lstm_experiments.tasks.nmnist import TASK, TRAINING_RATES, EventSequenceModel

CONDITION = "rate75"
RATE = TRAINING_RATES[CONDITION]


def load_run(folder: Path, seed: int | None) -> tuple[EventSequenceModel, ExperimentConfig]:
    """The trained Phased LSTM of a run folder of ``phased-lstm reproduce nmnist``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"--run {folder}: no config.json there; give an nmnist results folder")
    config = ExperimentConfig.from_dict(json.loads(config_path.read_text()))
    if config.experiment != "nmnist":
        raise SystemExit(f"--run {folder} holds the {config.experiment!r} experiment, not nmnist")
    seeds = [seed] if seed is not None else config.seeds
    for candidate in seeds:
        checkpoint = folder / "runs" / run_name("plstm", CONDITION, candidate)
        checkpoint = checkpoint / "checkpoints" / "last.ckpt"
        if checkpoint.is_file():
            break
    else:
        raise SystemExit(f"--run {folder}: no Phased LSTM checkpoint for seeds {seeds}")
    network = TASK.build_model("plstm", TASK.model_spec(config, "plstm", CONDITION))
    # A checkpoint that phased-lstm wrote: tensors, numbers and the per-epoch history.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
    print(f"loaded {checkpoint} (after epoch {saved['epoch'] + 1}, seed {candidate})")
    return network.eval(), config


def train_tiny(
    root: str | None, hidden: int, batches: int
) -> tuple[EventSequenceModel, ExperimentConfig]:
    """A small Phased LSTM trained for ``batches`` batches of 16 digits (seconds)."""
    config = preset_config("nmnist", "quick")
    config.options["data"] = root  # None: N-MNIST-sim, built on first use
    config.hidden_size, config.samples_per_epoch = hidden, 16 * batches
    config = TASK.prepare(config)
    print(f"no --run given: training a Phased LSTM of {hidden} units on {batches} batches")
    torch.manual_seed(0)
    network = TASK.build_model("plstm", TASK.model_spec(config, "plstm", CONDITION))
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    data = TASK.train_data(config, "plstm", CONDITION, seed=0, epoch=0)
    loader = torch.utils.data.DataLoader(data, batch_size=16, collate_fn=collate_events)
    for addresses, times, lengths, labels in loader:
        loss = F.cross_entropy(network(addresses, times, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval(), config


def stream_digit(network: EventSequenceModel, events: np.ndarray, label: int, every: int):
    """Feed ``events`` one at a time; print the running prediction; return the last scores and
    those of the whole recording read at once."""
    if len(events) == 0:
        raise SystemExit("this digit has no events at this rate; choose another --digit")
    addresses, times, lengths, _ = collate_events([(events, label)])
    count = int(lengths[0])
    stream = network.rnn.stream()
    latencies = []
    print(f"test digit, true label {label}: {count:,} events over {float(times[0, -1]):.1f} ms")
    with torch.inference_mode():
        # The embedding of every address, computed once: per event it is one row to look up.
        table = network.embedding(torch.arange(NUM_ADDRESSES))
        for j in range(count):
            start = time.perf_counter()
            h = stream(table[addresses[0, j : j + 1]], times[0, j : j + 1])
            latencies.append(time.perf_counter() - start)
            if (j + 1) % every == 0 or j + 1 == count:
                p = torch.softmax(network.classifier.head(h), -1)[0]
                print(
                    f"  after {j + 1:5d} events ({float(times[0, j]):6.1f} ms): predicts "
                    f"{int(p.argmax())} (p = {float(p.max()):.2f}), true label {label}: "
                    f"{_verdict(int(p.argmax()), label)}"
                )
        scores = network.classifier.head(h)
    # The first call prepares the streaming step from the layer's weights: reported apart.
    first, rest = latencies[0], sorted(1e6 * s for s in latencies[1:]) or [math.nan]
    per_second = len(rest) / sum(latencies[1:]) if count > 1 else math.nan
    print(
        f"latency per event (address lookup + streaming step): median "
        f"{statistics.median(rest):.1f} us, 90th percentile {rest[int(0.9 * (len(rest) - 1))]:.1f} "
        f"us, max {rest[-1]:.1f} us ({per_second:,.0f} events/s), "
        f"{torch.get_num_threads()} thread(s); the first event {1e3 * first:.1f} ms (it prepares "
        "the step)"
    )
    with torch.no_grad():
        whole = network(addresses, times, lengths)
    difference = float((whole - scores).abs().max())
    print(
        f"whole recording at once predicts {int(whole.argmax())}; streamed {int(scores.argmax())}; "
        f"largest difference of the scores {difference:.2e}"
    )
    predicted = int(scores.argmax())
    print(f"verdict: {_verdict(predicted, label)} (predicted {predicted}, true label {label})")
    return scores, whole


def _verdict(predicted: int, label: int) -> str:
    return "right" if predicted == label else "wrong"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a results folder of phased-lstm reproduce nmnist")
    parser.add_argument("--seed", type=int, help="which run of the folder (default: the first)")
    parser.add_argument("--data", help="N-MNIST layout folder (default: the run's data)")
    parser.add_argument("--digit", type=int, default=0, help="index in the test split")
    parser.add_argument("--every", type=int, default=500, help="print after every N events")
    parser.add_argument("--hidden", type=int, default=32, help="without --run: units")
    parser.add_argument("--train-batches", type=int, default=20, help="without --run: batches")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.run is not None:
        network, config = load_run(args.run, args.seed)
    else:
        network, config = train_tiny(args.data, args.hidden, args.train_batches)
    root = args.data or config.options["data"]
    # The events the model was trained on: rho = 0.75 of the share of events the run kept.
    share = config.options.get("event_share", 1.0)
    test = NMNIST(root, train=False, transform=SubsampleEvents(RATE * share, seed=0))
    if not 0 <= args.digit < len(test):
        raise SystemExit(f"--digit must lie in [0, {len(test) - 1}], got {args.digit}")
    events, label = test[args.digit]
    stream_digit(network, events, label, args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
