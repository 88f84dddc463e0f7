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
With ``--features standardised`` (the paper preset) every model reads each sensor's features as
z-scores from the statistics of the run's first training epoch; the Phased LSTM's time gate
starts from the README's rule (``--r-on rule``: r_on = max(0.05, 2 / N) on the merged stream,
periods from ``suggest_period_range``), and its ablations are rows of their own
(``plstm-input-bn``, ``plstm-learned-r-on``, ``plstm-fixed-r-on``). The quick preset keeps the
first protocol (raw features, r_on 0.2 learned). Conditions: both streams ("fused"), the audio
alone, the video alone. The same test utterances are also recorded by sensors to which no
model was trained (``TEST_SENSORS``): video at 30 Hz (evaluated after every epoch) and at 15 Hz,
audio features at 80 and 125 Hz (another hop), and clocks with more jitter (once, after
training); the report gives each model's change of accuracy with its standard error over seeds.

``--audio espeak`` (where the espeak-ng synthesiser is installed) replaces the bursts by five
short commands spoken by espeak-ng in 27 voices, speeds and pitches, turned into real MFCCs
(:mod:`phased_lstm_experiments.speech`) and fitted to the utterance (spoken about twice as fast
as espeak-ng says them); the rest is unchanged.

Read in this order: :mod:`.data` (the synthesis and the sensors), :mod:`.inputs` (what each model
reads), :mod:`.task` (the task the runner calls), :mod:`.rate_tests` (the changes under the test
sensors), :mod:`.report` (the tables and figures). The names
users and tests imported from the single module are re-exported here.
"""

from . import data, inputs, rate_tests, report, task
from .data import (
    AUDIO_SOURCES,
    CLASS_SHAPES,
    CLASS_WORDS,
    SPEECH_PHRASES,
    STREAM_CEILING,
    TEST_SENSORS,
    AudioVideoExamples,
    Sensors,
    SpeechBank,
    audio_video_examples,
    speech_bank,
)
from .inputs import (
    CONDITION_STREAMS,
    Standardisation,
    grid_batch,
    hold_last,
    input_size,
    native_batch,
)
from .rate_tests import TEST_RATE_SET
from .report import fusion_tables, streams_figure
from .task import R_ON, TASK, FusionTask, period_range, rule_r_on

__all__ = [
    "AUDIO_SOURCES",
    "CLASS_SHAPES",
    "CLASS_WORDS",
    "CONDITION_STREAMS",
    "R_ON",
    "SPEECH_PHRASES",
    "STREAM_CEILING",
    "TASK",
    "TEST_RATE_SET",
    "TEST_SENSORS",
    "AudioVideoExamples",
    "FusionTask",
    "Sensors",
    "SpeechBank",
    "Standardisation",
    "audio_video_examples",
    "data",
    "fusion_tables",
    "grid_batch",
    "hold_last",
    "input_size",
    "inputs",
    "native_batch",
    "period_range",
    "rate_tests",
    "report",
    "rule_r_on",
    "speech_bank",
    "streams_figure",
    "task",
]
