"""Ticks that cannot pile up (rscore.autoscaler.ticks, rscore.autoscaler.controller): the grid, an
overrun that skips ticks instead of queueing them, and each ScoringAutoscaler reconciled
within its own bound so that a slow one never delays the others.

The loop-level tests run on fake time (looptime): sleeps, timeouts and the emulator's
delays take no real time, and the loop's clock moves only when nothing is left to do but
wait, so a tick's schedule is checked exactly, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from autoscaler_scene import APP, NS, Scene, autoscaler_object
from helpers import eventually
from kube_emulator import KubeEmulator

from rscore.autoscaler.controller import Controller, FrozenHeap
from rscore.autoscaler.kube_io import KubeApi, MayWrite
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.ticks import NextTick, next_tick, tick_budget_s

pytestmark = pytest.mark.looptime


@pytest.mark.parametrize(
    ("started", "ended", "interval", "expected"),
    [
        (0.0, 0.3, 1.0, NextTick(1.0, 0)),  # on time
        (0.0, 1.0, 1.0, NextTick(1.0, 0)),  # ends exactly at the next slot: on time
        (0.0, 1.2, 1.0, NextTick(2.0, 1)),  # overran one slot: skipped, not queued
        (0.0, 2.5, 1.0, NextTick(3.0, 2)),  # two slots passed while it ran
        (10.0, 14.0, 2.0, NextTick(14.0, 1)),  # ended on a later slot: that slot is next
        (5.0, 5.5, 0.25, NextTick(5.5, 1)),
    ],
)
def test_next_tick(started: float, ended: float, interval: float, expected: NextTick) -> None:
    assert next_tick(started, ended, interval) == expected


def test_the_next_tick_is_always_ahead_and_on_the_grid() -> None:
    for ended in [0.0, 0.99, 1.0, 1.01, 3.7, 12.0]:
        upcoming = next_tick(0.0, ended, 1.0)
        assert upcoming.at >= ended
        assert upcoming.at == int(upcoming.at)  # a slot of the grid
        assert upcoming.at - 1.0 == upcoming.skipped  # every slot before it is skipped


def test_a_tick_leaves_room_before_the_next() -> None:
    assert 0 < tick_budget_s(2.0) < 2.0
    with pytest.raises(ValueError, match="interval"):
        next_tick(0.0, 1.0, 0.0)


class _TimedTicks(Controller):
    """The loop of `Controller.lead`, with ticks that take a set time each (in loop
    time) and record when they start: the schedule, without reconciling anything."""

    def __init__(self, durations: list[float], interval_s: float) -> None:
        super().__init__(None, ControllerMetrics(), interval_s=interval_s)  # type: ignore[arg-type]
        self.durations = durations
        self.starts: list[float] = []
        self.synced.set()

    async def tick(
        self,
        session: aiohttp.ClientSession,
        may_write: MayWrite,
        scrape_slots: Any = None,
        streams: Any = None,
    ) -> None:
        self.starts.append(self.clock())
        await asyncio.sleep(self.durations[min(len(self.starts), len(self.durations)) - 1])


async def _lead_until(controller: _TimedTicks, ticks: int) -> None:
    task = asyncio.create_task(controller.lead(lambda: True))
    await eventually(lambda: len(controller.starts) >= ticks, timeout_s=100)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _overruns(metrics: ControllerMetrics) -> float:
    return metrics.registry.get_sample_value("rscore_autoscaler_tick_overruns_total") or 0.0


async def test_ticks_on_time_keep_the_grid() -> None:
    controller = _TimedTicks([0.3], interval_s=1.0)
    await _lead_until(controller, 5)
    first = controller.starts[0]
    assert [s - first for s in controller.starts[:5]] == pytest.approx([0, 1, 2, 3, 4])
    assert _overruns(controller.metrics) == 0


async def test_an_overrun_skips_the_ticks_it_overlapped_and_queues_none() -> None:
    # The second tick takes 2.5 intervals; the ones after are quick again.
    controller = _TimedTicks([0.1, 2.5, 0.1], interval_s=1.0)
    await _lead_until(controller, 5)
    first = controller.starts[0]
    # 1 starts at 1 and ends at 3.5: slots 2 and 3 are skipped, never run late.
    assert [s - first for s in controller.starts[:5]] == pytest.approx([0, 1, 4, 5, 6])
    assert _overruns(controller.metrics) == 2


# --- a slow ScoringAutoscaler among others, against the emulated API server ---------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Scene, KubeApi]]:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu)
        metrics = ControllerMetrics()
        api = await KubeApi.connect(emu.write_kubeconfig(tmp_path / "kubeconfig"), metrics)
        try:
            yield emu, scene, api
        finally:
            await api.close()
            await scene.close()


def _add_slow(emu: KubeEmulator, scene: Scene) -> None:
    emu.make_deployment("slow", NS, replicas=1)
    slow = autoscaler_object(scene.port)
    slow["metadata"]["name"] = "slow"
    slow["spec"]["scaleTargetRef"]["name"] = "slow"
    emu.put_object(slow)


def _value(metrics: ControllerMetrics, counter: str, name: str) -> float:
    sample = f"rscore_autoscaler_{counter}_total"
    value = metrics.registry.get_sample_value(sample, {"namespace": NS, "name": name})
    return value or 0.0


async def test_a_slow_object_is_bounded_and_never_delays_the_others(cluster) -> None:
    emu, scene, api = cluster
    scene.add_autoscaler()
    scene.set_total_concurrency(8)
    _add_slow(emu, scene)
    emu.delay("GET", r"/deployments/slow/scale$", 1000.0, times=None)  # hangs for good
    controller = Controller(
        api, api.metrics, interval_s=1.0, reconcile_timeout_s=3.0, scrape_timeout_s=0.5
    )
    watch = asyncio.create_task(controller.watch_forever())
    await controller.synced.wait()
    term = asyncio.create_task(controller.lead(lambda: True))
    try:
        await eventually(lambda: controller.ticks >= 12, timeout_s=60)
    finally:
        for task in (term, watch):
            task.cancel()
        await asyncio.gather(term, watch, return_exceptions=True)
    metrics = controller.metrics
    # The other object scaled at once, and its status was written each tick it changed.
    assert scene.replicas == 6
    # Every tick started on its slot: the slow object's hung reads cost no tick.
    assert _overruns(metrics) == 0
    # The slow object: skipped while its reconcile ran, which was cancelled at its bound
    # (3 s = 3 ticks), then started afresh and cancelled again.
    assert _value(metrics, "reconcile_timeouts", "slow") >= 3
    assert _value(metrics, "overruns", "slow") >= 6
    assert _value(metrics, "reconcile_timeouts", APP) == 0
    assert _value(metrics, "overruns", APP) == 0


def test_the_long_lived_heap_is_frozen_and_collected_about_hourly() -> None:
    """After each tick the survivors leave the collector's walks (`gc.freeze`); about
    once an hour, after a tick that left half its interval free (at the latest after
    two hours), the heap is collected whole and frozen afresh."""
    now = [0.0]
    heap = FrozenHeap(lambda: now[0], interval_s=2.0)
    try:
        gc.unfreeze()
        heap.after_tick(1.9)
        assert gc.get_freeze_count() > 0
        assert heap.collections == 0
        cycle: list[object] = []
        cycle.append(cycle)  # cyclic garbage, frozen with the rest at the next tick
        ref = weakref.ref(cycle_holder := Holder(cycle))
        del cycle, cycle_holder
        heap.after_tick(1.9)
        gc.collect()
        assert ref() is not None  # frozen: no collection reaches it
        now[0] = FrozenHeap.COLLECT_S + 1
        heap.after_tick(1.5)  # an hour on, but a busy tick: not now
        assert heap.collections == 0
        heap.after_tick(0.5)  # a tick with room
        assert heap.collections == 1
        assert ref() is None  # collected
        now[0] = 3 * FrozenHeap.COLLECT_S + 2
        heap.after_tick(1.99)  # two hours without room: collected anyway
        assert heap.collections == 2
    finally:
        gc.unfreeze()


class Holder:
    """A weak-referenceable object kept alive by a reference cycle only."""

    def __init__(self, cycle: list[object]) -> None:
        self.cycle = cycle
        cycle.append(self)
