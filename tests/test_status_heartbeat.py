"""A status is written when something worth writing changed (rscore.autoscaler.status): a
decision, a count, a condition's state or the wording of its reason at once; readings
alone (the observed concurrency, the figures in the reason and the messages) at most once
per heartbeat per object, on a grid shifted by the object's name.

The table tests are pure. The last tests run a Controller against the emulated API
server through the real kubernetes_asyncio client, with real /metrics servers as pods,
on fake loop time (looptime): the ticks are started by hand, and the clock moves between
them by the interval, so which tick wrote the status is exact.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from autoscaler_scene import APP, NS, Scene
from kube_emulator import KubeEmulator

from rscore.autoscaler.controller import Controller
from rscore.autoscaler.kube_io import KubeApi
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.options import Options
from rscore.autoscaler.status import (
    CHANGED,
    READINGS_ONLY,
    UNCHANGED,
    heartbeat_due,
    status_change,
)

# --- status_change -----------------------------------------------------------------------

REASON = (
    "demand stable 2.03 panic 2.10 busy workers (service 12.3 ms) + drain 0.00 of 0 "
    "waiting / capacity 1.40 per pod -> stable 3 panic 3"
)


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-07T10:00:00Z",
        "observedGeneration": 1,
    }


def _status(**changes: Any) -> dict[str, Any]:
    """A stored status as a tick at a steady load leaves it; `changes` replace fields."""
    status: dict[str, Any] = {
        "currentReplicas": 3,
        "lastScaleTime": "2026-12-07T09:58:00Z",
        "observedGeneration": 1,
        "desiredReplicas": 3,
        "observedConcurrency": 4.213,
        "mode": "stable",
        "reason": REASON,
        "conditions": [
            _condition(
                "AbleToScale", "True", "ReadyForNewScale", "the target's /scale can be read"
            ),
            _condition("ScalingActive", "True", "ValidMetricFound", REASON),
            _condition("ScalingLimited", "False", "DesiredWithinRange", "within range"),
        ],
    }
    return status | changes


def _with_condition(index: int, **changes: Any) -> list[dict[str, Any]]:
    conditions = [dict(c) for c in _status()["conditions"]]
    conditions[index] |= changes
    return conditions


FIGURES_MOVED = REASON.replace("2.03", "2.11").replace("2.10", "1.97").replace("12.3", "12.9")
CLAUSE_ADDED = REASON + "; panic until 1800, never down -> 3"
SERVICE_UNKNOWN = REASON.replace("12.3 ms", "unknown")


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param(_status(), UNCHANGED, id="the same status"),
        pytest.param(_status(currentNodes=None), UNCHANGED, id="a None the stored one omits"),
        pytest.param(_status(observedConcurrency=4.388), READINGS_ONLY, id="concurrency"),
        pytest.param(_status(reason=FIGURES_MOVED), READINGS_ONLY, id="figures in the reason"),
        pytest.param(
            _status(
                observedConcurrency=4.1,
                reason=FIGURES_MOVED,
                conditions=_with_condition(1, message=FIGURES_MOVED),
            ),
            READINGS_ONLY,
            id="figures in the reason and in a condition's message",
        ),
        pytest.param(_status(desiredReplicas=4), CHANGED, id="the decision"),
        pytest.param(
            _status(desiredReplicas=4, observedConcurrency=6.0), CHANGED, id="decision+reading"
        ),
        pytest.param(_status(mode="panic"), CHANGED, id="the mode"),
        pytest.param(_status(currentReplicas=4), CHANGED, id="a count"),
        pytest.param(_status(observedGeneration=2), CHANGED, id="a new generation"),
        pytest.param(_status(lastScaleTime="2026-12-07T10:01:00Z"), CHANGED, id="a scale"),
        pytest.param(_status(reason=CLAUSE_ADDED), CHANGED, id="a clause added to the reason"),
        pytest.param(_status(reason=SERVICE_UNKNOWN), CHANGED, id="wording, not a figure"),
        pytest.param(
            _status(conditions=_with_condition(2, status="True", reason="AtMaxReplicas")),
            CHANGED,
            id="a condition's status flips",
        ),
        pytest.param(
            _status(conditions=_with_condition(0, reason="FailedUpdateScale")),
            CHANGED,
            id="a condition's reason",
        ),
        pytest.param(
            _status(conditions=_with_condition(1, message="no ready pods")),
            CHANGED,
            id="a condition's message reworded",
        ),
        pytest.param(
            _status(conditions=_status()["conditions"][:2]), CHANGED, id="a condition gone"
        ),
        pytest.param(_status(demandProfile={"version": 1}), CHANGED, id="a profile saved"),
    ],
)
def test_status_change(new: dict[str, Any], expected: int) -> None:
    assert status_change(_status(), new) == expected


def test_a_reading_that_was_absent_or_cleared_is_a_reading() -> None:
    without = {k: v for k, v in _status().items() if k != "observedConcurrency"}
    assert status_change(without, _status()) == READINGS_ONLY
    assert status_change(_status(), _status(observedConcurrency=None)) == READINGS_ONLY


# --- heartbeat_due ------------------------------------------------------------------------

# models/scorer's phase at a 60 s heartbeat: 60 * crc32(b"models/scorer") / 0xFFFFFFFF
# = 60 * 2873503368 / 4294967295 = 40.142...: its beats come at 40.14, 100.14, 160.14...


@pytest.mark.parametrize(
    ("written_at", "now", "due"),
    [
        (0.0, 0.0, False),  # just written
        (0.0, 40.0, False),  # before the first beat
        (0.0, 40.2, True),  # after it
        (41.0, 100.0, False),  # 59 s later, but no beat between
        (41.0, 100.2, True),  # the next beat came
        (39.0, 41.0, False),  # a beat between, but 2 s after a write: let pass
        (39.0, 100.2, True),  # ... the next one is written
        (10.0, 40.2, True),  # 30.2 s after the write: half a period, the beat counts
        (15.0, 40.2, False),  # 25.2 s after: let pass
        (15.0, 100.2, True),
        (100.2, 160.1, False),
        (100.2, 160.2, True),
        (100.2, 400.0, True),  # many beats missed: due, once
    ],
)
def test_heartbeat_due_on_the_objects_grid(written_at: float, now: float, due: bool) -> None:
    assert heartbeat_due(NS, APP, 60.0, written_at, now) is due


def _writes(namespace: str, name: str, every_s: float, tick_s: float, ticks: int) -> list[float]:
    """When a status whose readings move every tick is written: at the first tick, then
    whenever its heartbeat is due."""
    written = [0.0]
    for step in range(1, ticks):
        now = step * tick_s
        if heartbeat_due(namespace, name, every_s, written[-1], now):
            written.append(now)
    return written


def test_readings_are_written_once_per_period_at_the_first_tick_after_the_beat() -> None:
    written = _writes(NS, APP, 60.0, 2.0, 301)  # 600 s of 2 s ticks
    assert len(written) == 1 + 10  # the first write, then one per period
    beats = [w % 60 for w in written[1:]]
    assert all(40.142 < b <= 42.142 for b in beats), beats  # the first tick past 40.14
    gaps = [b - a for a, b in itertools.pairwise(written[1:])]
    assert gaps == pytest.approx([60.0] * 9)


def test_two_objects_beat_at_different_phases() -> None:
    one = _writes(NS, APP, 60.0, 1.0, 200)[1:]
    other = _writes(NS, "other", 60.0, 1.0, 200)[1:]
    assert len(one) == 3
    assert [t % 60 for t in one] == [41.0] * 3  # 40.14 -> the tick at 41
    # 27.12 -> the tick at 28; the first beat (at 27.12, 28 s after the first write) is
    # let pass: less than half a period
    assert [t % 60 for t in other] == [28.0] * 2


def test_a_thousand_objects_spread_their_beats_over_the_period() -> None:
    # All written at 0 (a new term's first round); each first beat at least 30 s later.
    firsts = [_writes("ns", f"model-{i}", 60.0, 2.0, 61)[1] for i in range(1000)]
    assert min(firsts) >= 30.0
    per_tick = {t: firsts.count(t) for t in set(firsts)}
    assert len(per_tick) == 30  # every 2 s tick of a minute has its share
    assert max(per_tick.values()) < 3 * 1000 / 30


# --- the flag ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [([], 60.0), (["--status-heartbeat-s", "0"], 0.0)])
def test_the_heartbeat_is_a_flag_of_rscore_autoscaler(args: list[str], expected: float) -> None:
    from rscore.cli.autoscaler_cmd import autoscaler

    context = autoscaler.make_context("autoscaler", args)
    assert Options(**context.params).status_heartbeat_s == expected


def test_a_negative_heartbeat_is_refused() -> None:
    from rscore.cli.autoscaler_cmd import autoscaler

    with pytest.raises(click.BadParameter):
        autoscaler.make_context("autoscaler", ["--status-heartbeat-s", "-1"])


# --- the controller against the emulated API server --------------------------------------

INTERVAL_S = 2.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Scene, KubeApi]]:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, replicas=2)
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
        api = await KubeApi.connect(kubeconfig, ControllerMetrics(), backoff_base_s=0.01)
        try:
            yield emu, scene, api
        finally:
            await api.close()
            await scene.close()


class Ticks:
    """A Controller with its watch running, ticked by hand every INTERVAL_S of loop time;
    `patches[i]`: the status patches tick i sent."""

    def __init__(
        self, emu: KubeEmulator, controller: Controller, session: aiohttp.ClientSession
    ) -> None:
        self.emu, self.controller, self.session = emu, controller, session
        self.patches: list[list[dict[str, Any]]] = []
        self.observed: list[float | None] = []  # the observed concurrency, tick by tick
        self.at: list[float] = []  # when each tick began (the policy's clock: loop time)

    async def tick(self) -> None:
        if self.patches:
            await asyncio.sleep(INTERVAL_S)  # the interval passes: loop time, no real time
        before = len(self._written())
        self.at.append(self.controller.clock())
        await self.controller.tick(self.session, lambda: True)
        self.patches.append([r.body["status"] for r in self._written()[before:]])
        self.observed.append(
            self.controller.metrics.registry.get_sample_value(
                "rscore_autoscaler_observed_concurrency", {"namespace": NS, "name": APP}
            )
        )

    def _written(self) -> list[Any]:
        path = rf"/scoringautoscalers/{APP}/status$"
        return [r for r in self.emu.writes(path) if r.status == 200]


@asynccontextmanager
async def ticking(api: KubeApi, emu: KubeEmulator, heartbeat_s: float) -> AsyncIterator[Ticks]:
    controller = Controller(
        api,
        api.metrics,
        interval_s=INTERVAL_S,
        scrape_timeout_s=1.0,
        status_heartbeat_s=heartbeat_s,
    )
    watch = asyncio.create_task(controller.watch_forever())
    try:
        await asyncio.wait_for(controller.synced.wait(), 10)
        async with aiohttp.ClientSession() as session:
            yield Ticks(emu, controller, session)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


# A steady load as the scrapes see it: never twice the same, always 3 pods' worth (a pod
# takes 1.4 at the scene's target: 3.3 / 1.4 and 3.7 / 1.4 both round up to 3).
STEADY = [3.5, 3.7, 3.3, 3.6, 3.4, 3.65]


async def _steady_ticks(scene: Scene, ticks: Ticks, count: int) -> None:
    for i in range(count):
        scene.set_total_concurrency(STEADY[i % len(STEADY)])
        await ticks.tick()


@pytest.mark.looptime
async def test_a_steady_load_writes_the_status_once_and_a_new_decision_at_once(cluster) -> None:
    emu, scene, api = cluster
    scene.add_autoscaler()
    async with ticking(api, emu, heartbeat_s=3600.0) as ticks:
        await _steady_ticks(scene, ticks, 10)
        # The first tick writes the status (a new term brings it up to date)...
        assert len(ticks.patches[0]) == 1
        first = ticks.patches[0][0]
        assert first["desiredReplicas"] == 3
        # ...the next ones read other figures but decide the same: no write.
        assert ticks.patches[1:] == [[]] * 9
        assert len(set(ticks.observed[1:])) > 3  # the readings did move
        assert scene.status()["observedConcurrency"] == first["observedConcurrency"]
        assert scene.status()["desiredReplicas"] == 3
        # The load triples: the new decision is written in the tick that makes it.
        scene.set_total_concurrency(12.0)
        await ticks.tick()
        assert [p["desiredReplicas"] for p in ticks.patches[-1]] == [9]
        assert scene.status()["desiredReplicas"] == 9
        # The next tick reads more (the whole tick at 12) and decides the same: no write.
        await ticks.tick()
        assert ticks.observed[-1] != ticks.observed[-2]
        assert ticks.patches[-1] == []


@pytest.mark.looptime
async def test_readings_alone_are_written_once_per_heartbeat(cluster) -> None:
    emu, scene, api = cluster
    scene.add_autoscaler()
    heartbeat_s = 10.0
    async with ticking(api, emu, heartbeat_s) as ticks:
        await _steady_ticks(scene, ticks, 30)  # a minute of 2 s ticks
    written = [at for at, patches in zip(ticks.at, ticks.patches, strict=True) if patches]
    assert written[0] == ticks.at[0]
    # Then one write per heartbeat, at the first tick after this object's beat.
    span = ticks.at[-1] - ticks.at[0]
    assert span // heartbeat_s <= len(written) - 1 <= span // heartbeat_s + 1
    gaps = [b - a for a, b in itertools.pairwise(written[1:])]
    assert all(heartbeat_s - INTERVAL_S <= gap <= heartbeat_s + INTERVAL_S for gap in gaps), gaps
    # All readings: the decision never moved.
    assert {p["desiredReplicas"] for patches in ticks.patches for p in patches} == {3}


@pytest.mark.looptime
async def test_a_zero_heartbeat_writes_every_change_at_once(cluster) -> None:
    emu, scene, api = cluster
    scene.add_autoscaler()
    async with ticking(api, emu, heartbeat_s=0.0) as ticks:
        await _steady_ticks(scene, ticks, 6)
    assert [len(p) for p in ticks.patches] == [1] * 6
