"""The admission decisions: room in the queue, and the concurrency integral."""

from __future__ import annotations

import pytest

from sidecar.admission import ConcurrencyIntegral, queue_has_room
from sidecar.errors import STATUS_BY_CODE


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


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("bad_request", 400), ("schema_mismatch", 400), ("unauthorized", 401),
        ("too_large", 413), ("unsupported_media_type", 415), ("overloaded", 429),
        ("model_error", 500), ("worker_crashed", 502), ("unavailable", 503), ("timeout", 504),
    ],
)  # fmt: skip
def test_contract_status_codes(code: str, status: int) -> None:
    assert STATUS_BY_CODE[code] == status
