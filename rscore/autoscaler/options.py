"""`rscore autoscaler`'s settings and their defaults: the one source its flags and
`rscore.autoscaler.serve.run` both read.

Light on purpose: the CLI imports it to show defaults, so it must never import the API
client, aiohttp or anything that starts work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rscore.autoscaler.sampling import SamplingPolicy

__all__ = ["Options"]


@dataclass(frozen=True)
class Options:
    kubeconfig: Path | None = None
    namespace: str | None = None
    interval_s: float = 2.0
    leader_elect: bool = True
    lease_name: str = "rscore-autoscaler"
    lease_namespace: str = "default"
    lease_duration_s: int = 15  # the Lease stores whole seconds
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    dry_run: bool = False
    metrics_host: str = "0.0.0.0"  # scraped by Prometheus from other pods
    metrics_port: int = 9091
    scrape_timeout_s: float = 1.0
    request_timeout_s: float = 5.0
    # Scale (docs/autoscaler.md, "At scale").
    reconcile_timeout_s: float | None = None  # None: 5 intervals
    sample: bool = True  # scrape a sample of a large ScoringAutoscaler's pods
    sample_above: int = 50  # ready pods up to this many: all scraped
    sample_confidence: float = 0.95
    sample_error: float = 0.10
    max_concurrent_scrapes: int = 256  # 0: unbounded
    metric_streams: bool = True  # follow each pod's /metrics/stream; GET where there is none
    # Freeze the long-lived heap out of the garbage collector (controller.FrozenHeap): the
    # `rscore autoscaler` process does; a process that embeds `run` keeps its heap as is.
    freeze_heap: bool = False
    watch_pods: bool = True  # an informer's cache, not a list per ScoringAutoscaler per tick
    pod_selector: str | None = None  # narrows the pod watch (a label all scoring pods carry)
    shards: int = 1
    shard_index: int | None = None  # None: the StatefulSet ordinal modulo shards
    # A status whose only change is readings (the observed concurrency, the reason's
    # figures) is written at most this often per object; 0: every change at once.
    status_heartbeat_s: float = 60.0

    def sampling(self) -> SamplingPolicy:
        return SamplingPolicy(
            enabled=self.sample,
            scrape_all_up_to=self.sample_above,
            confidence=self.sample_confidence,
            relative_error=self.sample_error,
        )
