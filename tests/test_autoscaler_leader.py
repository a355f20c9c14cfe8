"""Leader election (rscore.autoscaler.leader), and the write guard and Retry-After of
rscore.autoscaler.kube_io, against the emulated API server through the real kubernetes_asyncio
client.

The event loop runs on fake time (looptime): sleeps, timeouts and the emulator's delays
take no real time, and the loop's clock moves only when nothing is left to do but wait,
so the election's deadlines are checked exactly, however loaded the machine is. Waits
for a state are `eventually` (polling, bounded in loop time).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually
from kube_emulator import KubeEmulator
from kubernetes_asyncio import config

from rscore.autoscaler.kube_io import ApiError, KubeApi, LeaseRecord, NotLeading
from rscore.autoscaler.leader import Leadership
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.spec import TargetRef


def idle_work(ended: asyncio.Event | None = None) -> Callable[[Callable[[], bool]], Any]:
    """A term's work that does nothing until cancelled, then sets `ended`."""

    async def work(_leading: Callable[[], bool]) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            if ended is not None:
                ended.set()

    return work


pytestmark = pytest.mark.looptime

LEASE = {"lease_duration_s": 3, "renew_deadline_s": 2.0, "retry_period_s": 1.0}
LEASE_PATH = r"/namespaces/default/leases/rscore-autoscaler$"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, object]]:
    async with KubeEmulator() as emu:
        client = await config.new_client_from_config(
            config_file=str(emu.write_kubeconfig(tmp_path / "kubeconfig"))
        )
        try:
            yield emu, client
        finally:
            await client.close()


def _leadership(client: object, identity: str = "me") -> Leadership:
    return Leadership(
        KubeApi(client, ControllerMetrics()),  # type: ignore[arg-type]
        ControllerMetrics(),
        lease_name="rscore-autoscaler",
        lease_namespace="default",
        identity=identity,
        **LEASE,
    )


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, "the candidate did not stop when cancelled"


async def test_a_write_is_not_retried_after_leadership_is_lost(api) -> None:
    emu, client = api
    emu.make_deployment("web", "default", replicas=2)
    emu.fail("PATCH", r"/deployments/web/scale$", 500, times=1)
    answers = iter([True, False])  # leading for the first attempt, not for the retry
    kube = KubeApi(client, ControllerMetrics(), backoff_base_s=0.01)  # type: ignore[arg-type]
    with pytest.raises(NotLeading):
        await kube.patch_scale(
            "default", TargetRef("apps/v1", "Deployment", "web"), 5, guard=lambda: next(answers)
        )
    assert len(emu.writes(r"/deployments/web/scale$")) == 1
    assert emu.get_object("apps/v1", "Deployment", "default", "web")["spec"]["replicas"] == 2


async def test_a_term_ends_when_the_work_dies_and_the_candidate_stands_again(api) -> None:
    _emu, client = api
    leadership = _leadership(client)
    calls: list[bool] = []

    async def work(leading: Callable[[], bool]) -> None:
        calls.append(leading())
        if len(calls) == 1:
            raise RuntimeError("a bug in the first term")
        await asyncio.Event().wait()

    task = asyncio.create_task(leadership.run(work))
    try:
        await eventually(lambda: len(calls) >= 2)
        assert leadership.terms >= 2
        assert leadership.metrics.is_leader._value.get() == 1  # type: ignore[attr-defined]
    finally:
        await _stop(task)
    assert leadership.metrics.is_leader._value.get() == 0  # type: ignore[attr-defined]


async def test_a_cancel_while_the_work_winds_down_stops_the_candidate(api) -> None:
    emu, client = api
    leadership = _leadership(client)
    winding_down, release = asyncio.Event(), asyncio.Event()

    async def work(_leading: Callable[[], bool]) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            winding_down.set()
            await release.wait()  # a slow cleanup (closing connections)

    task = asyncio.create_task(leadership.run(work))
    try:
        await eventually(leadership.leading)
        emu.fail("*", LEASE_PATH, 500, times=None)  # renewals fail: the term ends
        await eventually(winding_down.is_set)
        task.cancel()  # SIGTERM arrives while the term's work winds down
        await asyncio.sleep(0)  # one turn of the loop: the cancel reaches the candidate
        release.set()
        done, _ = await asyncio.wait({task}, timeout=2 * LEASE["retry_period_s"] + 5)
        assert done, "the cancel was swallowed: the candidate stood for election again"
        assert task.cancelled()
    finally:
        release.set()
        if not task.done():
            await _stop(task)


async def test_leading_counts_from_when_the_renewal_was_sent(api) -> None:
    """A renewal whose answer is slow must not stretch the term: followers count the
    lease from when they saw the write, which is before the answer came back."""
    emu, client = api
    leadership = _leadership(client)
    loop = asyncio.get_running_loop()

    work = idle_work()

    def lease_puts() -> int:
        return sum(1 for r in emu.requests if r.method == "PUT" and "/leases/" in r.path)

    task = asyncio.create_task(leadership.run(work))
    try:
        await eventually(leadership.leading)
        before = lease_puts()
        emu.delay("PUT", LEASE_PATH, 0.5, times=1)  # answered 0.5 s after it was sent
        await eventually(lambda: lease_puts() > before, every_s=0.01)
        seen = loop.time()  # the slow renewal was sent at most 0.01 s before this
        emu.fail("*", LEASE_PATH, 500, times=None)  # and it is the last that succeeds
        delayed = [r for r in emu.requests if r.method == "PUT" and "/leases/" in r.path][before]
        await eventually(lambda: delayed.status != 0, every_s=0.01)
        assert delayed.status == 200
        assert loop.time() >= seen + 0.4
        await asyncio.sleep(seen + LEASE["renew_deadline_s"] + 0.2 - loop.time())
        # the renew deadline has passed since the send (a follower may take over 1 s
        # later), though not since the answer came: no more writes
        assert not leadership.leading()
    finally:
        await _stop(task)


async def test_retry_after_of_a_429_is_honoured(api) -> None:
    emu, client = api
    emu.make_deployment("web", "default", replicas=2)
    emu.fail("GET", r"/deployments/web/scale$", 429, times=1, retry_after=1)
    kube = KubeApi(client, ControllerMetrics(), backoff_base_s=0.01, backoff_cap_s=5.0)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    scale = await kube.get_scale("default", TargetRef("apps/v1", "Deployment", "web"))
    assert scale.replicas == 2
    assert loop.time() - started >= 1.0  # not the 10 ms backoff
    assert [r.status for r in emu.requests if r.path.endswith("/web/scale")] == [429, 200]


async def test_a_dropped_lease_connection_is_retried_within_the_term(api) -> None:
    emu, client = api
    leadership = _leadership(client)
    ended = asyncio.Event()

    work = idle_work(ended=ended)

    def lease_answers() -> list[int]:
        return [r.status for r in emu.requests if "/leases/" in r.path]

    task = asyncio.create_task(leadership.run(work))
    try:
        await eventually(leadership.leading)
        emu.reset("GET", LEASE_PATH, times=2)  # aiohttp itself retries a GET once
        await eventually(lambda: -1 in lease_answers())
        dropped_at = lease_answers().index(-1)
        # renewed after the drop, in the same term: the policy's memory is kept
        await eventually(lambda: lease_answers()[dropped_at + 1 :].count(200) >= 2)
        assert leadership.terms == 1
        assert not ended.is_set()
        assert leadership.leading()
    finally:
        await _stop(task)


async def test_a_hung_lease_call_ends_the_term_by_the_renew_deadline(api) -> None:
    emu, client = api
    leadership = _leadership(client)
    ended = asyncio.Event()

    work = idle_work(ended=ended)

    task = asyncio.create_task(leadership.run(work))
    try:
        await eventually(leadership.leading)
        emu.delay("GET", LEASE_PATH, 120.0, times=None)  # the API server stops answering
        # without a bound on each Lease call the term (and its work) would wait the 120 s
        # out, not leading, while a follower has long taken over: it ends before a
        # follower may take over, the lease duration after the last write
        await eventually(ended.is_set, timeout_s=LEASE["lease_duration_s"], every_s=0.01)
        assert not leadership.leading()
    finally:
        emu.clear_faults()
        await _stop(task)


async def test_a_leader_that_stops_releases_the_lease_after_its_work(api) -> None:
    emu, client = api
    leadership = _leadership(client)
    stopped = asyncio.Event()

    work = idle_work(ended=stopped)

    task = asyncio.create_task(leadership.run(work))
    await eventually(leadership.leading)
    follower = Leadership(
        KubeApi(client, ControllerMetrics()),  # type: ignore[arg-type]
        ControllerMetrics(),
        lease_name="rscore-autoscaler",
        lease_namespace="default",
        identity="other",
        **LEASE,
    )
    follower_task = asyncio.create_task(follower.run(work))
    try:
        await _stop(task)  # SIGTERM
        assert stopped.is_set()
        lease = emu.get_object("coordination.k8s.io/v1", "Lease", "default", "rscore-autoscaler")
        assert lease is not None
        # released (or, on a slow machine, already taken by the follower): never "me"
        assert lease["spec"].get("holderIdentity") in (None, "other")
        await eventually(follower.leading)
    finally:
        await _stop(follower_task)
    lease = emu.get_object("coordination.k8s.io/v1", "Lease", "default", "rscore-autoscaler")
    assert lease is not None
    assert "holderIdentity" not in lease["spec"]


async def test_a_partitioned_leader_stops_writing_before_the_follower_takes_over(api) -> None:
    """The leader's Lease writes stop reaching the server (a partition of that candidate
    alone): it stops leading at the renew deadline counted from its last write, and
    the follower takes over only the lease duration after it saw that write, so the
    two never lead at once, and one leads again after the gap."""
    _emu, client = api
    first, second = _leadership(client, "first"), _leadership(client, "second")
    loop = asyncio.get_running_loop()
    first_task = asyncio.create_task(first.run(idle_work()))
    await eventually(first.leading)
    second_task = asyncio.create_task(second.run(idle_work()))
    try:
        await eventually(lambda: second._observed is not None)
        partitioned = False

        async def unreachable(*_args: object, **_kwargs: object) -> LeaseRecord:
            raise ApiError("replace_lease", None, "timed out")

        async def partition() -> None:
            nonlocal partitioned
            await asyncio.sleep(2.5)
            first.api.replace_lease = unreachable  # type: ignore[method-assign]
            partitioned = True

        partitioning = asyncio.create_task(partition())
        first_stopped = second_started = None
        while second_started is None:
            assert not (first.leading() and second.leading()), loop.time()
            if partitioned and first_stopped is None and not first.leading():
                first_stopped = loop.time()
            if second.leading():
                second_started = loop.time()
            assert loop.time() < 60, "the follower never took over"
            await asyncio.sleep(0.01)
        assert partitioning.done()
        assert first_stopped is not None
        # lease duration - renew deadline: the margin for a write already on the wire
        margin = LEASE["lease_duration_s"] - LEASE["renew_deadline_s"]
        assert second_started - first_stopped >= margin - 0.02
        assert first.terms == 1
        assert second.terms == 1
    finally:
        await _stop(second_task)
        await _stop(first_task)
