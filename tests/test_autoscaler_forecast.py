"""The forecast in the controller: learnt from the ticks, kept in the ScoringAutoscaler's
status, restored by a new controller, and ordering nodes ahead of a periodic load.

The controller (rscore.autoscaler.controller.Controller, ticked by the test) runs against the
emulated API server through the real kubernetes_asyncio client, with real /metrics
servers as pods. Its wall clock is the test's: a simulated morning is a few dozen ticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from autoscaler_scene import APP, NS, Scene
from kube_emulator import KubeEmulator

from rscore.autoscaler.controller import Controller
from rscore.autoscaler.forecast import DemandProfile, forecast
from rscore.autoscaler.kube_io import KubeApi
from rscore.autoscaler.metrics import ControllerMetrics

pytestmark = pytest.mark.slow  # simulated mornings of real ticks against the emulator

MONDAY = datetime(2026, 11, 30, tzinfo=UTC).timestamp()
KEY = (NS, APP)
PROVISION_S = 240.0
STABLE_WINDOW_S = 4.0  # the scene's
HORIZON_S = PROVISION_S + STABLE_WINDOW_S


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> float:
    return MONDAY + day * 86400 + hh * 3600 + mm * 60 + ss


class Wall:
    """The controller's wall clock, moved by the test."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(kubeconfig: Path, wall: Wall) -> AsyncIterator[Ticker]:
    """A controller process stand-in: its own client, watch and memory; ticked by hand."""
    metrics = ControllerMetrics()
    api = await KubeApi.connect(kubeconfig, metrics, request_timeout_s=2.0, backoff_base_s=0.01)
    # A tick waits for its reconciles up to the interval: a generous bound, not a speed.
    controller = Controller(api, metrics, interval_s=10.0, scrape_timeout_s=1.0, wall_clock=wall)
    watch = asyncio.create_task(controller.watch_forever())
    try:
        await asyncio.wait_for(controller.synced.wait(), 10)
        async with aiohttp.ClientSession() as session:
            yield Ticker(controller, session, wall)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await api.close()


class Ticker:
    def __init__(self, controller: Controller, session: aiohttp.ClientSession, wall: Wall) -> None:
        self.controller = controller
        self.session = session
        self.wall = wall
        self.ticks = 0

    async def tick_at(self, wall_s: float) -> None:
        self.wall.now = wall_s
        await self.controller.tick(self.session, lambda: True)
        self.ticks += 1

    @property
    def profile(self) -> DemandProfile:
        return self.controller.memory[KEY].policy_state.profile


def _saved(scene: Scene) -> DemandProfile:
    return DemandProfile.from_dict(scene.status()["demandProfile"])


def _profile_writes(emu: KubeEmulator) -> list[dict[str, Any]]:
    return [
        r.body["status"]["demandProfile"]
        for r in emu.writes(rf"/scoringautoscalers/{APP}/status$")
        if r.status == 200 and "demandProfile" in r.body["status"]
    ]


async def _load(scene: Scene, total: float) -> None:
    """Set the pods' concurrency; let the scrape interval see mostly the new value."""
    scene.set_total_concurrency(total)
    await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Scene, Path]]:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, replicas=2, nodes=1)
        try:
            yield emu, scene, emu.write_kubeconfig(tmp_path / "kubeconfig")
        finally:
            await scene.close()


async def test_the_forecast_orders_nodes_ahead_and_survives_a_restart(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler(
        nodePool={
            "maxNodes": 6,
            "podsPerNode": 2,
            "provisionSeconds": PROVISION_S,
            "scaleDownDelaySeconds": 3600,
        }
    )
    wall = Wall(at(0, 8, 59))
    async with running(kubeconfig, wall) as first:
        # Day 1: quiet, then 8 busy workers from 09:00 to 09:15, then quiet again.
        await _load(scene, 1.0)
        for step in range(2 + 30 + 2):  # 08:59:00 to 09:15:30, every 30 s
            t = at(0, 8, 59) + 30 * step
            if t == at(0, 9):
                await _load(scene, 8.0)
            if t == at(0, 9, 15):
                await _load(scene, 1.0)
            await first.tick_at(t)
        # The 09:00 occurrence, folded when 09:15 began, is in the status.
        saved = _saved(scene)
        nine = int(at(0, 9) // 900) % 96
        assert saved.day.count[nine] == 1
        assert saved.day.mean[nine] > 6  # ~8, seen through the scrape and the smoothing
        assert forecast(saved, at(1, 8, 56), HORIZON_S) is not None  # history for day 2

        # Day 2, 08:50: still quiet. Nodes are ordered once the horizon reaches 09:00.
        await first.tick_at(at(1, 8, 50))
        nodes_before = scene.nodes
        t = at(1, 8, 50)
        while t + 30 + HORIZON_S < at(1, 9):
            t += 30
            await first.tick_at(t)
            early = forecast(first.profile, t, HORIZON_S)  # 08:45 was not seen on day 1
            assert early is None or early.slot_start < at(1, 9)
            assert scene.nodes == nodes_before, f"ordered too early, at {t - at(1, 0)} s"
        t += 30  # 08:56:00: 09:00 is within 244 s
        await first.tick_at(t)
        ahead = forecast(first.profile, t, HORIZON_S)
        assert ahead is not None
        assert ahead.slot_start == at(1, 9)
        assert ahead.demand > 6
        assert scene.nodes > nodes_before, scene.status().get("reason")
        assert "forecast" in scene.status()["reason"]
        nodes_ahead = scene.nodes
        old_forecast = forecast(first.profile, t + 30, HORIZON_S)
        ticks = first.ticks

    # Saved once a slot occurrence (08:45, 09:00, 09:15 on day 1; 08:45 on day 2), not
    # on every one of the ticks.
    assert len(_profile_writes(emu)) == 4 < ticks

    # A new controller (a restart, or the other replica taking over) reads it back.
    async with running(kubeconfig, wall) as second:
        await second.tick_at(t + 30)
        restored = second.profile
        assert (restored.week, restored.day, restored.errors) == (
            _saved(scene).week,
            _saved(scene).day,
            _saved(scene).errors,
        )
        assert forecast(restored, t + 30, HORIZON_S) == old_forecast
        assert scene.nodes == nodes_ahead  # it keeps the pre-warmed nodes
        assert "forecast" in scene.status()["reason"]
    warnings = [r.body["reason"] for r in emu.writes(r"/events$") if r.body["type"] == "Warning"]
    assert "InvalidDemandProfile" not in warnings


async def test_a_malformed_saved_profile_is_announced_once_and_replaced(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    obj = emu.get_object("rscore.dev/v1alpha1", "ScoringAutoscaler", NS, APP)
    obj["status"] = {"demandProfile": {"version": 99, "slotSeconds": 900}}
    emu.put_object(obj)
    scene.set_total_concurrency(8)
    wall = Wall(at(0, 12))
    async with running(kubeconfig, wall) as controller:
        for step in range(3):
            await controller.tick_at(at(0, 12) + 2 * step)
        # The tick went on and scaled up from 2 (about ceil(8 / 1.4) = 6: the counter
        # rates of ticks a few ms apart are noisy, so the exact count is not the point).
        assert scene.replicas > 2
    warnings = [r.body for r in emu.writes(r"/events$") if r.body["type"] == "Warning"]
    assert [w["reason"] for w in warnings] == ["InvalidDemandProfile"]
    assert "version is 99" in warnings[0]["message"]
    replaced = _saved(scene)  # the fresh profile took its place
    assert replaced.current is not None
    assert replaced.current.start == at(0, 12)


async def test_a_failed_status_write_is_retried_and_never_fails_the_tick(cluster) -> None:
    emu, scene, kubeconfig = cluster
    scene.add_autoscaler()
    scene.set_total_concurrency(8)
    emu.fail("PATCH", rf"/scoringautoscalers/{APP}/status$", 500, times=4)  # every attempt
    wall = Wall(at(0, 12))
    async with running(kubeconfig, wall) as controller:
        await controller.tick_at(at(0, 12))
        assert scene.replicas == 6  # scaled all the same
        assert "demandProfile" not in scene.status()
        await controller.tick_at(at(0, 12, 0, 2))  # same slot: saved now, as it was not
        assert _saved(scene).current.last == at(0, 12, 0, 2)
        await controller.tick_at(at(0, 12, 0, 4))  # and then not again within the slot
    assert len(_profile_writes(emu)) == 1
