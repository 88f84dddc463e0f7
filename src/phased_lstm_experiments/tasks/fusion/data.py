"""The fusion task's data: utterances that need both sensors, synthesised as audio frames (MFCC-like
bursts, or espeak-ng speech with ``--audio espeak``) and video frames (lip landmarks), each on its
own clock. The module docstring of :mod:`phased_lstm_experiments.tasks.fusion` describes them."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math

import numpy as np

from ... import speech
from ...speech import dct_matrix

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
AUDIO_JITTER_MS = 1.0
VIDEO_JITTER_MS = 3.0
_VIDEO_OFFSET_MS = 20.0
_AUDIO_NOISE = 0.3  # on each coefficient, whose typical spread is ~1
_VIDEO_NOISE = 0.05  # on each landmark, against a mouth ~1 wide and up to ~0.5 open


@dataclasses.dataclass(frozen=True)
class Sensors:
    """How the two sensors sample an utterance: their frame rates (frames per second) and the
    jitter of their clocks (each frame taken up to that many ms before or after its tick, and
    stamped with the time it was taken). The defaults are the training sensors."""

    audio_rate: float = AUDIO_RATE
    video_rate: float = VIDEO_RATE
    audio_jitter: float = AUDIO_JITTER_MS
    video_jitter: float = VIDEO_JITTER_MS

    def __post_init__(self):
        for name in ("audio", "video"):
            rate, jitter = getattr(self, f"{name}_rate"), getattr(self, f"{name}_jitter")
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"{name}_rate must be a positive number of Hz, got {rate!r}")
            # Less than half a step: a frame never passes its neighbours, time keeps its order.
            if not 0 <= jitter < 500.0 / rate:
                raise ValueError(
                    f"{name}_jitter must be in [0, {500.0 / rate:g}) ms (half the time between "
                    f"frames at {rate:g} Hz, so that frames keep their order), got {jitter!r}"
                )


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


TRAINING_SENSORS = Sensors()
# The test sensors to which no model is trained: key -> (title, sensors, the streams they change).
# The baselines' grid ticks at 100 Hz whatever the sensors do (each stream holding its last
# value); the Phased LSTMs read every frame at its own time. Jitter below half a step keeps the
# frames of a stream in order.
TEST_SENSORS = {
    "video30": ("video at 30 Hz", Sensors(video_rate=TEST_VIDEO_RATE), ("video",)),
    "video15": ("video at 15 Hz", Sensors(video_rate=15.0), ("video",)),
    "audio80": ("audio at 80 Hz", Sensors(audio_rate=80.0), ("audio",)),
    "audio125": ("audio at 125 Hz", Sensors(audio_rate=125.0), ("audio",)),
    "jitter": (
        "jittered clocks (audio ±4 ms, video ±15 ms)",
        Sensors(audio_jitter=4.0, video_jitter=15.0),
        ("audio", "video"),
    ),
}


def audio_video_examples(
    n: int,
    seed: int | list[int],
    *,
    labels: np.ndarray | None = None,
    audio: str = "synthetic",
    sensors: Sensors = TRAINING_SENSORS,
) -> AudioVideoExamples:
    """``n`` synthetic utterances (module docstring), drawn from ``seed`` (an int or a list of
    ints, the entropy of a ``numpy.random.SeedSequence``).

    The utterances, the audio sensor and the video sensor draw from three independent streams
    of ``seed``: the same seed under other ``sensors`` (:class:`Sensors`: the frame rates and
    the jitter of the clocks) gives the same utterances, each stream sampled otherwise, and a
    stream whose sensor did not change stays the same. ``labels`` forces the classes (else
    uniform over the ten). ``audio="espeak"`` replaces the bursts by one of five phrases spoken
    by espeak-ng (:func:`speech_bank`), fitted to the utterance's duration.
    """
    if audio not in AUDIO_SOURCES:
        raise ValueError(f"audio must be one of {', '.join(AUDIO_SOURCES)}, got {audio!r}")
    if not isinstance(sensors, Sensors):
        raise TypeError(f"sensors must be a Sensors, got {type(sensors).__name__}")
    bank = speech_bank() if audio == "espeak" else None
    latent_seed, audio_seed, video_seed = np.random.SeedSequence(seed).spawn(3)
    utterances = _Utterances.draw(np.random.default_rng(latent_seed), n, labels, bank)
    audio_rng = np.random.default_rng(audio_seed)
    if bank is None:
        audio_stream = _record_audio(utterances, audio_rng, sensors)
    else:
        audio_stream = _record_speech(utterances, audio_rng, bank, sensors)
    video = _film_video(utterances, np.random.default_rng(video_seed), sensors)
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


def _record_audio(
    utterances: _Utterances, rng: np.random.Generator, sensors: Sensors
) -> list[tuple]:
    """13 MFCC-like coefficients per frame (every 10 ms at 100 Hz; the window stays 25 ms at
    any rate): the DCT of a 26-band log spectrum."""
    times, counts = _frame_times(utterances, rng, sensors.audio_rate, sensors.audio_jitter)
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


def _film_video(utterances: _Utterances, rng: np.random.Generator, sensors: Sensors) -> list[tuple]:
    """8 lip-landmark coordinates per frame, stamped by a clock that is off by a constant."""
    # The offset is drawn before anything whose size depends on the rate, so that it is the
    # same at every rate.
    offset = rng.uniform(-_VIDEO_OFFSET_MS, _VIDEO_OFFSET_MS, size=utterances.labels.shape[0])
    times, counts = _frame_times(utterances, rng, sensors.video_rate, sensors.video_jitter)
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
    utterances: _Utterances, rng: np.random.Generator, bank: SpeechBank, sensors: Sensors
) -> list[tuple]:
    """The spoken phrase's MFCCs at the audio sensor's frames (every 10 ms at 100 Hz), read
    through the utterance's time warp (linear interpolation between its frames), the noise
    floor's before and after."""
    times, counts = _frame_times(utterances, rng, sensors.audio_rate, sensors.audio_jitter)
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
