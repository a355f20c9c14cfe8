"""From API objects (plain dicts) and scrapes to the policy's `Observation`.

Pure: pods, PodMetrics and scrape results come in as data; nothing here calls the API,
reads a clock or logs. Which pods count as ready or pending follows the endpoints
controller: Ready condition True, an IP, and not being deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.policy import Observation, PodSample
from autoscaler.quantity import cpu_millicores, memory_bytes

__all__ = ["PodFacts", "PodUsage", "build_observation", "pod_facts", "pod_usage"]


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
    concurrency: Mapping[str, float | None],
    usage: Mapping[str, PodUsage],
    workers_per_pod: int,
    current_nodes: int | None = None,
    node_allocatable_cpu_millicores: float | None = None,
) -> Observation:
    """One tick's observation. A ready pod absent from `concurrency` was not scraped."""
    pods = list(pods)
    ready = [p for p in pods if p.ready]
    samples = tuple(
        PodSample(
            name=p.name,
            concurrency=concurrency.get(p.name),
            cpu_usage_millicores=usage[p.name].cpu_millicores if p.name in usage else None,
            cpu_request_millicores=p.cpu_request_millicores,
            memory_usage_bytes=usage[p.name].memory_bytes if p.name in usage else None,
            memory_request_bytes=p.memory_request_bytes,
        )
        for p in ready
    )
    requests = [p.cpu_request_millicores for p in pods if p.cpu_request_millicores > 0]
    return Observation(
        now=now,
        ready_pods=samples,
        current_replicas=current_replicas,
        workers_per_pod=max(1, workers_per_pod),
        pending_pods=sum(1 for p in pods if p.pending),
        current_nodes=current_nodes,
        node_allocatable_cpu_millicores=node_allocatable_cpu_millicores,
        pod_cpu_request_millicores=max(requests) if requests else None,
    )
