"""The sidecar's Prometheus metrics, exactly the contract's names (ARCHITECTURE.md).

Counters and histograms are updated per request; values that are state (queue depth,
in flight, workers, the concurrency integral) are read at scrape time by a collector,
so the hot path never touches them. Every metric lives on the registry passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from r_scorer.pool import WorkerPool
from sidecar.admission import Dispatcher

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class SidecarMetrics:
    """Per-request metrics; `watch()` adds the scrape-time state of a dispatcher."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "rscore_requests", "Finished requests by status code.", ["code"], registry=registry
        )
        self.request_duration = Histogram(
            "rscore_request_duration_seconds",
            "Arrival to response, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.scoring_duration = Histogram(
            "rscore_scoring_duration_seconds",
            "Time inside R per call, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "rscore_batch_rows", "Rows per R call.", buckets=ROW_BUCKETS, registry=registry
        )
        self.worker_restarts = Counter(
            "rscore_worker_restarts", "R workers restarted.", registry=registry
        )
        self._requests_by_status: dict[int, Counter] = {}

    def count_request(self, status: int, seconds: float) -> None:
        """One finished scoring request (labelled counter children cached by status)."""
        counter = self._requests_by_status.get(status)
        if counter is None:
            counter = self._requests_by_status[status] = self.requests.labels(str(status))
        counter.inc()
        self.request_duration.observe(seconds)

    def watch(
        self,
        dispatcher: Dispatcher,
        pool: WorkerPool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry.register(_StateCollector(dispatcher, pool, clock))


class _StateCollector(Collector):
    def __init__(
        self, dispatcher: Dispatcher, pool: WorkerPool, clock: Callable[[], float]
    ) -> None:
        self._dispatcher = dispatcher
        self._pool = pool
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        dispatcher = self._dispatcher
        yield GaugeMetricFamily(
            "rscore_queue_depth", "Requests waiting for a worker.", value=dispatcher.queue_depth
        )
        yield GaugeMetricFamily(
            "rscore_inflight_requests", "Requests being scored.", value=dispatcher.inflight
        )
        yield CounterMetricFamily(
            "rscore_concurrency_seconds",
            "Integral over time of queued + in-flight requests; its rate is the average "
            "concurrency.",
            value=dispatcher.concurrency.total(self._clock()),
        )
        yield GaugeMetricFamily(
            "rscore_workers", "R worker slots ready.", value=len(self._pool.workers)
        )

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(())  # values are read at scrape time only
