"""The multi-rate fusion experiment: the synthetic audio-video generator (rates, time ranges,
class structure, determinism), what each model reads, its metrics and report, and the CLI."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from phased_lstm.data import merge_streams  # noqa: E402
from phased_lstm_experiments import speech  # noqa: E402
from phased_lstm_experiments.models import build_model  # noqa: E402
from phased_lstm_experiments.tables import epochs_to_reach  # noqa: E402
from phased_lstm_experiments.tasks import fusion  # noqa: E402
from phased_lstm_experiments.tasks.fusion import (  # noqa: E402
    CLASS_SHAPES,
    CLASS_WORDS,
    TASK,
    Sensors,
    audio_video_examples,
    grid_batch,
    native_batch,
)
from tests.experiments.helpers import TINY, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def gaps(streams) -> np.ndarray:
    return np.concatenate([np.diff(times) for times, _ in streams])


# The generator ------------------------------------------------------------------------------


def test_sensor_rates_and_jitter():
    examples = audio_video_examples(200, 0)
    audio, video = gaps(examples.audio), gaps(examples.video)
    # 10 ms and 40 ms between frames, each frame off by at most 1 ms (audio) and 3 ms (video).
    assert abs(np.median(audio) - 10.0) < 0.2 and abs(np.median(video) - 40.0) < 0.5
    assert audio.min() >= 8.0 and audio.max() <= 12.0
    assert video.min() >= 34.0 and video.max() <= 46.0
    assert abs(audio.mean() - 10.0) < 0.05 and abs(video.mean() - 40.0) < 0.2
    filmed_30 = gaps(audio_video_examples(200, 0, sensors=Sensors(video_rate=30.0)).video)
    assert abs(np.median(filmed_30) - 1000 / 30) < 0.5 and filmed_30.min() >= 1000 / 30 - 6


def test_time_ranges_and_shapes():
    examples = audio_video_examples(300, 1)
    for (audio_times, mfcc), (video_times, landmarks) in zip(
        examples.audio, examples.video, strict=True
    ):
        assert audio_times.dtype == np.float64 and mfcc.dtype == np.float32
        assert mfcc.shape == (audio_times.size, 13) and landmarks.shape == (video_times.size, 8)
        # A recording starts at a random time in the first second and lasts 0.45-0.85 s: its
        # first and last frames within 10 ms (+-1 ms of jitter) of its ends.
        assert -1.0 <= audio_times[0] <= 1011.0
        assert 428.0 <= audio_times[-1] - audio_times[0] <= 852.0
        # The camera's clock is off by up to 20 ms and its first frame within 40 ms.
        assert audio_times[0] - 35.0 <= video_times[0] <= audio_times[0] + 64.0
        assert abs(video_times[-1] - audio_times[-1]) <= 64.0
        assert np.all(np.isfinite(mfcc)) and np.all(np.isfinite(landmarks))
    starts = [times[0] for times, _ in examples.audio]
    assert min(starts) < 100.0 and max(starts) > 900.0  # spread over the first second


def test_class_structure_gives_single_stream_ceilings_of_one_half():
    # Written out by hand: class -> (audio word, mouth shape).
    assert CLASS_WORDS == (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)
    assert CLASS_SHAPES == (0, 1, 1, 2, 2, 3, 3, 4, 4, 0)
    pairs = set(zip(CLASS_WORDS, CLASS_SHAPES, strict=True))
    assert len(pairs) == 10  # both streams together tell every class apart
    # Each word and each shape belongs to exactly two classes: knowing one stream, the best
    # guess among two classes is right half of the time.
    assert all(CLASS_WORDS.count(w) == 2 for w in range(5))
    assert all(CLASS_SHAPES.count(s) == 2 for s in range(5))
    assert fusion.STREAM_CEILING == 0.5


def _same_stream(a, b) -> bool:
    return all(
        np.array_equal(ta, tb) and np.array_equal(va, vb)
        for (ta, va), (tb, vb) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    "first, second, same_audio, same_video",
    [
        (0, 1, True, False),  # the same word, other shapes: only the video tells them apart
        (1, 2, False, True),  # the same shape: only the audio
        (9, 0, False, True),  # the cycle closes
        (0, 2, False, False),
        (3, 3, True, True),
    ],
)
def test_each_stream_depends_on_its_own_factor_only(first, second, same_audio, same_video):
    # With the classes forced and the same seed, every other draw is the same: a stream is
    # bit for bit the same exactly when the class's factor for it is.
    a = audio_video_examples(20, 5, labels=np.full(20, first))
    b = audio_video_examples(20, 5, labels=np.full(20, second))
    assert _same_stream(a.audio, b.audio) == same_audio
    assert _same_stream(a.video, b.video) == same_video


def test_determinism_per_seed_and_another_video_rate():
    a, b = audio_video_examples(30, [4, 0, 2]), audio_video_examples(30, [4, 0, 2])
    assert np.array_equal(a.labels, b.labels)
    assert _same_stream(a.audio, b.audio) and _same_stream(a.video, b.video)
    c = audio_video_examples(30, [4, 0, 3])
    assert not _same_stream(a.audio, c.audio)
    assert np.bincount(audio_video_examples(2000, 8).labels, minlength=10).min() > 150
    # Filmed at 30 Hz: the same utterances and audio, more video frames over the same span.
    d = audio_video_examples(30, [4, 0, 2], sensors=Sensors(video_rate=30.0))
    assert np.array_equal(a.labels, d.labels) and _same_stream(a.audio, d.audio)
    for (t25, _), (t30, _) in zip(a.video, d.video, strict=True):
        assert t30.size > t25.size and abs(t30[0] - t25[0]) < 40.0


# What the models read -----------------------------------------------------------------------


def test_native_layout_is_the_merge_of_the_chosen_streams():
    examples = audio_video_examples(4, 2)
    values, times, lengths = native_batch(examples, ("audio", "video"))
    assert values.shape[-1] == 13 + 8 + 2 and times.dtype == torch.float64
    for row in range(4):
        merged_times, merged = merge_streams([examples.audio[row], examples.video[row]])
        n = int(lengths[row])
        assert torch.equal(times[row, :n], merged_times) and torch.equal(values[row, :n], merged)
    values, _, lengths = native_batch(examples, ("video",))
    assert values.shape[-1] == 9 and lengths.tolist() == [t.size for t, _ in examples.video]


@pytest.mark.parametrize("names", [("audio", "video"), ("audio",), ("video",)])
def test_grid_layout_holds_each_stream_on_a_100_hz_grid(names):
    examples = audio_video_examples(5, 3)
    values, times, lengths = grid_batch(examples, names)
    for row, streams in enumerate(examples.streams(names)):
        n = int(lengths[row])
        first = min(t[0] for t, _ in streams)
        np.testing.assert_allclose(times[row, :n].numpy(), first + 10.0 * np.arange(n))
        assert times[row, n - 1] <= max(t[-1] for t, _ in streams) < times[row, n - 1] + 10.0
        # Reference: the ticks as a featureless last stream of a merge, whose stable order
        # puts each tick after the events at its time.
        grid = times[row, :n].numpy()
        merged_times, merged = merge_streams([*streams, (grid, np.zeros((n, 0)))])
        ticks = merged[:, -1] == 1.0
        width = values.shape[-1]
        assert torch.equal(values[row, :n], merged[ticks, :width])


def test_test_sets_and_input_sizes():
    config = fusion_config()
    sets = TASK.test_data(config, "plstm", "fused", 1)
    assert list(sets) == ["test", "test_video30"]
    assert list(TASK.test_data(config, "lstm", "audio", 1)) == ["test"]
    assert list(TASK.test_data(config, "lstm", "video", 1)) == ["test", "test_video30"]
    # The two sets hold the same utterances: the same labels, in the same order of length.
    assert sorted(sets["test"].tensors[3].tolist()) == sorted(
        sets["test_video30"].tensors[3].tolist()
    )
    for model, condition, size in (
        ("plstm", "fused", 23),
        ("lstm", "fused", 21),
        ("plstm", "video", 9),
        ("bnlstm-input", "audio", 13),
    ):
        spec = TASK.model_spec(config, model, condition)
        values = TASK.train_data(config, model, condition, 1, 0).tensors[0]
        assert spec.input_size == size == values.shape[-1] and spec.num_outputs == 10
        assert not spec.time_as_input


def test_period_ranges_follow_the_gaps_between_events():
    # suggest_period_range: (gap / r_on, duration) with r_on = 0.2, the task's default.
    assert fusion.R_ON == 0.2
    low, high = fusion.period_range("fused")
    assert 32 < low < 48 and 550 < high < 750  # ~8 ms between merged events
    low, high = fusion.period_range("audio")
    assert 49 < low < 51 and 550 < high < 750
    low, high = fusion.period_range("video")
    assert 195 < low < 205 and 550 < high < 750
    # At r_on = 0.1 the open window spans a gap at twice the period.
    assert 99 < fusion.period_range("audio", r_on=0.1)[0] < 101
    # At 0.05 a video-only sequence (~16 frames) is too short for any period to open a neuron
    # at one frame per sequence on average: the library says so.
    with pytest.raises(ValueError, match="r_on = 0.05 is too small"):
        fusion.period_range("video", r_on=0.05)


def test_r_on_option_reaches_the_layer_and_its_period_range():
    config = fusion_config()
    assert config.options["r_on"] == fusion.R_ON == 0.2
    config.options["r_on"] = 0.1
    spec = TASK.model_spec(config, "plstm", "audio")
    # suggest_period_range with r_on 0.1: the 10 ms audio gap / 0.1.
    assert spec.r_on == 0.1 and 99 < spec.period_range[0] < 101
    period, _, r_on = build_model("plstm", spec).encoder.rnn.time_gate_values()
    assert torch.allclose(r_on, torch.full_like(r_on, 0.1))
    assert period.min() >= spec.period_range[0] * (1 - 1e-9)


def test_updates_per_neuron():
    config = fusion_config()
    torch.manual_seed(0)
    batch = TASK.test_data(config, "plstm", "fused", 1)["test"][:8]
    network = build_model("plstm", TASK.model_spec(config, "plstm", "fused")).eval()
    metrics = TASK.evaluation_metrics(network, batch)
    _, times, lengths, _ = batch
    # Open neuron-steps per utterance, counted by hand from the time gate.
    rnn = network.encoder.rnn
    period, shift, r_on = rnn.time_gate_values()
    phase = torch.remainder(times.unsqueeze(-1) - shift, period) / period
    valid = torch.arange(times.shape[1]) < lengths.unsqueeze(1)
    opened = ((phase < r_on) & valid.unsqueeze(-1)).double().sum() / rnn.hidden_size
    total, count = metrics["updates_per_neuron"]
    assert count == 8 and math.isclose(total, float(opened), rel_tol=1e-9)
    baseline = build_model("lstm", TASK.model_spec(config, "lstm", "fused")).eval()
    batch = TASK.test_data(config, "lstm", "fused", 1)["test"][:8]
    assert TASK.evaluation_metrics(baseline, batch) == {
        "updates_per_neuron": (float(batch[2].sum()), 8.0)
    }


def test_epochs_to_reach_a_share_of_the_best_final_accuracy():
    def run(model, accuracies, condition="c", seed=1):
        history = [{"epoch": k + 1, "test_acc": a} for k, a in enumerate(accuracies)]
        return {"model": model, "condition": condition, "seed": seed, "history": history}

    runs = [
        # Condition c, seed 1: the best final accuracy is 0.95, the target 0.855.
        run("plstm", [0.1, 0.5, 0.85, 0.9, 0.95]),  # epoch 4
        run("lstm", [0.3, 0.32, 0.31, 0.3, 0.3]),  # a low plateau: never
        run("cfc", [0.1, 0.1, 0.1, 0.1, 0.1]),  # stuck at chance: never
        # Seed 2 has its own target: 0.9 * 0.6 = 0.54.
        run("plstm", [0.2, 0.55, 0.5], seed=2),  # epoch 2
        run("lstm", [0.54, 0.6, 0.6], seed=2),  # exactly the target at epoch 1
        # Condition d: 0.9 * 0.5 = 0.45; a run without a finite final accuracy sets no target.
        run("plstm", [0.45, 0.5], condition="d"),  # epoch 1
        run("lstm", [0.9, float("nan")], condition="d"),  # 0.9 >= 0.45 at epoch 1
    ]
    results = {"runs": {str(k): record for k, record in enumerate(runs)}}
    assert dict(epochs_to_reach(results, 0.9)) == {
        ("plstm", "c"): [4, 2],
        ("lstm", "c"): [None, 1],
        ("cfc", "c"): [None],
        ("plstm", "d"): [1],
        ("lstm", "d"): [1],
    }
    # With share 0.5 the lstm's plateau (0.3 < 0.475) is still short of the target.
    assert epochs_to_reach(results, 0.5)[("lstm", "c")] == [None, 1]


def test_table_cells_and_claims_from_hand_written_results():
    config = fusion_config()
    config.epochs, config.test_samples = 3, 500

    def run(model, condition, accuracies, at_30=None):
        history = [
            {"epoch": k + 1, "test_acc": a, "updates_per_neuron": 50.0}
            for k, a in enumerate(accuracies)
        ]
        if at_30 is not None:
            history[-1][f"{fusion.TEST_RATE_SET}_acc"] = at_30
        record = {"model": model, "condition": condition, "seed": 1, "epochs": 3}
        return f"{model}-{condition}-seed1", {**record, "history": history, "final": history[-1]}

    results = {
        "runs": dict(
            [
                run("plstm", "fused", [0.2, 0.8, 0.9], at_30=0.88),  # target 0.81: epoch 3
                run("lstm", "fused", [0.1, 0.1, 0.1], at_30=0.1),  # never
                run("bnlstm-input", "fused", [0.82, 0.85, 0.86], at_30=0.80),  # epoch 1
                run("plstm", "audio", [0.3, 0.4, 0.46]),  # target 0.45: epoch 3
                run("lstm", "audio", [0.1, 0.1, 0.12]),
                run("bnlstm-input", "audio", [0.4, 0.46, 0.5]),  # epoch 2
                run("plstm", "video", [0.3, 0.4, 0.5], at_30=0.5),
                run("lstm", "video", [0.1, 0.2, 0.3], at_30=0.3),
                run("bnlstm-input", "video", [0.4, 0.5, 0.9], at_30=0.9),
            ]
        )
    }
    markdown = "\n".join(fusion.fusion_tables(TASK, config, results))
    main_table = markdown.split("## Accuracy change under sensors")[0]
    rows = {tuple(r.split(" | ")[:2]): r for r in main_table.splitlines() if r.startswith("| ")}
    plstm = rows[("| audio + video", "Phased LSTM")]
    assert "| 90.0 (1 seed) | 88.0 (1 seed) | -2.0 (1 seed) | 3.0 (1 seed) |" in plstm
    assert "| not reached |" in rows[("| audio + video", "LSTM")]
    assert (
        "| 2.0 (1 seed) |" in rows[("| audio alone", "BN-LSTM (input BN, as the authors ran it)")]
    )
    assert "| 3.0 (1 seed) |" in rows[("| audio alone", "Phased LSTM")]
    # Fusion: met for the Phased LSTM; missed for the LSTM, whose audio alone (12) beats its
    # fusion (10), and for the BN-LSTM, whose video alone (90) beats its fusion (86).
    # Convergence: 3 against 4 (never: one past the 3 epochs) and 1. At 30 Hz:
    # -2 against 0 and -6.
    assert "Phased LSTM 90.0 against 46.0 (audio) and 50.0 (video) (met)" in markdown
    assert "LSTM 10.0 against 12.0 (audio) and 30.0 (video) (**missed**)" in markdown
    assert "86.0 against 50.0 (audio) and 90.0 (video) (**missed**)" in markdown
    assert "counts as 4): Phased LSTM 3.0, LSTM 4.0, BN-LSTM" in markdown
    assert "(input BN, as the authors ran it) 1.0 (**missed**)." in markdown
    # Two standard errors of the BN-LSTM's change: 200 sqrt((0.86 * 0.14 + 0.8 * 0.2) / 500)
    # = 4.7 points, less than its 6: the Phased LSTM's -2 is measurably worse than the LSTM's 0.
    assert (
        "with video at 30 Hz at test time (audio + video, change in points): Phased LSTM -2.0 "
        "(1 seed), LSTM +0.0 (1 seed), BN-LSTM (input BN, as the authors ran it) -6.0 (1 seed) "
        "(**missed**)." in markdown
    )
    # The targets of the fair comparison: 90 against the best baseline's 86 (met); 3 epochs
    # to 90% against the LSTM's 4 (never reached: one past the last epoch) (met).
    assert "best baseline at the end (audio + video, %): 90.0 against BN-LSTM" in markdown
    assert "(input BN, as the authors ran it) 86.0 (met)." in markdown
    assert "no more epochs than the LSTM to 90% (audio + video): 3.0 against 4.0 (met)." in (
        markdown
    )
    # With 100 test utterances every change is within its noise (the BN-LSTM's: 10.6 points).
    config.test_samples = 100
    markdown = "\n".join(fusion.fusion_tables(TASK, config, results))
    assert "(1 seed) (not shown: no model's change exceeds two standard errors (10.6 points" in (
        markdown
    )


# The CLI ------------------------------------------------------------------------------------


def fusion_config():
    from phased_lstm_experiments.tasks import preset_config

    config = preset_config("fusion", "quick")
    config.samples_per_epoch, config.test_samples = 32, 32
    return config


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "fusion"
    run_cli(
        "fusion", "--models", "plstm,lstm", "--condition", "fused,audio", *TINY, "--out", str(out)
    )
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["runs"]) == sorted(
        f"{model}-{condition}-seed1"
        for model in ("plstm", "lstm")
        for condition in ("fused", "audio")
    )
    for name, record in results["runs"].items():
        row = record["final"]
        assert 0 <= row["test_acc"] <= 1 and row["updates_per_neuron"] > 0
        assert ("test_video30_acc" in row) == (record["condition"] != "audio"), name
        assert ("update_fraction" in row) == (record["model"] == "plstm"), name
    markdown = (out / "results.md").read_text()
    assert "# Phased LSTM reproduction: multi-rate sensor fusion" in markdown
    accuracy = results["runs"]["plstm-fused-seed1"]["final"]["test_acc"]
    main_table = markdown.split("## Accuracy change under sensors")[0]
    [row] = [r for r in main_table.splitlines() if r.startswith("| audio + video | Phased LSTM |")]
    assert f"| {100 * accuracy:.1f} (1 seed) |" in row
    assert "Fusion beats each stream alone" in markdown
    for name in ("streams.png", "accuracy_bars.png", "learning_curves.png", "metrics.csv"):
        assert (out / name).stat().st_size > 0, name


# The optional real-speech variant -------------------------------------------------------------

needs_espeak = pytest.mark.skipif(
    not speech.espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


def reference_mel_filters(rate, size, bands=26, top=8000.0):
    """Triangles between mel-spaced edges, written out bin by bin."""

    def mel(hz):
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = [hz(k * mel(min(top, rate / 2)) / (bands + 1)) for k in range(bands + 2)]
    filters = np.zeros((bands, size // 2 + 1))
    for band in range(bands):
        low, centre, high = edges[band : band + 3]
        for k in range(size // 2 + 1):
            f = k * rate / size
            if low < f <= centre:
                filters[band, k] = (f - low) / (centre - low)
            elif centre < f < high:
                filters[band, k] = (high - f) / (high - centre)
    return filters


def test_mel_filters_and_dct():
    np.testing.assert_allclose(speech.mel_filters(16000, 512), reference_mel_filters(16000, 512),
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(speech.mel_filters(22050, 1024), reference_mel_filters(22050, 1024),
                               atol=1e-12)  # fmt: skip
    dct = speech.dct_matrix()
    np.testing.assert_allclose(dct @ dct.T, np.eye(13), atol=1e-12)  # orthonormal rows
    n = np.arange(26)
    np.testing.assert_allclose(
        dct[2], np.sqrt(2 / 26) * np.cos(np.pi * 2 * (n + 0.5) / 26), atol=1e-15
    )


def test_log_mel_energies_against_a_frame_written_out():
    rate = 16000
    t = np.arange(rate // 2) / rate
    samples = 0.5 * np.sin(2 * np.pi * 1000.0 * t) + 0.01 * np.random.default_rng(0).normal(
        size=t.size
    )
    times, energies = speech.log_mel_energies(samples, rate)
    # 25 ms windows (400 samples) every 10 ms (160 samples), stamped at their centres.
    assert energies.shape == (len(times), 26) and len(times) == (rate // 2 - 400) // 160 + 1
    np.testing.assert_allclose(times[:3], [12.5, 22.5, 32.5])
    k = 7
    frame = samples[160 * k : 160 * k + 400]
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(400) / 399)
    bins = np.arange(257)
    dft = (frame * hamming) @ np.exp(-2j * np.pi * np.outer(np.arange(400), bins) / 512)
    expected = np.log(reference_mel_filters(rate, 512) @ np.abs(dft) ** 2 + 1e-10)
    np.testing.assert_allclose(energies[k], expected, rtol=1e-9)
    # The tone's band: the one whose centre lies nearest 1 kHz.
    centres = [reference_mel_filters(rate, 512)[b].argmax() * rate / 512 for b in range(26)]
    assert energies[k].argmax() == int(np.argmin(np.abs(np.array(centres) - 1000.0)))
    mfcc_times, coefficients = speech.mfcc(samples, rate)
    np.testing.assert_allclose(coefficients, energies @ speech.dct_matrix().T)
    assert np.array_equal(mfcc_times, times)


def test_audio_option_refuses_a_missing_espeak(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit):
        run_cli("fusion", "--audio", "espeak", *TINY, "--out", str(tmp_path / "x"))
    assert "espeak needs the espeak-ng speech synthesiser" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("fusion", "--audio", "wav", *TINY, "--out", str(tmp_path / "y"))
    assert "unknown audio source 'wav'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="audio must be one of synthetic, espeak"):
        audio_video_examples(2, 0, audio="wav")


@needs_espeak
def test_espeak_phrases_as_the_audio_stream():
    examples = audio_video_examples(40, 2, audio="espeak")
    assert abs(np.median(gaps(examples.audio)) - 10.0) < 0.2
    for (times, mfcc), (video_times, _) in zip(examples.audio, examples.video, strict=True):
        assert mfcc.shape == (times.size, 13) and np.all(np.isfinite(mfcc))
        # The phrase fitted to 0.4-0.6 s, with 25-125 ms of silence on either side.
        assert 428.0 <= times[-1] - times[0] <= 852.0
        assert abs(video_times[-1] - times[-1]) <= 64.0
    bank = fusion.speech_bank()
    assert len(bank.frames) == 5 * 27 and bank.per_word == 27
    assert 600.0 <= bank.durations.min() and bank.durations.max() <= 1400.0
    # The same class structure: the audio depends on the phrase only, the video on the shape.
    a = audio_video_examples(10, 3, labels=np.full(10, 2), audio="espeak")
    b = audio_video_examples(10, 3, labels=np.full(10, 3), audio="espeak")
    c = audio_video_examples(10, 3, labels=np.full(10, 4), audio="espeak")
    assert _same_stream(a.audio, b.audio) and not _same_stream(a.video, b.video)
    assert _same_stream(b.video, c.video) and not _same_stream(b.audio, c.audio)


@pytest.mark.parametrize(
    ("flag", "text", "expected"),
    [
        ("--r-on", "2", "expected rule or a number in (0, 1], got '2'"),
        ("--r-on", "0", "expected rule or a number in (0, 1], got '0'"),
        ("--forget-bias", "nan", "expected a finite number, got 'nan'"),
        ("--forget-bias", "one", "expected a finite number, got 'one'"),
    ],
)
def test_bad_numeric_options_are_refused_before_any_run(tmp_path, capsys, flag, text, expected):
    """Refused by the parser, naming the flag, before a folder is made or a worker fails."""
    with pytest.raises(SystemExit):
        run_cli("fusion", flag, text, "--out", str(tmp_path / "out"))
    assert f"argument {flag}: {expected}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
