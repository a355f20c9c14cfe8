"""From API objects (plain dicts) and scrapes to the policy's `Observation`.

Pure: pods, PodMetrics and scrape results come in as data; nothing here calls the API,
reads a clock or logs. Which pods count as ready or pending follows the endpoints
controller: Ready condition True, an IP, and not being deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rscore.autoscaler.policy import Observation, PodSample
from rscore.autoscaler.quantity import cpu_millicores, memory_bytes
from rscore.autoscaler.scrape import PodDemand

__all__ = [
    "SCALE_REREAD_S",
    "PodFacts",
    "PodUsage",
    "active_pods",
    "build_observation",
    "pod_facts",
    "pod_usage",
    "scale_read_due",
]

# The longest a tick goes on the last /scale read while the pods agree with it: a
# change no pod shows (a new selector matching as many pods) is seen within this. Each
# object's own period is drawn between half this and this, so that objects first read
# together do not all read again in the same tick.
SCALE_REREAD_S = 30.0


@dataclass(frozen=True)
class PodFacts:
    name: str
    ready: bool
    pending: bool
    terminating: bool
    pod_ip: str | None
    node_name: str | None
    cpu_request_millicores: float
    memory_request_bytes: float


@dataclass(frozen=True)
class PodUsage:
    cpu_millicores: float
    memory_bytes: float


def _requests(pod: Mapping[str, Any]) -> tuple[float, float]:
    cpu = memory = 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        if "cpu" in requests:
            cpu += cpu_millicores(requests["cpu"])
        if "memory" in requests:
            memory += memory_bytes(requests["memory"])
    return cpu, memory


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    terminating = metadata.get("deletionTimestamp") is not None
    ready_condition = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    pod_ip = status.get("podIP") or None
    phase = status.get("phase")
    ready = ready_condition and pod_ip is not None and not terminating and phase == "Running"
    pending = not ready and not terminating and phase in (None, "Pending", "Running")
    cpu, memory = _requests(pod)
    return PodFacts(
        name=str(metadata.get("name", "")),
        ready=ready,
        pending=pending,
        terminating=terminating,
        pod_ip=pod_ip,
        node_name=(pod.get("spec") or {}).get("nodeName"),
        cpu_request_millicores=cpu,
        memory_request_bytes=memory,
    )


def pod_usage(pod_metrics: Mapping[str, Any]) -> PodUsage:
    """A `metrics.k8s.io/v1beta1` PodMetrics object, summed over its containers."""
    cpu = memory = 0.0
    for container in pod_metrics.get("containers") or []:
        usage = container.get("usage") or {}
        cpu += cpu_millicores(usage.get("cpu", 0))
        memory += memory_bytes(usage.get("memory", 0))
    return PodUsage(cpu, memory)


def build_observation(
    *,
    now: float,
    current_replicas: int,
    pods: Iterable[PodFacts],
    demand: Mapping[str, PodDemand | None],
    usage: Mapping[str, PodUsage],
    workers_per_pod: int,
    current_nodes: int | None = None,
    node_allocatable_cpu_millicores: float | None = None,
    node_allocatable_memory_bytes: float | None = None,
    wall_s: float | None = None,
    unrouted_concurrency: float = 0.0,
    unrouted_unknown: str | None = None,
) -> Observation:
    """One tick's observation. A ready pod absent from `demand` (or None there) was not
    scraped."""
    pods = list(pods)
    ready = [p for p in pods if p.ready]
    samples = tuple(
        _sample(
            p,
            demand.get(p.name),
            usage.get(p.name),
        )
        for p in ready
    )
    requests = [p.cpu_request_millicores for p in pods if p.cpu_request_millicores > 0]
    memory = [p.memory_request_bytes for p in pods if p.memory_request_bytes > 0]
    return Observation(
        now=now,
        ready_pods=samples,
        current_replicas=current_replicas,
        workers_per_pod=max(1, workers_per_pod),
        pending_pods=sum(1 for p in pods if p.pending),
        current_nodes=current_nodes,
        node_allocatable_cpu_millicores=node_allocatable_cpu_millicores,
        pod_cpu_request_millicores=max(requests) if requests else None,
        node_allocatable_memory_bytes=node_allocatable_memory_bytes,
        pod_memory_request_bytes=max(memory) if memory else None,
        wall_s=wall_s,
        unrouted_concurrency=unrouted_concurrency,
        unrouted_unknown=unrouted_unknown,
    )


def _sample(pod: PodFacts, demand: PodDemand | None, usage: PodUsage | None) -> PodSample:
    return PodSample(
        name=pod.name,
        concurrency=None if demand is None else demand.concurrency,
        cpu_usage_millicores=None if usage is None else usage.cpu_millicores,
        cpu_request_millicores=pod.cpu_request_millicores,
        memory_usage_bytes=None if usage is None else usage.memory_bytes,
        memory_request_bytes=pod.memory_request_bytes,
        arrival_rate=None if demand is None else demand.arrival_rate,
        service_s=None if demand is None else demand.service_s,
        queue_depth=None if demand is None else demand.queue_depth,
        calls=None if demand is None else demand.calls,
    )


def scale_read_due(
    replicas: int | None,
    read_at: float | None,
    now: float,
    pods: Sequence[PodFacts] | None,
    reread_s: float = SCALE_REREAD_S,
) -> bool:
    """Must this tick read the target's /scale, or will the last read (`replicas`, at
    `read_at`) do? Reading it every tick is an API request per ScoringAutoscaler per tick
    (1,000 at a 2 s interval: 500 a second, which API Priority and Fairness would
    throttle), while the pod watch already shows what the replicas do. The last read
    stands while the active pods its selector matches (`pods`, from the watch's cache;
    None when there is none) are as many as its replicas; it is read again when there
    is none, no cache to compare with, a count that differs (a rollout, a scale by
    anyone, pods starting or going), or once `reread_s` have passed."""
    if replicas is None or read_at is None or pods is None:
        return True
    if now - read_at >= reread_s:
        return True
    return active_pods(pods) != replicas


def active_pods(pods: Sequence[PodFacts]) -> int:
    """The pods a workload counts as its replicas: ready or on their way (pending, or
    running but not ready); not those being deleted, nor those that have finished
    (Failed or Succeeded: an evicted pod stays until it is collected)."""
    return sum(1 for pod in pods if pod.ready or pod.pending)
