"""The metrics contract's exposition, recorded without prometheus_client on the hot path.

SidecarMetrics records per-request numbers into plain ints and floats and builds the
metric families at scrape time; what a scrape shows must be exactly what
prometheus_client's own Counter and Histograms would show for the same events.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rscore.sidecar.metrics import LATENCY_BUCKETS, ROW_BUCKETS, SidecarMetrics

REQUESTS = [(200, 0.0005), (200, 0.0012), (500, 0.3), (429, 0.0), (200, 31.0), (200, 1.0)]
R_CALLS = [(1, 0.0004), (3, 0.002), (4096, 5.0), (5000, 0.0005), (0, 0.0)]


def _prometheus_client_exposition() -> str:
    registry = CollectorRegistry()
    requests = Counter(
        "rscore_requests", "Finished requests by status code.", ["code"], registry=registry
    )
    request_duration = Histogram(
        "rscore_request_duration_seconds",
        "Arrival to response, in seconds.",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    scoring_duration = Histogram(
        "rscore_scoring_duration_seconds",
        "Time inside R per call, in seconds.",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    batch_rows = Histogram(
        "rscore_batch_rows", "Rows per R call.", buckets=ROW_BUCKETS, registry=registry
    )
    Counter("rscore_worker_restarts", "R workers restarted.", registry=registry)
    for status, seconds in REQUESTS:
        requests.labels(str(status)).inc()
        request_duration.observe(seconds)
    for rows, seconds in R_CALLS:
        batch_rows.observe(rows)
        scoring_duration.observe(seconds)
    return generate_latest(registry).decode()


def _without_creation_times(exposition: str) -> str:
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", exposition)


def test_exposition_is_prometheus_clients_own() -> None:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    for status, seconds in REQUESTS:
        metrics.count_request(status, seconds)
    for rows, seconds in R_CALLS:
        metrics.r_call(rows, seconds)
    ours = generate_latest(registry).decode()
    assert _without_creation_times(ours) == _without_creation_times(_prometheus_client_exposition())
    types = {
        family.name: family.type
        for family in text_string_to_metric_families(ours)
        if not family.name.endswith("_created")  # the text format's creation-time gauges
    }
    assert types == {
        "rscore_requests": "counter",
        "rscore_request_duration_seconds": "histogram",
        "rscore_scoring_duration_seconds": "histogram",
        "rscore_batch_rows": "histogram",
        "rscore_worker_restarts": "counter",
    }


def test_a_second_metric_of_a_contract_name_is_refused() -> None:
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    with pytest.raises(ValueError, match="rscore_batch_rows"):
        Histogram("rscore_batch_rows", "again", registry=registry)
