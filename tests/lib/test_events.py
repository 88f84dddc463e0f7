"""Event data: the N-MNIST file format byte by byte, the dataset's layouts, the transforms, collate.

Every file is written by the test itself, from bytes spelled out here or events built by hand.
"""

import pathlib
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from phased_lstm import PhasedLSTM
from phased_lstm.data import (
    EVENT_DTYPE,
    NMNIST,
    NUM_ADDRESSES,
    SENSOR_SIZE,
    Compose,
    SubsampleEvents,
    TimeWindow,
    ToFrames,
    collate_events,
    event_address,
    read_nmnist,
    subsample_events,
    time_window,
    to_frames,
    write_nmnist,
)

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"

# (x, y, p, t) and the five bytes that the format stores for it.
HAND_EVENTS = [
    ((0, 0, 1, 0), [0x00, 0x00, 0x80, 0x00, 0x00]),
    ((33, 33, 0, 2**23 - 1), [0x21, 0x21, 0x7F, 0xFF, 0xFF]),  # the largest timestamp
    ((33, 33, 1, 2**23 - 1), [0x21, 0x21, 0xFF, 0xFF, 0xFF]),
    ((5, 7, 1, 0x7ABCDE), [0x05, 0x07, 0xFA, 0xBC, 0xDE]),  # all three bytes differ
    ((12, 3, 0, 0x010203), [0x0C, 0x03, 0x01, 0x02, 0x03]),
    ((1, 2, 0, 255), [0x01, 0x02, 0x00, 0x00, 0xFF]),
    ((1, 2, 1, 256), [0x01, 0x02, 0x80, 0x01, 0x00]),
]


def events_of(rows):
    """A structured array from (x, y, p, t) rows, built field by field."""
    events = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for k, (x, y, p, t) in enumerate(rows):
        events[k]["x"], events[k]["y"], events[k]["p"], events[k]["t"] = x, y, p, t
    return events


def as_rows(events):
    return [(int(e["x"]), int(e["y"]), int(e["p"]), int(e["t"])) for e in events]


# --- the file format -------------------------------------------------------------------------


def test_dtype_is_tonics_layout():
    # tonic's NMNIST: np.dtype([("x", int), ("y", int), ("t", int), ("p", int)]), int = int64.
    assert EVENT_DTYPE.names == ("x", "y", "t", "p")
    assert all(EVENT_DTYPE[name] == np.dtype(np.int64) for name in EVENT_DTYPE.names)
    assert SENSOR_SIZE == (34, 34, 2)


def test_reader_decodes_hand_built_bytes(tmp_path):
    path = tmp_path / "hand.bin"
    path.write_bytes(bytes(b for _, record in HAND_EVENTS for b in record))
    events = read_nmnist(path)
    assert events.dtype == EVENT_DTYPE
    assert as_rows(events) == [row for row, _ in HAND_EVENTS]


def test_writer_encodes_hand_built_bytes(tmp_path):
    path = tmp_path / "hand.bin"
    write_nmnist(path, events_of([row for row, _ in HAND_EVENTS]))
    assert path.read_bytes() == bytes(b for _, record in HAND_EVENTS for b in record)


def test_round_trip_keeps_file_order(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    rows = list(
        zip(
            rng.integers(0, 34, n).tolist(),
            rng.integers(0, 34, n).tolist(),
            rng.integers(0, 2, n).tolist(),
            rng.integers(0, 2**23, n).tolist(),  # unsorted on purpose: file order is kept
            strict=True,
        )
    )
    write_nmnist(tmp_path / "r.bin", events_of(rows))
    assert (tmp_path / "r.bin").stat().st_size == 5 * n
    assert as_rows(read_nmnist(tmp_path / "r.bin")) == rows


def test_writer_accepts_other_field_orders_and_widths(tmp_path):
    # tonic's older events_struct: int16 addresses and a bool polarity, t before p.
    other = np.zeros(2, dtype=[("p", bool), ("t", np.int32), ("y", np.int16), ("x", np.uint8)])
    other["x"], other["y"], other["t"], other["p"] = [3, 4], [5, 6], [7, 8], [True, False]
    write_nmnist(tmp_path / "o.bin", other)
    assert as_rows(read_nmnist(tmp_path / "o.bin")) == [(3, 5, 1, 7), (4, 6, 0, 8)]


def test_empty_file_is_zero_events(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    events = read_nmnist(path)
    assert events.shape == (0,) and events.dtype == EVENT_DTYPE
    write_nmnist(tmp_path / "written.bin", np.zeros(0, dtype=EVENT_DTYPE))
    assert (tmp_path / "written.bin").read_bytes() == b""


def test_reader_takes_y_240_for_a_timestamp_overflow(tmp_path):
    # As the format's other readers do: the marker adds 2**13 us to every later timestamp.
    records = [[1, 1, 0x80, 0x00, 0x10], [0, 240, 0, 0, 0], [2, 2, 0x00, 0x00, 0x05]]
    records.append([0, 240, 0, 0, 0])
    records.append([3, 3, 0x80, 0x00, 0x01])
    (tmp_path / "o.bin").write_bytes(bytes(b for r in records for b in r))
    assert as_rows(read_nmnist(tmp_path / "o.bin")) == [
        (1, 1, 1, 16),
        (2, 2, 0, 5 + 8192),
        (3, 3, 1, 1 + 2 * 8192),
    ]


@pytest.mark.parametrize("size", [1, 4, 7, 11])
def test_reader_rejects_a_size_not_multiple_of_5(tmp_path, size):
    path = tmp_path / "cut.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*{size} bytes.*multiple of 5"):
        read_nmnist(path)


@pytest.mark.parametrize("record", [[34, 0, 0, 0, 0], [0, 34, 0, 0, 0], [255, 3, 0, 0, 0]])
def test_reader_rejects_an_address_off_the_sensor(tmp_path, record):
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes([1, 1, 0, 0, 1] + record))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: event 1 .*outside the 34x34"):
        read_nmnist(path)


def test_reader_wraps_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read N-MNIST file .*missing\.bin"):
        read_nmnist(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match=rf"cannot read N-MNIST file {re.escape(str(tmp_path))}"):
        read_nmnist(tmp_path)  # a folder


@pytest.mark.parametrize(
    "row, message",
    [
        ((34, 0, 0, 0), r"address \(x=34, y=0\) outside the 34x34 sensor"),
        ((0, -1, 0, 0), r"address \(x=0, y=-1\) outside"),
        ((0, 0, 2, 0), r"polarity p=2, expected 0 or 1"),
        ((0, 0, 1, 2**23), r"timestamp t=8388608 us, which does not fit the format's 23 bits"),
        ((0, 0, 1, -1), r"timestamp t=-1 us"),
    ],
)
def test_writer_rejects_what_the_format_cannot_hold(tmp_path, row, message):
    path = tmp_path / "w.bin"
    path.write_bytes(b"kept")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: event 1 .*{message}"):
        write_nmnist(path, events_of([(0, 0, 0, 0), row]))
    # Nothing written, nothing left behind.
    assert path.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


@pytest.mark.parametrize(
    "events, message",
    [
        (np.zeros((3, 4), dtype=np.int64), r"structured array with fields x, y, t, p"),
        ([(0, 0, 0, 0)], r"structured array .* got list"),
        (np.zeros(2, dtype=[("x", int), ("y", int), ("t", int)]), r"missing p"),
        (np.zeros(2, dtype=[("x", int), ("y", int), ("t", float), ("p", int)]), r"'t' must hold"),
    ],
)
def test_writer_type_errors(tmp_path, events, message):
    with pytest.raises(TypeError, match=message):
        write_nmnist(tmp_path / "w.bin", events)
    assert not any(tmp_path.iterdir())


def test_writer_rejects_a_2d_array(tmp_path):
    with pytest.raises(ValueError, match=r"1-D array, got shape \(2, 2\)"):
        write_nmnist(tmp_path / "w.bin", np.zeros((2, 2), dtype=EVENT_DTYPE))


# --- the dataset ---------------------------------------------------------------------------


def make_split(folder, names_by_digit):
    """Files folder/<digit>/<name>.bin; each holds one event whose x is the digit, t its index."""
    for digit, names in names_by_digit.items():
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_nmnist(folder / str(digit) / name, events_of([(digit, 0, 1, int(name[:5]))]))


@pytest.mark.parametrize("prefix", ["", "NMNIST"])
def test_dataset_layouts_labels_and_order(tmp_path, prefix):
    base = tmp_path / prefix
    # Created out of order; the dataset sorts by digit, then by name.
    make_split(base / "Train", {7: ["00030.bin", "00002.bin"], 0: ["00011.bin"], 3: ["00005.bin"]})
    make_split(base / "Test", {9: ["00001.bin"], 1: ["00004.bin", "00003.bin"]})
    (base / "Train" / "notes").mkdir()  # not a digit: ignored
    (base / "Train" / "notes" / "00099.bin").write_bytes(b"")
    (base / "Train" / "7" / "readme.txt").write_text("not a recording")

    train, test = NMNIST(tmp_path), NMNIST(tmp_path, train=False)
    assert train.folder == base / "Train" and test.folder == base / "Test"
    assert [p.name for p in train.files] == ["00011.bin", "00005.bin", "00002.bin", "00030.bin"]
    assert train.targets == [0, 3, 7, 7]
    assert test.targets == [1, 1, 9] and len(test) == 3
    for dataset in (train, test):
        for index in range(len(dataset)):
            events, label = dataset[index]
            assert events.dtype == EVENT_DTYPE
            assert int(events["x"][0]) == label  # the file's content matches its folder
    assert int(train[-1][0]["t"][0]) == 30


def test_dataset_errors_name_the_folders(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist"):
        NMNIST(tmp_path / "nowhere")
    (tmp_path / "Train" / "3").mkdir(parents=True)  # a folder without recordings
    pattern = (
        rf"no recording found: looked for {re.escape(str(tmp_path / 'Train'))}/<digit>/\*\.bin "
        rf"and {re.escape(str(tmp_path / 'NMNIST' / 'Train'))}/<digit>/\*\.bin"
    )
    with pytest.raises(ValueError, match=pattern):
        NMNIST(tmp_path)
    make_split(tmp_path / "Train", {3: ["00001.bin"]})
    with pytest.raises(TypeError, match="transform must be callable"):
        NMNIST(tmp_path, transform="subsample")
    with pytest.raises(IndexError, match="index 1 is out of range for 1 recordings"):
        NMNIST(tmp_path)[1]


def test_dataset_transforms_and_cache(tmp_path):
    make_split(tmp_path / "Test", {4: ["00001.bin"]})
    dataset = NMNIST(
        tmp_path,
        train=False,
        transform=lambda events: int(events["x"][0]) * 10,
        target_transform=lambda label: label + 100,
    )
    assert dataset[0] == (40, 104)

    cached = NMNIST(tmp_path, train=False, cache=True)
    first, _ = cached[0]
    cached.files[0].unlink()  # served from memory from now on
    again, _ = cached[0]
    assert as_rows(again) == as_rows(first)
    with pytest.raises(ValueError, match="read-only"):
        again["x"][0] = 5


# --- transforms ----------------------------------------------------------------------------


def many_events(n, seed=0):
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["x"], events["y"] = rng.integers(0, 34, n), rng.integers(0, 34, n)
    events["p"], events["t"] = rng.integers(0, 2, n), np.arange(n)
    return events


def test_subsample_statistics_order_and_determinism():
    events = many_events(100_000)
    kept = subsample_events(events, 0.75, seed=1)
    # 4 standard deviations of a binomial share: sqrt(0.75 * 0.25 / 1e5) = 0.00137.
    assert abs(kept.size / events.size - 0.75) < 4 * 0.00137
    assert np.all(np.diff(kept["t"]) > 0)  # a subsequence, in order
    assert np.array_equal(kept, subsample_events(events, 0.75, seed=1))
    assert not np.array_equal(kept, subsample_events(events, 0.75, seed=2))
    assert subsample_events(events, 1.0).size == events.size
    rng = np.random.default_rng(5)
    first, second = (subsample_events(events[:1000], 0.5, generator=rng) for _ in range(2))
    assert not np.array_equal(first, second)  # one stream, continued


def test_subsample_transform_is_a_pure_function_of_the_recording():
    one, other = many_events(2000, seed=0), many_events(2000, seed=1)
    transform = SubsampleEvents(0.4, seed=3)
    kept = transform(one)
    assert np.array_equal(kept, transform(one.copy()))  # same content, same draw
    assert np.array_equal(kept, SubsampleEvents(0.4, seed=3)(one))
    assert not np.array_equal(kept, SubsampleEvents(0.4, seed=4)(one))
    kept_other = transform(other)
    assert not np.array_equal(np.isin(one["t"], kept["t"]), np.isin(other["t"], kept_other["t"]))
    assert abs(kept.size / one.size - 0.4) < 4 * np.sqrt(0.4 * 0.6 / one.size)
    fresh = SubsampleEvents(0.5)
    assert not np.array_equal(fresh(one), fresh(one))  # unseeded: a new draw each call


@pytest.mark.parametrize("rate", [0, 1.5, -0.1])
def test_subsample_rejects_rates(rate):
    with pytest.raises(ValueError, match=r"rate must lie in \(0, 1\]"):
        SubsampleEvents(rate)
    with pytest.raises(ValueError, match=r"rate must lie in \(0, 1\]"):
        subsample_events(many_events(3), rate)


def test_subsample_type_errors():
    with pytest.raises(TypeError, match="rate must be a real number, got str"):
        subsample_events(many_events(3), "0.5")
    with pytest.raises(ValueError, match="either seed or generator"):
        subsample_events(many_events(3), 0.5, seed=1, generator=np.random.default_rng())
    with pytest.raises(TypeError, match="events must be a NumPy structured array"):
        subsample_events(np.arange(3), 0.5)


def test_time_window():
    events = events_of([(0, 0, 1, 0), (1, 0, 1, 5), (2, 0, 0, 10), (3, 0, 1, 15)])
    assert as_rows(time_window(events, 5, 15)) == [(1, 0, 1, 5), (2, 0, 0, 10)]
    assert [int(t) for t in time_window(events, None, 10)["t"]] == [0, 5]
    assert [int(t) for t in TimeWindow(start=10)(events)["t"]] == [10, 15]
    with pytest.raises(ValueError, match=r"start <= stop, got \(9, 3\)"):
        TimeWindow(9, 3)
    with pytest.raises(TypeError, match="start must be an int"):
        time_window(events, 1.5, 3)


def test_event_address():
    events = events_of([(0, 0, 0, 0), (33, 33, 1, 0), (1, 2, 1, 0), (33, 0, 0, 0)])
    assert event_address(events).tolist() == [0, 2311, (1 * 34 + 2) * 34 + 1, 33]
    assert NUM_ADDRESSES == 2312
    with pytest.raises(ValueError, match=r"event 1 \(x=34, y=0, p=0\) is not on the 34x34"):
        event_address(events_of([(0, 0, 0, 0), (34, 0, 0, 0)]))


def test_to_frames_counts_by_hand():
    events = events_of(
        [(3, 4, 1, 0), (3, 4, 1, 99), (3, 4, 0, 100), (0, 33, 0, 299), (5, 5, 1, 300)]
    )
    whole = to_frames(events)  # default range: first to last event, all five
    assert whole.shape == (2, 34, 34) and whole.dtype == np.float32
    assert whole[1, 4, 3] == 2 and whole[0, 4, 3] == 1 and whole[0, 33, 0] == 1
    assert whole[1, 5, 5] == 1 and whole.sum() == 5

    bins = ToFrames(3, time_range=(0, 300))(events)  # bins [0, 100), [100, 200), [200, 300)
    assert bins.shape == (3, 2, 34, 34)
    assert bins[0, 1, 4, 3] == 2 and bins[0].sum() == 2
    assert bins[1, 0, 4, 3] == 1 and bins[1].sum() == 1
    assert bins[2, 0, 33, 0] == 1 and bins[2].sum() == 1  # t = 300 lies outside
    assert to_frames(np.zeros(0, dtype=EVENT_DTYPE), 2).shape == (2, 2, 34, 34)
    with pytest.raises(ValueError, match=r"start < stop, got \(5, 5\)"):
        to_frames(events, time_range=(5, 5))
    with pytest.raises(ValueError, match="n_time_bins must be >= 1"):
        ToFrames(0)


def test_compose_applies_in_order():
    events = events_of([(0, 0, 1, 0), (1, 0, 1, 50), (2, 0, 1, 150)])
    frames = Compose((TimeWindow(0, 100), ToFrames()))(events)
    assert frames.sum() == 2
    with pytest.raises(TypeError, match=r"transforms\[1\] must be callable"):
        Compose((TimeWindow(), 3))


# --- collate -------------------------------------------------------------------------------


def test_collate_pads_with_lengths_and_milliseconds():
    long = events_of([(1, 0, 0, 1000), (2, 0, 1, 2500), (3, 1, 1, 4000)])
    short = events_of([(0, 0, 1, 7)])
    empty = np.zeros(0, dtype=EVENT_DTYPE)
    addresses, times, lengths, labels = collate_events([(long, 3), (short, 8), (empty, 1)])
    assert addresses.dtype == torch.int64 and addresses.shape == (3, 3)
    assert addresses.tolist() == [[1, 1156 + 2, 1156 + 34 + 3], [1156, 0, 0], [0, 0, 0]]
    assert times.dtype == torch.float64
    assert times.tolist() == [[1.0, 2.5, 4.0], [0.007, 0.007, 0.007], [0.0, 0.0, 0.0]]
    assert lengths.tolist() == [3, 1, 0] and lengths.dtype == torch.int64
    assert labels.tolist() == [3, 8, 1] and labels.dtype == torch.int64

    _, micro, _, _ = collate_events([(long, 0), (short, 1)], time_unit="us")
    assert micro.tolist() == [[1000.0, 2500.0, 4000.0], [7.0, 7.0, 7.0]]


def test_collate_feeds_the_layer():
    recordings = [(many_events(n, seed=n), n % 10) for n in (40, 25, 60)]
    addresses, times, lengths, _ = collate_events(recordings)
    embedding = torch.nn.Embedding(NUM_ADDRESSES, 4)
    layer = PhasedLSTM(4, 6, batch_first=True, period_range=(1.0, 10.0), backend="reference")
    layer = layer.eval()
    _, (h_n, _) = layer(embedding(addresses), times, lengths=lengths)
    # Each recording alone gives the same final state: the padding is never read.
    for row, n in enumerate(lengths.tolist()):
        alone = embedding(addresses[row : row + 1, :n])
        _, (h_alone, _) = layer(alone, times[row : row + 1, :n])
        torch.testing.assert_close(h_n[:, row], h_alone[:, 0])


def test_collate_errors():
    with pytest.raises(ValueError, match="time_unit must be one of 'ms', 'us', got 's'"):
        collate_events([(many_events(2), 0)], time_unit="s")
    with pytest.raises(ValueError, match="non-empty sequence"):
        collate_events([])
    with pytest.raises(TypeError, match=r"batch\[1\] must be an \(events, label\) pair"):
        collate_events([(many_events(2), 0), many_events(2)])
    with pytest.raises(TypeError, match=r"batch\[0\] events must be a NumPy structured array"):
        collate_events([(np.arange(3), 0)])


def test_dataloader_end_to_end(tmp_path):
    for digit in range(3):
        (tmp_path / "Train" / str(digit)).mkdir(parents=True)
        write_nmnist(tmp_path / "Train" / str(digit) / "00000.bin", many_events(20 + digit))
    dataset = NMNIST(tmp_path, transform=SubsampleEvents(1.0, seed=0))
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate_events))
    assert [b[2].tolist() for b in batches] == [[20, 21], [22]]
    assert [b[3].tolist() for b in batches] == [[0, 1], [2]]


def test_readme_event_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Event data (N-MNIST)", 1)[1].split("\n## ", 1)[0]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    root = tmp_path / "data" / "nmnist-sim"
    for split in ("Train", "Test"):
        for digit in range(10):
            (root / split / str(digit)).mkdir(parents=True)
            write_nmnist(root / split / str(digit) / "00000.bin", many_events(30, seed=digit))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README event example", "exec"), {})


def test_docstring_example_runs():
    import doctest

    import phased_lstm.data.events

    result = doctest.testmod(phased_lstm.data.events)
    assert result.attempted > 0 and result.failed == 0
