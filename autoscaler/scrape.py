"""A pod's `/metrics` page, reduced to what the policy needs.

`parse_pod_metrics` reads the Prometheus text format with prometheus_client's parser and
keeps the contract's names (ARCHITECTURE.md, "Metrics contract"). `average_concurrency`
turns two scrapes into the exact average concurrency between them: the rate of
`rscore_concurrency_seconds_total`. Pure: no HTTP here (the fetch lives in
`autoscaler.kube_io`), no clock reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "PodScrape",
    "ScrapeError",
    "average_concurrency",
    "metrics_url",
    "parse_pod_metrics",
]

CONCURRENCY_SECONDS = "rscore_concurrency_seconds"  # the parser drops `_total`
QUEUE_DEPTH = "rscore_queue_depth"
INFLIGHT = "rscore_inflight_requests"
WORKERS = "rscore_workers"


class ScrapeError(ValueError):
    """The page is not the metrics contract (unparsable, or a required name missing)."""


@dataclass(frozen=True)
class PodScrape:
    """One scrape of one pod, taken at `at` (the controller's monotonic seconds)."""

    at: float
    concurrency_seconds_total: float
    queue_depth: float
    inflight: float
    workers: int

    @property
    def instantaneous_concurrency(self) -> float:
        return self.queue_depth + self.inflight


def parse_pod_metrics(text: str, at: float) -> PodScrape:
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (
                    f"{CONCURRENCY_SECONDS}_total",
                    QUEUE_DEPTH,
                    INFLIGHT,
                    WORKERS,
                ):
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
    except ValueError as error:  # the parser's own complaint about the text
        raise ScrapeError(f"unparsable metrics page: {error}") from error
    missing = [
        name
        for name in (f"{CONCURRENCY_SECONDS}_total", QUEUE_DEPTH, INFLIGHT, WORKERS)
        if name not in values
    ]
    if missing:
        raise ScrapeError(f"metrics page lacks {', '.join(missing)}")
    # A pod reporting NaN, infinities or negative counts is a pod without usable data,
    # not a reason to stop scaling its neighbours.
    unusable = [f"{n} {v}" for n, v in values.items() if not math.isfinite(v) or v < 0]
    if unusable:
        raise ScrapeError(f"metrics page has unusable values: {', '.join(unusable)}")
    return PodScrape(
        at=at,
        concurrency_seconds_total=values[f"{CONCURRENCY_SECONDS}_total"],
        queue_depth=values[QUEUE_DEPTH],
        inflight=values[INFLIGHT],
        workers=int(values[WORKERS]),
    )


def average_concurrency(previous: PodScrape | None, current: PodScrape) -> float:
    """Average queued + in-flight requests since `previous`.

    Without an earlier scrape (a new pod, or a new leader), or when the counter went
    backwards (the sidecar restarted), the counter says nothing about the interval:
    fall back to the instantaneous gauges rather than report the pod as missing.
    """
    if previous is None:
        return current.instantaneous_concurrency
    elapsed = current.at - previous.at
    increase = current.concurrency_seconds_total - previous.concurrency_seconds_total
    if elapsed <= 0 or increase < 0:
        return current.instantaneous_concurrency
    return increase / elapsed


def metrics_url(pod_ip: str, port: int) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip  # an IPv6 pod address
    return f"http://{host}:{port}/metrics"
