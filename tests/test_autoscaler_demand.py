"""rscore.autoscaler.scrape.pod_demand and DemandTracker: from two pages to a pod's demand.

The pages come from the real sidecar metrics code (SidecarMetrics over a real Dispatcher,
rendered by prometheus_client), and from hand-made PodScrapes for the edge cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rscore.autoscaler.batch_cost import CallCounts
from rscore.autoscaler.scrape import DemandTracker, PodScrape, parse_pod_metrics, pod_demand
from rscore.r_scorer.pool import ModelInfo, WorkerPool
from rscore.r_scorer.prototype import Prototype
from rscore.sidecar.admission import Dispatcher
from rscore.sidecar.metrics import SidecarMetrics


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_real_sidecar_page_gives_arrivals_and_service_time(tmp_path: Path) -> None:
    """In 10 s: 40 answered (R calls of 20 ms each, one a batch of 2), 5 refused with 429,
    2 timed out, 3 bad requests (not demand), and 4 still queued: 51 arrivals that wanted
    a worker -> 5.1/s; 0.78 s in R over 40 answers -> 19.5 ms each."""
    clock = Clock(100.0)
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    dispatcher = Dispatcher(max_queue_per_worker=8, clock=clock)
    metrics.watch(dispatcher, WorkerPool(tmp_path / "workers.sock"), clock)
    first = parse_pod_metrics(generate_latest(registry).decode(), at=clock.now)

    for _ in range(38):
        metrics.r_call(1, 0.02)
        metrics.count_request(200, 0.03)
    metrics.r_call(2, 0.02)  # one merged call answers two requests
    metrics.count_request(200, 0.03)
    metrics.count_request(200, 0.03)
    for status, times in ((429, 5), (504, 2), (400, 3), (401, 1)):
        for _ in range(times):
            metrics.count_request(status, 0.001)
    queued = [dispatcher.submit(None, deadline=1e9) for _ in range(4)]  # no worker: wait
    clock.now = 110.0
    second = parse_pod_metrics(generate_latest(registry).decode(), at=clock.now)

    demand = pod_demand(first, second)
    assert demand.arrival_rate == pytest.approx(5.1)
    assert demand.service_s == pytest.approx(0.78 / 40)
    assert demand.queue_depth == 4
    assert demand.concurrency == pytest.approx(4.0)  # queued since t = 100
    # 39 R calls of 40 rows for 40 answers; no model loaded yet: not batchable (0)
    assert demand.calls == CallCounts(39.0, 40.0, pytest.approx(0.78), 40.0, 0)
    for job in queued:
        job.future.cancel()


def page(at: float, done: float, answered: float, r_s: float, queue: float = 0.0) -> PodScrape:
    return PodScrape(at, 0.0, queue, 0.0, 2, done, answered, r_s)


@pytest.mark.parametrize(
    ("previous", "current", "last", "rate", "service"),
    [
        # 100 finished + 20 more queued over 10 s: 12/s; 2 s in R / 100 answers
        (page(0, 0, 0, 0), page(10, 100, 100, 2.0, queue=20), None, 12.0, 0.02),
        # a queue that lingers adds no arrivals: 50 finished, queue 20 -> 20
        (page(0, 0, 0, 0, 20), page(10, 50, 50, 1.0, 20), None, 5.0, 0.02),
        # the queue drained: finished 80, inside fell by 20 -> 60 arrivals
        (page(0, 0, 0, 0, 20), page(10, 80, 80, 1.6, 0), None, 6.0, 0.02),
        # nothing answered in the interval: the last service time stands
        (page(0, 10, 10, 1.0), page(10, 10, 10, 1.0, queue=5), 0.3, 0.5, 0.3),
        (page(0, 10, 10, 1.0), page(10, 10, 10, 1.0), None, 0.0, None),
        # a counter went backwards (the sidecar restarted): no rate, no service time
        (page(0, 500, 500, 9.0), page(10, 3, 3, 0.1), 0.2, None, None),
        # a first scrape says nothing about an interval
        (None, page(10, 100, 100, 2.0), 0.2, None, None),
        # an old sidecar without the names
        (PodScrape(0, 0, 0, 0, 2), PodScrape(10, 5, 0, 0, 2), None, None, None),
    ],
    ids=[
        "arrivals-include-the-new-queue",
        "lingering-queue",
        "draining-queue",
        "no-answers-keeps-last",
        "no-answers-no-last",
        "counter-reset",
        "first-scrape",
        "old-page",
    ],
)
def test_pod_demand(previous, current, last, rate, service) -> None:
    demand = pod_demand(previous, current, last)
    assert demand.arrival_rate == (None if rate is None else pytest.approx(rate))
    assert demand.service_s == (None if service is None else pytest.approx(service))
    assert demand.calls is None  # pages without the batch counters


def test_a_batchable_pods_page_gives_its_calls_and_rows(tmp_path: Path) -> None:
    """A loaded batchable model: the page says how many rows a call may merge, and the
    interval's calls, rows and seconds in R are what the batch cost fit takes."""
    clock = Clock(0.0)
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    dispatcher = Dispatcher(max_queue_per_worker=8, max_batch_rows=64, clock=clock)
    pool = WorkerPool(tmp_path / "workers.sock")
    metrics.watch(dispatcher, pool, clock)
    pool.model = _model(batchable=True)
    first = parse_pod_metrics(generate_latest(registry).decode(), at=0.0)
    assert first.max_batch_rows == 64
    for rows, seconds in ((1, 0.084), (5, 0.1), (10, 0.12)):
        metrics.r_call(rows, seconds)
        for _ in range(rows):
            metrics.count_request(200, 0.2)
    second = parse_pod_metrics(generate_latest(registry).decode(), at=10.0)
    calls = pod_demand(first, second).calls
    assert calls == CallCounts(3.0, 16.0, pytest.approx(0.304), 16.0, 64)
    pool.model = _model(batchable=False)
    assert parse_pod_metrics(generate_latest(registry).decode(), at=11.0).max_batch_rows == 0


def _model(*, batchable: bool) -> ModelInfo:
    return ModelInfo(name="m", version="1", batchable=batchable, packages=(), prototype=Prototype())


def test_the_tracker_keeps_a_failed_pods_last_page_and_forgets_pods_that_left() -> None:
    tracker = DemandTracker()
    first = tracker.update({"a": page(0, 0, 0, 0), "b": page(0, 0, 0, 0)})
    assert first["a"] is not None
    assert first["a"].arrival_rate is None
    second = tracker.update({"a": page(10, 100, 100, 2.0), "b": None})
    assert second["a"].arrival_rate == pytest.approx(10.0)
    assert second["b"] is None
    # b's next good page is compared with its last good one, 20 s before
    third = tracker.update({"a": page(20, 100, 100, 2.0), "b": page(20, 40, 40, 4.0)})
    assert third["b"].arrival_rate == pytest.approx(2.0)
    assert third["b"].service_s == pytest.approx(0.1)
    # a answered nothing in its interval: its own last service time stands
    assert third["a"].service_s == pytest.approx(0.02)
    tracker.update({"b": page(30, 40, 40, 4.0)})  # a left
    assert set(tracker.scrapes) == {"b"}
    assert set(tracker.service_s) == {"b"}
