"""The metrics port's `name[]` restriction and its `/metrics/stream` endpoint.

Checks the pure parts of `rscore.sidecar.metrics_stream` (`stream_request`'s reading of
a query, `StreamRequest.next_reading`'s schedule, `reading`'s framing of a page) with
tables of cases, then the metrics app over real HTTP (`create_metrics_app`, and a small
app around `serve_stream` with a low stream limit): `/metrics` restricted by `name[]`;
a stream's readings (each a page of its own, stamped with `# TIME` and ended by
`# EOF`), on a phase grid when asked; 400 for a bad query naming the parameter; 429 with
Retry-After beyond the limit; every stream ended by the server's shutdown without waiting
for its interval; and a client leaving mid-stream giving its stream slot back.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rscore.sidecar.app import create_metrics_app
from rscore.sidecar.metrics import SidecarMetrics
from rscore.sidecar.metrics_stream import (
    END_OF_READING,
    NAMES_PARAM,
    STREAM_PATH,
    MetricStreams,
    StreamRequest,
    metrics_page,
    reading,
    serve_stream,
    stream_request,
)

BOUND_S = 10.0  # every wait in this file is bounded by this
REQUESTS_TOTAL = "rscore_requests_total"
BATCH_ROWS_SUM = "rscore_batch_rows_sum"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TIME_LINE = re.compile(rb"^# TIME (\S+)\n# EOF\n\Z", re.MULTILINE)


# --- helpers ------------------------------------------------------------------------


def samples_of(text: bytes | str) -> Samples:
    """Every sample of a text page, by name and sorted labels (prometheus_client's own
    parser: a reading must parse as `/metrics` does)."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def names_of(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def stamp_of(one_reading: bytes) -> float:
    """The `# TIME` of a reading (which must end with it and the end mark)."""
    found = TIME_LINE.search(one_reading)
    assert found is not None, one_reading[-200:]
    return float(found.group(1))


def requests_with_code(samples: Samples, code: str) -> float:
    return samples.get((REQUESTS_TOTAL, (("code", code),)), 0.0)


async def next_reading(response: aiohttp.ClientResponse) -> bytes:
    chunk = await asyncio.wait_for(response.content.readuntil(END_OF_READING), BOUND_S)
    assert chunk.endswith(END_OF_READING), chunk[-200:]
    return chunk


async def wait_until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), BOUND_S)


def streams_of(app: web.Application) -> MetricStreams:
    """The MetricStreams that `create_metrics_app` hooked to its shutdown."""
    found = [
        hook.__self__
        for hook in app.on_shutdown
        if isinstance(getattr(hook, "__self__", None), MetricStreams)
    ]
    assert len(found) == 1, list(app.on_shutdown)
    return found[0]


def stream_params(
    interval_s: float, *, phase_s: float | None = None, names: Sequence[str] = ()
) -> list[tuple[str, str]]:
    params = [("interval_s", str(interval_s))]
    if phase_s is not None:
        params.append(("phase_s", str(phase_s)))
    params.extend((NAMES_PARAM, name) for name in names)
    return params


def bounded_app(registry: CollectorRegistry, streams: MetricStreams) -> web.Application:
    """A metrics port as the sidecar's, around `streams` (a low limit)."""

    async def stream(request: web.Request) -> web.StreamResponse:
        return await serve_stream(request, streams, lambda names: metrics_page(registry, names))

    app = web.Application()
    app.on_shutdown.append(streams.close_all)
    app.router.add_get(STREAM_PATH, stream)
    return app


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> SidecarMetrics:
    return SidecarMetrics(registry)


@pytest.fixture
async def client(registry: CollectorRegistry) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_metrics_app(registry))) as test_client:
        yield test_client


# --- stream_request -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names", "expected"),
    [
        pytest.param({"interval_s": "1"}, [], StreamRequest(1.0), id="interval-only"),
        pytest.param({"interval_s": "0.1"}, [], StreamRequest(0.1), id="interval-at-min"),
        pytest.param({"interval_s": "300"}, [], StreamRequest(300.0), id="interval-at-max"),
        pytest.param({"interval_s": "2.5e0"}, [], StreamRequest(2.5), id="interval-exponent"),
        pytest.param(
            {"interval_s": "15", "phase_s": "14"},
            [],
            StreamRequest(15.0, (), 14.0),
            id="with-phase",
        ),
        pytest.param(
            {"interval_s": "15", "phase_s": "0"}, [], StreamRequest(15.0, (), 0.0), id="phase-zero"
        ),
        pytest.param(
            {"interval_s": "5"},
            [REQUESTS_TOTAL, BATCH_ROWS_SUM],
            StreamRequest(5.0, (REQUESTS_TOTAL, BATCH_ROWS_SUM)),
            id="names-kept-in-order",
        ),
        pytest.param(
            {"interval_s": "5"},
            ["", REQUESTS_TOTAL, ""],
            StreamRequest(5.0, (REQUESTS_TOTAL,)),
            id="empty-names-dropped",
        ),
        pytest.param({"interval_s": "5"}, [""], StreamRequest(5.0, ()), id="only-empty-names"),
    ],
)
def test_stream_request_accepts(
    query: Mapping[str, str], names: list[str], expected: StreamRequest
) -> None:
    assert stream_request(query, names) == expected


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        pytest.param({}, "interval_s", id="interval-missing"),
        pytest.param({"phase_s": "1"}, "interval_s", id="phase-without-interval"),
        pytest.param({"interval_s": "often"}, "interval_s", id="interval-not-a-number"),
        pytest.param({"interval_s": ""}, "interval_s", id="interval-empty"),
        pytest.param({"interval_s": "0.09"}, "interval_s", id="interval-below-min"),
        pytest.param({"interval_s": "0"}, "interval_s", id="interval-zero"),
        pytest.param({"interval_s": "-1"}, "interval_s", id="interval-negative"),
        pytest.param({"interval_s": "300.5"}, "interval_s", id="interval-above-max"),
        pytest.param({"interval_s": "nan"}, "interval_s", id="interval-nan"),
        pytest.param({"interval_s": "inf"}, "interval_s", id="interval-inf"),
        pytest.param({"interval_s": "1", "phase_s": "soon"}, "phase_s", id="phase-not-a-number"),
        pytest.param({"interval_s": "1", "phase_s": "-0.1"}, "phase_s", id="phase-negative"),
        pytest.param({"interval_s": "1", "phase_s": "1"}, "phase_s", id="phase-equal-interval"),
        pytest.param({"interval_s": "1", "phase_s": "1.5"}, "phase_s", id="phase-above-interval"),
        pytest.param({"interval_s": "1", "phase_s": "nan"}, "phase_s", id="phase-nan"),
        pytest.param({"interval_s": "1", "phase_s": "inf"}, "phase_s", id="phase-inf"),
    ],
)
def test_stream_request_refuses(query: Mapping[str, str], parameter: str) -> None:
    problem = stream_request(query, [REQUESTS_TOTAL])
    assert isinstance(problem, str), problem
    assert parameter in problem
    if parameter == "interval_s":  # a problem with the interval is not blamed on the phase
        assert "phase_s" not in problem


# --- StreamRequest.next_reading ------------------------------------------------------


@pytest.mark.parametrize(
    ("interval_s", "phase_s", "now", "expected"),
    [
        pytest.param(1.0, None, 1000.25, 1001.25, id="no-phase-adds-interval"),
        pytest.param(15.0, None, 1_700_000_000.5, 1_700_000_015.5, id="no-phase-unix-time"),
        pytest.param(0.5, None, 0.0, 0.5, id="no-phase-from-zero"),
        pytest.param(10.0, 3.0, 1000.0, 1003.0, id="phase-later-this-period"),
        pytest.param(10.0, 3.0, 1004.0, 1013.0, id="phase-next-period"),
        pytest.param(10.0, 3.0, 1003.0, 1013.0, id="phase-on-grid-is-strictly-after"),
        pytest.param(10.0, 0.0, 1000.0, 1010.0, id="phase-zero-on-grid"),
        pytest.param(10.0, 9.5, 1009.75, 1019.5, id="phase-just-passed"),
        pytest.param(10.0, 9.5, 1009.25, 1009.5, id="phase-just-ahead"),
        pytest.param(15.0, 14.0, 1_700_000_000.0, 1_700_000_009.0, id="phase-unix-time"),
        pytest.param(0.25, 0.125, 2.0, 2.125, id="phase-short-interval"),
        pytest.param(0.25, 0.125, 2.125, 2.375, id="phase-short-interval-on-grid"),
        pytest.param(
            0.2,
            0.0,
            139879.4,
            139879.6,
            # on a grid point where floor((now - phase) / interval) rounds a hair short
            id="phase-on-grid-float-rounding",
        ),
    ],
)
def test_next_reading(
    interval_s: float, phase_s: float | None, now: float, expected: float
) -> None:
    following = StreamRequest(interval_s, (), phase_s).next_reading(now)
    assert following == pytest.approx(expected, abs=1e-6)
    assert following > now


# --- reading ------------------------------------------------------------------------


def _busy_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    metrics.count_request(200, 0.1)
    metrics.count_request(503, 2.0)
    metrics.r_call(7, 0.02)
    return registry


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(b"", id="empty-page"),
        pytest.param(metrics_page(_busy_registry(), []), id="whole-registry"),
        pytest.param(metrics_page(_busy_registry(), [REQUESTS_TOTAL]), id="restricted"),
        pytest.param(b"# HELP up Whether up.\n# TYPE up gauge\nup 1.0\n", id="hand-written-gauge"),
    ],
)
@pytest.mark.parametrize("taken_at", [1_700_000_000.123456, 0.5])
def test_reading_frames_a_page(page: bytes, taken_at: float) -> None:
    framed = reading(page, taken_at)
    assert framed.startswith(page)
    tail = framed[len(page) :]
    lines = tail.split(b"\n")
    assert lines[-1] == b""  # the reading ends with a newline
    assert lines[-2] == b"# EOF"
    assert lines[-3].startswith(b"# TIME ")
    assert len(lines) == 3  # nothing else is added to the page
    assert float(lines[-3].removeprefix(b"# TIME ")) == pytest.approx(taken_at, abs=1e-6)
    assert stamp_of(framed) == pytest.approx(taken_at, abs=1e-6)
    assert samples_of(framed) == samples_of(page)


def test_reading_of_real_page_keeps_its_samples() -> None:
    page = metrics_page(_busy_registry(), [])
    samples = samples_of(reading(page, time.time()))
    assert requests_with_code(samples, "200") == 1.0
    assert requests_with_code(samples, "503") == 1.0
    assert samples[(BATCH_ROWS_SUM, ())] == 7.0


# --- /metrics -----------------------------------------------------------------------


async def test_metrics_restricted_by_names(client: TestClient, metrics: SidecarMetrics) -> None:
    metrics.count_request(200, 0.1)
    metrics.count_request(200, 0.1)
    metrics.r_call(3, 0.05)
    response = await client.get(
        "/metrics", params=[(NAMES_PARAM, REQUESTS_TOTAL), (NAMES_PARAM, BATCH_ROWS_SUM)]
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = samples_of(await response.text())
    assert names_of(samples) == {REQUESTS_TOTAL, BATCH_ROWS_SUM}
    assert samples == {
        (REQUESTS_TOTAL, (("code", "200"),)): 2.0,
        (BATCH_ROWS_SUM, ()): 3.0,
    }


async def test_metrics_without_names_is_whole_registry(
    client: TestClient, metrics: SidecarMetrics
) -> None:
    metrics.count_request(200, 0.1)
    metrics.count_request(200, 0.1)
    metrics.r_call(3, 0.05)
    response = await client.get("/metrics")
    assert response.status == 200
    samples = samples_of(await response.text())
    names = names_of(samples)
    assert {
        REQUESTS_TOTAL,
        BATCH_ROWS_SUM,
        "rscore_request_duration_seconds_bucket",
        "rscore_request_duration_seconds_count",
        "rscore_scoring_duration_seconds_sum",
        "rscore_batch_rows_bucket",
        "rscore_worker_restarts_total",
    } <= names
    assert requests_with_code(samples, "200") == 2.0
    assert samples[("rscore_request_duration_seconds_count", ())] == 2.0
    # 0.1 s falls in the 0.1 bucket (le is inclusive), not the 0.05 one
    assert samples[("rscore_request_duration_seconds_bucket", (("le", "0.1"),))] == 2.0
    assert samples[("rscore_request_duration_seconds_bucket", (("le", "0.05"),))] == 0.0


async def test_metrics_unknown_name_gives_empty_page(
    client: TestClient, metrics: SidecarMetrics
) -> None:
    metrics.count_request(200, 0.1)
    response = await client.get("/metrics", params=[(NAMES_PARAM, "no_such_metric")])
    assert response.status == 200
    assert samples_of(await response.text()) == {}


# --- /metrics/stream ----------------------------------------------------------------


async def test_stream_readings_follow_the_registry(
    client: TestClient, metrics: SidecarMetrics
) -> None:
    metrics.count_request(200, 0.1)
    async with client.get(STREAM_PATH, params=stream_params(0.2)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Cache-Control"] == "no-store"
        first = await next_reading(response)
        first_samples = samples_of(first)
        assert requests_with_code(first_samples, "200") == 1.0
        assert "rscore_request_duration_seconds_bucket" in names_of(first_samples)

        metrics.count_request(200, 0.1)
        metrics.count_request(500, 0.2)
        counted_at = time.time()
        stamps = [stamp_of(first)]
        assert stamps[0] <= counted_at
        # The reading after the count: the next one unless this test was held up past it
        for _ in range(5):
            later = await next_reading(response)
            stamps.append(stamp_of(later))
            if stamps[-1] >= counted_at:
                break
        assert stamps[-1] >= counted_at
        later_samples = samples_of(later)
        assert requests_with_code(later_samples, "200") == 2.0
        assert requests_with_code(later_samples, "500") == 1.0
        assert all(a < b for a, b in itertools.pairwise(stamps)), stamps


async def test_stream_restricted_by_names(client: TestClient, metrics: SidecarMetrics) -> None:
    metrics.count_request(200, 0.1)
    metrics.r_call(3, 0.05)
    params = stream_params(0.2, names=["", REQUESTS_TOTAL, BATCH_ROWS_SUM])
    async with client.get(STREAM_PATH, params=params) as response:
        assert response.status == 200
        for _ in range(2):
            samples = samples_of(await next_reading(response))
            assert names_of(samples) == {REQUESTS_TOTAL, BATCH_ROWS_SUM}
            assert requests_with_code(samples, "200") == 1.0


def _off_grid(stamp: float, interval_s: float, phase_s: float) -> float:
    """How far `stamp` is from the nearest time that is `phase_s` modulo `interval_s`."""
    offset = (stamp - phase_s) % interval_s
    return min(offset, interval_s - offset)


async def test_stream_with_phase_reads_on_the_grid(client: TestClient) -> None:
    interval_s, phase_s = 0.2, 0.05
    async with client.get(
        STREAM_PATH, params=stream_params(interval_s, phase_s=phase_s)
    ) as response:
        assert response.status == 200
        stamps = [stamp_of(await next_reading(response)) for _ in range(4)]
    # the first reading is at once; every later one on the grid (the server's own stamp)
    for stamp in stamps[1:]:
        assert _off_grid(stamp, interval_s, phase_s) <= 0.05, (stamps, stamp % interval_s)
    # one reading per grid point: no reading taken twice for the same point
    gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
    assert all(gap >= interval_s / 2 for gap in gaps), gaps


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param([], "interval_s", id="interval-missing"),
        pytest.param([("interval_s", "often")], "interval_s", id="interval-not-a-number"),
        pytest.param([("interval_s", "0.01")], "interval_s", id="interval-below-min"),
        pytest.param([("interval_s", "301")], "interval_s", id="interval-above-max"),
        pytest.param([("interval_s", "nan")], "interval_s", id="interval-nan"),
        pytest.param([("interval_s", "1"), ("phase_s", "x")], "phase_s", id="phase-nan"),
        pytest.param([("interval_s", "1"), ("phase_s", "-1")], "phase_s", id="phase-negative"),
        pytest.param([("interval_s", "1"), ("phase_s", "1")], "phase_s", id="phase-too-big"),
    ],
)
async def test_bad_stream_query_is_400_and_others_stream_on(
    client: TestClient, metrics: SidecarMetrics, params: list[tuple[str, str]], parameter: str
) -> None:
    async with client.get(STREAM_PATH, params=stream_params(0.2)) as streaming:
        assert streaming.status == 200
        await next_reading(streaming)
        async with client.get(STREAM_PATH, params=params) as refused:
            assert refused.status == 400
            assert parameter in await refused.text()
        metrics.count_request(404, 0.01)
        counted_at = time.time()
        for _ in range(5):  # the open stream still delivers, and sees the new count
            later = await next_reading(streaming)
            if stamp_of(later) >= counted_at:
                break
        assert requests_with_code(samples_of(later), "404") == 1.0


async def test_stream_limit_gives_429_then_frees_a_slot(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    streams = MetricStreams(limit=2)
    async with TestClient(TestServer(bounded_app(registry, streams))) as client:
        first = await client.get(STREAM_PATH, params=stream_params(0.2))
        second = await client.get(STREAM_PATH, params=stream_params(0.2))
        try:
            for response in (first, second):
                assert response.status == 200
                await next_reading(response)
            assert streams.open == 2

            async with client.get(STREAM_PATH, params=stream_params(0.2)) as third:
                assert third.status == 429
                retry_after = third.headers["Retry-After"]
                assert retry_after.isdigit()
                assert int(retry_after) >= 1
                body = await third.text()
                assert "2" in body
                assert "stream" in body
            assert streams.open == 2  # the refused one never counted

            metrics.count_request(200, 0.1)
            for response in (first, second):  # the open two still deliver
                samples = samples_of(await next_reading(response))
                assert "rscore_request_duration_seconds_bucket" in names_of(samples)

            first.close()  # the client leaves
            await wait_until(lambda: streams.open == 1)
            async with client.get(STREAM_PATH, params=stream_params(0.2)) as fourth:
                assert fourth.status == 200
                assert requests_with_code(samples_of(await next_reading(fourth)), "200") == 1.0
                assert streams.open == 2
            await next_reading(second)
        finally:
            first.close()
            second.close()


async def test_retry_after_rounds_the_interval_up(registry: CollectorRegistry) -> None:
    streams = MetricStreams(limit=0)
    async with (
        TestClient(TestServer(bounded_app(registry, streams))) as client,
        client.get(STREAM_PATH, params=stream_params(2.5)) as refused,
    ):
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "3"
        assert "0 metrics streams" in await refused.text()


async def test_shutdown_ends_every_stream_at_once(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    metrics.count_request(200, 0.1)
    app = create_metrics_app(registry)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    cleaned = False
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}{STREAM_PATH}"
        async with aiohttp.ClientSession() as session:
            plain = await session.get(url, params=stream_params(60))
            phased = await session.get(url, params=stream_params(60, phase_s=59.5))
            try:
                for response in (plain, phased):
                    assert response.status == 200
                    assert requests_with_code(samples_of(await next_reading(response)), "200")
                await asyncio.wait_for(runner.cleanup(), BOUND_S)
                cleaned = True
                for response in (plain, phased):
                    rest = await asyncio.wait_for(response.content.read(), BOUND_S)
                    assert END_OF_READING not in rest
                    assert response.content.at_eof()
            finally:
                plain.close()
                phased.close()
    finally:
        if not cleaned:  # the test failed: end the streams so cleanup need not wait 60 s
            await streams_of(app).close_all()
            await runner.cleanup()


async def test_client_leaving_mid_stream_frees_its_slot(
    registry: CollectorRegistry, metrics: SidecarMetrics
) -> None:
    app = create_metrics_app(registry)
    streams = streams_of(app)
    async with TestClient(TestServer(app)) as client:
        staying = await client.get(STREAM_PATH, params=stream_params(0.1))
        leaving = await client.get(STREAM_PATH, params=stream_params(0.1, names=[REQUESTS_TOTAL]))
        try:
            for response in (staying, leaving):
                assert response.status == 200
                await next_reading(response)
            assert streams.open == 2
            leaving.close()  # mid-stream: the connection goes
            await wait_until(lambda: streams.open == 1)

            metrics.count_request(201, 0.1)
            response = await client.get("/metrics", params=[(NAMES_PARAM, REQUESTS_TOTAL)])
            assert response.status == 200
            assert requests_with_code(samples_of(await response.text()), "201") == 1.0
            await next_reading(staying)  # the other stream is untouched
            assert streams.open == 1
        finally:
            leaving.close()
            staying.close()
        await wait_until(lambda: streams.open == 0)
