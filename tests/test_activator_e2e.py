"""Scale from zero, end to end: the emulated API server (behind the real
kubernetes_asyncio client), the real controller (`rscore autoscaler`), a real
`rscore activator` and a real pod (`rscore serve` of the example mtcars-lm bundle).

The scoring Deployment starts at 0 replicas with `minReplicas: 0` and the activator named
in `spec.activator`. A request sent to the activator is held; the controller reads the
held request from the activator's /metrics as unrouted demand and scales the Deployment
up from 0 (to 1 or more, as the policy sees fit); only then does the test play kubelet
and start the pod. The held request is answered 200 with R's own predictions, and once
idle the Deployment goes back to 0.

Then the controller alone, with a stand-in activator page: held requests scale from
zero, and an activator that cannot be read never makes anything scale down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from autoscaler_scene import Scene
from fake_pods import free_port
from helpers import assert_same_predictions, eventually
from kube_emulator import KubeEmulator
from test_autoscaler_e2e import rscore_autoscaler
from test_serve_acceptance import mtcars  # noqa: F401  (a fixture: R's own predictions)

pytestmark = [pytest.mark.real_r, pytest.mark.e2e]  # markers: pyproject.toml

RSCORE = Path(sys.executable).with_name("rscore")
NS = "models"
HOST = "127.0.0.1"
CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": HOST, "no_proxy": HOST}


def scoring_autoscaler(metrics_port: int, activator_port: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rscore.dev/v1alpha1",
        "kind": "ScoringAutoscaler",
        "metadata": {"name": "scorer", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scorer"},
            "minReplicas": 0,
            "maxReplicas": 3,
            "metricsPort": metrics_port,
            "stableWindowSeconds": 4,
            "activator": {
                "selector": {"matchLabels": {"app": "activator"}},
                "metricsPort": activator_port,
            },
            **spec,
        },
    }


def replicas(emu: KubeEmulator) -> int:
    deployment = emu.get_object("apps/v1", "Deployment", NS, "scorer")
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def status(emu: KubeEmulator) -> dict[str, Any]:
    obj = emu.get_object("rscore.dev/v1alpha1", "ScoringAutoscaler", NS, "scorer")
    assert obj is not None
    return obj.get("status") or {}


def cluster(emu: KubeEmulator, replicas: int = 0) -> None:
    """The namespace, the scoring Deployment, and the activator's (ready) pod."""
    emu.put_object(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}, "status": {}}
    )
    emu.make_deployment("scorer", NS, replicas=replicas)
    emu.make_pod("activator-0", NS, labels={"app": "activator"}, ready=True, pod_ip=HOST)


@contextlib.contextmanager
def process(log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group, SIGTERMed (then killed) at the end."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(RSCORE), *args], stdout=sink, stderr=sink, env=CHILD_ENV,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def answers(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
    try:
        async with session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def held(session: aiohttp.ClientSession, metrics_url: str) -> float:
    async with session.get(metrics_url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("rscore_activator_held_requests "):
            return float(line.split()[1])
    raise AssertionError("no rscore_activator_held_requests on the activator's page")


async def test_a_request_at_zero_scale_is_answered_with_the_models_prediction(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The example bundle, examples/requests/mtcars-lm.json, and R's own predictions for it.
    bundle, body, expected = request.getfixturevalue("mtcars")
    pod_port, pod_metrics, act_port, act_metrics = (free_port() for _ in range(4))
    act_metrics_url = f"http://{HOST}:{act_metrics}/metrics"
    async with KubeEmulator() as emu, aiohttp.ClientSession() as client:
        cluster(emu, replicas=0)
        emu.put_object(scoring_autoscaler(pod_metrics, act_metrics))
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
        with process(
            tmp_path / "activator.log", "activator", "--upstream", f"http://{HOST}:{pod_port}",
            "--port", str(act_port), "--metrics-port", str(act_metrics),
        ) as activator:  # fmt: skip
            await _until(lambda: answers(client, act_metrics_url, activator))
            async with rscore_autoscaler(kubeconfig, tmp_path / "controller.log"):
                # At zero with nothing held, zero stays zero (the controller does look).
                await eventually(lambda: len(emu.writes(r"/status$")) >= 1)
                assert replicas(emu) == 0

                sent = asyncio.create_task(
                    client.post(f"http://{HOST}:{act_port}/score", json=body)
                )
                await _until(lambda: _equals(held(client, act_metrics_url), 1.0))
                # The controller read the held request and scaled up from zero (by as
                # many pods as the policy wants for one waiting request).
                await eventually(lambda: replicas(emu) >= 1, timeout_s=30)
                assert not sent.done()  # still held: no pod exists yet

                # Kubelet starts the pod (only now), and marks it ready once it is.
                emu.make_pod("scorer-0", NS, labels={"app": "scorer"})
                with process(
                    tmp_path / "pod.log", "serve", str(bundle), "--workers", "1",
                    "--auth", "none", "--host", HOST, "--port", str(pod_port),
                    "--metrics-port", str(pod_metrics),
                ) as pod:  # fmt: skip
                    async with asyncio.timeout(120):
                        response = await sent
                    assert response.status == 200
                    assert_same_predictions((await response.json())["predictions"], expected)
                    assert await held(client, act_metrics_url) == 0

                    await _until(lambda: answers(client, f"http://{HOST}:{pod_port}/readyz", pod))
                    emu.set_pod_ready(NS, "scorer-0", pod_ip=HOST)
                    # Forwarded at once now; the same answer as asking the pod directly.
                    async with client.post(f"http://{HOST}:{act_port}/score", json=body) as through:
                        assert through.status == 200
                        assert_same_predictions((await through.json())["predictions"], expected)

                    # Idle: back to zero once the stable window has no demand in it.
                    await eventually(lambda: replicas(emu) == 0, timeout_s=60)
                    scaled = [w.body["spec"]["replicas"] for w in emu.writes(r"/scale$")]
                    assert scaled[0] >= 1
                    assert scaled[-1] == 0
        log = (tmp_path / "activator.log").read_text()
        assert "holding requests" in log
        assert "releasing 1 held request(s)" in log


async def _until(check: Any, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


async def _equals(value: Any, expected: float) -> bool:
    return await value == expected


# --- the controller's side, with a stand-in activator page --------------------------------


class ActivatorPage:
    """A real /metrics server on 127.0.0.1 that reports `held` held requests, or fails."""

    def __init__(self) -> None:
        self.port = free_port()
        self.held = 0
        self.failing = False
        self.scrapes = 0
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.failing:
            return web.Response(status=500, text="down")
        return web.Response(
            text="# TYPE rscore_activator_held_requests gauge\n"
            f"rscore_activator_held_requests {self.held}\n"
        )

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[ActivatorPage]:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        try:
            yield self
        finally:
            await self._runner.cleanup()


def scale_writes(emu: KubeEmulator, start: int, end: int | None = None) -> list[int]:
    """The replicas written to the Deployment's /scale by emu.requests[start:end]."""
    return [
        r.body["spec"]["replicas"]
        for r in emu.requests[start:end]
        if r.method == "PATCH" and r.path.endswith("/deployments/scorer/scale")
        and 0 < r.status < 400
    ]  # fmt: skip


async def _follow_deployment(scene: Scene) -> None:
    """Kubelet and the Deployment controller: ready pods (real /metrics servers reporting
    no load) to match the replicas."""
    while True:
        await scene.sync_pods()
        await asyncio.sleep(0.05)


async def test_held_requests_scale_from_zero_and_an_unread_activator_never_scales_down(
    tmp_path: Path,
) -> None:
    async with KubeEmulator() as emu, ActivatorPage().serving() as page:
        scene = await Scene.build(emu, replicas=0)
        follower = asyncio.create_task(_follow_deployment(scene))
        try:
            emu.make_pod("activator-0", NS, labels={"app": "activator"}, ready=True, pod_ip=HOST)
            activator = {
                "selector": {"matchLabels": {"app": "activator"}},
                "metricsPort": page.port,
            }
            scene.add_autoscaler(minReplicas=0, activator=activator)
            kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
            async with rscore_autoscaler(kubeconfig, tmp_path / "controller.log"):
                await eventually(lambda: page.scrapes >= 4)
                assert scene.replicas == 0
                page.held = 3  # three requests wait at the activator, no pod exists
                await eventually(lambda: scene.replicas >= 1)
                await eventually(lambda: len(scene.pods) == scene.replicas >= 1)

                # The activator cannot be read: the held demand is unknown, and unknown
                # demand never scales down, however long it lasts (the pods report none).
                page.failing = True
                page.held = 0
                mark = len(emu.requests)
                since = page.scrapes
                await eventually(lambda: page.scrapes >= since + 24)
                assert scene.replicas >= 1
                scaled = [scale_writes(emu, 0, mark), scale_writes(emu, mark)]
                # Whatever was written while unread went up, never down.
                sequence = [scaled[0][-1], *scaled[1]]
                assert sequence == sorted(sequence), sequence
                assert "held requests unknown" in scene.status()["reason"]
                events = [
                    o for o in emu.list_objects("v1", "Event", NS)
                    if o.get("reason") == "FailedGetActivatorMetrics"
                ]  # fmt: skip
                assert len(events) == 1  # announced once, not on every tick
                assert events[0]["type"] == "Warning"

                # Readable again and nothing held: down to zero.
                page.failing = False
                await eventually(lambda: scene.replicas == 0, timeout_s=60)
        finally:
            follower.cancel()
            await scene.close()
