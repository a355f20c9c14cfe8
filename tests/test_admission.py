"""The admission decisions: room in the queue, and the concurrency integral."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rscore.sidecar.admission import ConcurrencyIntegral, queue_has_room
from rscore.sidecar.errors import STATUS_BY_CODE


@pytest.mark.parametrize(
    ("queued", "per_worker", "workers", "room"),
    [
        (0, 128, 2, True),
        (255, 128, 2, True),
        (256, 128, 2, False),
        (0, 0, 2, False),  # --max-queue 0: nothing waits
        (0, 4, 0, True),  # all workers restarting: still one worker's worth of queue
        (4, 4, 0, False),
        (9, 10, 1, True),
        (10, 10, 1, False),
    ],
    ids=[
        "empty", "one-short", "full", "no-queue", "no-workers-room", "no-workers-full",
        "single-room", "single-full",
    ],
)  # fmt: skip
def test_queue_has_room(queued: int, per_worker: int, workers: int, room: bool) -> None:
    assert queue_has_room(queued, per_worker, workers) is room


def test_concurrency_integral_is_exact_between_changes() -> None:
    # 0 requests for 1 s, 2 for 0.5 s, 1 for 2 s, 0 after: integral 1 + 2 = 3 request-seconds.
    integral = ConcurrencyIntegral(now=10.0)
    integral.change(11.0, +2)
    integral.change(11.5, -1)
    assert integral.total(12.5) == pytest.approx(2 * 0.5 + 1 * 1.0)
    integral.change(13.5, -1)
    assert integral.level == 0
    assert integral.total(13.5) == pytest.approx(3.0)
    assert integral.total(100.0) == pytest.approx(3.0)


def test_average_concurrency_is_the_rate_of_the_integral() -> None:
    integral = ConcurrencyIntegral(now=0.0)
    integral.change(0.0, +3)
    first = integral.total(5.0)
    integral.change(6.0, -2)
    second = integral.total(10.0)
    # Between the scrapes at 5 s and 10 s: 3 for 1 s, then 1 for 4 s = 7 / 5 s = 1.4.
    assert (second - first) / 5.0 == pytest.approx(1.4)


# The contract's table of error statuses (ARCHITECTURE.md, beside the repository), and
# the README's restatement of it: the code is checked against the documents, not
# against a copy of itself.
ARCHITECTURE = Path(__file__).resolve().parents[2] / "shared" / "ARCHITECTURE.md"
README = Path(__file__).resolve().parents[1] / "README.md"


def architecture_table(text: str) -> dict[str, int]:
    """`| 400 | `bad_request` / `schema_mismatch` | ... |` rows: code -> status."""
    table = {}
    for status, codes in re.findall(r"^\| (\d{3}) \| ((?:`\w+`(?: / )?)+) \|", text, re.M):
        for code in re.findall(r"`(\w+)`", codes):
            table[code] = int(status)
    return table


def readme_statuses(text: str) -> dict[str, int]:
    """ "... with the status of ARCHITECTURE.md's table (400 `bad_request`/..., ...)"."""
    paragraph = text[text.index("with the status of ARCHITECTURE.md's table") :]
    paragraph = paragraph[: paragraph.index("V2 routes")]
    table = {}
    for status, codes in re.findall(r"(\d{3})\s+((?:`\w+`/?)+)", paragraph):
        for code in re.findall(r"`(\w+)`", codes):
            table[code] = int(status)
    return table


@pytest.mark.skipif(not ARCHITECTURE.is_file(), reason=f"{ARCHITECTURE} is absent (a clone alone)")
def test_statuses_are_the_contracts_table() -> None:
    table = architecture_table(ARCHITECTURE.read_text())
    assert len(table) == 10, table  # every row read: 9 rows, one with two codes
    assert {code: STATUS_BY_CODE[code] for code in table} == table


def test_statuses_are_the_ones_the_readme_tells() -> None:
    table = readme_statuses(README.read_text())
    assert len(table) == 10, table  # each code it names, 401 aside
    assert {code: STATUS_BY_CODE.get(code) for code in table} == table
