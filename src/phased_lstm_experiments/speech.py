"""Synthesised speech as 100 Hz MFCCs, for the fusion experiment's optional real-audio variant.

:func:`synthesise` runs the espeak-ng speech synthesiser (a Debian/Ubuntu package, ``apt-get
install espeak-ng``; optional: :func:`espeak_available` says whether it is there) and
:func:`mfcc` turns a waveform into mel-frequency cepstral coefficients, 25 ms windows every
10 ms, with NumPy alone.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

ESPEAK = "espeak-ng"

# MFCCs as speech recognisers usually compute them: 25 ms Hamming windows every 10 ms, 26
# triangular mel bands up to 8 kHz, the log of their energies, a DCT, 13 coefficients.
WINDOW_MS = 25.0
HOP_MS = 10.0
N_BANDS = 26
N_COEFFICIENTS = 13
TOP_HZ = 8000.0
_FLOOR = 1e-10  # keeps the log of a silent band finite


def espeak_available() -> bool:
    """Whether the espeak-ng command is on the PATH."""
    return shutil.which(ESPEAK) is not None


def synthesise(text: str, *, voice: str = "en", speed: int = 160, pitch: int = 50):
    """``text`` spoken by espeak-ng: ``(samples, rate)``, float64 samples in [-1, 1].

    Args:
        text: what to say.
        voice: an espeak-ng voice, with an optional variant (``"en+m3"``, ``"en+f2"``).
        speed: words per minute.
        pitch: 0 to 99.

    Raises:
        RuntimeError: espeak-ng is not installed, or failed (its message included).
    """
    if not espeak_available():
        raise RuntimeError(
            "the espeak-ng speech synthesiser is not installed (Debian/Ubuntu: "
            "apt-get install espeak-ng)"
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        command = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.exists():
            raise RuntimeError(f"espeak-ng failed on {text!r}: {done.stderr.strip()}")
        with wave.open(str(path), "rb") as file:
            rate, width = file.getframerate(), file.getsampwidth()
            frames = file.readframes(file.getnframes())
    if width != 2:
        raise RuntimeError(f"espeak-ng wrote {8 * width}-bit samples; expected 16-bit")
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0, rate


def mfcc(samples: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Mel-frequency cepstral coefficients of a waveform, every 10 ms.

    Returns:
        ``(times, coefficients)``: the centre of each 25 ms window in ms ``(K,)``, and
        ``(K, 13)`` coefficients (the orthonormal DCT-II of the log mel-band energies; the
        first is the overall log energy).
    """
    times, energies = log_mel_energies(samples, rate)
    return times, energies @ dct_matrix().T


def log_mel_energies(samples: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The log energy of each of 26 mel bands in 25 ms Hamming windows every 10 ms: the
    window centres in ms ``(K,)`` and ``(K, 26)`` energies."""
    window = int(round(rate * WINDOW_MS / 1000.0))
    hop = rate * HOP_MS / 1000.0
    count = max(0, int((samples.size - window) // hop) + 1)
    starts = np.round(hop * np.arange(count)).astype(np.int64)
    frames = samples[starts[:, None] + np.arange(window)] * np.hamming(window)
    size = 1 << int(np.ceil(np.log2(window)))
    power = np.abs(np.fft.rfft(frames, size)) ** 2
    energies = power @ mel_filters(rate, size).T
    times = 1000.0 * (starts + window / 2) / rate
    return times, np.log(energies + _FLOOR)


@functools.cache
def mel_filters(rate: float, size: int) -> np.ndarray:
    """``(26, size // 2 + 1)`` triangular filters, equally spaced on the mel scale from 0 to
    8 kHz (or the Nyquist frequency), over the bins of a ``size``-point FFT."""
    top = min(TOP_HZ, rate / 2)
    edges_mel = np.linspace(0.0, _mel(top), N_BANDS + 2)
    edges = _hz(edges_mel)
    bins = np.arange(size // 2 + 1) * rate / size
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - low) / (centre - low)
    falling = (high - bins) / (high - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


@functools.cache
def dct_matrix() -> np.ndarray:
    """The first 13 rows of the orthonormal DCT-II of 26 values."""
    n = np.arange(N_BANDS)
    matrix = np.sqrt(2.0 / N_BANDS) * np.cos(
        np.pi / N_BANDS * (n[None, :] + 0.5) * np.arange(N_COEFFICIENTS)[:, None]
    )
    matrix[0] /= np.sqrt(2.0)
    return matrix


def _mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


__all__ = [
    "ESPEAK",
    "dct_matrix",
    "espeak_available",
    "log_mel_energies",
    "mel_filters",
    "mfcc",
    "synthesise",
]
