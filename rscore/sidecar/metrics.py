"""The sidecar's Prometheus metrics, exactly the contract's names (ARCHITECTURE.md).

Per-request numbers (requests by status, request and scoring durations, rows per R
call) are recorded into plain ints and floats on the event loop's thread and turned into
metric families only at scrape time: a prometheus_client Counter or Histogram takes a
lock and runs a bucket loop in Python on every update, four times per request. The
exposition (names, types, buckets, `_created`) is the one prometheus_client gives for
the same metrics. Values that are state (queue depth, in flight, workers, the
concurrency integral) are read at scrape time too, so the hot path never touches them.
The workers' memory (`rscore_worker_pss_bytes`, `rscore_worker_private_bytes` by slot)
is what the scorer's supervisor last measured and wrote beside the workers' socket
(`rscore.r_scorer.memory`): in a pod this container cannot see the workers' /proc.
Every metric lives on the registry passed in; scrapes run on the same event loop.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from rscore.r_scorer.memory import MEMORY_NAME, WorkerMemory, read_memory_file
from rscore.r_scorer.pool import WorkerPool
from rscore.r_scorer.socket_files import COLD_START_NAME, read_cold_start
from rscore.sidecar.admission import Dispatcher

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def _created_series() -> bool:
    """Whether prometheus_client shows `_created` samples (on unless disabled with
    PROMETHEUS_DISABLE_CREATED_SERIES or disable_created_metrics()): ours follow it."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


class PlainHistogram:
    """A histogram's numbers without locks: a count per bucket and a sum."""

    __slots__ = ("bounds", "counts", "created", "documentation", "name", "total")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = (*(float(bound) for bound in buckets), math.inf)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value, as prometheus_client's Histogram.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), float(cumulative)))
        family.add_metric([], buckets, self.total)
        if _created_series():
            family.add_sample(f"{self.name}_created", {}, self.created)
        return family


class SidecarMetrics:
    """Per-request metrics; `watch()` adds the scrape-time state of a dispatcher."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests_by_status: dict[int, int] = {}
        self._requests_created: dict[int, float] = {}
        self.request_duration = PlainHistogram(
            "rscore_request_duration_seconds",
            "Arrival to response, in seconds.",
            LATENCY_BUCKETS,
        )
        self.scoring_duration = PlainHistogram(
            "rscore_scoring_duration_seconds",
            "Time inside R per call, in seconds.",
            LATENCY_BUCKETS,
        )
        self.batch_rows = PlainHistogram("rscore_batch_rows", "Rows per R call.", ROW_BUCKETS)
        registry.register(_RequestCollector(self))
        self.worker_restarts = Counter(
            "rscore_worker_restarts", "R workers restarted.", registry=registry
        )

    def count_request(self, status: int, seconds: float) -> None:
        """One finished scoring request."""
        count = self.requests_by_status.get(status)
        if count is None:
            self._requests_created[status] = time.time()
            count = 0
        self.requests_by_status[status] = count + 1
        self.request_duration.observe(seconds)

    def r_call(self, rows: int, r_seconds: float) -> None:
        """One R call that answered: its rows and its time inside R."""
        self.batch_rows.observe(rows)
        self.scoring_duration.observe(r_seconds)

    def requests_family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "rscore_requests", "Finished requests by status code.", labels=["code"]
        )
        created = self._requests_created if _created_series() else {}
        for status, count in list(self.requests_by_status.items()):
            family.add_metric([str(status)], float(count), created=created.get(status))
        return family

    def watch(
        self,
        dispatcher: Dispatcher,
        pool: WorkerPool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry.register(_StateCollector(dispatcher, pool, clock))


class _RequestCollector(Collector):
    """The per-request numbers of a SidecarMetrics, as families, at scrape time."""

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        yield metrics.requests_family()
        yield metrics.request_duration.family()
        yield metrics.scoring_duration.family()
        yield metrics.batch_rows.family()

    def describe(self) -> Iterator[Metric]:
        # The names only, so that the registry refuses a second metric of the same name.
        metrics = self._metrics
        yield CounterMetricFamily("rscore_requests", "", labels=["code"])
        for histogram in (metrics.request_duration, metrics.scoring_duration, metrics.batch_rows):
            yield HistogramMetricFamily(histogram.name, "")


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
        model = self._pool.model
        batchable = model is not None and model.batchable
        yield GaugeMetricFamily(
            "rscore_batch_max_rows",
            "Rows one R call may merge from waiting requests (0: the model is not batchable "
            "or not loaded yet); the autoscaler sizes batchable models for the batches it "
            "allows.",
            value=dispatcher.max_batch_rows if batchable else 0,
        )
        yield from self._memory_families()
        yield self._cold_start_family()

    def _cold_start_family(self) -> GaugeMetricFamily:
        """The scorer's cold start by phase, as it wrote it beside the socket (no sample
        until it has: the file appears once every worker is ready)."""
        cold_start = GaugeMetricFamily(
            "rscore_scorer_cold_start_seconds",
            "The scorer's cold start, by phase: r_start, packages and model are the "
            "slowest worker's; ready is from the scorer's start until every worker could "
            "score (what the simulator's pod start-up model needs from a real pod).",
            labels=["phase"],
        )
        phases = read_cold_start(self._pool.socket_path.parent / COLD_START_NAME)
        for phase, seconds in phases.items():
            cold_start.add_metric([phase.removesuffix("_s")], seconds)
        return cold_start

    def _memory_families(self) -> Iterator[GaugeMetricFamily]:
        """Each connected worker's memory as last measured (an entry whose pid is no
        longer the slot's worker is stale and left out), and the zygote's if forked."""
        measured = read_memory_file(self._pool.socket_path.parent / MEMORY_NAME)
        live = {(link.slot, link.pid) for link in self._pool.workers}
        shown: list[tuple[str, WorkerMemory]] = []
        for memory in measured:
            if memory.slot < 0:
                if live:  # the zygote the live workers were forked from
                    shown.append(("zygote", memory))
            elif (memory.slot, memory.pid) in live:
                shown.append((str(memory.slot), memory))
        pss = GaugeMetricFamily(
            "rscore_worker_pss_bytes",
            'Proportional set size of each R worker (slot; "zygote" is the parent forked '
            "workers share): shared pages divided among their sharers, so the sum is what "
            "the workers cost together.",
            labels=["slot"],
        )
        private = GaugeMetricFamily(
            "rscore_worker_private_bytes",
            "Private bytes of each R worker (slot): the pages no other process maps, what "
            "one more worker adds.",
            labels=["slot"],
        )
        for label, memory in shown:
            pss.add_metric([label], float(memory.pss_bytes))
            private.add_metric([label], float(memory.private_bytes))
        yield pss
        yield private

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(())  # values are read at scrape time only
