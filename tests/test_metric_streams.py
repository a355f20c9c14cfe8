"""The controller's side of the pods' metric streams (rscore.autoscaler.metric_streams):
readings taken once each, a pod without a stream read by GET, a broken or silent stream
followed afresh, readings dated by the pod's clock, and the controller scaling on
streamed readings as it does on GETs (real aiohttp pods on 127.0.0.x, the emulated API
server behind the real client).

Waits are bounded polls (`eventually`); nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from autoscaler_scene import Scene
from fake_pods import FakePod, free_port
from helpers import eventually
from kube_emulator import KubeEmulator
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_autoscaler_controller import _scrape, controller

from rscore.autoscaler.metric_streams import (
    NAMES,
    MetricStreams,
    PodClock,
    reading_phase_s,
    taken_at,
)
from rscore.autoscaler.scrape import DemandTracker, PodScrape, metrics_url, parse_pod_metrics
from rscore.autoscaler.ticks import READING_LEAD, READING_SPREAD
from rscore.r_scorer.pool import WorkerPool
from rscore.sidecar.app import SidecarConfig, create_app
from rscore.sidecar.metrics_stream import metrics_page

INTERVAL_S = 0.2
PAGE = (
    b"rscore_workers 2\nrscore_queue_depth 0\nrscore_inflight_requests 1\n"
    b"rscore_concurrency_seconds_total 12.5\n"
)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def pod() -> AsyncIterator[FakePod]:
    fake = FakePod("127.0.0.2", free_port("127.0.0.2"), concurrency=3.0, streams=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@asynccontextmanager
async def _stream_server(
    ip: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[str]:
    """A pod's metrics port on `ip` whose /metrics/stream is `handler`; yields the
    pod's metrics URL."""
    app = web.Application()
    app.router.add_get("/metrics/stream", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port(ip)
    await web.TCPSite(runner, ip, port).start()
    try:
        yield metrics_url(ip, port)
    finally:
        await runner.cleanup()


def _streams(session: aiohttp.ClientSession, **options: object) -> MetricStreams:
    return MetricStreams(session, interval_s=INTERVAL_S, clock=_loop_time, **options)  # type: ignore[arg-type]


# --- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (b"a 1\n# TIME 1796674940.5\n# EOF\n", 1796674940.5),
        (b"a 1\n# EOF\n", None),  # a sidecar that does not date its readings
        (b"a 1\n# TIME soon\n# EOF\n", None),
        (b"a 1\n# TIME nan\n# EOF\n", None),
        (b"# TIME 1\n# TIME 2\n# EOF\n", 2.0),  # the last one, next to the end mark
    ],
)
def test_a_reading_says_when_the_pod_took_it(reading: bytes, expected: float | None) -> None:
    assert taken_at(reading) == expected


@pytest.mark.parametrize(
    ("deliveries", "expected"),
    [
        # (arrived on the controller's clock, the pod's Unix time) -> the dates given
        ([(100.0, 5000.0)], [100.0]),
        # the second came late (a busy loop): dated by the pod, 2 s after the first
        ([(100.0, 5000.0), (102.7, 5002.0)], [100.0, 102.0]),
        # a faster delivery lowers the offset: later readings follow the fastest seen
        ([(100.5, 5000.0), (102.1, 5002.0), (104.1, 5004.0)], [100.5, 102.1, 104.1]),
        ([(100.0, None), (102.3, None)], [100.0, 102.3]),  # undated: when they came
    ],
)
def test_readings_are_dated_by_the_pod_on_the_controllers_clock(
    deliveries: list[tuple[float, float | None]], expected: list[float]
) -> None:
    clock = PodClock()
    assert [clock.at(arrived, pod_time) for arrived, pod_time in deliveries] == pytest.approx(
        expected
    )


@pytest.mark.parametrize("interval_s", [0.2, 2.0, 15.0])
@pytest.mark.parametrize(
    "url", [f"http://10.0.{i}.{j}:9090/metrics" for i in (1, 7) for j in (3, 200)]
)
def test_each_pods_readings_come_before_the_ticks_within_the_window(
    interval_s: float, url: str
) -> None:
    tick_wall_s = 1_796_674_000.25
    phase = reading_phase_s(tick_wall_s, interval_s, url)
    assert 0 <= phase < interval_s
    before_tick = (tick_wall_s - phase) % interval_s  # how long before each tick
    assert READING_LEAD * interval_s <= before_tick + 1e-9
    assert before_tick <= (READING_LEAD + READING_SPREAD) * interval_s + 1e-9
    assert reading_phase_s(tick_wall_s, interval_s, url) == phase  # stable per pod


def test_the_pods_readings_are_spread_not_simultaneous() -> None:
    phases = {reading_phase_s(0.0, 2.0, f"http://10.1.0.{i}:9090/metrics") for i in range(50)}
    assert len(phases) == 50
    assert max(phases) - min(phases) > READING_SPREAD * 2.0 / 2  # over the window


def _scrape_at(at: float, integral: float) -> PodScrape:
    return PodScrape(
        at=at, concurrency_seconds_total=integral, queue_depth=0, inflight=1, workers=2
    )


def test_a_streamed_pod_without_a_new_reading_repeats_its_latest_interval() -> None:
    tracker = DemandTracker()
    tracker.update({"a": _scrape_at(0.0, 0.0), "b": _scrape_at(0.0, 0.0)})
    first = tracker.update({"a": _scrape_at(2.0, 3.0), "b": _scrape_at(2.0, 5.0)})
    assert first["a"] is not None
    assert first["a"].concurrency == pytest.approx(1.5)
    # Next tick: a has a new reading, b's has not come yet.
    second = tracker.update({"a": _scrape_at(4.0, 7.0)}, repeat={"b"})
    assert second["a"] is not None
    assert second["a"].concurrency == pytest.approx(2.0)
    assert second["b"] == first["b"]  # its demand over its latest interval
    # And b's next reading is measured from its last one, not from the repeat.
    third = tracker.update({"b": _scrape_at(6.0, 9.0)})
    assert third["b"] is not None
    assert third["b"].concurrency == pytest.approx(1.0)


def test_a_repeat_of_a_pod_never_read_gives_no_demand() -> None:
    tracker = DemandTracker()
    first = tracker.update({"a": _scrape_at(0.0, 0.0)})  # its gauges, until an interval
    repeated = tracker.update({}, repeat={"a", "never"})
    assert repeated == {"a": first["a"]}
    assert set(tracker.scrapes) == {"a"}  # kept for the next; nothing invented


# --- against real pods -------------------------------------------------------------------


async def test_each_reading_is_taken_once(session: aiohttp.ClientSession, pod: FakePod) -> None:
    streams = _streams(session)
    url = metrics_url(pod.ip, pod.port)
    try:
        assert streams.take(url) is None  # starts following; nothing in yet
        readings: list[PodScrape] = []

        def a_reading() -> bool:
            reading = streams.take(url)
            if reading is not None:
                readings.append(reading)
            return bool(readings)

        await eventually(a_reading)
        assert readings[0].workers == 2
        assert readings[0].inflight == 2  # 3 of 2 workers
        assert readings[0].queue_depth == 1
        assert streams.live(url)
        assert streams.take(url) is None  # taken: the next one is the pod's next reading
        readings.clear()
        await eventually(a_reading)
        assert pod.scrapes == 0  # never a GET
        assert pod.stream_requests == 1  # one request for all the readings
    finally:
        await streams.close()


async def test_a_pod_without_a_stream_is_read_by_get(session: aiohttp.ClientSession) -> None:
    old = FakePod("127.0.0.3", free_port("127.0.0.3"), streams=False)  # an older sidecar
    await old.start()
    failures: list[str] = []
    streams = _streams(session, failed=failures.append)
    url = metrics_url(old.ip, old.port)
    try:
        assert streams.take(url) is None
        stream = streams._streams[url]
        await eventually(lambda: stream.task is not None and stream.task.done())
        assert stream.unsupported
        assert not streams.live(url)
        for _ in range(3):
            assert streams.take(url) is None  # not asked again this term
        assert failures == []  # a 404 is no failure: the pod is read as before
    finally:
        await streams.close()
        await old.stop()


async def test_a_broken_stream_is_followed_again(
    session: aiohttp.ClientSession, pod: FakePod
) -> None:
    failures: list[str] = []
    streams = _streams(session, failed=failures.append)
    url = metrics_url(pod.ip, pod.port)
    try:
        streams.take(url)
        await eventually(lambda: streams.live(url))
        await pod.stop()  # the pod restarts
        await eventually(lambda: not streams.live(url))
        assert streams.take(url) is None  # read by GET meanwhile
        await pod.start()
        await eventually(lambda: streams.live(url), timeout_s=15)
        assert pod.stream_requests >= 2
    finally:
        await streams.close()


async def test_a_silent_stream_is_dropped_and_opened_again(session: aiohttp.ClientSession) -> None:
    """A pod that opens its stream and then writes nothing (a hung process, a connection
    gone dark) stops counting as live once silent for `silence_s`."""
    opened: list[float] = []

    async def mute(request: web.Request) -> web.StreamResponse:
        opened.append(_loop_time())
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(PAGE + b"# EOF\n")
        await asyncio.sleep(3600)  # then nothing
        return response

    failures: list[str] = []
    streams = _streams(session, failed=failures.append)
    streams.silence_s = 0.5
    async with _stream_server("127.0.0.4", mute) as url:
        try:
            streams.take(url)
            await eventually(lambda: streams.live(url))

            def dropped() -> bool:
                streams.take(url)
                return "Silent" in failures

            await eventually(dropped)
            await eventually(lambda: len(opened) >= 2)  # followed afresh
        finally:
            await streams.close()


async def test_streams_ask_for_readings_before_the_ticks(session: aiohttp.ClientSession) -> None:
    asked: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.Response(status=404)

    tick_wall_s = 1_796_674_000.0
    streams = _streams(session, tick_wall_s=tick_wall_s)
    async with _stream_server("127.0.0.5", record) as url:
        try:
            streams.take(url)
            await eventually(lambda: bool(asked))
            query = asked[0]
            assert float(query["interval_s"]) == INTERVAL_S
            phase = float(query["phase_s"])
            expected = reading_phase_s(tick_wall_s, INTERVAL_S, url)
            assert math.isclose(phase, expected, abs_tol=1e-6)
        finally:
            await streams.close()


async def test_pods_no_tick_asks_about_are_let_go(
    session: aiohttp.ClientSession, pod: FakePod
) -> None:
    streams = _streams(session, forget_after_s=0.3)
    url = metrics_url(pod.ip, pod.port)
    try:
        streams.take(url)
        await eventually(lambda: streams.live(url))
        assert pod.streams is not None
        await eventually(lambda: pod.streams is not None and pod.streams.open == 1)
        await asyncio.sleep(0.4)  # longer than forget_after_s without a take
        await streams.prune()
        assert not streams.live(url)
        assert streams.following() == 0
        await eventually(lambda: pod.streams is not None and pod.streams.open == 0)
    finally:
        await streams.close()


# --- the controller on streamed readings ----------------------------------------------------


@pytest.fixture
async def streaming_cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Scene, Path]]:
    async with KubeEmulator() as emu:
        scene = await Scene.build(emu, streaming=True)
        try:
            yield emu, scene, emu.write_kubeconfig(tmp_path / "kubeconfig")
        finally:
            await scene.close()


@pytest.mark.slow
async def test_the_controller_scales_on_streamed_readings(streaming_cluster) -> None:
    _emu, scene, kubeconfig = streaming_cluster
    scene.add_autoscaler()
    async with controller(kubeconfig) as port:
        # Streams opened to both pods, then no more GETs.
        await eventually(
            lambda: all(p.streams is not None and p.streams.open == 1 for p in scene.pods.values())
        )
        gets = sum(p.scrapes for p in scene.pods.values())
        scene.set_total_concurrency(8)  # 4 per pod of 2 workers: well over the target
        await eventually(lambda: scene.replicas >= 4)
        assert (
            sum(p.scrapes for p in scene.pods.values() if p.ip in ("127.0.0.2", "127.0.0.3"))
            == gets
        )
        page = await _scrape(port)
    assert _value(page, "rscore_autoscaler_stream_readings") > 0
    assert scene.status()["mode"] == "Panic"


@pytest.mark.slow
async def test_a_pod_whose_stream_fails_holds_scale_down(streaming_cluster) -> None:
    """Missing data never scales down, whether it was to come by GET or by stream."""
    emu, scene, kubeconfig = streaming_cluster
    deployment = emu.get_object("apps/v1", "Deployment", "models", "scorer")
    assert deployment is not None
    deployment["spec"]["replicas"] = 4
    emu.put_object(deployment)
    await scene.sync_pods()
    scene.add_autoscaler(minReplicas=1, scaleDownDelaySeconds=0)
    scene.set_total_concurrency(0)
    failing = next(iter(scene.pods.values()))
    failing.failing = True  # its stream breaks off, its GET answers 500
    async with controller(kubeconfig, scrape_timeout_s=0.3) as port:
        await eventually(lambda: (scene.status().get("desiredReplicas") or 0) > 0)
        await _ticks_after(port, 8)
        assert scene.replicas == 4
        failing.failing = False
        await eventually(lambda: scene.replicas < 4, timeout_s=30)


def _value(page: dict[str, Any], family: str) -> float:
    return float(page[family].samples[0].value)


async def _ticks_after(port: int, ticks: int) -> None:
    """Until the controller has ticked `ticks` more times (bounded)."""
    start = _value(await _scrape(port), "rscore_autoscaler_ticks")
    for _ in range(400):
        if _value(await _scrape(port), "rscore_autoscaler_ticks") >= start + ticks:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the controller did not tick {ticks} times")


def test_the_sidecars_restricted_page_has_all_the_controller_reads(tmp_path: Path) -> None:
    """The sidecar's queue, workers and concurrency are read at collect time and describe
    nothing in advance: a restriction by what collectors describe (prometheus_client's
    `restricted_registry`) would drop them, and every streamed reading would fail."""
    registry = CollectorRegistry()
    create_app(SidecarConfig(), pool=WorkerPool(tmp_path / "sock" / "w.sock"), registry=registry)
    full = metrics_page(registry, ()).decode()
    page = metrics_page(registry, NAMES).decode()
    reading = parse_pod_metrics(page, 0.0)  # raises if a name the policy needs is missing
    assert reading == parse_pod_metrics(full, 0.0)
    samples = {
        sample.name for family in text_string_to_metric_families(page) for sample in family.samples
    }
    assert samples <= set(NAMES)
    assert len(page) < len(full) / 2
