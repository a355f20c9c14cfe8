"""The controller in this process (rscore.autoscaler.serve.run) against the emulated API server
through the real kubernetes_asyncio client, with real /metrics servers as pods.

Real time, on the event loop's clock (the controller's and the pods' clock too): waits
for a state poll it (`eventually`, `_ticks_after`) with a bound; a check of time only
asserts what holds however late things run (a sleep never ends early).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from autoscaler_scene import APP, NS, POOL, Scene, autoscaler_object
from fake_pods import free_port
from helpers import eventually
from kube_emulator import KubeEmulator

from rscore.autoscaler.serve import Options, run

SA_WATCH = r"/scoringautoscalers$"  # the controller also watches pods

pytestmark = pytest.mark.slow  # real timers and deadlines, seconds each


@asynccontextmanager
async def controller(kubeconfig: Path, **options: Any) -> AsyncIterator[int]:
    """Run the controller until the block ends; yields its metrics port."""
    port = free_port()
    settings = {
        "kubeconfig": kubeconfig,
        "leader_elect": False,
        "interval_s": 0.2,
        "metrics_host": "127.0.0.1",
        "metrics_port": port,
        "scrape_timeout_s": 0.5,
        **options,
    }
    stop = asyncio.Event()
    task = asyncio.create_task(run(Options(**settings), stop))
    try:
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Scene, Path]]:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu)
        try:
            yield emu, scene, emu.write_kubeconfig(tmp_path / "kubeconfig")
        finally:
            await scene.close()


async def test_scales_the_deployment_and_the_node_pool_up_at_once(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler(nodePool={"maxNodes": 5, "podsPerNode": 2, "scaleDownDelaySeconds": 60})
    scene.set_total_concurrency(8)
    async with controller(kubeconfig):
        await eventually(lambda: scene.replicas == 6 and scene.nodes == 3)
        await eventually(lambda: scene.status().get("desiredReplicas") == 6)
    status = scene.status()
    assert status["mode"] == "Panic"
    assert status["desiredNodes"] == 3
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "AbleToScale": "True",
        "ScalingActive": "True",
        "ScalingLimited": "False",
    }
    patches = emu.writes(r"/scale$")
    assert patches, "no /scale writes recorded"
    assert {p.content_type for p in patches} == {"application/merge-patch+json"}
    posted = emu.writes(rf"/api/v1/namespaces/{NS}/events$")
    assert {r.status for r in posted} == {201}  # valid core/v1 Events, as the server checks
    events = [r.body for r in posted]
    assert {e["reason"] for e in events} >= {"ScaledUp", "ScaledUpNodes"}
    assert all(e["involvedObject"]["name"] == APP for e in events)


async def _deployment_controller(scene: Scene) -> None:
    """Keep the pods at the Deployment's replicas, as the real controller would."""
    while True:
        await scene.sync_pods()
        scene.set_total_concurrency(scene.per_pod_concurrency * len(scene.pods))
        await asyncio.sleep(0.05)  # its resync period: the actor's pace, not a wait


async def test_nodes_go_after_the_pool_delay_and_their_pods_with_them(cluster) -> None:
    """Pods fill the nodes that are paid for: when the load goes, the pods stay on their
    nodes until the pool's delay releases the nodes, then go with them."""
    emu, scene, kubeconfig = cluster
    delay_s = 3.0
    scene.add_autoscaler(
        nodePool={"maxNodes": 5, "podsPerNode": 2, "scaleDownDelaySeconds": delay_s}
    )
    follower = asyncio.create_task(_deployment_controller(scene))
    try:
        scene.set_total_concurrency(8)
        async with controller(kubeconfig):
            await eventually(lambda: scene.replicas == 6 and scene.nodes == 3)
            loop = asyncio.get_running_loop()
            scene.per_pod_concurrency = 0.0
            idle_since = loop.time()
            pods_fell_at = nodes_fell_at = None
            deadline = loop.time() + 40
            while nodes_fell_at is None:
                assert loop.time() < deadline, (scene.replicas, scene.nodes, scene.status())
                if pods_fell_at is None and scene.replicas < 6:
                    pods_fell_at = loop.time()
                if scene.nodes < 3:
                    nodes_fell_at = loop.time()
                await asyncio.sleep(0.02)
            await eventually(lambda: scene.nodes == 1 and scene.replicas == 2)
    finally:
        follower.cancel()
    assert pods_fell_at is not None
    # The pool waited its delay (from the tick that saw the load gone, which a loaded
    # machine may take a while to finish: allow a second), and the pods stayed on their
    # nodes until then (the same tick writes the pods, then the nodes).
    assert nodes_fell_at - idle_since >= delay_s - 1.0
    assert pods_fell_at - idle_since >= delay_s - 1.0
    events = [r.body["reason"] for r in emu.writes(rf"/namespaces/{NS}/events$")]
    assert "ScaledDown" in events
    assert "ScaledDownNodes" in events


@pytest.mark.parametrize("failing", ["all", "one"])
async def test_missing_metrics_never_scale_down(cluster, failing) -> None:
    emu, scene, kubeconfig = cluster
    deployment = emu.get_object("apps/v1", "Deployment", NS, APP)
    deployment["spec"]["replicas"] = 4
    emu.put_object(deployment)
    await scene.sync_pods()
    scene.set_total_concurrency(0)  # idle: with metrics, this would go down to 1
    broken = list(scene.pods.values()) if failing == "all" else [scene.pods[f"{APP}-0"]]
    for pod in broken:
        pod.failing = True
    scene.add_autoscaler()
    async with controller(kubeconfig):
        await eventually(lambda: all(p.scrapes >= 10 for p in scene.pods.values()))
        assert scene.replicas == 4
        assert emu.writes(r"/scale$") == []
        status = scene.status()
        if failing == "all":  # no concurrency at all: the metric signal is inactive
            active = {c["type"]: c for c in status["conditions"]}["ScalingActive"]
            assert (active["status"], active["reason"]) == ("False", "NoMetrics")
        else:  # some pods report: the policy holds because others are missing
            assert "missing concurrency data, hold 4" in status["reason"]
        for pod in broken:  # the metrics come back: now it may scale down
            pod.failing = False
        await eventually(lambda: scene.replicas < 4)


async def test_transient_api_errors_are_retried_and_never_stop_the_loop(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    scene.set_total_concurrency(8)
    emu.fail("PATCH", r"/deployments/scorer/scale$", 409, times=1, reason="Conflict")
    emu.fail("PATCH", r"/deployments/scorer/scale$", 500, times=1)
    emu.fail("GET", r"/deployments/scorer/scale$", 503, times=1)
    emu.fail("PATCH", r"/scoringautoscalers/scorer/status$", 500, times=1)
    async with controller(kubeconfig, request_timeout_s=0.5) as port:
        await eventually(lambda: scene.replicas == 6)
        await eventually(lambda: scene.status().get("desiredReplicas") == 6)
        metrics = await _scrape(port)
    codes = {
        (s.labels["operation"], s.labels["code"]): s.value
        for s in metrics["rscore_autoscaler_api_errors"].samples
        if s.name.endswith("_total")
    }
    assert codes[("patch_scale", "409")] == 1
    assert codes[("patch_scale", "500")] == 1
    assert codes[("get_scale", "503")] == 1
    assert codes[("patch_status", "500")] == 1


async def test_a_hung_api_call_times_out_and_is_retried(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    scene.set_total_concurrency(8)
    emu.delay("PATCH", r"/deployments/scorer/scale$", 3.0, times=1)
    async with controller(kubeconfig, request_timeout_s=0.5) as port:
        await eventually(lambda: scene.replicas == 6)
        metrics = await _scrape(port)
    codes = {
        (s.labels["operation"], s.labels["code"])
        for s in metrics["rscore_autoscaler_api_errors"].samples
    }
    assert ("patch_scale", "TimeoutError") in codes


async def test_a_lasting_scale_failure_is_reported_and_recovers(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    scene.set_total_concurrency(8)
    emu.fail("PATCH", r"/deployments/scorer/scale$", 403, times=None, reason="Forbidden")
    async with controller(kubeconfig) as port:
        await eventually(
            lambda: any(
                c["type"] == "AbleToScale" and c["status"] == "False"
                for c in scene.status().get("conditions", [])
            )
        )
        await _ticks_after(port, 5)  # several ticks of the same failure
        warnings = [r.body for r in emu.writes(r"/events$") if r.body["type"] == "Warning"]
        assert [w["reason"] for w in warnings] == ["FailedRescale-pods"]  # once, not per tick
        assert "403" in warnings[0]["message"]
        assert scene.replicas == 2
        emu.clear_faults()
        await eventually(lambda: scene.replicas == 6)
        await eventually(
            lambda: (
                {c["type"]: c["status"] for c in scene.status()["conditions"]}["AbleToScale"]
                == "True"
            )
        )


async def _scrape(port: int) -> dict[str, Any]:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_the_watch_relists_after_410_and_reconnects_after_drops(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.set_total_concurrency(8)
    async with controller(kubeconfig) as port:
        await eventually(lambda: emu.open_watches_on(SA_WATCH) == 1)
        # While the controller reconnects (held 0.5 s), the store moves on and its
        # history is compacted: the resourceVersion it resumes from is too old -> 410.
        emu.delay("GET", r"/scoringautoscalers$", 0.5, watch=True)
        await emu.drop_watches()
        emu.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        emu.compact()
        await eventually(lambda: emu.open_watches_on(SA_WATCH) == 1)
        await emu.drop_watches(abrupt=True)  # a reset connection: reconnect
        await eventually(lambda: emu.open_watches_on(SA_WATCH) == 1)
        scene.add_autoscaler()  # seen only through the new watch
        await eventually(lambda: scene.replicas == 6)
        metrics = await _scrape(port)
        causes = {
            s.labels["cause"]
            for s in metrics["rscore_autoscaler_watch_restarts"].samples
            if s.name.endswith("_total")
        }
        assert "expired" in causes
        lists = [
            r
            for r in emu.requests
            if r.method == "GET" and r.path.endswith("/scoringautoscalers") and not r.watch
        ]
        assert len(lists) >= 2  # the first list and the re-list after 410

        emu.delete_object("rscore.dev/v1alpha1", "ScoringAutoscaler", NS, APP)
        # Once the delete is seen and a whole tick has run since, nothing more is written
        # (a tick already under way when the delete arrived may still write once).
        seen = await _metric_after(port, "rscore_autoscaler_watched", lambda v: v == 0)
        await _ticks_after(port, 2)
        writes_after_delete = len(emu.writes(r"/scoringautoscalers/scorer/status$"))
        await _ticks_after(port, 3)
        assert len(emu.writes(r"/scoringautoscalers/scorer/status$")) == writes_after_delete
        assert seen["rscore_autoscaler_desired_replicas"].samples == []


async def test_dry_run_decides_but_writes_nothing(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler(nodePool={"maxNodes": 5, "podsPerNode": 2})
    scene.set_total_concurrency(8)
    async with controller(kubeconfig, dry_run=True) as port:
        await eventually(lambda: all(p.scrapes >= 5 for p in scene.pods.values()))
        metrics = await _scrape(port)
    assert emu.writes() == []
    assert scene.replicas == 2
    desired = metrics["rscore_autoscaler_desired_replicas"].samples[0]
    assert (desired.labels, desired.value) == ({"namespace": NS, "name": APP}, 6)
    assert metrics["rscore_autoscaler_desired_nodes"].samples[0].value == 3
    # The spec's bound beside the decision: the "at max replicas" alert compares the two.
    assert metrics["rscore_autoscaler_max_replicas"].samples[0].value == 10


async def test_an_invalid_spec_is_reported_and_nothing_scales(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler(minReplicas=5, maxReplicas=3)
    scene.set_total_concurrency(8)
    async with controller(kubeconfig) as port:
        await eventually(lambda: "conditions" in scene.status())
        await _ticks_after(port, 3)  # more ticks of the same spec: still one warning
    condition = scene.status()["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "ScalingActive",
        "False",
        "InvalidSpec",
    )
    assert "spec.minReplicas (5) must be <= spec.maxReplicas (3)" in condition["message"]
    assert emu.writes(r"/scale$") == []
    warnings = [r.body["reason"] for r in emu.writes(r"/events$")]
    assert warnings == ["InvalidSpec"]


async def test_kinds_outside_the_table_are_found_through_discovery(cluster, monkeypatch) -> None:
    import rscore.autoscaler.kube_io

    emu, scene, kubeconfig = cluster
    monkeypatch.setattr(rscore.autoscaler.kube_io, "WELL_KNOWN_RESOURCES", {})
    scene.add_autoscaler(nodePool={"maxNodes": 5, "podsPerNode": 2})
    scene.set_total_concurrency(8)
    async with controller(kubeconfig):
        await eventually(lambda: scene.replicas == 6 and scene.nodes == 3)
    discovered = {r.path for r in emu.requests if r.method == "GET" and r.path.count("/") == 3}
    assert {"/apis/apps/v1", "/apis/cluster.x-k8s.io/v1beta1"} <= discovered


async def test_an_unknown_kind_is_reported_not_fatal(cluster) -> None:
    import aiohttp

    _emu, scene, kubeconfig = cluster
    scene.add_autoscaler(scaleTargetRef={"apiVersion": "apps/v1", "kind": "Nonsense", "name": "x"})
    async with controller(kubeconfig) as port:
        await eventually(lambda: "conditions" in scene.status())
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            assert response.status == 200
    condition = scene.status()["conditions"][0]
    assert (condition["type"], condition["reason"]) == ("AbleToScale", "FailedGetScale")
    assert "no resource of kind Nonsense" in condition["message"]


async def test_cpu_utilization_scales_up_without_concurrency(cluster) -> None:
    emu, scene, kubeconfig = cluster
    for name in scene.pods:
        pod = emu.get_object("v1", "Pod", NS, name)
        pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
        emu.put_object(pod)
        # 900m of a 1-core request: 90% against a 60% target -> ceil(2 x 1.5) = 3
        emu.make_pod_metrics(name, NS, labels={"app": APP}, containers={"r": ("900m", "100Mi")})
    scene.add_autoscaler(cpuTargetUtilization=0.6)
    scene.set_total_concurrency(0.5)
    async with controller(kubeconfig):
        await eventually(lambda: scene.replicas == 3)
        await eventually(lambda: "cpu ratio 1.50 -> 3" in scene.status().get("reason", ""))


async def test_a_garbled_watch_line_does_not_kill_the_watch(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.set_total_concurrency(8)
    async with controller(kubeconfig) as port:
        await eventually(lambda: emu.open_watches_on(SA_WATCH) == 1)
        assert emu.send_raw_watch_line(b"<html>502 Bad Gateway</html>\n") == 2  # and pods
        await eventually(
            lambda: emu.open_watches_on(SA_WATCH) == 1 and len(_watch_requests(emu)) >= 2
        )
        scene.add_autoscaler()  # seen only through the new watch
        await eventually(lambda: scene.replicas == 6)
        metrics = await _scrape(port)
    causes = {
        s.labels["cause"]: s.value
        for s in metrics["rscore_autoscaler_watch_restarts"].samples
        if s.name.endswith("_total")
    }
    assert causes.get("error") == 1


async def _metric_after(port: int, name: str, check: Any) -> dict[str, Any]:
    """Scrape the controller until the first sample of `name` passes `check`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        metrics = await _scrape(port)
        if check(metrics[name].samples[0].value):
            return metrics
        assert loop.time() < deadline, f"{name} never passed the check"
        await asyncio.sleep(0.05)


async def _ticks_after(port: int, count: int) -> None:
    """Wait until `count` more ticks have completed."""
    metrics = await _scrape(port)
    start = metrics["rscore_autoscaler_ticks"].samples[0].value
    await _metric_after(port, "rscore_autoscaler_ticks", lambda v: v >= start + count)


def _watch_requests(emu: KubeEmulator) -> list[Any]:
    return [r for r in emu.requests if r.path.endswith("/scoringautoscalers") and r.watch]


def _list_requests(emu: KubeEmulator) -> list[Any]:
    return [r for r in emu.requests if r.path.endswith("/scoringautoscalers") and not r.watch]


async def test_a_watch_that_keeps_answering_410_is_retried_with_backoff(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    scene.set_total_concurrency(8)
    emu.fail("GET", r"/scoringautoscalers$", 410, times=None, watch=True)
    async with controller(kubeconfig):
        await eventually(lambda: len(_list_requests(emu)) >= 3)
        # without backoff this is a list and a watch per round trip, back to back; with
        # it, each re-list waits twice as long as the one before: 1 s, 2 s, 4 s, ...
        # (the loop's clock: a sleep never ends early, so a slow machine only adds)
        lists = [r.at for r in _list_requests(emu)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(lists)]
        for k, gap in enumerate(gaps[:2]):
            assert gap >= 2.0**k - 0.01, gaps
        # the objects from the lists are still reconciled
        await eventually(lambda: scene.replicas == 6)


@pytest.mark.parametrize("how", ["relist", "event"])
def test_an_object_recreated_under_its_name_starts_without_memory(how: str) -> None:
    from rscore.autoscaler.controller import Controller
    from rscore.autoscaler.metrics import ControllerMetrics
    from rscore.autoscaler.reconcile import Memory

    def obj(uid: str) -> dict[str, Any]:
        return {"metadata": {"namespace": NS, "name": APP, "uid": uid}, "spec": {}}

    controller = Controller(api=None, metrics=ControllerMetrics())  # type: ignore[arg-type]
    controller._apply("ADDED", obj("first"))
    controller.memory[(NS, APP)] = Memory(workers_per_pod=4)
    controller._apply("MODIFIED", obj("first"))  # same object: memory kept
    assert controller.memory[(NS, APP)].workers_per_pod == 4
    if how == "relist":
        controller._replace_all([obj("second")])
    else:
        controller._apply("ADDED", obj("second"))
    assert (NS, APP) not in controller.memory
    assert controller.objects[(NS, APP)]["metadata"]["uid"] == "second"


async def test_an_object_whose_api_calls_hang_does_not_hold_back_the_others(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    emu.make_deployment("slow", NS, replicas=1)
    slow = autoscaler_object(scene.port)
    slow["metadata"]["name"] = "slow"
    slow["spec"]["scaleTargetRef"]["name"] = "slow"
    emu.put_object(slow)
    emu.delay("GET", r"/deployments/slow/scale$", 3.0, times=None)  # every read hangs 3 s

    def slow_reads() -> int:
        return sum(1 for r in emu.requests if r.method == "GET" and r.path.endswith("/slow/scale"))

    async with controller(kubeconfig, request_timeout_s=5.0) as port:
        await eventually(lambda: slow_reads() >= 2, timeout_s=30)
        # While the slow object's first read hung, the other was reconciled every tick.
        assert all(pod.scrapes >= 5 for pod in scene.pods.values()), [
            pod.scrapes for pod in scene.pods.values()
        ]
        metrics = await _scrape(port)
    overruns = {
        s.labels["name"]: s.value
        for s in metrics["rscore_autoscaler_overruns"].samples
        if s.name.endswith("_total")
    }
    assert overruns["slow"] >= 5
    assert APP not in overruns


async def test_memory_limits_the_pods_a_node_holds(cluster) -> None:
    """No podsPerNode: the controller reads a node running the pods. Its 8 CPUs fit 8
    pods of 1 CPU, but its 12 Gi fit only 2 pods of 5 Gi: 6 pods need 3 nodes (by CPU
    alone, 1)."""
    emu, scene, kubeconfig = cluster
    emu.put_object(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "gpu-node-1"},
            "status": {"allocatable": {"cpu": "8", "memory": "12Gi"}},
        }
    )
    for name in scene.pods:
        pod = emu.get_object("v1", "Pod", NS, name)
        pod["spec"]["nodeName"] = "gpu-node-1"
        pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "5Gi"}}
        emu.put_object(pod)
    scene.add_autoscaler(nodePool={"maxNodes": 5, "scaleDownDelaySeconds": 60})
    scene.set_total_concurrency(8)

    def pool_reads() -> int:
        return sum(
            1
            for r in emu.requests
            if r.method == "GET" and r.path.endswith(f"/machinedeployments/{POOL}/scale")
        )

    async with controller(kubeconfig):
        await eventually(lambda: scene.replicas == 6 and scene.nodes == 3)
        await eventually(lambda: pool_reads() >= 4)  # a read of the pool each tick
    assert "nodes: ceil(6/2)" in scene.status()["reason"]
    node_reads = [r for r in emu.requests if r.path == "/api/v1/nodes/gpu-node-1"]
    # The node was read once, not every tick: its allocatable is fixed at registration
    # (read again after ALLOCATABLE_REREAD_S, or for another node).
    assert len(node_reads) == 1
    assert {r.status for r in node_reads} == {200}
