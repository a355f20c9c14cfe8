"""Data collection keeps what clients sent private and bounded (issue 13, item 9).

Files 0600 and the folders it makes 0700 whatever the umask; a record over
`max_record_bytes` becomes a marker line; all files together stay under `max_bytes`,
the oldest hours deleted first. The retention decision is a table; the rest runs on
real files with the real writer thread.
"""

# The fixtures make_collector and registry come from test_collector (F811: used by name).
# ruff: noqa: F811

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_collector import (
    MODEL,
    Clock,
    MakeCollector,
    at,
    collected,
    collected_ids,
    data_files,
    make_collector,  # noqa: F401  (a fixture)
    records,
    registry,  # noqa: F401  (a fixture)
    wait_for,
)

from rscore.sidecar.collector import (
    FILE_MODE,
    FOLDER_MODE,
    CollectedFile,
    files_to_delete,
    scan_collected,
)

# ------------------------------------------------------ 1. the retention decision


def file(hour: str, size: int, mtime_ns: int = 0, name: str = "data-1-0.jsonl") -> CollectedFile:
    return CollectedFile(hour, mtime_ns, name, size)


H1, H2, H3 = "2026/11/26/10", "2026/11/26/11", "2026/11/27/00"
OLD, MID, NEW = file(H1, 400), file(H2, 300), file(H3, 200)


@pytest.mark.parametrize(
    ("files", "max_bytes", "incoming", "keep", "expected"),
    [
        pytest.param([], 1000, 10, None, [], id="nothing-on-disk"),
        pytest.param([OLD, MID, NEW], 1000, 100, None, [], id="fits-exactly"),
        pytest.param([OLD, MID, NEW], 1000, 0, None, [], id="fits-nothing-incoming"),
        # 900 + 101 > 1000: delete down to 900 (LOW_WATER) - 101 = 799 -> the oldest goes.
        pytest.param([OLD, MID, NEW], 1000, 101, None, [OLD], id="one-over-drops-oldest"),
        pytest.param([NEW, OLD, MID], 1000, 101, None, [OLD], id="order-of-listing-irrelevant"),
        # 900 + 500 > 1000: down to 400: OLD (500 left), MID (200 left).
        pytest.param([OLD, MID, NEW], 1000, 500, None, [OLD, MID], id="drops-until-low-water"),
        pytest.param([OLD, MID, NEW], 1000, 950, None, [OLD, MID, NEW], id="drops-everything"),
        pytest.param(
            [OLD, MID, NEW], 1000, 950, f"{H3}/data-1-0.jsonl", [OLD, MID], id="keeps-open-file"
        ),
        pytest.param(
            [OLD, MID, NEW], 1000, 101, f"{H1}/data-1-0.jsonl", [MID], id="skips-open-oldest"
        ),
        # Same hour: the older modification time goes first, whatever the name.
        pytest.param(
            [file(H2, 600, 20, "data-1-0.jsonl"), file(H2, 600, 10, "data-9-9.jsonl")],
            1000,
            0,
            None,
            [file(H2, 600, 10, "data-9-9.jsonl")],
            id="same-hour-by-mtime",
        ),
        # Hour folders order by name: 2026/11/27/00 is younger than 2026/11/26/23.
        pytest.param(
            [file("2026/11/27/00", 600), file("2026/11/26/23", 600, mtime_ns=99)],
            1000,
            0,
            None,
            [file("2026/11/26/23", 600, mtime_ns=99)],
            id="hour-before-mtime",
        ),
    ],
)
def test_files_to_delete(
    files: list[CollectedFile],
    max_bytes: int,
    incoming: int,
    keep: str | None,
    expected: list[CollectedFile],
) -> None:
    assert files_to_delete(files, max_bytes=max_bytes, incoming=incoming, keep=keep) == expected


# ----------------------------------------------------------- 2. modes, any umask


@pytest.fixture(params=[0o022, 0o000, 0o277], ids=["umask-022", "umask-000", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask while the test runs (the writer thread shares it)."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_files_are_0600_and_made_folders_0700_whatever_the_umask(
    make_collector: MakeCollector,
    registry: CollectorRegistry,
    tmp_path: Path,
    umask: int,
) -> None:
    root = tmp_path / "collect"  # made by the collector too
    collector = make_collector(directory=root, clock=Clock(at("2026-11-26T13:45:12.345Z")))
    collector.offer("r0", {"x": 1}, [1])
    wait_for(registry, "written", 1)
    collector.close()
    (path,) = data_files(root)
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o600
    folder = path.parent
    made = []
    while folder != tmp_path:
        made.append(folder.relative_to(tmp_path).as_posix())
        assert stat.S_IMODE(folder.stat().st_mode) == FOLDER_MODE == 0o700, folder
        folder = folder.parent
    assert made == [
        f"collect/{MODEL}/2026/11/26/13",
        f"collect/{MODEL}/2026/11/26",
        f"collect/{MODEL}/2026/11",
        f"collect/{MODEL}/2026",
        f"collect/{MODEL}",
        "collect",
    ]


def test_an_existing_collect_folder_keeps_its_mode(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """The operator's own folder is theirs; what is made under it is private."""
    tmp_path.chmod(0o755)
    collector = make_collector(clock=Clock(at("2026-11-26T13:45:12.345Z")))
    collector.offer("r0", 1, 1)
    collector.close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / MODEL).stat().st_mode) == 0o700


# ---------------------------------------------------------- 3. the per-record cap


def test_a_record_over_the_cap_is_written_as_a_marker(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    collector = make_collector(max_record_bytes=500, clock=Clock(at("2026-11-26T13:45:12.345Z")))
    collector.offer("small", {"x": "y" * 100}, [1])
    collector.offer("big", {"x": "y" * 10_000}, [2])
    collector.offer("after", {"x": 3}, [3])
    collector.close()
    small, big, after = collected(tmp_path)
    assert (small["request_id"], small["inputs"]) == ("small", {"x": "y" * 100})
    assert big == {
        "time": "2026-11-26T13:45:12.345Z",
        "request_id": "big",
        "model": MODEL,
        "dropped": "too_large",
        "record_bytes": big["record_bytes"],
        "max_record_bytes": 500,
    }
    assert big["record_bytes"] > 10_000
    assert after["request_id"] == "after"
    assert records(registry, "written") == 2
    assert records(registry, "dropped_too_large") == 1


# ---------------------------------------------------------- 4. the total cap

LINE = 200  # bytes of each record line in these tests, give or take the digits


def offer_hours(collector_: object, clock: Clock, hours: int, per_hour: int) -> list[str]:
    ids = []
    for hour in range(hours):
        for i in range(per_hour):
            request_id = f"h{hour:02d}-r{i:02d}"
            collector_.offer(request_id, {"x": "y" * 100}, [i])  # type: ignore[attr-defined]
            ids.append(request_id)
        clock.now += 3600
    return ids


def disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*.jsonl"))


def test_the_total_stays_under_the_cap_the_oldest_hours_going_first(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    max_bytes = 20 * LINE
    clock = Clock(at("2026-11-26T10:00:00.000Z"))
    collector = make_collector(max_bytes=max_bytes, clock=clock)
    ids: list[str] = []
    for _ in range(12):  # twelve hours of five records, one hour at a time
        ids += offer_hours(collector, clock, hours=1, per_hour=5)
        wait_for(registry, "written", len(ids))
        assert disk_bytes(tmp_path) <= max_bytes  # at every point, not just at the end
    collector.close()

    kept = collected_ids(tmp_path)
    assert kept == ids[-len(kept) :]  # the newest records, in order: a suffix
    assert len(kept) >= 10  # and the cap is used, not emptied
    hours = sorted(
        path.relative_to(tmp_path / MODEL).parent.as_posix() for path in data_files(tmp_path)
    )
    assert hours[-1] == "2026/11/26/21"
    assert not (tmp_path / MODEL / "2026/11/26/10").exists()  # emptied hour folders go
    deleted = registry.get_sample_value("rscore_collect_deleted_files_total")
    assert deleted is not None
    assert deleted > 0
    line = disk_bytes(tmp_path) // len(kept)  # every line is as long as every other
    deleted_bytes = registry.get_sample_value("rscore_collect_deleted_bytes_total")
    assert deleted_bytes == line * len(ids) - disk_bytes(tmp_path)
    assert registry.get_sample_value("rscore_collect_bytes") == disk_bytes(tmp_path)
    assert records(registry, "dropped_over_cap") == 0


def test_files_from_an_earlier_run_count_and_go_first(
    make_collector: MakeCollector, registry: CollectorRegistry, tmp_path: Path
) -> None:
    old_hour = tmp_path / MODEL / "2026/11/20/08"
    old_hour.mkdir(parents=True)
    (old_hour / "data-7-0.jsonl").write_bytes(b"x" * 3000)
    unrelated = tmp_path / MODEL / "notes.txt"
    unrelated.write_text("not collected data: never counted, never deleted")
    clock = Clock(at("2026-11-26T10:00:00.000Z"))
    collector = make_collector(max_bytes=4000, clock=clock)
    assert [f.size for f in scan_collected(tmp_path / MODEL)] == [3000]
    ids = offer_hours(collector, clock, hours=1, per_hour=8)  # ~1600 bytes: over 4000
    collector.close()
    assert not old_hour.exists()
    assert not (tmp_path / MODEL / "2026").joinpath("11/20").exists()
    assert unrelated.exists()
    assert collected_ids(tmp_path) == ids
    assert registry.get_sample_value("rscore_collect_deleted_bytes_total") == 3000


def test_the_cli_flags_reach_the_collector_config() -> None:
    from rscore.cli.main import _sidecar_config, cli

    command = cli.commands["sidecar"]
    flags = ["--collect-max-bytes", "12345", "--collect-max-record-bytes", "678"]
    with command.make_context("sidecar", flags) as context:
        config = _sidecar_config(context.params)
    assert (config.collect_max_bytes, config.collect_max_record_bytes) == (12345, 678)
    with command.make_context("sidecar", []) as context:
        config = _sidecar_config(context.params)
    assert (config.collect_max_bytes, config.collect_max_record_bytes) == (1 << 30, 1 << 20)


@pytest.mark.parametrize("name", ["max_bytes", "max_record_bytes"])
@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_the_caps_must_be_positive_integers(tmp_path: Path, name: str, value: object) -> None:
    from rscore.sidecar.collector import DataCollector

    with pytest.raises(ValueError, match=name):
        DataCollector(
            tmp_path,
            model_name=MODEL,
            sample_rate=1.0,
            registry=CollectorRegistry(),
            **{name: value},  # type: ignore[arg-type]
        )
