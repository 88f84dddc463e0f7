"""One progress display for a whole experiment, whatever the number of runs side by side.

Runs report events (a run starts, a share of an epoch is done, an epoch ends) from the process
that trains them; worker processes send them to the main process, which owns the display. On a
terminal it is one bar, redrawn in place, with each epoch's line printed above it; elsewhere (a
log file, a pipe) it is the epoch lines and a plain summary line after every run and at most
every ``interval`` seconds in between.

Epochs are weighed by the cost of one epoch of their run (the estimate's measured seconds, or
the task's relative cost: a high-resolution epoch counts ten times a standard one), so the
estimate of the remaining time holds when runs differ.

The ETA starts from the ``--dry-run``-style estimate of the whole command and moves to the pace
measured since training began as the work done grows past one epoch of every run: a few seconds
of warm-up (a process starting, a first slow batch) never make a figure on their own. Without an
estimate it is unknown until the first epoch ends.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

Event = tuple
"""("start", run, first_epoch) | ("batch", run, epochs_done) | ("epoch", run, row)."""


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """The display of an experiment's progress.

    Args:
        runs: the run names of this command, with the relative cost of one epoch of each.
        epochs: the epoch every run trains to.
        stream: where to write (stderr).
        bar: redraw one line in place (a terminal); by default when ``stream`` is a terminal.
        interval: seconds between summary lines without a bar.
        expected: the estimated seconds of the whole command, shown as the ETA (less the time
            elapsed, marked "estimated") until some training has been measured.
        resumed: epochs each run had finished before this command (``--resume``), counted as
            done from the start, also for runs that wait for a free worker.
    """

    def __init__(
        self,
        runs: dict[str, float],
        epochs: int,
        *,
        stream: TextIO | None = None,
        bar: bool | None = None,
        interval: float = 60.0,
        expected: float | None = None,
        resumed: dict[str, float] | None = None,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.weights = {name: max(float(w), 1e-9) for name, w in runs.items()}
        self.epochs = epochs
        self.interval = interval
        self.expected = expected
        self.started = time.monotonic()
        before = {name: float((resumed or {}).get(name, 0.0)) for name in runs}
        self._done: dict[str, float] = dict(before)  # epochs, fractional
        self._resumed: dict[str, float] = dict(before)
        self._finished: set[str] = set()
        self._training_since: float | None = None  # the first run's start
        self._measured = False  # whether an epoch has ended
        self._last_summary = self.started
        self._last_draw = 0.0
        self._drawn = False

    # ------------------------------------------------------------------------- events
    def handle(self, event: Event) -> None:
        kind, name, value = event
        if kind == "start":
            self.start(name, value)
        elif kind == "batch":
            self.advance(name, value)
        elif kind == "epoch":
            self.epoch(name, value)

    def start(self, name: str, first_epoch: int) -> None:
        """``name`` starts training, from ``first_epoch`` epochs done (a resumed run)."""
        self._resumed[name] = self._done[name] = float(first_epoch)
        if self._training_since is None:
            self._training_since = time.monotonic()
        resumed = f", continuing after epoch {first_epoch}" if first_epoch else ""
        self.say(f"[{name}] training for {self.epochs} epochs{resumed}")

    def advance(self, name: str, epochs_done: float) -> None:
        self._done[name] = max(self._done[name], float(epochs_done))
        self._refresh()

    def epoch(self, name: str, row: dict) -> None:
        self._done[name] = max(self._done[name], float(row["epoch"]))
        self._measured = True
        shown = ("train_loss", "test_loss", "test_acc")
        metrics = ", ".join(f"{key} {row[key]:.4g}" for key in shown if key in row)
        self.say(f"[{name}] epoch {row['epoch']}/{self.epochs}: {metrics} ({row['wall_s']:.0f} s)")
        if not self.bar and time.monotonic() - self._last_summary >= self.interval:
            self._summary_line()

    def run_done(self, name: str, message: str) -> None:
        self._done[name] = float(self.epochs)
        self._finished.add(name)
        self.say(message)
        if not self.bar:
            self._summary_line()

    # ------------------------------------------------------------------------ display
    def say(self, message: str) -> None:
        """Print a line (above the bar, on a terminal)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(message + "\n")
        self.stream.flush()
        self._refresh(force=True)

    def close(self) -> None:
        """Leave the bar's last state on its own line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def summary(self) -> str:
        """Runs and epochs done, the time elapsed and the estimated time left."""
        elapsed = time.monotonic() - self.started
        left = self.eta()
        if left is None:
            eta = "unknown"
        else:
            eta = clock(left) + (" (estimated)" if left > 0 and not self._measured else "")
        epochs_done = sum(int(min(d, self.epochs)) for d in self._done.values())
        return (
            f"{len(self._finished)} of {len(self.weights)} runs done, "
            f"{epochs_done} of {self.epochs * len(self.weights)} epochs, "
            f"{clock(elapsed)} elapsed, ETA {eta}"
        )

    def eta(self) -> float | None:
        """Seconds left, or None before anything can be said (no estimate, no epoch ended).

        In units of work (epochs, weighed), the pace since training began is blended with the
        estimate's as if the estimate had been measured on one epoch of every run: ``(estimate's
        seconds per unit * W0 + seconds since training began) / (W0 + units trained)``, W0 that
        epoch. The estimate decides at first, the measurement once it covers more than W0."""
        now = time.monotonic()
        total = sum(w * self.epochs for w in self.weights.values())
        done = sum(self.weights[n] * min(d, self.epochs) for n, d in self._done.items())
        left = total - done
        if left <= 0:
            return 0.0
        if self._training_since is None:  # processes and data still starting
            return None if self.expected is None else max(0.0, self.expected - (now - self.started))
        trained = done - sum(self.weights[n] * r for n, r in self._resumed.items())
        training = now - self._training_since
        if self.expected is None:
            return training * left / trained if self._measured and trained > 0 else None
        # What the estimate leaves for the training once it began, per unit of work to train.
        to_train = left + trained
        planned = max(self.expected - (self._training_since - self.started), 0.0) / to_train
        prior = sum(self.weights.values())
        return (planned * prior + training) / (prior + max(trained, 0.0)) * left

    def fraction(self) -> float:
        total = sum(w * self.epochs for w in self.weights.values())
        done = sum(self.weights[n] * min(d, self.epochs) for n, d in self._done.items())
        return done / total if total > 0 else 1.0

    def _summary_line(self) -> None:
        self._last_summary = time.monotonic()
        self.stream.write(f"progress: {self.summary()}\n")
        self.stream.flush()

    def _refresh(self, force: bool = False) -> None:
        if not self.bar:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.5:
            return
        self._last_draw = now
        width = shutil.get_terminal_size((100, 20)).columns
        text = self.summary()
        cells = max(10, min(30, width - len(text) - 10))
        filled = int(round(cells * self.fraction()))
        line = f"[{'#' * filled}{'.' * (cells - filled)}] {100 * self.fraction():3.0f}% {text}"
        self.stream.write("\r" + line[: width - 1] + "\x1b[K")
        self.stream.flush()
        self._drawn = True


__all__ = ["Progress", "clock"]
