"""`rscore autoscaler` as a real process, against the emulated API server (the real
kubernetes_asyncio client over HTTP) and real /metrics servers standing in for pods.

The issue's acceptance: two pods with 2 workers each reporting 8 total concurrency at
targetUtilization 0.7 are scaled to ceil(8 / 1.4) = 6; the node pool follows at once on
the way up and only after its delay on the way down; with metrics missing nothing scales
down; two controllers with leader election never both write.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from autoscaler_scene import NS, Scene
from fake_pods import free_port
from helpers import eventually
from kube_emulator import KubeEmulator, RecordedRequest

pytestmark = pytest.mark.e2e  # markers: pyproject.toml

RSCORE = Path(sys.executable).with_name("rscore")


@asynccontextmanager
async def rscore_autoscaler(
    kubeconfig: Path, log: Path, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(RSCORE),
            "autoscaler",
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
            "--interval-s",
            "0.25",
            "--scrape-timeout-s",
            "0.5",
            *args,
            stdout=sink,
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def kubeconfig_with_token(emu: KubeEmulator, path: Path, token: str) -> Path:
    """The emulator's kubeconfig, with a user token that tells the writers apart."""
    emu.write_kubeconfig(path)
    config = yaml.safe_load(path.read_text())
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


async def _follow_deployment(scene: Scene) -> None:
    while True:
        await scene.sync_pods()
        scene.set_total_concurrency(scene.per_pod_concurrency * len(scene.pods))
        await asyncio.sleep(0.05)


async def test_rscore_autoscaler_scales_to_six_and_the_pool_follows(tmp_path: Path) -> None:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, replicas=2, nodes=1)
        follower = asyncio.create_task(_follow_deployment(scene))
        try:
            scene.add_autoscaler(
                targetUtilization=0.7,
                nodePool={
                    "minNodes": 0,
                    "maxNodes": 4,
                    "podsPerNode": 2,
                    "scaleDownDelaySeconds": 3,
                },
            )
            scene.set_total_concurrency(8)  # 2 pods x 2 workers, 4 each
            kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
            async with rscore_autoscaler(kubeconfig, tmp_path / "controller.log") as process:
                # Up: ceil(8 / (2 x 1.0 x 0.7)) = 6 pods, ceil(6 / 2) = 3 nodes, together.
                await eventually(lambda: scene.replicas == 6, timeout_s=3 * 4 + 10)
                await eventually(lambda: scene.nodes == 3, timeout_s=10)
                # the status is written after the scale patches of the same tick
                await eventually(
                    lambda: (
                        (scene.status().get("desiredReplicas"), scene.status().get("desiredNodes"))
                        == (6, 3)
                    ),
                    timeout_s=10,
                )

                # Down: the load stops; the nodes go once the pool's 3 s delay has passed,
                # and the pods with them (pods fill the nodes that are paid for).
                scene.per_pod_concurrency = 0
                loop = asyncio.get_running_loop()
                idle_since = loop.time()
                pods_fell_at = nodes_fell_at = None
                deadline = loop.time() + 60
                while nodes_fell_at is None:
                    assert loop.time() < deadline, (scene.replicas, scene.nodes)
                    if pods_fell_at is None and scene.replicas < 6:
                        pods_fell_at = loop.time()
                    if scene.nodes < 3:
                        nodes_fell_at = loop.time()
                    await asyncio.sleep(0.02)
                assert pods_fell_at is not None
                # the delay runs from the tick that saw the load gone, which a loaded
                # machine may take a while to finish: allow a second
                assert nodes_fell_at - idle_since >= 3 - 1.0
                assert pods_fell_at - idle_since >= 3 - 1.0
                # minReplicas 1 needs one node, and the pods fill it: 2
                await eventually(lambda: scene.replicas == 2 and scene.nodes == 1)
            assert process.returncode == 0, "no clean exit on SIGTERM within 10 s"
        finally:
            follower.cancel()
            await scene.close()


async def test_rscore_autoscaler_never_scales_down_without_metrics(tmp_path: Path) -> None:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, replicas=3)
        try:
            for pod in scene.pods.values():
                pod.failing = True
            scene.add_autoscaler()
            kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
            async with rscore_autoscaler(kubeconfig, tmp_path / "controller.log"):
                await eventually(lambda: all(p.scrapes >= 12 for p in scene.pods.values()))
                assert scene.replicas == 3
                assert emu.writes(r"/scale$") == []
                conditions = {c["type"]: c for c in scene.status()["conditions"]}
                active = conditions["ScalingActive"]
                assert (active["status"], active["reason"]) == ("False", "NoMetrics")
        finally:
            await scene.close()


def _writes_by_token(emu: KubeEmulator, since: int = 0) -> list[str]:
    """Who made each write to the autoscaler's targets, status and events, in order."""
    return [
        r.user or "?"
        for r in emu.requests[since:]
        if r.method in ("POST", "PUT", "PATCH")
        and re.search(r"/(scale|status|events)$", r.path)
        and "/leases/" not in r.path
        and 0 < r.status < 400
    ]


def _is_lease_write(r: RecordedRequest) -> bool:
    return (
        r.method in ("POST", "PUT")
        and ("/leases/" in r.path or r.path.endswith("/leases"))
        and 0 < r.status < 400
    )


def _holder_token(emu: KubeEmulator) -> str:
    """The token of the controller holding the Lease now."""
    identity_of = {
        r.user: r.body["spec"]["holderIdentity"] for r in emu.requests if _is_lease_write(r)
    }
    lease = emu.get_object("coordination.k8s.io/v1", "Lease", NS, "rscore-autoscaler")
    assert lease is not None
    (token,) = [t for t, i in identity_of.items() if i == lease["spec"]["holderIdentity"]]
    return str(token)


def _writes_by_non_holders(emu: KubeEmulator) -> list[tuple[str, str | None]]:
    """Writes made by a controller that did not hold the Lease when the write arrived.

    The Lease holder is replayed from the successful Lease writes (the holder identity,
    known by the writer's token); a term may legitimately pass back and forth.
    """
    identity_of: dict[str, str] = {}  # token -> identity
    holder: str | None = None
    wrong: list[tuple[str, str | None]] = []
    for r in emu.requests:
        if _is_lease_write(r):
            holder = ((r.body or {}).get("spec") or {}).get("holderIdentity")
            if holder and r.user:
                identity_of[r.user] = holder
        elif (
            r.method in ("POST", "PUT", "PATCH")
            and 0 < r.status < 400
            and re.search(r"/(scale|status|events)$", r.path)
            and (holder is None or identity_of.get(r.user or "") != holder)
        ):
            wrong.append((r.user or "?", holder))
    return wrong


@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_two_controllers_with_leader_election_never_both_write(
    tmp_path: Path, how: str
) -> None:
    lease = ["--lease-duration-s", "3", "--renew-deadline-s", "2", "--retry-period-s", "1"]
    lease += ["--lease-namespace", NS]
    # Every change of the readings written at once (no heartbeat): each tick of the
    # leader writes, so a write by the wrong replica would show within a tick.
    lease += ["--status-heartbeat-s", "0"]
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, replicas=2)
        try:
            scene.add_autoscaler()
            scene.set_total_concurrency(8)
            configs = {
                who: kubeconfig_with_token(emu, tmp_path / f"{who}.kubeconfig", who)
                for who in ("a", "b")
            }
            async with (
                rscore_autoscaler(configs["a"], tmp_path / "a.log", *lease) as a,
                rscore_autoscaler(configs["b"], tmp_path / "b.log", *lease) as b,
            ):
                await eventually(lambda: scene.replicas == 6)
                await eventually(lambda: len(_writes_by_token(emu)) >= 5)
                leader = _holder_token(emu)
                processes = {"a": a, "b": b}
                other = "b" if leader == "a" else "a"
                mark = len(emu.requests)

                # The leader goes away: killed, or frozen (as a partitioned or paused
                # process) and later resumed, still believing it leads.
                if how == "killed":
                    processes[leader].kill()
                else:
                    processes[leader].send_signal(signal.SIGSTOP)
                await eventually(lambda: other in _writes_by_token(emu, mark), timeout_s=20)
                if how == "frozen":
                    resumed = len(emu.requests)
                    processes[leader].send_signal(signal.SIGCONT)

                    def lease_calls_of_the_resumed() -> int:
                        return sum(
                            1
                            for r in emu.requests[resumed:]
                            if r.user == leader and "/leases" in r.path
                        )

                    # it runs again (its election reads the Lease each retry period):
                    # several of its ticks would have written by now, had it kept acting
                    await eventually(lambda: lease_calls_of_the_resumed() >= 3, timeout_s=30)
                writers = _writes_by_token(emu)
                assert set(writers) == {leader, other}
                # Only the Lease holder of the moment ever writes (the order of takeovers
                # is left free: on a loaded machine a renewal may fail and the term move).
                assert _writes_by_non_holders(emu) == []
            # SIGTERM stops a candidate cleanly within the bound, leading or not
            assert processes[other].returncode == 0
            if how == "frozen":
                assert processes[leader].returncode == 0
        finally:
            await scene.close()


@pytest.mark.parametrize(
    ("args", "env_drop", "message"),
    [
        ([], "KUBECONFIG", "from the in-cluster service account: Service host/port is not set"),
        (["--kubeconfig", "{bad}"], None, "cannot configure the Kubernetes client from"),
        (
            ["--lease-duration-s", "5", "--renew-deadline-s", "6"],
            None,
            "need --lease-duration-s > --renew-deadline-s",
        ),
    ],
    ids=["no-config-outside-a-pod", "unreadable-kubeconfig", "bad-lease-timing"],
)
def test_configuration_errors_are_named_without_a_traceback(
    tmp_path: Path, args: list[str], env_drop: str | None, message: str
) -> None:
    import subprocess

    bad = tmp_path / "kubeconfig"
    bad.write_text("not yaml: [\n")
    env = {k: v for k, v in os.environ.items() if k not in (env_drop, "KUBERNETES_SERVICE_HOST")}
    if "--lease-duration-s" in args:
        args = [*args, "--kubeconfig", str(bad)]
    result = subprocess.run(
        [str(RSCORE), "autoscaler", "--metrics-port", "0", *(a.format(bad=bad) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
