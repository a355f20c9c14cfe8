"""rscore.autoscaler.observe: pods and PodMetrics (plain dicts) to PodFacts, PodUsage and the
policy's Observation."""

from __future__ import annotations

from typing import Any

import pytest

from rscore.autoscaler.observe import (
    SCALE_REREAD_S,
    PodFacts,
    PodUsage,
    active_pods,
    build_observation,
    pod_facts,
    pod_usage,
    scale_read_due,
)
from rscore.autoscaler.policy import Observation, PodSample
from rscore.autoscaler.scrape import PodDemand

MI = 2**20


def pod(
    name: str = "iris-0",
    *,
    phase: str | None = "Running",
    ready: str | None = "True",
    ip: str | None = "10.0.0.7",
    deleting: bool = False,
    node: str | None = "node-a",
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A core/v1 Pod as the API returns it; None leaves a field out."""
    metadata: dict[str, Any] = {"name": name, "namespace": "models"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-26T04:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "PodScheduled", "status": "True"}]}
    if phase is not None:
        status["phase"] = phase
    if ready is not None:
        status["conditions"].append({"type": "Ready", "status": ready})
    if ip is not None:
        status["podIP"] = ip
    spec: dict[str, Any] = {"containers": containers if containers is not None else []}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": metadata, "spec": spec, "status": status}


def container(cpu: str | None = None, memory: str | None = None) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"name": "c", "image": "x", "resources": {"requests": requests}}


# --- readiness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "ready", "pending", "terminating"),
    [
        ({}, True, False, False),
        ({"ip": None}, False, True, False),
        ({"ip": ""}, False, True, False),
        ({"deleting": True}, False, False, True),
        ({"deleting": True, "phase": "Pending", "ready": "False"}, False, False, True),
        ({"phase": "Pending", "ready": None, "ip": None}, False, True, False),
        ({"phase": "Pending", "ready": "True"}, False, True, False),  # phase not Running
        ({"phase": None, "ready": None, "ip": None}, False, True, False),  # just created
        ({"ready": "False"}, False, True, False),  # running, not yet passing its probe
        ({"ready": "Unknown"}, False, True, False),
        ({"ready": None}, False, True, False),
        ({"phase": "Succeeded", "ready": "False"}, False, False, False),
        ({"phase": "Failed", "ready": "False"}, False, False, False),
        ({"phase": "Failed", "ready": "True"}, False, False, False),
        ({"phase": "Unknown", "ready": "True"}, False, False, False),
    ],
    ids=[
        "ready",
        "no-ip",
        "empty-ip",
        "deleting",
        "deleting-pending",
        "pending",
        "pending-ready-true",
        "no-phase",
        "ready-false",
        "ready-unknown",
        "no-ready-condition",
        "succeeded",
        "failed",
        "failed-ready-true",
        "phase-unknown",
    ],
)
def test_readiness(kwargs: dict[str, Any], ready: bool, pending: bool, terminating: bool) -> None:
    facts = pod_facts(pod(**kwargs))
    assert (facts.ready, facts.pending, facts.terminating) == (ready, pending, terminating)


def test_facts_of_a_ready_pod() -> None:
    facts = pod_facts(pod(containers=[container("500m", "256Mi")]))
    assert facts == PodFacts(
        name="iris-0",
        ready=True,
        pending=False,
        terminating=False,
        pod_ip="10.0.0.7",
        node_name="node-a",
        cpu_request_millicores=500.0,
        memory_request_bytes=256.0 * MI,
    )


@pytest.mark.parametrize(
    ("kwargs", "pod_ip", "node_name"),
    [
        ({}, "10.0.0.7", "node-a"),
        ({"ip": "fd00::7"}, "fd00::7", "node-a"),
        ({"ip": "", "node": None}, None, None),
        ({"ip": None, "node": None}, None, None),
    ],
    ids=["ipv4", "ipv6", "empty-ip", "unscheduled"],
)
def test_ip_and_node(kwargs: dict[str, Any], pod_ip: str | None, node_name: str | None) -> None:
    facts = pod_facts(pod(**kwargs))
    assert (facts.pod_ip, facts.node_name) == (pod_ip, node_name)


def test_ready_condition_among_others() -> None:
    p = pod(ready=None)
    p["status"]["conditions"] = [
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": "True"},  # not the Ready condition
        {"type": "Ready", "status": "True"},
    ]
    assert pod_facts(p).ready
    p["status"]["conditions"] = [{"type": "ContainersReady", "status": "True"}]
    assert not pod_facts(p).ready


def test_an_empty_object_is_pending_with_nothing_requested() -> None:
    facts = pod_facts({})
    assert facts == PodFacts("", False, True, False, None, None, 0.0, 0.0)


# --- requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "cpu", "memory"),
    [
        ([], 0.0, 0.0),
        ([container("250m", "128Mi")], 250.0, 128.0 * MI),
        ([container("250m", "128Mi"), container("1", "1Gi")], 1250.0, 1152.0 * MI),
        ([container("1.5"), container(memory="0.5Gi")], 1500.0, 512.0 * MI),
        ([container("100m"), container("100m"), container("100m")], 300.0, 0.0),
        ([container()], 0.0, 0.0),
        ([{"name": "no-resources"}], 0.0, 0.0),
        ([{"name": "null-requests", "resources": {"requests": None}}], 0.0, 0.0),
        ([{"name": "limits-only", "resources": {"limits": {"cpu": "2"}}}], 0.0, 0.0),
        ([container("123456789n", "1000k")], 123.456789, 1e6),
    ],
    ids=[
        "none",
        "one",
        "two-summed",
        "split",
        "three",
        "empty-requests",
        "no-resources",
        "null-requests",
        "limits-only",
        "odd-suffixes",
    ],
)
def test_requests_are_summed_across_containers(
    containers: list[dict[str, Any]], cpu: float, memory: float
) -> None:
    facts = pod_facts(pod(containers=containers))
    assert facts.cpu_request_millicores == pytest.approx(cpu)
    assert facts.memory_request_bytes == pytest.approx(memory)


def test_init_containers_are_not_counted() -> None:
    p = pod(containers=[container("100m")])
    p["spec"]["initContainers"] = [container("4", "4Gi")]
    assert pod_facts(p).cpu_request_millicores == 100.0


def test_a_bad_request_quantity_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'lots'"):
        pod_facts(pod(containers=[container("lots")]))


# --- PodMetrics --------------------------------------------------------------------------


def pod_metrics(*usages: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "PodMetrics",
        "metadata": {"name": "iris-0", "namespace": "models"},
        "timestamp": "2026-11-26T04:00:00Z",
        "window": "15s",
        "containers": [{"name": f"c{i}", "usage": u} for i, u in enumerate(usages)],
    }


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (pod_metrics(), PodUsage(0.0, 0.0)),
        (pod_metrics({"cpu": "123456789n", "memory": "1024Ki"}), PodUsage(123.456789, MI)),
        (
            pod_metrics({"cpu": "250000000n", "memory": "100Mi"}, {"cpu": "5m", "memory": "28Mi"}),
            PodUsage(255.0, 128.0 * MI),
        ),
        (pod_metrics({"cpu": "1"}, {"memory": "1Gi"}), PodUsage(1000.0, 1024.0 * MI)),
        (pod_metrics({}), PodUsage(0.0, 0.0)),
        (pod_metrics({"cpu": "0", "memory": "0"}), PodUsage(0.0, 0.0)),
        ({"containers": [{"name": "c"}]}, PodUsage(0.0, 0.0)),
        ({}, PodUsage(0.0, 0.0)),
    ],
    ids=[
        "no-containers",
        "one",
        "two-summed",
        "partial",
        "empty-usage",
        "zeros",
        "no-usage",
        "empty-object",
    ],
)
def test_pod_usage_is_summed_across_containers(metrics: dict[str, Any], expected: PodUsage) -> None:
    usage = pod_usage(metrics)
    assert usage.cpu_millicores == pytest.approx(expected.cpu_millicores)
    assert usage.memory_bytes == pytest.approx(expected.memory_bytes)


def test_a_bad_usage_quantity_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="'12 cores'"):
        pod_usage(pod_metrics({"cpu": "12 cores"}))


# --- build_observation -------------------------------------------------------------------


def facts(
    name: str,
    *,
    ready: bool = True,
    pending: bool = False,
    terminating: bool = False,
    cpu: float = 500.0,
    memory: float = 256.0 * MI,
) -> PodFacts:
    return PodFacts(
        name=name,
        ready=ready,
        pending=pending,
        terminating=terminating,
        pod_ip="10.0.0.1" if ready else None,
        node_name="node-a",
        cpu_request_millicores=cpu,
        memory_request_bytes=memory,
    )


def observe(pods: Any, **overrides: Any) -> Observation:
    arguments: dict[str, Any] = {
        "now": 100.0,
        "current_replicas": len(pods) if isinstance(pods, list) else 1,
        "pods": pods,
        "demand": {},
        "usage": {},
        "workers_per_pod": 4,
    } | overrides
    return build_observation(**arguments)


def test_build_observation() -> None:
    pods = [
        facts("a"),
        facts("b", cpu=750.0),
        facts("c"),  # ready but not scraped
        facts("p1", ready=False, pending=True, cpu=250.0),
        facts("p2", ready=False, pending=True),
        facts("t", ready=False, terminating=True),
    ]
    observation = observe(
        pods,
        current_replicas=5,
        demand={  # p1 is not ready: ignored
            "a": PodDemand(1.5, arrival_rate=20.0, service_s=0.05, queue_depth=1.0),
            "b": PodDemand(0.0, None, None, 0.0),  # a first scrape
            "p1": PodDemand(9.0, 1.0, 1.0, 9.0),
        },
        usage={"a": PodUsage(400.0, 100.0 * MI), "c": PodUsage(10.0, MI), "t": PodUsage(1, 1)},
        current_nodes=2,
        node_allocatable_cpu_millicores=3800.0,
        node_allocatable_memory_bytes=16_000.0 * MI,
    )
    assert observation == Observation(
        now=100.0,
        ready_pods=(
            PodSample("a", 1.5, 400.0, 500.0, 100.0 * MI, 256.0 * MI, 20.0, 0.05, 1.0),
            PodSample("b", 0.0, None, 750.0, None, 256.0 * MI, None, None, 0.0),
            PodSample("c", None, 10.0, 500.0, MI, 256.0 * MI),
        ),
        current_replicas=5,
        workers_per_pod=4,
        pending_pods=2,
        current_nodes=2,
        node_allocatable_cpu_millicores=3800.0,
        pod_cpu_request_millicores=750.0,
        # the largest memory request of the pods (every one asks 256 Mi here)
        node_allocatable_memory_bytes=16_000.0 * MI,
        pod_memory_request_bytes=256.0 * MI,
    )


@pytest.mark.parametrize(
    ("concurrency", "expected"),
    [
        ({}, None),  # not scraped at all
        ({"a": None}, None),  # scrape failed
        ({"a": 0.0}, 0.0),
        ({"a": 2.25}, 2.25),
        ({"other": 3.0}, None),
    ],
    ids=["absent", "none", "zero", "value", "someone-else"],
)
def test_concurrency_of_a_ready_pod(concurrency: dict[str, float | None], expected: Any) -> None:
    demand = {
        name: None if value is None else PodDemand(value, None, None, 0.0)
        for name, value in concurrency.items()
    }
    (sample,) = observe([facts("a")], demand=demand).ready_pods
    assert sample.concurrency == expected


@pytest.mark.parametrize(
    ("pods", "pending"),
    [
        ([], 0),
        ([facts("a")], 0),
        ([facts("a"), facts("b", ready=False, pending=True)], 1),
        ([facts("b", ready=False, pending=True), facts("c", ready=False, pending=True)], 2),
        ([facts("t", ready=False, terminating=True)], 0),
        ([facts("done", ready=False)], 0),  # Succeeded/Failed: neither
    ],
    ids=["none", "ready-only", "one-pending", "two-pending", "terminating", "finished"],
)
def test_pending_count(pods: list[PodFacts], pending: int) -> None:
    observation = observe(pods)
    assert observation.pending_pods == pending
    assert len(observation.ready_pods) == sum(p.ready for p in pods)


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        ([], None),
        ([0.0], None),
        ([0.0, 0.0], None),
        ([500.0], 500.0),
        ([250.0, 1000.0, 0.0], 1000.0),
    ],
    ids=["no-pods", "no-request", "no-requests", "one", "max-of-positive"],
)
def test_pod_cpu_request(requests: list[float], expected: float | None) -> None:
    pods = [facts(f"p{i}", ready=False, pending=True, cpu=c) for i, c in enumerate(requests)]
    assert observe(pods).pod_cpu_request_millicores == expected


@pytest.mark.parametrize(
    ("workers", "expected"), [(0, 1), (-3, 1), (1, 1), (8, 8)], ids=["0", "-3", "1", "8"]
)
def test_workers_per_pod_is_at_least_one(workers: int, expected: int) -> None:
    assert observe([facts("a")], workers_per_pod=workers).workers_per_pod == expected


def test_node_fields_default_to_none() -> None:
    observation = observe([facts("a")])
    assert observation.current_nodes is None
    assert observation.node_allocatable_cpu_millicores is None
    assert observation.unrouted_concurrency == 0.0


def test_pods_may_be_any_iterable() -> None:
    observation = observe(
        iter([facts("a"), facts("b", ready=False, pending=True)]), current_replicas=2
    )
    assert [p.name for p in observation.ready_pods] == ["a"]
    assert observation.pending_pods == 1
    assert observation.pod_cpu_request_millicores == 500.0


def test_from_pod_dicts_to_observation() -> None:
    """pod_facts and pod_usage chained into build_observation, as a tick does."""
    pods = [
        pod("iris-0", containers=[container("500m", "512Mi"), container("100m", "64Mi")]),
        pod("iris-1", phase="Pending", ready=None, ip=None, node=None,
            containers=[container("500m", "512Mi"), container("100m", "64Mi")]),
        pod("iris-2", deleting=True, containers=[container("500m", "512Mi")]),
    ]  # fmt: skip
    observation = build_observation(
        now=1.0,
        current_replicas=2,
        pods=[pod_facts(p) for p in pods],
        demand={"iris-0": PodDemand(2.0, 4.0, 0.25, 1.0)},
        usage={"iris-0": pod_usage(pod_metrics({"cpu": "300000000n", "memory": "300Mi"}))},
        workers_per_pod=2,
    )
    (sample,) = observation.ready_pods
    assert sample == PodSample("iris-0", 2.0, 300.0, 600.0, 300.0 * MI, 576.0 * MI, 4.0, 0.25, 1.0)
    assert observation.pending_pods == 1
    assert observation.pod_cpu_request_millicores == 600.0


# --- when a tick reads the target's /scale -------------------------------------------


def _pods(
    running: int, terminating: int = 0, pending: int = 0, finished: int = 0
) -> list[PodFacts]:
    def one(i: int, *, ready: bool, pending: bool, terminating: bool) -> PodFacts:
        return PodFacts(f"p{i}", ready, pending, terminating, None, None, 0.0, 0.0)

    return (
        [one(i, ready=True, pending=False, terminating=False) for i in range(running)]
        + [one(100 + i, ready=False, pending=True, terminating=False) for i in range(pending)]
        + [one(200 + i, ready=False, pending=False, terminating=True) for i in range(terminating)]
        # Failed or Succeeded (an evicted pod): neither ready, pending nor terminating.
        + [one(300 + i, ready=False, pending=False, terminating=False) for i in range(finished)]
    )


@pytest.mark.parametrize(
    ("replicas", "read_at", "now", "pods", "due"),
    [
        (None, None, 0.0, _pods(3), True),  # never read this term
        (3, 0.0, 2.0, None, True),  # no cache of pods to compare with
        (3, 0.0, 2.0, _pods(3), False),  # the pods agree: the last read stands
        (3, 0.0, 2.0, _pods(3, terminating=2), False),  # going pods are not replicas
        (3, 0.0, 2.0, _pods(2, pending=1), False),  # a pending pod is one
        (3, 0.0, 2.0, _pods(3, finished=2), False),  # an evicted pod is not
        (3, 0.0, 2.0, _pods(2), True),  # one short: scaled down by someone, or one died
        (3, 0.0, 2.0, _pods(4), True),  # one over: scaled up by someone, or a rollout
        (3, 0.0, 2.0, _pods(0), True),
        (3, 0.0, SCALE_REREAD_S - 0.001, _pods(3), False),
        (3, 0.0, SCALE_REREAD_S, _pods(3), True),  # agreeing pods, but read long ago
    ],
    ids=[
        "never-read", "no-cache", "agree", "terminating", "pending", "finished", "short",
        "over", "none",
        "just-fresh", "stale",
    ],
)  # fmt: skip
def test_the_scale_is_read_again_only_when_the_pods_disagree_or_it_is_old(
    replicas: int | None,
    read_at: float | None,
    now: float,
    pods: list[PodFacts] | None,
    due: bool,
) -> None:
    assert scale_read_due(replicas, read_at, now, pods) is due


def test_a_pod_that_has_finished_is_not_an_active_one() -> None:
    evicted = {
        "metadata": {"name": "web-1"},
        "status": {"phase": "Failed", "reason": "Evicted"},
    }
    running_not_ready = {
        "metadata": {"name": "web-2"},
        "status": {"phase": "Running", "podIP": "10.0.0.2", "conditions": []},
    }
    assert active_pods([pod_facts(evicted), pod_facts(running_not_ready)]) == 1
