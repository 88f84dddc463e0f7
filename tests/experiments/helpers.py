"""What the experiments' tests share: the tiny CLI options, running the command, reading a
results folder, and the processes of a group."""

import json
import os
import time
from pathlib import Path

import torch

from phased_lstm_experiments.cli import main

TINY = ["--epochs", "1", "--samples-per-epoch", "32", "--test-samples", "32"]
TINY += ["--jobs", "1", "--threads", "1", "--no-progress-bar"]


def run_cli(*argv):
    return main(["reproduce", *argv])


def process_group(pgid: int) -> list[int]:
    """The live processes of group ``pgid``, from /proc (zombies are not alive)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry))
    return members


def wait_for(condition, timeout: float) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (checked every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def subnormals_flushed() -> bool:
    """Whether this process's CPU treats a subnormal float32 as zero."""
    return float(torch.tensor([1e-39]) * 2) == 0.0
