"""The activator over real sockets: a real aiohttp upstream on 127.0.0.1 that comes up
(or answers 503) whenever the test says, the activator's real proxy and metrics sites
(`rscore.activator.serve.serve`, in this process, or `rscore activator` as a process where
signals matter), and real HTTP clients.

What it proves: a request sent while no pod is ready is held and answered 200 once one
is; the hold gauge counts it meanwhile; a full hold queue answers 503 with Retry-After,
a hold that runs out 504; whatever the upstream answers (errors included) is passed on
unchanged, method, path, query, headers and body arrive as sent, minus hop-by-hop
headers, plus X-Forwarded-For; a body over the limit is 413; hundreds of held requests
are all answered, each with its own answer; TLS on both sides; SIGTERM drains.
Nothing here measures time: bounds are timeouts, never assertions about speed.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from certs import make_ca
from fake_pods import free_port
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from rscore.activator.hold import HoldLimits
from rscore.activator.proxy import ProxyConfig
from rscore.activator.serve import Listen, serve

RSCORE = Path(sys.executable).with_name("rscore")
HOST = "127.0.0.1"


# --- a real upstream -----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """A stand-in for the model's Service: an aiohttp server on a fixed port that the
    test starts late, stops, or keeps answering 503 (a pod that is not ready yet)."""

    port: int = field(default_factory=free_port)
    ready: bool = True
    seen: list[Seen] = field(default_factory=list)
    handler: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]] | None = None
    ssl_context: Any = None
    _runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/readyz":
            return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)
        self.seen.append(Seen(request.method, request.raw_path, CIMultiDict(request.headers), body))
        if not self.ready:
            return web.json_response(
                {"error": {"code": "unavailable", "message": "not ready"}}, status=503
            )
        if self.handler is not None:
            return await self.handler(request, body)
        return web.json_response({"echo": body.decode(), "path": request.raw_path})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port, ssl_context=self.ssl_context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The first sample named `name` with these labels in a Prometheus text page; 0 if none."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@dataclass
class Running:
    url: str
    metrics_url: str

    async def metric(self, session: aiohttp.ClientSession, name: str, **labels: str) -> float:
        async with session.get(self.metrics_url) as response:
            return metric_value(await response.text(), name, **labels)

    async def until_held(
        self, session: aiohttp.ClientSession, count: float = 1, timeout_s: float = 20.0
    ) -> None:
        """Wait until the activator holds exactly `count` requests."""

        async def held() -> bool:
            return await self.metric(session, "rscore_activator_held_requests") == count

        await eventually(held, timeout_s=timeout_s)


@asynccontextmanager
async def activator(
    upstream: str, *, scheme: str = "http", listen: Listen | None = None, **config: Any
) -> AsyncIterator[Running]:
    """`rscore.activator.serve.serve` on free ports of 127.0.0.1, stopped (and drained) on exit."""
    listen = listen or Listen(host=HOST, port=free_port(), metrics_port=free_port())
    stop = asyncio.Event()
    task = asyncio.create_task(serve(ProxyConfig(upstream=upstream, **config), listen, stop))
    running = Running(
        f"{scheme}://{HOST}:{listen.port}", f"http://{HOST}:{listen.metrics_port}/metrics"
    )
    async with aiohttp.ClientSession() as probe:
        for _ in range(500):
            if task.done():
                task.result()  # raise what stopped it
            try:
                async with probe.get(running.metrics_url):
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.01)
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.02)


def limits(**fields: Any) -> HoldLimits:
    return HoldLimits(**fields)


# --- held, then answered -------------------------------------------------------------------


async def test_a_request_held_while_no_pod_is_ready_is_answered_once_one_is() -> None:
    upstream = Upstream()
    async with (
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession() as client,
    ):
        try:
            # Nothing listens on the upstream port: the connection is refused.
            request = asyncio.create_task(
                client.post(
                    URL(f"{act.url}/score?x=1&y=%2F", encoded=True),  # sent as written
                    data=b'{"dataframe_records": [{"wt": 2.62}]}',
                    headers={
                        "Authorization": "Bearer s3cret-key",
                        "Content-Type": "application/json",
                        "Connection": "keep-alive, X-Hop",
                        "X-Hop": "only for the first hop",
                        "Proxy-Authorization": "Basic cHJveHk6cHJveHk=",
                        "X-Forwarded-For": "203.0.113.7",
                        "x-request-id": "abc-123",
                    },
                )
            )

            await act.until_held(client)
            assert await act.metric(client, "rscore_activator_upstream_ready") == 0
            assert not request.done()

            await upstream.start()  # the pod is ready: kubelet started it
            async with asyncio.timeout(20):
                response = await request
            assert response.status == 200
            assert await response.json() == {
                "echo": '{"dataframe_records": [{"wt": 2.62}]}',
                "path": "/score?x=1&y=%2F",
            }
            response.release()
        finally:
            await upstream.stop()

        (seen,) = upstream.seen
        assert (seen.method, seen.path_qs) == ("POST", "/score?x=1&y=%2F")
        assert seen.headers["Authorization"] == "Bearer s3cret-key"  # untouched
        assert seen.headers["Content-Type"] == "application/json"
        assert seen.headers["x-request-id"] == "abc-123"
        assert seen.headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
        assert seen.headers["X-Forwarded-Proto"] == "http"
        assert seen.headers["Host"] == f"{HOST}:{upstream.port}"
        assert seen.headers["X-Forwarded-Host"] == act.url.removeprefix("http://")
        for hop in ("X-Hop", "Proxy-Authorization"):
            assert hop not in seen.headers
        assert await act.metric(client, "rscore_activator_held_requests") == 0
        assert await act.metric(client, "rscore_activator_upstream_ready") == 1
        assert await act.metric(client, "rscore_activator_requests_total", code="200") == 1
        assert await act.metric(client, "rscore_activator_hold_duration_seconds_count") == 1


async def test_a_pod_that_answers_503_until_ready_is_waited_for() -> None:
    async with (
        Upstream(ready=False) as upstream,
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession() as client,
    ):
        request = asyncio.create_task(client.get(f"{act.url}/v2/models/m"))

        await act.until_held(client)
        upstream.ready = True
        async with asyncio.timeout(20):
            response = await request
        assert response.status == 200
        response.release()
        # The first try met the 503; the retry got through; the 503 never reached us.
        assert [s.path_qs for s in upstream.seen] == ["/v2/models/m", "/v2/models/m"]
        assert await act.metric(client, "rscore_activator_requests_total", code="503") == 0


@pytest.mark.slow
async def test_hundreds_of_held_requests_are_all_answered_each_with_its_own_answer() -> None:
    upstream = Upstream()
    count = 300
    async with (
        activator(f"http://{HOST}:{upstream.port}", limits=limits(max_held=count)) as act,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client,
    ):

        async def one(i: int) -> tuple[int, Any]:
            async with client.post(f"{act.url}/score", data=f"row-{i}".encode()) as response:
                return response.status, await response.json()

        requests = [asyncio.create_task(one(i)) for i in range(count)]

        try:
            await act.until_held(client, count, timeout_s=60)
            await upstream.start()
            async with asyncio.timeout(60):
                answers = await asyncio.gather(*requests)
        finally:
            await upstream.stop()
        assert [status for status, _ in answers] == [200] * count
        assert [body["echo"] for _, body in answers] == [f"row-{i}" for i in range(count)]
        assert await act.metric(client, "rscore_activator_held_requests") == 0
        assert await act.metric(client, "rscore_activator_requests_total", code="200") == count


async def test_a_client_that_hangs_up_while_held_stops_counting_and_is_never_sent() -> None:
    upstream = Upstream()
    async with (
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession() as client,
    ):
        leaving = asyncio.create_task(client.post(f"{act.url}/score", data=b"gone"))

        await act.until_held(client, 1)
        leaving.cancel()  # the client closes its connection
        await act.until_held(client, 0)
        try:
            await upstream.start()
            async with client.post(f"{act.url}/score", data=b"stays") as response:
                assert response.status == 200
        finally:
            await upstream.stop()
        assert [s.body for s in upstream.seen] == [b"stays"]


# --- refusals ------------------------------------------------------------------------------


async def test_a_full_hold_queue_answers_503_with_retry_after() -> None:
    upstream = Upstream()
    async with (
        activator(
            f"http://{HOST}:{upstream.port}", limits=limits(max_held=2, retry_after_s=7)
        ) as act,
        aiohttp.ClientSession() as client,
    ):
        held = [asyncio.create_task(client.get(f"{act.url}/score")) for _ in range(2)]

        async def two_held() -> bool:
            return await act.metric(client, "rscore_activator_held_requests") == 2

        await eventually(two_held)
        async with client.post(f"{act.url}/score", data=b"{}") as refused:
            assert refused.status == 503
            assert refused.headers["Retry-After"] == "7"
            assert refused.headers["x-request-id"]
            body = await refused.json()
        assert body["error"]["code"] == "unavailable"
        assert "2 requests are held" in body["error"]["message"]
        try:
            await upstream.start()
            for task in held:
                async with asyncio.timeout(20):
                    response = await task
                assert response.status == 200
                response.release()
        finally:
            await upstream.stop()
        assert await act.metric(client, "rscore_activator_requests_total", code="503") == 1


@pytest.mark.parametrize("path", ["/score", "/v2/models/m/infer"])
async def test_a_hold_that_runs_out_answers_504(path: str) -> None:
    port = free_port()  # never listens
    async with (
        activator(f"http://{HOST}:{port}", limits=limits(hold_timeout_s=0.3)) as act,
        aiohttp.ClientSession() as client,
        client.post(f"{act.url}{path}", data=b"{}", headers={"x-request-id": "r-9"}) as response,
    ):
        assert response.status == 504
        assert response.headers["x-request-id"] == "r-9"
        body = await response.json()
        if path.startswith("/v2/"):  # the Open Inference Protocol's error shape
            assert "no scoring pod became ready" in body["error"]
        else:
            assert body["error"]["code"] == "timeout"
            assert "no scoring pod became ready within 0.3 s" in body["error"]["message"]
        assert await act.metric(client, "rscore_activator_held_requests") == 0
        assert await act.metric(client, "rscore_activator_requests_total", code="504") == 1
        assert await act.metric(client, "rscore_activator_hold_duration_seconds_count") == 1


async def test_a_body_over_the_limit_is_413_and_never_sent_upstream() -> None:
    async with (
        Upstream() as upstream,
        activator(f"http://{HOST}:{upstream.port}", max_body_bytes=100) as act,
        aiohttp.ClientSession() as client,
    ):
        async with client.post(f"{act.url}/score", data=b"x" * 101) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "too_large"
        assert upstream.seen == []
        async with client.post(f"{act.url}/score", data=b"x" * 100) as response:
            assert response.status == 200
        assert len(upstream.seen) == 1


# --- what the upstream says is passed on ------------------------------------------------------


async def _errors(request: web.Request, body: bytes) -> web.StreamResponse:
    status = int(request.query["status"])
    response = web.Response(
        status=status, body=b'{"error": {"code": "x", "message": "from the pod"}}',
        content_type="application/json",
    )  # fmt: skip
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="rscore"'
    if status == 429:
        response.headers["Retry-After"] = "1"
    response.headers["x-request-id"] = "from-pod"
    return response


@pytest.mark.parametrize("status", [400, 401, 404, 413, 415, 429, 500, 502, 504])
async def test_upstream_errors_are_passed_on_unchanged(status: int) -> None:
    async with (
        Upstream(handler=_errors) as upstream,
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession() as client,
        client.post(f"{act.url}/score?status={status}", data=b"{}") as response,
    ):
        assert response.status == status
        assert await response.read() == b'{"error": {"code": "x", "message": "from the pod"}}'
        assert response.headers["x-request-id"] == "from-pod"
        if status == 401:
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="rscore"'
        if status == 429:
            assert response.headers["Retry-After"] == "1"
        assert len(upstream.seen) == 1  # never retried: the pod took it


async def _big_or_gzipped(request: web.Request, body: bytes) -> web.StreamResponse:
    if request.path == "/gzip":
        return web.Response(
            body=gzip.compress(b"hello " * 1000),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )
    stream = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    stream.enable_chunked_encoding()
    await stream.prepare(request)
    for i in range(64):
        await stream.write(bytes([i]) * 16384)  # 1 MiB in pieces, no Content-Length
    await stream.write_eof()
    return stream


async def test_large_streamed_and_compressed_answers_arrive_byte_for_byte() -> None:
    async with (
        Upstream(handler=_big_or_gzipped) as upstream,
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession(auto_decompress=False) as client,
    ):
        async with client.get(f"{act.url}/big") as response:
            assert response.status == 200
            assert await response.read() == b"".join(bytes([i]) * 16384 for i in range(64))
        async with client.get(f"{act.url}/gzip") as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await response.read()) == b"hello " * 1000


async def _hang_up(request: web.Request, body: bytes) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()  # the pod went away mid-request, before any answer
    raise ConnectionResetError


async def test_a_dropped_connection_is_tried_once_more_then_502() -> None:
    async with (
        Upstream(handler=_hang_up) as upstream,
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession() as client,
        client.post(f"{act.url}/score", data=b"{}") as response,
    ):
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_error"
        assert len(upstream.seen) == 2


# --- TLS on both sides -------------------------------------------------------------------------


async def test_https_in_and_out_with_the_pods_certificate_as_the_trust_anchor(
    tmp_path: Path,
) -> None:
    """As in the manifests: clients reach the activator over HTTPS; the activator
    verifies the sidecar's certificate (issued for the public name, not the address it
    dials) with --upstream-ca pointing at that certificate and --upstream-server-name."""
    import ssl

    ca = make_ca()
    pod_cert, pod_key = ca.issue_server(hosts=("mtcars-lm-scorer.models.svc",)).write(
        tmp_path / "pod"
    )
    front_cert, front_key = ca.issue_server().write(tmp_path / "front")
    pod_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pod_tls.load_cert_chain(pod_cert, pod_key)
    upstream = Upstream(ssl_context=pod_tls)
    await upstream.start()
    client_tls = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.crt")))
    listen = Listen(
        host=HOST, port=free_port(), metrics_port=free_port(), tls_cert=front_cert,
        tls_key=front_key, access_log=False,
    )  # fmt: skip
    try:
        async with (
            activator(
                f"https://{HOST}:{upstream.port}", scheme="https", listen=listen,
                upstream_ca=pod_cert, upstream_server_name="mtcars-lm-scorer.models.svc",
            ) as act,
            aiohttp.ClientSession() as client,
            client.post(f"{act.url}/score", data=b"{}", ssl=client_tls) as response,
        ):  # fmt: skip
            assert response.status == 200
            assert upstream.seen[0].headers["X-Forwarded-Proto"] == "https"
        # A name the certificate does not carry is no pod start: 502 at once, not a hold.
        async with (
            activator(
                f"https://{HOST}:{upstream.port}", upstream_ca=pod_cert,
                limits=limits(hold_timeout_s=30),
            ) as act,
            aiohttp.ClientSession() as client,
            client.post(f"{act.url}/score", data=b"{}") as response,
        ):  # fmt: skip
            assert response.status == 502
            assert "TLS" in (await response.json())["error"]["message"]
    finally:
        await upstream.stop()


# --- rscore activator as a process: SIGTERM ---------------------------------------------------


@asynccontextmanager
async def rscore_activator(
    upstream_port: int, log: Path, *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Running]]:
    port, metrics_port = free_port(), free_port()
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(RSCORE), "activator", "--upstream", f"http://{HOST}:{upstream_port}",
            "--port", str(port), "--metrics-port", str(metrics_port), *args,
            stdout=sink, stderr=sink, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    running = Running(f"http://{HOST}:{port}", f"http://{HOST}:{metrics_port}/metrics")
    try:
        async with aiohttp.ClientSession() as probe:

            async def up() -> bool:
                assert process.returncode is None, log.read_text()
                try:
                    async with probe.get(running.metrics_url) as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(up, timeout_s=30)
        yield process, running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.e2e
async def test_sigterm_finishes_held_requests_then_exits(tmp_path: Path) -> None:
    upstream = Upstream()
    async with (
        rscore_activator(upstream.port, tmp_path / "activator.log") as (process, act),
        aiohttp.ClientSession() as client,
    ):
        request = asyncio.create_task(client.post(f"{act.url}/score", data=b"held"))

        await act.until_held(client)
        process.send_signal(signal.SIGTERM)

        async def refusing_new_connections() -> bool:
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{act.url}/x"):
                    return False
            except aiohttp.ClientConnectionError:
                return True

        await eventually(refusing_new_connections)
        assert process.returncode is None  # still holding the request
        try:
            await upstream.start()
            async with asyncio.timeout(20):
                response = await request
            assert response.status == 200
            assert (await response.json())["echo"] == "held"
            async with asyncio.timeout(30):
                assert await process.wait() == 0
        finally:
            await upstream.stop()
    assert "draining" in (tmp_path / "activator.log").read_text()


@pytest.mark.e2e
async def test_sigterm_lets_a_forwarded_request_finish(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request, body: bytes) -> web.StreamResponse:
        await release.wait()  # the pod is still scoring when SIGTERM arrives
        return web.json_response({"scored": body.decode()})

    async with (
        Upstream(handler=slow) as upstream,
        rscore_activator(upstream.port, tmp_path / "activator.log") as (process, act),
        aiohttp.ClientSession() as client,
    ):
        request = asyncio.create_task(client.post(f"{act.url}/score", data=b"row"))
        await eventually(lambda: _true(len(upstream.seen) == 1))
        process.send_signal(signal.SIGTERM)
        log = tmp_path / "activator.log"
        await eventually(lambda: _true("draining" in log.read_text()))  # it has landed
        assert process.returncode is None
        release.set()
        async with asyncio.timeout(20):
            response = await request
        assert response.status == 200
        assert await response.json() == {"scored": "row"}
        async with asyncio.timeout(30):
            assert await process.wait() == 0


async def _true(value: bool) -> bool:
    return value


@pytest.mark.e2e
async def test_sigterm_answers_503_to_requests_still_held_at_the_drain_deadline(
    tmp_path: Path,
) -> None:
    async with (
        rscore_activator(free_port(), tmp_path / "activator.log", "--drain-timeout-s", "0.5") as (
            process,
            act,
        ),
        aiohttp.ClientSession() as client,
    ):
        request = asyncio.create_task(client.post(f"{act.url}/score", data=b"held"))

        await act.until_held(client)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            response = await request
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "unavailable"
        async with asyncio.timeout(30):
            assert await process.wait() == 0


@pytest.mark.e2e
def test_configuration_errors_are_named_without_a_traceback() -> None:
    import subprocess

    for args, message in (
        (["--upstream", "ftp://x"], "--upstream must be http(s)://host[:port]"),
        (["--upstream", "http://x:1/score"], "--upstream must have no path"),
        (["--upstream", "http://x:1", "--upstream-ca", "/dev/null"], "only for an https://"),
    ):
        result = subprocess.run(
            [str(RSCORE), "activator", *args], capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
