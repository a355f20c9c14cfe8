"""Pods from a watch, not a list per tick (rscore.autoscaler.informer, rscore.autoscaler.selector):
the cache agrees with the API server's own label selection, follows every change,
re-lists after 410 Gone, and a tick reads no pods from the API server however many
there are.

Against the emulated API server through the real kubernetes_asyncio client, on fake
loop time (looptime): waits poll the state (`eventually`), bounded in loop time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from autoscaler_scene import NS, Scene
from helpers import eventually
from kube_emulator import KubeEmulator

from rscore.autoscaler.controller import Controller
from rscore.autoscaler.informer import PodCache
from rscore.autoscaler.kube_io import KubeApi
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.observe import PodFacts
from rscore.autoscaler.selector import SelectorError, equalities, parse_selector

WAIT_S = 30.0  # bound of every wait: only a failing test waits this long

pytestmark = pytest.mark.looptime


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("", {}, True),
        ("app=a", {"app": "a"}, True),
        ("app==a", {"app": "b"}, False),
        ("app!=a", {}, True),
        ("app=a,tier=web", {"app": "a", "tier": "web"}, True),
        ("app=a,tier=web", {"app": "a"}, False),
        ("app in (a, b)", {"app": "b"}, True),
        ("app notin (a,b)", {"app": "c"}, True),
        ("app notin (a,b)", {}, True),
        ("tier", {"tier": ""}, True),
        ("!tier", {"tier": "x"}, False),
        ("app in (a),!canary", {"app": "a"}, True),
    ],
)
def test_selector_matches(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector(selector)(labels) is matches


@pytest.mark.parametrize("text", ["app in (a", "app)=b", "=a", "a b c"])
def test_a_string_that_is_no_selector_is_an_error(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)


def test_equalities_are_what_a_label_index_can_use() -> None:
    assert equalities("app=a,tier!=x,zone in (z1),env in (a,b),!gpu") == [
        ("app", "a"),
        ("zone", "z1"),
    ]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, KubeApi]]:
    async with KubeEmulator() as emu:
        client = await KubeApi.connect(
            emu.write_kubeconfig(tmp_path / "kubeconfig"), ControllerMetrics()
        )
        try:
            yield emu, client
        finally:
            await client.close()


SELECTORS = [
    "app=a",
    "app in (a,b)",
    "app=a,tier!=canary",
    "tier",
    "!tier",
    "app notin (a)",
    "app=b,tier=web",
    "",
]


def _pods(emu: KubeEmulator) -> None:
    for ns in ("one", "two"):
        for i in range(12):
            labels = {"app": "ab"[i % 2]}
            if i % 3 == 0:
                labels["tier"] = "canary" if i % 2 else "web"
            emu.make_pod(f"p{i}", ns, labels=labels, ready=True, pod_ip=f"10.0.0.{i + 1}")


async def _same_as_the_server(emu: KubeEmulator, api: KubeApi, cache: PodCache) -> bool:
    for ns in ("one", "two"):
        for selector in SELECTORS:
            listed = [p["metadata"]["name"] for p in await api.list_pods(ns, selector)]
            cached = [p["metadata"]["name"] for p in cache.select(ns, selector)]
            if sorted(listed) != sorted(cached):
                return False
    return True


async def test_the_cache_selects_what_the_api_server_lists_and_follows_changes(api) -> None:
    emu, client = api
    _pods(emu)
    cache = PodCache(client, client.metrics, watch_timeout_s=30)
    task = asyncio.create_task(cache.run_forever())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        assert len(cache) == 24
        assert await _same_as_the_server(emu, client, cache)
        # Changes arrive through the watch: a relabel, a delete, a new pod.
        pod = emu.get_object("v1", "Pod", "one", "p0")
        assert pod is not None
        pod["metadata"]["labels"] = {"app": "b", "tier": "web"}
        emu.put_object(pod)
        emu.delete_object("v1", "Pod", "two", "p3")
        emu.make_pod("new", "one", labels={"app": "a"}, ready=True, pod_ip="10.0.1.1")
        await eventually(lambda: len(cache) == 24 and bool(cache.select("one", "app=b,tier=web")))
        assert await _same_as_the_server(emu, client, cache)
        # The watch ends at its timeout and resumes from the last version seen.
        await eventually(lambda: _restarts(client, "pods_timeout") >= 1, timeout_s=60)
        assert _lists(emu) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_pod_facts_are_read_once_per_pod_object(api) -> None:
    """`select_facts` reads each pod's facts once per object the watch delivered: the same
    facts tick after tick, new ones for a pod an event replaced, none for a deleted one."""
    emu, client = api
    _pods(emu)
    cache = PodCache(client, client.metrics)
    task = asyncio.create_task(cache.run_forever())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        first = cache.select_facts("one", "app=a")
        names = [p["metadata"]["name"] for p in cache.select("one", "app=a")]
        assert [f.name for f in first] == names == ["p0", "p10", "p2", "p4", "p6", "p8"]
        assert all(f.ready and f.pod_ip for f in first)
        again = cache.select_facts("one", "app=a")
        assert all(a is b for a, b in zip(first, again, strict=True))  # not read again
        # A watch event replaces p2 (now unready), another deletes p4.
        emu.set_pod_ready("one", "p2", False, "10.0.0.3")
        emu.delete_object("v1", "Pod", "one", "p4")

        def facts() -> dict[str, PodFacts]:
            return {f.name: f for f in cache.select_facts("one", "app=a")}

        await eventually(lambda: "p4" not in facts() and not facts()["p2"].ready)
        after, before = facts(), {f.name: f for f in first}
        assert after["p2"] is not before["p2"]
        assert all(after[name] is before[name] for name in ("p0", "p10", "p6", "p8"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_compacted_history_makes_the_cache_list_again(api) -> None:
    emu, client = api
    _pods(emu)
    cache = PodCache(client, client.metrics)
    # every watch request waits a little: a reconnect lands after the compaction below
    emu.delay("GET", r"/api/v1/pods$", 0.5, watch=True, times=None)
    task = asyncio.create_task(cache.run_forever())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        await eventually(lambda: emu.open_watches_on(r"/pods$") == 1)
        await emu.drop_watches()
        # While it reconnects, pods change and the history is compacted: 410.
        emu.delete_object("v1", "Pod", "one", "p1")
        emu.make_pod("late", "two", labels={"app": "b"}, ready=True, pod_ip="10.0.2.1")
        emu.compact()
        await eventually(lambda: _restarts(client, "pods_expired") >= 1)
        await eventually(lambda: _lists(emu) == 2 and len(cache) == 24)
        assert await _same_as_the_server(emu, client, cache)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_refused_watch_leaves_no_stale_cache_in_use(api) -> None:
    """Watch refused for good (say, RBAC without `watch` on pods): every failure
    marks the cache unsynced, so ticks list pods themselves, and each new attempt lists
    again, so the cache is never older than its last list."""
    emu, client = api
    _pods(emu)
    emu.fail("GET", r"/api/v1/pods$", 403, times=None, watch=True)
    cache = PodCache(client, client.metrics)
    unsynced_seen = []
    task = asyncio.create_task(cache.run_forever())

    def check() -> bool:
        if _lists(emu) >= 1 and not cache.synced.is_set():
            unsynced_seen.append(True)
        return _lists(emu) >= 3 and bool(unsynced_seen)

    try:
        await eventually(check, timeout_s=60, every_s=0.01)
        assert _restarts(client, "pods_failed") >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _restarts(client: KubeApi, cause: str) -> float:
    sample = "rscore_autoscaler_watch_restarts_total"
    return client.metrics.registry.get_sample_value(sample, {"cause": cause}) or 0.0


def _lists(emu: KubeEmulator) -> int:
    return sum(1 for r in emu.requests if r.path == "/api/v1/pods" and not r.watch)


# --- a tick reads no pods from the API server ---------------------------------------------


@dataclass
class Leading:
    """A controller leading over a Scene: its pod cache and metrics, the emulator."""

    emu: KubeEmulator
    scene: Scene
    cache: PodCache
    controller: Controller
    metrics: ControllerMetrics


@asynccontextmanager
async def leading(
    tmp_path: Path, *, replicas: int, pinned: int, with_pods: bool = False
) -> AsyncIterator[Leading]:
    """A Scene of `replicas` (their pods made when `with_pods`), one ScoringAutoscaler
    pinned at `pinned` replicas, and a controller leading over it (1 s ticks) once its
    pod cache and its ScoringAutoscaler watch are synced; all stopped at the end."""
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, replicas=replicas)
        if with_pods:
            await scene.sync_pods()
        metrics = ControllerMetrics()
        client = await KubeApi.connect(emu.write_kubeconfig(tmp_path / "kubeconfig"), metrics)
        cache = PodCache(client, metrics)
        scene.add_autoscaler(minReplicas=pinned, maxReplicas=pinned)
        controller = Controller(client, metrics, interval_s=1.0, pods=cache)
        tasks = [
            asyncio.create_task(controller.watch_forever()),
            asyncio.create_task(cache.run_forever()),
        ]
        try:
            await cache.synced.wait()
            await controller.synced.wait()
            tasks.append(asyncio.create_task(controller.lead(lambda: True)))
            yield Leading(emu, scene, cache, controller, metrics)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
            await scene.close()


async def test_api_reads_per_tick_stay_flat_as_pods_grow(tmp_path: Path) -> None:
    # Pinned at 12 pods: the first tick scales 2 -> 12, then nothing moves.
    async with leading(tmp_path, replicas=2, pinned=12) as run:
        few = await _reads_over(run.emu, run.controller, ticks=4)
        await eventually(lambda: run.scene.replicas == 12)
        await run.scene.sync_pods()  # 12 pods now, each with its metrics server
        await eventually(lambda: len(run.cache.select(NS, "app=scorer")) == 12)
        many = await _reads_over(run.emu, run.controller, ticks=4)
    # The pods come from the watch, never from a list. While 2 pods stand for 12 replicas
    # (moving), each tick reads the /scale again; once the 12 pods are there, the last
    # read stands (rscore.autoscaler.observe.scale_read_due): no read at all.
    assert few == ["GET scale"] * 4, few
    assert many == [], many


async def test_a_scale_by_someone_else_is_seen_as_its_pods_change(tmp_path: Path) -> None:
    """With the last /scale read standing (the pods agree with it), `kubectl scale` by
    someone else shows in the pod watch: the next tick reads the /scale, sees 5, and
    puts the target back where the policy wants it (12, pinned)."""
    async with leading(tmp_path, replicas=12, pinned=12, with_pods=True) as run:
        emu = run.emu
        assert await _reads_over(emu, run.controller, ticks=3) == []  # after the first read
        deployment = emu.get_object("apps/v1", "Deployment", NS, "scorer")
        assert deployment is not None
        deployment["spec"]["replicas"] = 5  # `kubectl scale --replicas=5`
        emu.put_object(deployment)
        await run.scene.sync_pods()  # its ReplicaSet removes 7 pods
        await eventually(lambda: run.scene.replicas == 12, timeout_s=WAIT_S)
        scale_patches = [
            r for r in emu.requests if r.method == "PATCH" and r.path.endswith("/scale")
        ]
        assert scale_patches, "the target was not put back"
    assert run.metrics.registry.get_sample_value("rscore_autoscaler_scale_reads_total") >= 2


async def test_a_new_scale_target_is_read_at_the_next_tick(tmp_path: Path) -> None:
    """The last /scale read is its target's: when the spec names another target, the
    next tick reads that one (not the old one's pods and replicas) and scales it."""
    async with leading(tmp_path, replicas=3, pinned=3) as run:
        emu = run.emu
        emu.make_deployment("other", NS, replicas=1)
        assert await _reads_over(emu, run.controller, ticks=2) == []  # 3 pods, 3 replicas
        autoscaler = emu.get_object("rscore.dev/v1alpha1", "ScoringAutoscaler", NS, "scorer")
        assert autoscaler is not None
        autoscaler["spec"]["scaleTargetRef"]["name"] = "other"
        emu.put_object(autoscaler)
        reads = await _reads_over(emu, run.controller, ticks=2)

        def other_replicas() -> int:
            other = emu.get_object("apps/v1", "Deployment", NS, "other")
            assert other is not None
            return int(other["spec"]["replicas"])

        await eventually(lambda: other_replicas() == 3, timeout_s=WAIT_S)
    assert "GET scale" in reads, reads


async def _reads_over(emu: KubeEmulator, controller: Controller, ticks: int) -> list[str]:
    """The API reads (not watches, not the Lease) of the next `ticks` whole ticks."""
    start = controller.ticks + 1
    await eventually(lambda: controller.ticks >= start)
    first = len(emu.requests)
    await eventually(lambda: controller.ticks >= start + ticks)
    reads = [r for r in emu.requests[first:] if r.method == "GET" and not r.watch]
    return [f"GET {r.path.rsplit('/', 1)[-1]}" for r in reads]
