"""Shards (rscore.autoscaler.shards): ScoringAutoscalers split by a stable hash, each shard
electing its leader on a Lease of its own; a shard whose leader dies is taken over by
its standby within the lease duration, and its objects never have two writers.

Four replicas (two per shard) run in this process as `rscore autoscaler` runs them (a
Controller of its shard under a Leadership of the shard's Lease), each with its own
client and bearer token, so the emulated API server's log tells who sent what. Fake
loop time (looptime), as the leader election's tests: deadlines are checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import eventually
from kube_emulator import KubeEmulator, RecordedRequest

from rscore.autoscaler.controller import Controller
from rscore.autoscaler.kube_io import KubeApi
from rscore.autoscaler.leader import Leadership
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.shards import ShardError, lease_name, ordinal_of, shard_index, shard_of

pytestmark = pytest.mark.looptime

NS = "models"
SHARDS = 2
LEASE = {"lease_duration_s": 3, "renew_deadline_s": 2.0, "retry_period_s": 1.0}


def test_the_hash_is_stable_and_spreads_the_objects() -> None:
    # Fixed values: every replica, Python and restart must agree (no salted hash()).
    assert [shard_of("models", f"m{i}", 4) for i in range(8)] == [
        shard_of("models", f"m{i}", 4) for i in range(8)
    ]
    assert shard_of("models", "scorer", 1) == 0
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of("ns", f"model-{i}", 3)] += 1
    assert all(900 < c < 1100 for c in counts), counts


@pytest.mark.parametrize(
    ("shards", "flag", "pod", "expected"),
    [
        (1, None, "anything", 0),
        (2, 1, "whatever", 1),
        (2, None, "rscore-autoscaler-0", 0),
        (2, None, "rscore-autoscaler-3", 1),  # a StatefulSet of 4: two replicas a shard
        (3, None, "rscore-autoscaler-7", 1),
    ],
)
def test_shard_index(shards: int, flag: int | None, pod: str, expected: int) -> None:
    assert shard_index(shards, flag, pod) == expected


@pytest.mark.parametrize(("shards", "flag", "pod"), [(2, None, "host"), (2, 2, "x-0")])
def test_no_shard_index(shards: int, flag: int | None, pod: str) -> None:
    with pytest.raises(ShardError):
        shard_index(shards, flag, pod)


def test_lease_names_and_ordinals() -> None:
    assert lease_name("rscore-autoscaler", 0, 1) == "rscore-autoscaler"  # as before shards
    assert lease_name("rscore-autoscaler", 1, 2) == "rscore-autoscaler-shard-1"
    assert ordinal_of("rscore-autoscaler-12") == 12
    assert ordinal_of("rscore-autoscaler-7d9f-x2") is None


@dataclass
class Replica:
    name: str
    shard: int
    api: KubeApi
    controller: Controller
    leadership: Leadership
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.controller.watch_forever()),
            asyncio.create_task(self.leadership.run(self.controller.lead)),
        ]

    async def kill(self) -> None:
        """As a process killed: no request leaves it from now on (not even the Lease's
        release on the way out)."""
        await self.api.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _replica(emu: KubeEmulator, tmp: Path, name: str, shard: int) -> Replica:
    metrics = ControllerMetrics()
    kubeconfig = emu.write_kubeconfig(tmp / f"{name}.kubeconfig", token=name)
    api = await KubeApi.connect(kubeconfig, metrics)
    controller = Controller(
        api, metrics, interval_s=0.5, shards=SHARDS, shard_index=shard, scrape_timeout_s=0.2
    )
    leadership = Leadership(
        api,
        metrics,
        lease_name=lease_name("rscore-autoscaler", shard, SHARDS),
        lease_namespace="default",
        identity=name,
        **LEASE,
    )
    return Replica(name, shard, api, controller, leadership)


def _objects(emu: KubeEmulator, count: int) -> dict[str, int]:
    """`count` ScoringAutoscalers over Deployments without pods; their shards."""
    emu.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    shards = {}
    for i in range(count):
        name = f"model-{i}"
        emu.make_deployment(name, NS, replicas=1)
        emu.make_scoring_autoscaler(name, NS, minReplicas=1, maxReplicas=3, metricsPort=1)
        shards[name] = shard_of(NS, name, SHARDS)
    return shards


def _overscale(emu: KubeEmulator, objects: dict[str, int]) -> None:
    for name in objects:
        deployment = emu.get_object("apps/v1", "Deployment", NS, name)
        assert deployment is not None
        deployment["spec"]["replicas"] = 5  # above maxReplicas
        emu.put_object(deployment)


def _replicas(emu: KubeEmulator, name: str) -> int:
    deployment = emu.get_object("apps/v1", "Deployment", NS, name)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def _object_of(request: RecordedRequest) -> str | None:
    """The ScoringAutoscaler a request acts for: its target's /scale, or its status."""
    parts = request.path.split("/")
    if parts[-1] == "scale" and "deployments" in parts:
        return parts[-2]
    if parts[-1] == "status" and "scoringautoscalers" in parts:
        return parts[-2]
    return None


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator() as server:
        yield server


async def test_a_dead_shard_leader_is_replaced_within_the_lease_and_never_doubled(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    shard_of_object = _objects(emu, 8)
    assert set(shard_of_object.values()) == {0, 1}  # both shards carry objects
    replicas = {
        name: await _replica(emu, tmp_path, name, shard)
        for name, shard in (("a0", 0), ("b0", 0), ("a1", 1), ("b1", 1))
    }
    loop = asyncio.get_running_loop()
    for name in ("a0", "a1"):  # the first of each shard leads
        replicas[name].start()
        await eventually(lambda n=name: replicas[n].leadership.leading())
    for name in ("b0", "b1"):
        replicas[name].start()
    try:
        await eventually(lambda: replicas["a0"].controller.ticks >= 4)
        await replicas["a0"].kill()
        killed_at = loop.time()
        _overscale(emu, shard_of_object)  # work for the next leader: scale each back to 3
        await eventually(replicas["b0"].leadership.leading, timeout_s=30)
        await eventually(lambda: all(_replicas(emu, name) == 3 for name in shard_of_object))
    finally:
        for replica in replicas.values():
            if replica.name != "a0":
                await replica.kill()

    acting = [(r, _object_of(r)) for r in emu.requests if _object_of(r) is not None]
    by_object: dict[str, list[RecordedRequest]] = {}
    for request, obj in acting:
        assert obj is not None
        by_object.setdefault(obj, []).append(request)
    assert set(by_object) == set(shard_of_object)  # every object was reconciled
    for obj, requests in by_object.items():
        shard = shard_of_object[obj]
        senders = {r.user for r in requests}
        # Only its shard's replicas ever act for an object; shard 1's leader never
        # changed, so one replica did it all.
        assert senders <= {f"a{shard}", f"b{shard}"}, (obj, senders)
        if shard == 1:
            assert senders == {"a1"}, (obj, senders)
            continue
        # Shard 0: a0 until it died, then b0, never interleaved.
        users = [r.user for r in requests]
        assert users == sorted(users), (obj, users)  # all of a0's, then all of b0's
        assert senders == {"a0", "b0"}, (obj, senders)
        first_b0 = min(r.at for r in requests if r.user == "b0")
        # Taken over within the lease duration of the last renewal b0 could have seen
        # (it reads the Lease every retry period), and not a moment before it expired.
        assert first_b0 <= killed_at + LEASE["lease_duration_s"] + LEASE["retry_period_s"]
        last_renewal = max(
            r.at
            for r in emu.requests
            if r.user == "a0" and r.method == "PUT" and r.path.endswith("shard-0")
        )
        assert first_b0 >= last_renewal + LEASE["lease_duration_s"]
    # The writes of shard 0's objects: a0's all before any of b0's.
    writes = [
        r
        for r, obj in acting
        if r.method == "PATCH" and obj is not None and shard_of_object[obj] == 0
    ]
    a0_writes = [r.at for r in writes if r.user == "a0"]
    b0_writes = [r.at for r in writes if r.user == "b0"]
    assert a0_writes
    assert b0_writes
    assert max(a0_writes) < min(b0_writes)
