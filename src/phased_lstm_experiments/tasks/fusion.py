"""Multi-rate sensor fusion (the paper's Task 4, lip reading, on data we can make):
``phased-lstm reproduce fusion``.

The paper fused audio features at 100 Hz with video frames at 25 Hz (GRID); GRID is not
available to us, so this module synthesises utterances that need both sensors. Ten classes, each
an (audio word, mouth shape) pair arranged so that every word and every shape belongs to exactly
two classes: either stream alone can tell at best half of the classes apart, both together all.

* **audio**: 13 MFCC-like coefficients every 10 ms (a DCT of a 26-band log spectrum taken over
  25 ms windows). The word is the order of three consonant bursts of 20-30 ms, each with its own
  spectrum: components too short for a 25 Hz camera. The vowel between them, its formants and
  its loudness are drawn at random, independent of the class.
* **video**: 8 lip-landmark coordinates (mouth corners, upper and lower lip) every 40 ms. The
  shape is the slow course of the mouth's opening and rounding over the utterance (bumps of
  ~40 ms standard deviation and more: two to four frames), seen through a random head position
  and scale.

Both streams follow one utterance under a random time warp (the speaking rate varies within
it), inside a recording that starts at a random clock time. Each sensor has its own clock: the
audio frames start at a random phase with 1 ms of jitter, the video frames at another with 3 ms
of jitter and a clock offset of up to 20 ms between the two.

The Phased LSTM reads the two streams merged at their own timestamps
(:func:`phased_lstm.data.merge_stream_batch`); the LSTM and the BN-LSTM read them resampled on a
100 Hz grid, each stream holding its latest value (the usual way to feed a fixed-step network).
Conditions: both streams ("fused"), the audio alone, the video alone. A second test set shows
the same test utterances filmed at 30 Hz, to which no model was trained.

``--audio espeak`` (where the espeak-ng synthesiser is installed) replaces the bursts by five
short commands spoken by espeak-ng in 27 voices, speeds and pitches, turned into real MFCCs
(:mod:`phased_lstm_experiments.speech`) and fitted to the utterance (spoken about twice as fast
as espeak-ng says them); the rest is unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from phased_lstm import suggest_period_range
from phased_lstm.data import merge_stream_batch, merge_streams

from .. import speech
from ..models import ModelSpec
from ..speech import dct_matrix
from ..tables import (
    accuracy_bars,
    cell,
    epochs_text,
    epochs_to_reach,
    final_metric,
    learning_curves,
    mean_std,
    model_protocol_lines,
    model_title,
)
from .base import PAPER_PRESET, QUICK_PRESET, Task, TaskOption, finite_option, fraction_option

# All times in milliseconds.
AUDIO_RATE = 100.0
VIDEO_RATE = 25.0
TEST_VIDEO_RATE = 30.0
GRID_STEP = 10.0  # the baselines' grid, 100 Hz

NUM_CLASSES = 10
N_MFCC = speech.N_COEFFICIENTS
N_BANDS = speech.N_BANDS
N_LANDMARKS = 8
STREAMS = ("audio", "video")

# Class c is the pair (audio word c // 2, mouth shape (c // 2 + c % 2) % 5): a cycle in which
# each word and each shape belongs to two classes, 2k and 2k + 1 share their word and 2k + 1 and
# 2k + 2 their shape. Given only one stream, the best guess is right half of the time.
CLASS_WORDS = tuple(c // 2 for c in range(NUM_CLASSES))
CLASS_SHAPES = tuple((c // 2 + c % 2) % 5 for c in range(NUM_CLASSES))
STREAM_CEILING = 0.5

# A word is the order of three bursts of the spectra below: five of the six orders of three.
WORDS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1))
_BURST_BANDS = (4.0, 12.0, 20.0)  # centre band of each burst's spectrum
_BURST_POSITIONS = (0.2, 0.5, 0.8)  # in the utterance, before the warp; +-0.05 at random
_BURST_MS = (20.0, 30.0)
_MFCC_WINDOW_MS = 25.0

# A shape is the course of the mouth over the utterance: (position, width, opening, rounding)
# bumps, positions and widths in the utterance's own time [0, 1].
SHAPES = (
    ((0.5, 0.12, 1.0, 0.0),),
    ((0.3, 0.09, 1.0, 0.0), (0.7, 0.09, 1.0, 0.0)),
    ((0.25, 0.09, 1.0, 0.0), (0.7, 0.09, 0.0, 1.0)),
    ((0.3, 0.09, 0.0, 1.0), (0.75, 0.09, 1.0, 0.0)),
    ((0.5, 0.12, 0.2, 1.0),),
)

# The recording: utterances of 0.4-0.6 s with 25-125 ms of silence on either side, starting at
# a random clock time in the first second. Short, so that the nine runs of the quick preset fit
# in 15 minutes on two cores: ~65 audio frames and ~16 video frames per recording.
_UTTERANCE_MS = (400.0, 600.0)
_SILENCE_MS = (25.0, 125.0)
_START_MS = (0.0, 1000.0)
_WARP = 0.5  # t = D (u + g sin(2 pi u) / (2 pi)), g ~ U(-0.5, 0.5): monotone for |g| < 1
_AUDIO_JITTER_MS = 1.0
_VIDEO_JITTER_MS = 3.0
_VIDEO_OFFSET_MS = 20.0
_AUDIO_NOISE = 0.3  # on each coefficient, whose typical spread is ~1
_VIDEO_NOISE = 0.05  # on each landmark, against a mouth ~1 wide and up to ~0.5 open


@dataclasses.dataclass(frozen=True)
class AudioVideoExamples:
    """Utterances as two event streams each.

    Attributes:
        labels: ``(N,)`` int64 classes.
        audio: ``N`` pairs ``(times (n_a,) float64 ms, values (n_a, 13) float32)``.
        video: ``N`` pairs ``(times (n_v,) float64 ms, values (n_v, 8) float32)``.
    """

    labels: np.ndarray
    audio: list[tuple[np.ndarray, np.ndarray]]
    video: list[tuple[np.ndarray, np.ndarray]]

    def streams(self, names: tuple[str, ...] = STREAMS) -> list[list[tuple]]:
        """Per example, the named streams in that order."""
        chosen = [getattr(self, name) for name in names]
        return [list(sample) for sample in zip(*chosen, strict=True)]


def audio_video_examples(
    n: int,
    seed: int | list[int],
    *,
    video_rate: float = VIDEO_RATE,
    labels: np.ndarray | None = None,
    audio: str = "synthetic",
) -> AudioVideoExamples:
    """``n`` synthetic utterances (module docstring), drawn from ``seed`` (an int or a list of
    ints, the entropy of a ``numpy.random.SeedSequence``).

    The utterances, the audio sensor and the video sensor draw from three independent streams
    of ``seed``: the same seed at another ``video_rate`` (frames per second) gives the same
    utterances and the same audio, filmed at that rate. ``labels`` forces the classes (else
    uniform over the ten). ``audio="espeak"`` replaces the bursts by one of five phrases
    spoken by espeak-ng (:func:`speech_bank`), fitted to the utterance's duration.
    """
    if audio not in AUDIO_SOURCES:
        raise ValueError(f"audio must be one of {', '.join(AUDIO_SOURCES)}, got {audio!r}")
    bank = speech_bank() if audio == "espeak" else None
    latent_seed, audio_seed, video_seed = np.random.SeedSequence(seed).spawn(3)
    utterances = _Utterances.draw(np.random.default_rng(latent_seed), n, labels, bank)
    if bank is None:
        audio_stream = _record_audio(utterances, np.random.default_rng(audio_seed))
    else:
        audio_stream = _record_speech(utterances, np.random.default_rng(audio_seed), bank)
    video = _film_video(utterances, np.random.default_rng(video_seed), video_rate)
    return AudioVideoExamples(utterances.labels, audio_stream, video)


@dataclasses.dataclass(frozen=True)
class _Utterances:
    """The hidden variables of ``N`` utterances, one row each (times in ms)."""

    labels: np.ndarray
    start: np.ndarray  # clock time at which the recording starts
    onset: np.ndarray  # the utterance starts at start + onset...
    duration: np.ndarray  # ...lasts this long (before the warp's local changes of speed)...
    end: np.ndarray  # ...and the recording stops at start + end
    warp: np.ndarray  # g of the time warp
    burst_position: np.ndarray  # (N, 3) in the utterance's own time [0, 1]
    burst_length: np.ndarray  # (N, 3) ms
    burst_kind: np.ndarray  # (N, 3) which of the three burst spectra
    formants: np.ndarray  # (N, 2, 2) first and last band of F1 and of F2
    loudness: np.ndarray  # (N, 3) frequency, phase and depth of the loudness contour
    head: np.ndarray  # (N, 3) x, y and scale of the mouth in the image
    spoken: np.ndarray | None = None  # (N,) the speech bank's recording of each, or None

    @classmethod
    def draw(
        cls, rng: np.random.Generator, n: int, labels, bank: SpeechBank | None = None
    ) -> _Utterances:
        if labels is None:
            labels = rng.integers(0, NUM_CLASSES, size=n)
        labels = np.asarray(labels, dtype=np.int64)
        duration = rng.uniform(*_UTTERANCE_MS, size=n)
        lead, tail = rng.uniform(*_SILENCE_MS, size=(2, n))
        spoken = None
        if bank is not None:
            # Drawn last, so that the other draws are those of the synthetic audio. The phrase
            # is fitted to the utterance's duration: how long a recording lasts says nothing
            # about the class (the phrases differ in length as spoken).
            words = np.array(CLASS_WORDS)[labels]
            choice = rng.integers(0, bank.per_word, size=n)
            spoken = np.array([bank.recordings[w][c] for w, c in zip(words, choice, strict=True)])
        return cls(
            labels=labels,
            start=rng.uniform(*_START_MS, size=n),
            onset=lead,
            duration=duration,
            end=lead + duration + tail,
            warp=rng.uniform(-_WARP, _WARP, size=n),
            burst_position=np.array(_BURST_POSITIONS) + rng.uniform(-0.05, 0.05, size=(n, 3)),
            burst_length=rng.uniform(*_BURST_MS, size=(n, 3)),
            burst_kind=np.array(WORDS)[np.array(CLASS_WORDS)[labels]],
            formants=np.stack(
                [rng.uniform(3.0, 8.0, size=(n, 2)), rng.uniform(11.0, 18.0, size=(n, 2))], 1
            ),
            loudness=np.stack(
                [
                    rng.uniform(0.5, 2.0, size=n),
                    rng.uniform(0.0, 2 * np.pi, size=n),
                    rng.uniform(0.1, 0.5, size=n),
                ],
                1,
            ),
            head=np.stack(
                [rng.normal(0, 0.2, size=n), rng.normal(0, 0.2, size=n), rng.uniform(0.8, 1.2, n)],
                1,
            ),
            spoken=spoken,
        )

    def clock_time(self, position: np.ndarray) -> np.ndarray:
        """The clock time of positions ``(N, K)`` in each utterance."""
        warp = self.warp[:, None]
        warped = position + warp * np.sin(2 * np.pi * position) / (2 * np.pi)
        return (self.start + self.onset)[:, None] + self.duration[:, None] * warped

    def position(self, times: np.ndarray) -> np.ndarray:
        """Where in its utterance each clock time ``(N, K)`` falls: in [0, 1] while it is
        spoken, -1 before, 2 after."""
        elapsed = (times - (self.start + self.onset)[:, None]) / self.duration[:, None]
        warp = self.warp[:, None]
        # Invert u + g sin(2 pi u) / (2 pi) = elapsed: Newton's method on a monotone function
        # whose slope stays in [1 - |g|, 1 + |g|] = [0.5, 1.5]; converged to 1e-12 in 8 steps.
        u = np.clip(elapsed, 0.0, 1.0)
        for _ in range(8):
            residual = u + warp * np.sin(2 * np.pi * u) / (2 * np.pi) - elapsed
            u = np.clip(u - residual / (1.0 + warp * np.cos(2 * np.pi * u)), 0.0, 1.0)
        return np.where(elapsed < 0, -1.0, np.where(elapsed > 1, 2.0, u))


def _frame_times(
    utterances: _Utterances, rng: np.random.Generator, rate: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """A sensor's frame times ``(N, K)`` through each recording, at ``rate`` frames per second
    from a random phase, each off by up to ``jitter`` ms; and the count of each row."""
    step = 1000.0 / rate
    phase = rng.uniform(0.0, step, size=utterances.labels.shape[0])
    counts = ((utterances.end - phase) // step).astype(np.int64) + 1
    index = np.minimum(np.arange(counts.max())[None, :], counts[:, None] - 1)
    times = (utterances.start + phase)[:, None] + step * index
    return times + rng.uniform(-jitter, jitter, size=times.shape), counts


def _rows(times: np.ndarray, values: np.ndarray, counts: np.ndarray) -> list[tuple]:
    return [
        (times[i, :count], values[i, :count].astype(np.float32)) for i, count in enumerate(counts)
    ]


def _record_audio(utterances: _Utterances, rng: np.random.Generator) -> list[tuple]:
    """13 MFCC-like coefficients every 10 ms: the DCT of a 26-band log spectrum."""
    times, counts = _frame_times(utterances, rng, AUDIO_RATE, _AUDIO_JITTER_MS)
    u = utterances.position(times)
    spoken = (u >= 0) & (u <= 1)
    # The vowel: a slowly varying loudness and two drifting formants, none of which depends on
    # the class.
    frequency, shift, depth = (utterances.loudness[:, k, None] for k in range(3))
    level = np.where(spoken, 1.0 + depth * np.sin(2 * np.pi * frequency * u + shift), 0.0)
    first, last = utterances.formants[:, :, 0, None], utterances.formants[:, :, 1, None]
    f1, f2 = (first[:, k] + (last[:, k] - first[:, k]) * u for k in range(2))
    spectrum = -0.45 + level[..., None] * (0.3 + _band_bump(f1, 1.5) + 0.7 * _band_bump(f2, 1.5))
    mfcc = spectrum @ _DCT.T
    # Each burst adds its spectrum (here its cepstrum: the DCT is linear) to a frame in
    # proportion to how much of the frame's 25 ms window it covers.
    centres = utterances.clock_time(utterances.burst_position)
    for k in range(3):
        centre = centres[:, k, None]
        half = utterances.burst_length[:, k, None] / 2
        overlap = np.minimum(times + _MFCC_WINDOW_MS / 2, centre + half) - np.maximum(
            times - _MFCC_WINDOW_MS / 2, centre - half
        )
        weight = np.clip(overlap, 0.0, None) / _MFCC_WINDOW_MS
        mfcc += weight[..., None] * _BURST_CEPSTRA[utterances.burst_kind[:, k], None]
    mfcc += rng.normal(0.0, _AUDIO_NOISE, size=mfcc.shape)
    return _rows(times, mfcc, counts)


def _band_bump(centre: np.ndarray, width: float) -> np.ndarray:
    """A Gaussian bump over the bands around ``centre`` (any shape): shape ``(*centre, 26)``."""
    return np.exp(-0.5 * ((_BANDS - centre[..., None]) / width) ** 2)


def _film_video(utterances: _Utterances, rng: np.random.Generator, rate: float) -> list[tuple]:
    """8 lip-landmark coordinates per frame, stamped by a clock that is off by a constant."""
    # The offset is drawn before anything whose size depends on the rate, so that it is the
    # same at every rate.
    offset = rng.uniform(-_VIDEO_OFFSET_MS, _VIDEO_OFFSET_MS, size=utterances.labels.shape[0])
    times, counts = _frame_times(utterances, rng, rate, _VIDEO_JITTER_MS)
    u = utterances.position(times)
    opening = np.full(times.shape, 0.05)
    rounding = np.zeros(times.shape)
    shapes = np.array(CLASS_SHAPES)[utterances.labels]
    for shape, bumps in enumerate(SHAPES):
        rows = shapes == shape
        for centre, width, open_amount, round_amount in bumps:
            bump = np.exp(-0.5 * ((u[rows] - centre) / width) ** 2)
            opening[rows] += 0.5 * open_amount * bump
            rounding[rows] += round_amount * bump
    mouth_width = 1.0 + 0.2 * opening - 0.4 * rounding
    x, y, scale = (utterances.head[:, k, None] * np.ones_like(times) for k in range(3))
    landmarks = np.stack(
        [
            x - scale * mouth_width / 2,  # left corner
            y,
            x + scale * mouth_width / 2,  # right corner
            y,
            x,  # upper lip
            y + scale * opening / 2,
            x,  # lower lip
            y - scale * opening / 2,
        ],
        axis=-1,
    )
    landmarks += rng.normal(0.0, _VIDEO_NOISE, size=landmarks.shape)
    return _rows(times + offset[:, None], landmarks, counts)


# Log band energies -> cepstrum, as real MFCCs are computed.
_DCT = dct_matrix()
_BANDS = np.arange(N_BANDS, dtype=np.float64)
# The three burst spectra, as cepstra.
_BURST_CEPSTRA = 2.5 * _band_bump(np.array(_BURST_BANDS), 2.5) @ _DCT.T


# Real synthesised speech (optional: espeak-ng) ----------------------------------------------

AUDIO_SOURCES = ("synthetic", "espeak")
# Five commands in the grammar of the GRID corpus (command, colour, adverb), one per audio
# word, each spoken by three voices at three speeds and three pitches: 0.7-1.4 s of speech,
# fitted to the 0.4-0.6 s of an utterance.
SPEECH_PHRASES = ("bin blue now", "lay green soon", "place red again", "set white please",
                  "bin red soon")  # fmt: skip
_SPEECH_VOICES = ("en+m1", "en+m3", "en+f2")
_SPEECH_SPEEDS = (140, 170, 200)  # words per minute
_SPEECH_PITCHES = (35, 55, 75)
_NOISE_FLOOR = 1e-3  # white noise added to the waveform (-60 dB), so that silence has a spectrum


@dataclasses.dataclass(frozen=True)
class SpeechBank:
    """Every recording of the speech variant as MFCCs, standardised over the bank.

    Attributes:
        frames: per recording, ``(K, 13)`` MFCCs of its speech, from the first frame above
            the noise to the last (every 10 ms).
        durations: ``(R,)`` ms of speech per recording.
        recordings: per phrase (audio word), the indices of its recordings.
        silence: ``(13,)`` MFCCs of the noise floor alone.
    """

    frames: list[np.ndarray]
    durations: np.ndarray
    recordings: tuple[tuple[int, ...], ...]
    silence: np.ndarray

    @property
    def per_word(self) -> int:
        return len(self.recordings[0])


@functools.cache
def speech_bank() -> SpeechBank:
    """The five phrases spoken by espeak-ng in 27 ways each (about 10 s to synthesise, once per
    process). Raises RuntimeError when espeak-ng is not installed."""
    noise = np.random.default_rng(0)
    frames, phrases = [], []
    for phrase, (voice, speed, pitch) in itertools.product(
        range(len(SPEECH_PHRASES)),
        itertools.product(_SPEECH_VOICES, _SPEECH_SPEEDS, _SPEECH_PITCHES),
    ):
        samples, rate = speech.synthesise(
            SPEECH_PHRASES[phrase], voice=voice, speed=speed, pitch=pitch
        )
        _, coefficients = speech.mfcc(samples + noise.normal(0, _NOISE_FLOOR, samples.size), rate)
        # Speech: from the first to the last frame whose log energy is more than a third of
        # the way from the noise floor to the loudest frame.
        energy = coefficients[:, 0]
        loud = np.flatnonzero(energy > energy.min() + (energy.max() - energy.min()) / 3)
        frames.append(coefficients[loud[0] : loud[-1] + 1])
        phrases.append(phrase)
    _, floor = speech.mfcc(noise.normal(0, _NOISE_FLOOR, int(rate / 5)), rate)
    everything = np.concatenate(frames)
    mean, std = everything.mean(0), everything.std(0)
    return SpeechBank(
        frames=[(f - mean) / std for f in frames],
        durations=np.array([speech.HOP_MS * len(f) for f in frames]),
        recordings=tuple(
            tuple(np.flatnonzero(np.array(phrases) == p)) for p in range(len(SPEECH_PHRASES))
        ),
        silence=(floor.mean(0) - mean) / std,
    )


def _audio_source(text: str) -> str:
    """``--audio``: one of :data:`AUDIO_SOURCES`; espeak only where espeak-ng is installed."""
    if text not in AUDIO_SOURCES:
        raise argparse.ArgumentTypeError(
            f"unknown audio source {text!r}; choose from {', '.join(AUDIO_SOURCES)}"
        )
    if text == "espeak" and not speech.espeak_available():
        raise argparse.ArgumentTypeError(
            "espeak needs the espeak-ng speech synthesiser: apt-get install espeak-ng"
        )
    return text


def _record_speech(
    utterances: _Utterances, rng: np.random.Generator, bank: SpeechBank
) -> list[tuple]:
    """The spoken phrase's MFCCs every 10 ms, read through the utterance's time warp (linear
    interpolation between its frames), the noise floor's before and after."""
    times, counts = _frame_times(utterances, rng, AUDIO_RATE, _AUDIO_JITTER_MS)
    u = utterances.position(times)
    mfcc = np.broadcast_to(bank.silence, (*times.shape, N_MFCC)).copy()
    for row, recording in enumerate(utterances.spoken):
        frames = bank.frames[recording]
        spoken = (u[row] >= 0) & (u[row] <= 1)
        where = u[row, spoken] * (len(frames) - 1)
        below = np.minimum(where.astype(np.int64), len(frames) - 2)
        share = (where - below)[:, None]
        mfcc[row, spoken] = (1 - share) * frames[below] + share * frames[below + 1]
    mfcc += rng.normal(0.0, _AUDIO_NOISE, size=mfcc.shape)
    return _rows(times, mfcc, counts)


# Layouts: what each model reads ---------------------------------------------------------------

CONDITION_STREAMS = {"fused": ("audio", "video"), "audio": ("audio",), "video": ("video",)}
_WIDTHS = {"audio": N_MFCC, "video": N_LANDMARKS}


def native_batch(examples: AudioVideoExamples, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The named streams merged at their own timestamps: ``(values, times, lengths)``, each
    stream's features held between its events, then one indicator column per stream."""
    return merge_stream_batch(examples.streams(names), hold=True)


def grid_batch(examples: AudioVideoExamples, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """The named streams resampled every 10 ms from the first event to the last, each holding
    its latest value (zeros before its first event): ``(values, times, lengths)``, padded as
    :func:`native_batch` pads, without indicator columns."""
    samples = examples.streams(names)
    grids = []
    for streams in samples:
        first = min(times[0] for times, _ in streams if len(times))
        last = max(times[-1] for times, _ in streams if len(times))
        grids.append(first + GRID_STEP * np.arange(int((last - first) // GRID_STEP) + 1))
    lengths = np.array([grid.size for grid in grids], dtype=np.int64)
    values = np.zeros((len(samples), lengths.max(), sum(_WIDTHS[n] for n in names)), np.float32)
    times = np.zeros((len(samples), lengths.max()))
    for row, (streams, grid) in enumerate(zip(samples, grids, strict=True)):
        times[row, : grid.size], times[row, grid.size :] = grid, grid[-1]
        column = 0
        for stream_times, stream_values in streams:
            # The latest event at or before each tick.
            latest = np.searchsorted(stream_times, grid, side="right") - 1
            slot = values[row, : grid.size, column : column + stream_values.shape[1]]
            slot[latest >= 0] = stream_values[latest[latest >= 0]]
            column += stream_values.shape[1]
    return torch.from_numpy(values), torch.from_numpy(times), torch.from_numpy(lengths)


def _layout(model: str):
    return native_batch if model == "plstm" else grid_batch


def input_size(model: str, condition: str) -> int:
    names = CONDITION_STREAMS[condition]
    features = sum(_WIDTHS[name] for name in names)
    return features + len(names) if model == "plstm" else features


# The task -------------------------------------------------------------------------------------

_TRAIN_STREAM, _TEST_STREAM = 0, 1
R_ON = 0.2
# Examples on which the Phased LSTM's period range is measured (a stream of their own).
_RANGE_STREAM, _RANGE_EXAMPLES = 3, 500


@functools.cache
def period_range(
    condition: str, audio: str = "synthetic", r_on: float = R_ON
) -> tuple[float, float]:
    """The Phased LSTM's period initialisation for ``condition``: the library's
    :func:`~phased_lstm.suggest_period_range` (from the gap between events divided by
    ``r_on`` to the duration of a recording) on examples drawn for it alone."""
    examples = audio_video_examples(_RANGE_EXAMPLES, [0, _RANGE_STREAM], audio=audio)
    _, times, lengths = native_batch(examples, CONDITION_STREAMS[condition])
    low, high = suggest_period_range(times, lengths, batch_first=True, r_on=r_on)
    return round(low, 1), round(high, 1)


class FusionTask(Task):
    name = "fusion"
    title = "multi-rate sensor fusion (Task 4: synthetic audio at 100 Hz and video at 25 Hz)"
    help = "audio at 100 Hz and video at 25 Hz fused (Task 4, synthetic)"
    conditions = tuple(CONDITION_STREAMS)
    condition_titles = {"fused": "audio + video", "audio": "audio alone", "video": "video alone"}
    models = ("plstm", "lstm", "bnlstm-input")
    options = (
        TaskOption(
            "audio",
            "synthetic: bursts in MFCC-like features; espeak: five phrases spoken by espeak-ng "
            "(apt-get install espeak-ng), as 100 Hz MFCCs",
            type=_audio_source,
            default="synthetic",
            metavar="SOURCE",
        ),
        TaskOption(
            "forget_bias",
            "initial forget-gate bias of every model; 0 is the authors' initialisation, under "
            "which the LSTM and BN-LSTM stay at chance for many epochs on these sequences",
            type=finite_option,
            default=1.0,
            metavar="B",
        ),
        TaskOption(
            "r_on",
            "initial open ratio of the Phased LSTM's time gate (its periods start from "
            "suggest_period_range with this r_on)",
            type=fraction_option,
            default=R_ON,
            metavar="R",
        ),
    )
    paper_protocol = (
        "(recalled) lip reading on GRID: audio features at 100 Hz and video frames at 25 Hz "
        "fused; the Phased LSTM converged faster than the LSTM and BN-LSTM with competitive "
        "accuracy; no numbers in our notes"
    )
    presets = {
        # 30 epochs is our choice: the number of epochs of the paper's GRID runs is not known.
        "paper": dict(PAPER_PRESET, models=["plstm", "lstm", "bnlstm-input"], epochs=30),
        # Nine runs within 15 minutes on a 2-core CPU (6 min 13 s measured, two at a time;
        # docs/reproduction.md says how it was chosen). The authors' training settings, as in
        # the paper preset: nothing here needs the quick presets' parameter clipping, and
        # plain Adam on the stored time gate slowed the Phased LSTM (docs/reproduction.md).
        "quick": dict(
            QUICK_PRESET,
            models=["plstm", "lstm", "bnlstm-input"],
            epochs=20,
            samples_per_epoch=2400,
            gradient_clip_mode="gates",
            time_gate_adam="direct",
        ),
    }
    # Steps per example: the merged sequence, ~65 audio and ~16 video events; the grid ~65.
    _STEPS = {"fused": 81.0, "audio": 65.0, "video": 65.0}

    @staticmethod
    def _period_range(config, condition: str) -> tuple[float, float]:
        return period_range(condition, config.options["audio"], config.options["r_on"])

    def run_cost(self, config, condition) -> float:
        return float(config.samples_for(condition) * self._STEPS[condition])

    def model_spec(self, config, model, condition) -> ModelSpec:
        return ModelSpec(
            input_size=input_size(model, condition),
            num_outputs=NUM_CLASSES,
            classify=True,
            hidden_size=config.hidden_size,
            period_range=self._period_range(config, condition)
            if model == "plstm"
            else (math.e, math.e**3),
            shift_range=None,
            # On a regular grid the step index is the time; the raw clock time (up to ~3 s)
            # would saturate the LSTM, as it did on the frequency task.
            time_as_input=False,
            max_steps=256,
            grad_clip=self.gate_clip(config),
            forget_bias=config.options["forget_bias"],
            r_on=config.options["r_on"],
        )

    def _dataset(self, examples: AudioVideoExamples, model: str, condition: str) -> Dataset:
        values, times, lengths = _layout(model)(examples, CONDITION_STREAMS[condition])
        labels = torch.from_numpy(examples.labels)
        # In order of length: less padding per batch, the same results in eval mode.
        order = torch.argsort(lengths, stable=True)
        return TensorDataset(values[order], times[order], lengths[order], labels[order])

    def train_data(self, config, model, condition, seed, epoch) -> Dataset:
        examples = audio_video_examples(
            config.samples_for(condition),
            [seed, _TRAIN_STREAM, epoch],
            audio=config.options["audio"],
        )
        values, times, lengths = _layout(model)(examples, CONDITION_STREAMS[condition])
        return TensorDataset(values, times, lengths, torch.from_numpy(examples.labels))

    def test_data(self, config, model, condition, seed) -> dict[str, Dataset]:
        def draw(rate: float) -> Dataset:
            examples = audio_video_examples(
                config.test_samples,
                [seed, _TEST_STREAM],
                video_rate=rate,
                audio=config.options["audio"],
            )
            return self._dataset(examples, model, condition)

        sets = {"test": draw(VIDEO_RATE)}
        if "video" in CONDITION_STREAMS[condition]:
            sets[TEST_RATE_SET] = draw(TEST_VIDEO_RATE)
        return sets

    def evaluation_metrics(self, network, batch) -> dict[str, tuple[float, float]]:
        """The Phased LSTM's open share, and for every model the state updates per neuron and
        utterance: the open neuron-steps of the Phased LSTM, every valid step of the others."""
        metrics = super().evaluation_metrics(network, batch)
        _, _, lengths, _ = batch
        steps = float(lengths.sum())
        if "update_fraction" in metrics:
            updates = metrics["update_fraction"][0]  # the share times the steps
        else:
            updates = steps
        metrics["updates_per_neuron"] = (updates, float(lengths.numel()))
        return metrics

    def protocol_lines(self, config) -> list[str]:
        ranges = ", ".join(
            f"{self.condition_titles[c]} ({low:g}, {high:g}) ms"
            for c in config.conditions
            for low, high in [self._period_range(config, c)]
        )
        return model_protocol_lines(
            f"tau = exp(U(log low, log high)) with (low, high) from suggest_period_range on the "
            f"condition's merged timestamps: {ranges}; s ~ U(0, tau)",
            "the streams resampled on a 100 Hz grid (each holding its latest value), no time input",
            r_on=config.options["r_on"],
        ) + [
            "- test sets: the fixed test utterances with the video at 25 Hz (as trained) and "
            "the same utterances filmed at 30 Hz"
        ]

    def tables(self, config, results) -> list[str]:
        return fusion_tables(self, config, results)

    def figures(self, config, results):
        figures = [("streams.png", streams_figure)]
        if results["runs"]:
            figures += [
                ("accuracy_bars.png", lambda: accuracy_bars(self, config, results, ylim=(0, 102))),
                (
                    "learning_curves.png",
                    lambda: learning_curves(self, config, results, ylim=(0, 101)),
                ),
            ]
        return figures


TEST_RATE_SET = "test_video30"


# Convergence: the first epoch at which a run reached this share of the best final accuracy
# among the models of its condition (tables.epochs_to_reach).
_CONVERGED_SHARE = 0.9


def fusion_tables(task: FusionTask, config, results: dict) -> list[str]:
    """The accuracy table (25 and 30 Hz video, convergence, updates) and the paper's claims."""
    accuracy = final_metric(results, "test_acc")
    at_30 = final_metric(results, f"{TEST_RATE_SET}_acc")
    updates = final_metric(results, "updates_per_neuron")
    open_share = final_metric(results, "update_fraction")
    reached = epochs_to_reach(results, _CONVERGED_SHARE)
    share = f"{100 * _CONVERGED_SHARE:.0f}%"
    lines = [
        f"## Test accuracy after {epochs_text(config, results)} (%)",
        "",
        f"Ten classes (chance 10%). Either stream alone can tell at most half of them apart (a "
        f"ceiling of {100 * STREAM_CEILING:.0f}%), both streams all of them. *Video at 30 Hz*: "
        "the same test utterances filmed at 30 frames per second, to which no model was "
        "trained (the baselines' grid ticks at 100 Hz whatever the camera's rate; only the "
        f"moments at which their held video values change move). *Epochs to {share}*: the "
        f"first epoch whose test accuracy reached {share} of "
        "the best final accuracy among the models of that condition (the same target for "
        "every model: a run's own final accuracy would let a run stuck at chance or on a low "
        "plateau count as converged at once); *not reached* within the epochs run. *Updates "
        "per neuron*: state updates of one neuron in one test utterance, at evaluation (the "
        "Phased LSTM's open neuron-steps; every step of the others).",
        "",
        f"| condition | model | accuracy | video at 30 Hz | change (points) | epochs to {share} "
        "| updates per neuron |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition in config.conditions:
        for model in config.models:
            key = (model, condition)
            values = accuracy.get(key, [])
            change = "—"
            if at_30.get(key) and values:
                change = cell([b - a for a, b in zip(values, at_30[key], strict=True)], 100.0)
            lines.append(
                f"| {task.condition_titles[condition]} | {model_title(model)} "
                f"| {cell(values, 100.0)} | {cell(at_30[key], 100.0) if key in at_30 else '—'} "
                f"| {change} | {_epochs_cell(reached.get(key))} "
                f"| {_updates_cell(updates.get(key), open_share.get(key))} |"
            )
    return lines + ["", *_claim_lines(config, accuracy, at_30, reached)]


def _updates_cell(updates: list[float] | None, open_share: list[float] | None) -> str:
    if not updates:
        return "—"
    mean = mean_std(updates)[0]
    if open_share:
        return f"{mean:.0f} (open at {100 * mean_std(open_share)[0]:.1f}% of the steps)"
    return f"{mean:.0f}"


def _epochs_cell(epochs: list[int | None] | None) -> str:
    if not epochs:
        return "not run"
    kept = [float(e) for e in epochs if e is not None]
    if not kept:
        return "not reached"
    text = cell(kept, digits=1)
    return text if len(kept) == len(epochs) else f"{text}, {len(epochs) - len(kept)} not reached"


def _claim_lines(config, accuracy, at_30, reached) -> list[str]:
    """The paper's claims, and the targets of this reproduction, each with our numbers."""

    def mean(table, key) -> float | None:
        values = table.get(key)
        return 100 * mean_std(values)[0] if values else None

    lines = ["## The claims, checked", ""]
    fusion_rows = []
    for model in config.models:
        fused, audio, video = (mean(accuracy, (model, c)) for c in ("fused", "audio", "video"))
        if fused is None or audio is None and video is None:
            continue
        alone = [(name, a) for name, a in (("audio", audio), ("video", video)) if a is not None]
        verdict = "met" if all(fused > a for _, a in alone) else "**missed**"
        fusion_rows.append(
            f"{model_title(model)} {fused:.1f} against "
            + " and ".join(f"{a:.1f} ({name})" for name, a in alone)
            + f" ({verdict})"
        )
    if fusion_rows:
        lines.append(
            "- Fusion beats each stream alone (audio + video against each stream alone, %): "
            + "; ".join(fusion_rows)
            + "."
        )
    # A run that never reached the target counts as one epoch past the last: a lower bound.
    speed = {
        model: mean_std([float(e) if e is not None else config.epochs + 1.0 for e in epochs])[0]
        for model in config.models
        if (epochs := reached.get((model, "fused")))
    }
    if "plstm" in speed and len(speed) > 1:
        others = [m for m in speed if m != "plstm"]
        verdict = "met" if all(speed["plstm"] < speed[m] for m in others) else "**missed**"
        lines.append(
            f"- The Phased LSTM converges in fewer epochs (audio + video, epochs to "
            f"{100 * _CONVERGED_SHARE:.0f}% of the best final accuracy; not reached counts as "
            f"{config.epochs + 1}): "
            + ", ".join(f"{model_title(m)} {speed[m]:.1f}" for m in speed)
            + f" ({verdict})."
        )
    drops = {
        model: mean(at_30, (model, "fused")) - mean(accuracy, (model, "fused"))
        for model in config.models
        if (model, "fused") in at_30 and (model, "fused") in accuracy
    }
    if "plstm" in drops and len(drops) > 1:
        others = [m for m in drops if m != "plstm"]
        verdict = "met" if all(drops["plstm"] > drops[m] for m in others) else "**missed**"
        noise = {
            m: _change_noise(accuracy[(m, "fused")], at_30[(m, "fused")], config) for m in drops
        }
        if all(abs(drops[m]) < noise[m] for m in drops):
            verdict = (
                "not shown: no model's change exceeds two standard errors "
                f"({max(noise.values()):.1f} points at most), so none loses measurably"
            )
        lines.append(
            "- The Phased LSTM loses less when the video rate changes to 30 Hz at test time "
            "(audio + video, change in points): "
            + ", ".join(f"{model_title(m)} {drops[m]:+.1f}" for m in drops)
            + f" ({verdict})."
        )
    # At p = 0.5 the binomial standard error is largest: 0.5 / sqrt(n).
    lines += [
        "",
        f"Each accuracy is measured on {config.test_samples} test utterances, with a standard "
        f"error of up to {50 / math.sqrt(config.test_samples):.1f} points per seed; the change "
        "at 30 Hz compares the same utterances and is less noisy than that.",
    ]
    return lines


def _change_noise(at_25: list[float], at_30: list[float], config) -> float:
    """Two standard errors (points) of the mean change from 25 to 30 Hz video, as if the two
    accuracies were measured on independent utterances: they are the same utterances, so this
    overstates the noise."""
    variance = sum(p * (1 - p) for p in (mean_std(at_25)[0], mean_std(at_30)[0]))
    return 200 * math.sqrt(variance / (len(at_25) * config.test_samples))


def streams_figure():
    """One utterance: its audio and its video at their own rates, and the sequence each model
    reads (the merged events, and the baselines' 100 Hz grid)."""
    import matplotlib.pyplot as plt

    examples = audio_video_examples(1, [7], labels=np.array([3]))
    video_30 = audio_video_examples(1, [7], labels=np.array([3]), video_rate=TEST_VIDEO_RATE)
    (audio_times, mfcc), (video_times, landmarks) = examples.audio[0], examples.video[0]
    figure, axes = plt.subplots(
        3, 1, figsize=(8, 7), gridspec_kw={"height_ratios": [2, 1.3, 1.3]}, sharex=False
    )
    axes[0].pcolormesh(audio_times, np.arange(N_MFCC), mfcc.T, shading="nearest", cmap="magma")
    axes[0].set_ylabel("coefficient")
    axes[0].set_title(
        f"class 3: audio word {CLASS_WORDS[3]} (three bursts), 13 MFCC-like coefficients at 100 Hz",
        fontsize=9,
    )
    opening = landmarks[:, 5] - landmarks[:, 7]
    width = landmarks[:, 2] - landmarks[:, 0]
    axes[1].plot(video_times, opening, "o-", markersize=3, label="mouth opening, 25 Hz")
    axes[1].plot(video_times, width, "s-", markersize=3, label="mouth width, 25 Hz")
    times_30, landmarks_30 = video_30.video[0]
    axes[1].plot(
        times_30, landmarks_30[:, 5] - landmarks_30[:, 7], "x", color="0.4", markersize=3,
        label="opening at 30 Hz (test only)",
    )  # fmt: skip
    axes[1].set_title(f"video: mouth shape {CLASS_SHAPES[3]}, 8 lip landmarks", fontsize=9)
    axes[1].legend(fontsize=7, ncol=3, loc="upper right")
    axes[1].set_xlim(axes[0].get_xlim())
    # A window of the sequences as the models read them.
    merged_times, merged = (array.numpy() for array in merge_streams(examples.streams()[0]))
    audio_rows = merged[:, N_MFCC + N_LANDMARKS] == 1.0  # the audio stream's indicator
    start = float(audio_times[0]) + 300.0
    window = (start, start + 200.0)
    for times, row, color, label in (
        (merged_times[audio_rows], 2, "tab:blue", "audio events"),
        (merged_times[~audio_rows], 1.7, "tab:orange", "video events"),
        (grid_batch(examples, STREAMS)[1][0].numpy(), 1, "0.5", "100 Hz grid (LSTM, BN-LSTM)"),
    ):
        shown = times[(times >= window[0]) & (times <= window[1])]
        axes[2].vlines(shown, row - 0.25, row + 0.25, color=color, label=label)
    axes[2].set_xlim(*window)
    axes[2].set_yticks([1, 1.85])
    axes[2].set_yticklabels(["grid", "merged"])
    axes[2].set_title(
        "200 ms of the sequences read: the Phased LSTM's merged events at their own "
        "timestamps, the baselines' grid",
        fontsize=9,
    )
    axes[2].legend(fontsize=7, ncol=3, loc="upper right")
    axes[2].set_ylim(0.5, 2.6)
    axes[2].set_xlabel("clock time (ms)")
    figure.tight_layout()
    return figure


TASK = FusionTask()


__all__ = [
    "AUDIO_SOURCES",
    "CLASS_SHAPES",
    "CLASS_WORDS",
    "CONDITION_STREAMS",
    "R_ON",
    "SPEECH_PHRASES",
    "STREAM_CEILING",
    "TASK",
    "AudioVideoExamples",
    "FusionTask",
    "SpeechBank",
    "audio_video_examples",
    "grid_batch",
    "native_batch",
    "period_range",
    "speech_bank",
    "streams_figure",
]
