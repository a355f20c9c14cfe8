"""The activator's Prometheus metrics, on a registry of its own (served on --metrics-port).

`rscore_activator_held_requests` is the contract with the autoscaler: requests waiting
here for a ready scoring pod, which the controller adds to the pods' concurrency as
unrouted demand (it is what scales a Deployment from zero). Labels are bounded: `code`
is an HTTP status. Never imported by the autoscaler (it reads these by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["HELD_REQUESTS", "ActivatorMetrics"]

HELD_REQUESTS = "rscore_activator_held_requests"


@dataclass
class ActivatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.held = Gauge(HELD_REQUESTS, "Requests held now, waiting for a ready pod", registry=r)
        self.requests = Counter(
            "rscore_activator_requests", "Answered requests by status", ["code"], registry=r
        )
        self.hold_duration = Histogram(
            "rscore_activator_hold_duration_seconds",
            "How long held requests waited for a ready pod (held requests only)",
            # a pod start: image pull and model load take seconds to minutes
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        self.upstream_ready = Gauge(
            "rscore_activator_upstream_ready",
            "1 while the model's Service is believed to have a ready pod",
            registry=r,
        )
        self.upstream_ready.set(1)
        self._codes: dict[int, Counter] = {}

    def count(self, status: int) -> None:
        child = self._codes.get(status)
        if child is None:  # labels() costs a lock and a dict lookup: once per status
            child = self._codes[status] = self.requests.labels(str(status))
        child.inc()
