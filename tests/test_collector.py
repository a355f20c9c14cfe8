"""Data collection: real files, a real writer thread, real failures of the file system."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from rscore.sidecar.collector import DataCollector

MODEL = "iris-rf"
PID = os.getpid()
WAIT_S = 10.0  # an upper bound for the writer to catch up, never a speed requirement

MakeCollector = Callable[..., DataCollector]


def at(iso: str) -> float:
    """Epoch seconds of an RFC 3339 UTC time."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(registry: CollectorRegistry, outcome: str) -> float | None:
    return registry.get_sample_value("rscore_collect_records_total", {"outcome": outcome})


def queue_depth(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("rscore_collect_queue_depth")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.01)


def wait_for(registry: CollectorRegistry, outcome: str, count: int) -> None:
    wait_until(lambda: records(registry, outcome) == count, f"{count} records {outcome}")


def data_files(root: Path) -> list[Path]:
    """Every data file, in folder order then seq order."""
    return sorted(root.rglob("*.jsonl"), key=lambda p: (p.parent, int(p.stem.rsplit("-", 1)[1])))


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n") or not data, f"{path} ends in a partial line"
    return [orjson.loads(line) for line in data.splitlines()]


def collected(root: Path) -> list[dict[str, Any]]:
    return [line for path in data_files(root) for line in read_lines(path)]


def collected_ids(root: Path) -> list[str]:
    return [line["request_id"] for line in collected(root)]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_collector(tmp_path: Path, registry: CollectorRegistry) -> Iterator[MakeCollector]:
    """Collectors on tmp_path and the test's registry; each is closed after the test."""
    made: list[DataCollector] = []

    def make(*, start: bool = True, **options: Any) -> DataCollector:
        options = {"model_name": MODEL, "sample_rate": 1.0, "registry": registry} | options
        collector = DataCollector(options.pop("directory", tmp_path), **options)
        made.append(collector)
        if start:
            collector.start()
        return collector

    yield make
    for collector in made:
        collector.close()


# -- arguments and metrics --------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_rate": -0.1}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": float("nan")}, "sample_rate"),
        ({"sample_rate": "0.1"}, "sample_rate"),
        ({"max_file_bytes": 0}, "max_file_bytes"),
        ({"max_file_bytes": -1}, "max_file_bytes"),
        ({"queue_size": 0}, "queue_size"),
        ({"queue_size": 2.5}, "queue_size"),
        ({"model_name": ""}, "model_name"),
        ({"model_name": "../escape"}, "model_name"),
        ({"model_name": "a/b"}, "model_name"),
    ],
)
def test_bad_arguments_are_clear_value_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    arguments = {"model_name": MODEL, "sample_rate": 0.1, "registry": CollectorRegistry()}
    with pytest.raises(ValueError, match=message):
        DataCollector(tmp_path, **(arguments | options))


def test_metrics_start_at_zero_on_the_injected_registry_only(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    make_collector(start=False)
    for outcome in ("written", "dropped_queue_full", "dropped_write_error"):
        assert records(registry, outcome) == 0
    assert records(registry, "dropped_unserialisable") == 0
    assert queue_depth(registry) == 0
    assert prometheus_client.REGISTRY.get_sample_value("rscore_collect_queue_depth") is None
    # A second collector on its own registry does not clash with the first.
    DataCollector(
        tmp_path / "other", model_name=MODEL, sample_rate=0.0, registry=CollectorRegistry()
    ).close()


# -- sampling -------------------------------------------------------------------------


def test_rate_zero_writes_nothing(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector(sample_rate=0.0, sample=lambda: 0.0)
    for i in range(50):
        collector.offer(f"r{i}", {"x": [i]}, [i])
    collector.close()
    assert records(registry, "written") == 0
    assert data_files(tmp_path) == []


def test_rate_one_writes_all(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector(sample_rate=1.0)  # the real random.random
    for i in range(200):
        collector.offer(f"r{i}", {"x": [i]}, [i])
    collector.close()
    assert records(registry, "written") == 200
    assert collected_ids(tmp_path) == [f"r{i}" for i in range(200)]


def test_partial_sampling_keeps_draws_below_the_rate(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    draws = itertools.cycle([0.05, 0.5, 0.0999, 0.1, 0.95, 0.0])  # 0.1 itself is not < 0.1
    collector = make_collector(sample_rate=0.1, sample=lambda: next(draws))
    for i in range(12):
        collector.offer(f"r{i}", {"x": [i]}, [i])
    collector.close()
    assert collected_ids(tmp_path) == ["r0", "r2", "r5", "r6", "r8", "r11"]
    assert records(registry, "written") == 6


# -- content and layout ---------------------------------------------------------------


def test_record_content_and_hour_folder(make_collector: MakeCollector, tmp_path: Path) -> None:
    collector = make_collector(clock=Clock(at("2026-11-26T13:45:12.345Z")))
    inputs = {"dataframe_records": [{"x1": 1.5, "f": "a", "n": None}, {"x1": -2, "f": "b"}]}
    outputs = {"predictions": [{"setosa": 0.9, "virginica": 0.1}, None]}
    collector.offer("req-1", inputs, outputs)
    collector.close()

    path = tmp_path / MODEL / "2026" / "11" / "26" / "13" / f"data-{PID}-0.jsonl"
    assert data_files(tmp_path) == [path]
    assert read_lines(path) == [
        {
            "time": "2026-11-26T13:45:12.345Z",
            "request_id": "req-1",
            "model": MODEL,
            "inputs": inputs,
            "outputs": outputs,
        }
    ]


def test_time_is_taken_when_offered_not_when_written(
    make_collector: MakeCollector, tmp_path: Path
) -> None:
    clock = Clock(at("2026-11-26T13:59:59.999Z"))
    collector = make_collector(start=False, clock=clock)
    collector.offer("late", 1, 2)
    clock.now = at("2026-11-26T15:00:00Z")  # the writer only starts (in close) now
    collector.close()
    [line] = collected(tmp_path)
    assert line["time"] == "2026-11-26T13:59:59.999Z"
    assert data_files(tmp_path)[0].parent == tmp_path / MODEL / "2026" / "11" / "26" / "13"


def test_an_existing_file_is_never_written_into(
    make_collector: MakeCollector, tmp_path: Path
) -> None:
    # A restarted container often has the same pid as the one before.
    folder = tmp_path / MODEL / "2026" / "11" / "26" / "13"
    folder.mkdir(parents=True)
    earlier = folder / f"data-{PID}-0.jsonl"
    earlier.write_bytes(b'{"earlier":true}\n')
    collector = make_collector(clock=Clock(at("2026-11-26T13:45:12.345Z")))
    collector.offer("now", 1, 2)
    collector.close()
    assert earlier.read_bytes() == b'{"earlier":true}\n'
    assert [line["request_id"] for line in read_lines(folder / f"data-{PID}-1.jsonl")] == ["now"]


# -- rotation -------------------------------------------------------------------------


def test_a_new_hour_goes_to_a_new_folder(make_collector: MakeCollector, tmp_path: Path) -> None:
    clock = Clock(at("2026-12-31T23:59:59.999Z"))
    collector = make_collector(start=False, clock=clock)
    collector.offer("old-year", 1, 1)
    clock.now = at("2027-01-01T00:00:00.000Z")
    collector.offer("new-year", 2, 2)
    collector.offer("new-year-2", 3, 3)
    collector.close()

    old = tmp_path / MODEL / "2026" / "12" / "31" / "23" / f"data-{PID}-0.jsonl"
    new = tmp_path / MODEL / "2027" / "01" / "01" / "00" / f"data-{PID}-0.jsonl"
    assert data_files(tmp_path) == [old, new]
    assert [line["request_id"] for line in read_lines(old)] == ["old-year"]
    assert [line["request_id"] for line in read_lines(new)] == ["new-year", "new-year-2"]


def line_bytes(request_id: str, inputs: Any) -> int:
    """The size of the line the collector writes for this record (the clock is fixed)."""
    record = {
        "time": "2026-11-26T13:45:12.345Z",
        "request_id": request_id,
        "model": MODEL,
        "inputs": inputs,
        "outputs": [0],
    }
    return len(orjson.dumps(record)) + 1


def test_size_rotation_across_batches_never_splits_a_record(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    limit = 3 * line_bytes("r00", {"x": "abc"}) + 10  # three lines fit, a fourth does not
    collector = make_collector(clock=Clock(at("2026-11-26T13:45:12.345Z")), max_file_bytes=limit)
    for i in range(10):  # one batch per record: the size carries over between batches
        collector.offer(f"r{i:02d}", {"x": "abc"}, [0])
        wait_for(registry, "written", i + 1)
    for i in range(10, 20):  # and then as one burst
        collector.offer(f"r{i:02d}", {"x": "abc"}, [0])
    collector.close()

    files = data_files(tmp_path)
    assert [path.name for path in files] == [f"data-{PID}-{seq}.jsonl" for seq in range(7)]
    assert all(path.stat().st_size <= limit for path in files)
    assert [len(read_lines(path)) for path in files] == [3, 3, 3, 3, 3, 3, 2]
    assert collected_ids(tmp_path) == [f"r{i:02d}" for i in range(20)]


def test_a_record_bigger_than_the_limit_gets_a_file_of_its_own(
    make_collector: MakeCollector, tmp_path: Path
) -> None:
    limit = 2 * line_bytes("s0", "abc") + 5
    collector = make_collector(
        start=False, clock=Clock(at("2026-11-26T13:45:12.345Z")), max_file_bytes=limit
    )
    for request_id, inputs in [("s0", "abc"), ("big", "x" * 10 * limit), ("s1", "abc")]:
        collector.offer(request_id, inputs, [0])
    collector.close()

    files = data_files(tmp_path)
    assert [[line["request_id"] for line in read_lines(path)] for path in files] == [
        ["s0"],
        ["big"],
        ["s1"],
    ]
    assert files[1].stat().st_size > limit
    assert files[0].stat().st_size <= limit
    assert files[2].stat().st_size <= limit


# -- never in the request's way ---------------------------------------------------------


def test_a_full_queue_drops_and_counts_without_blocking(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector(start=False, queue_size=3)  # nobody drains yet

    def offer_ten() -> None:
        for i in range(10):
            collector.offer(f"r{i}", {"x": i}, [i])

    offering = threading.Thread(target=offer_ten)
    offering.start()
    offering.join(WAIT_S)
    assert not offering.is_alive(), "offer() blocked on a full queue"
    assert records(registry, "dropped_queue_full") == 7
    assert queue_depth(registry) == 3

    collector.close()
    assert collected_ids(tmp_path) == ["r0", "r1", "r2"]
    assert records(registry, "written") == 3
    assert queue_depth(registry) == 0


def test_offer_never_raises(
    make_collector: MakeCollector,
    registry: CollectorRegistry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_sample() -> float:
        raise RuntimeError("no entropy today")

    caplog.set_level(logging.WARNING, logger="rscore.collector")
    collector = make_collector(sample=broken_sample)
    assert collector.offer("r1", 1, 1) is None
    assert "offer failed" in caplog.text

    working = make_collector(registry=CollectorRegistry(), directory=tmp_path / "w")
    working.close()
    working.offer("after-close", 1, 1)  # ignored, quietly
    assert data_files(tmp_path / "w") == []


@pytest.mark.parametrize(
    "inputs",
    [object(), {1: "a non-string key"}, {"s": {1, 2}}, {"n": 2**70}],
    ids=["object", "int-key", "set", "huge-int"],
)
def test_unserialisable_records_are_dropped_and_counted(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path, inputs: Any
) -> None:
    collector = make_collector()
    collector.offer("bad", inputs, [0])
    collector.offer("good", {"x": 1}, [0])
    collector.close()
    assert records(registry, "dropped_unserialisable") == 1
    assert records(registry, "written") == 1
    assert collected_ids(tmp_path) == ["good"]


def test_a_time_out_of_range_is_dropped_as_unserialisable(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    clock = Clock(1e20)  # a broken clock: no calendar date
    collector = make_collector(start=False, clock=clock)
    collector.offer("bad-time", 1, 1)
    clock.now = at("2026-11-26T13:45:12.345Z")
    collector.offer("good", 2, 2)
    collector.close()
    assert records(registry, "dropped_unserialisable") == 1
    assert collected_ids(tmp_path) == ["good"]


def test_write_errors_drop_count_warn_once_a_minute_and_the_writer_lives_on(
    make_collector: MakeCollector,
    registry: CollectorRegistry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rscore.collector")
    clock = Clock(at("2026-11-26T13:45:12.345Z"))
    blocker = tmp_path / MODEL  # a regular file where the model's folder must go: even
    blocker.write_text("not a folder")  # root cannot mkdir through it
    collector = make_collector(clock=clock)

    for i in range(3):  # three batches, three failures, within one minute
        collector.offer(f"lost{i}", {"x": i}, [i])
        wait_for(registry, "dropped_write_error", i + 1)
    assert len(caplog.records) == 1
    assert "cannot write" in caplog.records[0].getMessage()

    clock.now += 61  # a minute later the next failure is reported again
    collector.offer("lost3", {"x": 3}, [3])
    wait_for(registry, "dropped_write_error", 4)
    assert len(caplog.records) == 2
    assert "2 similar warnings suppressed" in caplog.records[1].getMessage()

    blocker.unlink()
    collector.offer("kept0", {"x": 0}, [0])
    collector.offer("kept1", {"x": 1}, [1])
    wait_for(registry, "written", 2)
    collector.close()
    assert collected_ids(tmp_path) == ["kept0", "kept1"]
    assert records(registry, "dropped_write_error") == 4


def test_a_deleted_folder_is_made_again(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector(clock=Clock(at("2026-11-26T13:45:12.345Z")))
    collector.offer("before", 1, 1)
    wait_for(registry, "written", 1)
    shutil.rmtree(tmp_path / MODEL)  # e.g. a clean-up job; the writer's open file is gone
    collector.offer("after", 2, 2)
    collector.close()
    assert collected_ids(tmp_path) == ["after"]
    assert records(registry, "written") == 2


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip(
            "mounting a tmpfs needs root and mount(8); the blocking-file test covers I/O errors"
        )
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
            "the blocking-file test covers I/O errors"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write until the file system says ENOSPC: whole pages, then the last bytes."""
    with path.open("wb", buffering=0) as filler:
        for chunk in (b"\0" * 4096, b"\0"):
            assert write_until_error(filler, chunk) == errno.ENOSPC


def write_until_error(filler: BinaryIO, chunk: bytes) -> int:
    try:
        while True:
            filler.write(chunk)
    except OSError as error:
        return error.errno


def test_a_full_disk_drops_records_until_there_is_room_again(
    make_collector: MakeCollector,
    registry: CollectorRegistry,
    tiny_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rscore.collector")
    filler = tiny_disk / "filler"
    fill(filler)
    collector = make_collector(directory=tiny_disk, clock=Clock(at("2026-11-26T13:45:12.345Z")))
    collector.offer("lost", {"x": "y" * 100}, [0])
    wait_for(registry, "dropped_write_error", 1)
    assert os.strerror(errno.ENOSPC) in caplog.text

    filler.unlink()
    collector.offer("kept", {"x": "y" * 100}, [0])
    wait_for(registry, "written", 1)
    collector.close()
    assert collected_ids(tiny_disk / MODEL) == ["kept"]  # and no torn line from "lost"


# -- close ------------------------------------------------------------------------------


def test_close_writes_everything_queued_before_returning(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector()
    for i in range(2000):
        collector.offer(f"r{i}", {"row": i, "f": "abc"}, [i * 0.5])
    collector.close()
    assert records(registry, "written") == 2000
    assert queue_depth(registry) == 0
    assert collected_ids(tmp_path) == [f"r{i}" for i in range(2000)]


def test_close_without_start_still_writes_what_was_queued(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector(start=False)
    for i in range(5):
        collector.offer(f"r{i}", i, i)
    collector.close()
    collector.close()  # twice is harmless
    assert collected_ids(tmp_path) == [f"r{i}" for i in range(5)]
    with pytest.raises(RuntimeError, match="closed"):
        collector.start()
