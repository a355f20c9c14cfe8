"""The controller's own Prometheus metrics, on a registry of its own.

Served on `--metrics-port` next to `/healthz`. Labels are bounded: one series per
ScoringAutoscaler, per API operation, per status class. Never used by the sidecar.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["TICK_BUCKETS", "ControllerMetrics"]

# Fine enough that a tick's p50 and p99 can be read from the histogram (bench.controller).
TICK_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
TICK_BUCKETS += (0.4, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 7.5, 10)


@dataclass
class ControllerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.is_leader = Gauge(
            "rscore_autoscaler_leader", "1 while this controller holds the Lease", registry=r
        )
        self.ticks = Counter("rscore_autoscaler_ticks", "Control loop ticks run", registry=r)
        self.tick_duration = Histogram(
            "rscore_autoscaler_tick_duration_seconds",
            "Time to observe, decide and act on every ScoringAutoscaler once (a tick waits "
            "for its reconciles at most 0.8 of the interval)",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.tick_overruns = Counter(
            "rscore_autoscaler_tick_overruns",
            "Ticks skipped because the tick before ran past their start (never queued)",
            registry=r,
        )
        self.reconcile_timeouts = Counter(
            "rscore_autoscaler_reconcile_timeouts",
            "Reconciles cancelled at their own time bound (--reconcile-timeout-s)",
            ["namespace", "name"],
            registry=r,
        )
        self.scrapes = Counter(
            "rscore_autoscaler_pod_scrapes", "Pod /metrics scrapes attempted (GETs)", registry=r
        )
        self.stream_failures = Counter(
            "rscore_autoscaler_stream_failures",
            "Pod metric streams that broke or did not open, by cause (then read by GET)",
            ["cause"],
            registry=r,
        )
        self.live_streams = Gauge(
            "rscore_autoscaler_live_streams",
            "Pod metric streams open and delivering readings",
            registry=r,
        )
        self.stream_readings = Counter(
            "rscore_autoscaler_stream_readings",
            "Pod readings taken from their /metrics/stream instead of a GET",
            registry=r,
        )
        self.scale_reads = Counter(
            "rscore_autoscaler_scale_reads",
            "Reads of a target's /scale (a tick reads it only when its pods disagree with "
            "the last read, or every 30 s)",
            registry=r,
        )
        self.sampled_pods = Gauge(
            "rscore_autoscaler_sampled_pods",
            "Ready pods read at the last tick (streamed, or a sample of them above the threshold)",
            ["namespace", "name"],
            registry=r,
        )
        self.cached_pods = Gauge(
            "rscore_autoscaler_cached_pods", "Pods in the informer's cache", registry=r
        )
        self.owned = Gauge(
            "rscore_autoscaler_owned",
            "ScoringAutoscalers of this controller's shard (all of them without shards)",
            registry=r,
        )
        self.watched = Gauge(
            "rscore_autoscaler_watched", "ScoringAutoscalers known from the watch", registry=r
        )
        self.desired_replicas = Gauge(
            "rscore_autoscaler_desired_replicas",
            "The policy's desired replicas",
            ["namespace", "name"],
            registry=r,
        )
        # The spec's bound, so an alert can tell "at max replicas" from the desired count.
        self.max_replicas = Gauge(
            "rscore_autoscaler_max_replicas",
            "The ScoringAutoscaler's maxReplicas",
            ["namespace", "name"],
            registry=r,
        )
        self.desired_nodes = Gauge(
            "rscore_autoscaler_desired_nodes",
            "The policy's desired nodes in the pool",
            ["namespace", "name"],
            registry=r,
        )
        self.observed_concurrency = Gauge(
            "rscore_autoscaler_observed_concurrency",
            "Stable-window average of the total concurrency",
            ["namespace", "name"],
            registry=r,
        )
        self.panic = Gauge(
            "rscore_autoscaler_panic", "1 while in panic mode", ["namespace", "name"], registry=r
        )
        self.scale_operations = Counter(
            "rscore_autoscaler_scale_operations",
            "Writes to a /scale subresource",
            ["namespace", "name", "target", "direction"],
            registry=r,
        )
        self.api_errors = Counter(
            "rscore_autoscaler_api_errors",
            "Failed Kubernetes API calls (each attempt)",
            ["operation", "code"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "rscore_autoscaler_scrape_errors",
            "Pod /metrics scrapes that failed or did not follow the contract",
            ["namespace", "name"],
            registry=r,
        )
        self.activator_scrape_errors = Counter(
            "rscore_autoscaler_activator_scrape_errors",
            "Activator /metrics scrapes (or their pod listings) that failed; the held "
            "requests were unknown for that tick and nothing was scaled down",
            ["namespace", "name"],
            registry=r,
        )
        self.unrouted_concurrency = Gauge(
            "rscore_autoscaler_unrouted_concurrency",
            "Requests held by the activators (not yet at any pod), as last read",
            ["namespace", "name"],
            registry=r,
        )
        self.overruns = Counter(
            "rscore_autoscaler_overruns",
            "Ticks that skipped an object because its previous reconcile was still running",
            ["namespace", "name"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "rscore_autoscaler_watch_restarts",
            "Watch reconnects, by cause",
            ["cause"],
            registry=r,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted ScoringAutoscaler's series."""
        for gauge in (
            self.desired_replicas,
            self.max_replicas,
            self.desired_nodes,
            self.observed_concurrency,
            self.panic,
            self.unrouted_concurrency,
            self.sampled_pods,
        ):
            with contextlib.suppress(KeyError):  # never set for this object
                gauge.remove(namespace, name)
