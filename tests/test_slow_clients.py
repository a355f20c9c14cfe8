"""Slow and idle clients, and too many of them: deadlines, the connection cap, the drain.

The decisions (`rscore.sidecar.client_limits`) are tested with tables. The mechanism runs
over real sockets: an aiohttp app behind a `GuardedSite` in this process, on the stdlib
loop and on uvloop (what `rscore serve` runs), plain and TLS; then `rscore serve` and
the activator end to end. Every case that used to hold its connection forever (an idle
connection, a trickled request line, a half-sent header, a trickled body, an idle
keep-alive) must now be closed, and counted under the deadline that closed it.

Nothing here measures time: each wait is bounded generously and asserts what happened
(closed, with which answer, counted where), never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from certs import make_ca
from fake_pods import free_port
from prometheus_client import CollectorRegistry
from test_activator import metric_value
from test_drain import slow_bundle  # noqa: F401  (a fixture)

from rscore.activator.proxy import ProxyConfig
from rscore.activator.serve import Listen as ActivatorListen
from rscore.activator.serve import serve as serve_activator
from rscore.sidecar.client_deadlines import (
    ClientGuard,
    GuardedSite,
    runner_options,
)
from rscore.sidecar.client_limits import (
    ClientLimits,
    ConnectionCap,
    FdBudget,
    Handling,
    Outcome,
    Phase,
    deadline,
    fd_budget,
    on_expiry,
)

pytestmark = pytest.mark.slow  # real timers and deadlines, seconds each

HOST = "127.0.0.1"
BOUND_S = 20.0  # how long any one wait may take before the test fails: never a measure
SHORT = ClientLimits(
    header_timeout_s=1.0, body_timeout_s=1.0, keepalive_timeout_s=1.0, max_connections=50
)


# --- the decisions, as tables ----------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "handling", "began", "outcome"),
    [
        # idle keep-alive: closed silently if nothing runs, else looked at again later
        (Phase.IDLE, Handling.WAITING, False, Outcome.CLOSE),
        (Phase.IDLE, Handling.ANSWERING, False, Outcome.KEEP),
        (Phase.IDLE, Handling.STREAMING, False, Outcome.KEEP),
        (Phase.IDLE, Handling.BETWEEN, False, Outcome.KEEP),
        # header: a begun request is told 408; a connection that sent nothing is closed
        (Phase.HEADER, Handling.WAITING, True, Outcome.ANSWER_408),
        (Phase.HEADER, Handling.WAITING, False, Outcome.CLOSE),
        # ... but never while an (earlier, pipelined) request is being answered
        (Phase.HEADER, Handling.ANSWERING, True, Outcome.CLOSE_AFTER_ANSWER),
        (Phase.HEADER, Handling.BETWEEN, True, Outcome.CLOSE_AFTER_ANSWER),
        # body: the handler reading it gets the 408 to answer
        (Phase.BODY, Handling.READING, True, Outcome.FAIL_BODY_READ),
        # ... unless its answer has begun: no 408 into it, and it cannot end: cut
        (Phase.BODY, Handling.STREAMING, True, Outcome.CLOSE),
        # ... and an earlier request being answered finishes first
        (Phase.BODY, Handling.ANSWERING, True, Outcome.CLOSE_AFTER_ANSWER),
        # ... and a body nobody reads any more (its answer is sent) is just closed
        (Phase.BODY, Handling.BETWEEN, True, Outcome.CLOSE),
    ],
)
def test_what_happens_when_a_deadline_passes(
    phase: Phase, handling: Handling, began: bool, outcome: Outcome
) -> None:
    assert on_expiry(phase, handling, began) is outcome


@pytest.mark.parametrize(
    ("phase", "since", "expected"),
    [(Phase.HEADER, 100.0, 110.0), (Phase.BODY, 100.0, 130.0), (Phase.IDLE, 100.0, 175.0)],
)
def test_each_phase_has_its_own_deadline(phase: Phase, since: float, expected: float) -> None:
    assert deadline(ClientLimits(), phase, since) == expected


def test_the_cap_admits_up_to_its_limit_and_frees_a_place_on_release() -> None:
    cap = ConnectionCap(2)
    assert [cap.admit(), cap.admit(), cap.admit()] == [True, True, False]
    cap.release()
    assert [cap.admit(), cap.admit()] == [True, False]
    assert cap.open == 2


@pytest.mark.parametrize(
    ("cap", "soft", "hard", "per_connection", "expected"),
    [
        (1000, 1_048_576, 1_048_576, 1, FdBudget(None, 1000)),  # enough already
        (1000, None, None, 2, FdBudget(None, 1000)),  # unlimited
        (1000, 1024, 524_288, 1, FdBudget(1256, 1000)),  # containerd 2's 1024: raised
        (2000, 1024, None, 2, FdBudget(4256, 2000)),  # no hard limit: raised
        (1000, 1024, 1024, 1, FdBudget(1024, 768)),  # cannot be raised: capped to fit
        (1000, 100, 200, 1, FdBudget(200, 1)),  # never below one connection
    ],
)
def test_the_descriptor_budget_raises_the_soft_limit_or_lowers_the_cap(
    cap: int, soft: int | None, hard: int | None, per_connection: int, expected: FdBudget
) -> None:
    budget = fd_budget(cap, soft=soft, hard=hard, per_connection=per_connection, reserved=256)
    assert budget == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"header_timeout_s": 0},
        {"body_timeout_s": -1},
        {"keepalive_timeout_s": 0},
        {"max_connections": 0},
    ],
)
def test_limits_that_cannot_work_are_refused_by_name(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        ClientLimits(**fields)


# --- the mechanism, in this process, on both loops ----------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a scenario on a fresh loop of each kind."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


@dataclass
class Site:
    port: int
    guard: ClientGuard
    registry: CollectorRegistry
    release: asyncio.Event  # /wait answers once this is set
    reading: asyncio.Event  # set when /echo's handler starts reading its body
    bodies_refused: list[int]  # statuses of the body reads that raised

    def count(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0


@asynccontextmanager
async def guarded(
    limits: ClientLimits = SHORT, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Site]:
    """A small app behind a GuardedSite on a free port: POST /echo reads its body,
    GET /wait answers once the test releases it, GET /sleep takes 3 idle timeouts."""
    release, reading = asyncio.Event(), asyncio.Event()
    refused: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        reading.set()
        try:
            body = await request.read()
        except web.HTTPException as exc:
            refused.append(exc.status)
            raise
        return web.json_response({"bytes": len(body)})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"started\n")  # an answer under way, then the body is read
        await response.write(b"%d\n" % len(await request.read()))
        return response

    async def wait(_: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"released": True})

    async def sleep(_: web.Request) -> web.Response:
        await asyncio.sleep(3 * limits.keepalive_timeout_s)  # the scenario: a slow handler
        return web.json_response({"slept": True})

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream)
    app.router.add_get("/wait", wait)
    app.router.add_get("/sleep", sleep)
    registry = CollectorRegistry()
    guard = ClientGuard(limits, registry=registry)
    runner = web.AppRunner(app, access_log=None, **runner_options(limits))
    await runner.setup()
    site = GuardedSite(runner, HOST, 0, guard=guard, ssl_context=tls)
    await site.start()
    try:
        yield Site(site.port, guard, registry, release, reading, refused)
    finally:
        release.set()
        await site.stop()
        guard.shut_down()
        await runner.cleanup()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    received = b""
    async with asyncio.timeout(BOUND_S):
        while True:
            try:
                chunk = await reader.read(65536)
            except (ConnectionResetError, ssl.SSLError):
                return received
            if not chunk:
                return received
            received += chunk


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.1) -> None:
    """One byte at a time, far slower than any client, until the server hangs up."""
    for byte in data:
        if writer.is_closing():
            return
        writer.write(bytes([byte]))
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every_s)


@asynccontextmanager
async def connection(
    port: int, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case) and JSON body of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


async def served(port: int, tls: ssl.SSLContext | None = None) -> int:
    """A normal client's request on a connection of its own: the status."""
    url = f"{'https' if tls else 'http'}://{HOST}:{port}/echo"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b"{}", ssl=tls or False) as response,
    ):
        return response.status


POST_HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_connection_that_sends_nothing_is_closed_by_the_header_deadline(run: Any) -> None:
    async def scenario() -> None:
        async with guarded() as site, connection(site.port) as (reader, _):
            assert await until_closed(reader) == b""  # nothing begun, nothing answered
            assert site.count("rscore_client_timeouts_total", phase="header") == 1
            assert await served(site.port) == 200

    run(scenario())


SLOW_HEADER = b"X-Slow: " + b"a" * 1000  # a header line that never ends


@pytest.mark.parametrize(
    ("sent", "trickled"),
    [
        pytest.param(b"", POST_HEAD + SLOW_HEADER, id="request-line-trickled"),
        pytest.param(POST_HEAD + b"X-Sl", b"ow: " + b"a" * 1000, id="half-a-header"),
    ],
)
def test_a_header_that_does_not_arrive_whole_in_time_gets_408_and_is_closed(
    run: Any, sent: bytes, trickled: bytes
) -> None:
    """Bytes keep coming (every 0.1 s, ten times faster than the deadline): a per-read
    timeout would never fire; the header's deadline does."""

    async def scenario() -> None:
        async with guarded() as site, connection(site.port) as (reader, writer):
            writer.write(sent)
            trickling = asyncio.create_task(trickle(writer, trickled))
            others = [asyncio.create_task(served(site.port)) for _ in range(3)]
            status, headers, body = answer(await until_closed(reader))
            trickling.cancel()
            assert status == 408
            assert body["error"]["code"] == "request_timeout"
            assert "header" in body["error"]["message"]
            assert headers["connection"] == "close"
            assert headers["x-request-id"]
            assert site.count("rscore_client_timeouts_total", phase="header") == 1
            assert await asyncio.gather(*others) == [200, 200, 200]  # nobody else harmed

    run(scenario())


@pytest.mark.parametrize(
    "expect", [b"", b"Expect: 100-continue\r\n"], ids=["plain", "100-continue"]
)
def test_a_body_slower_than_its_deadline_gets_408_from_its_handler(run: Any, expect: bytes) -> None:
    async def scenario() -> None:
        async with guarded() as site, connection(site.port) as (reader, writer):
            writer.write(POST_HEAD + expect + b"Content-Length: 100000\r\n\r\n")
            if expect:
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            trickling = asyncio.create_task(trickle(writer, b"{" + b" " * 100000))
            status, _, body = answer(await until_closed(reader))
            trickling.cancel()
            assert status == 408
            assert body["error"]["code"] == "request_timeout"
            assert "body" in body["error"]["message"]
            assert site.bodies_refused == [408]  # the handler's own read raised it
            assert site.count("rscore_client_timeouts_total", phase="body") == 1
            assert await served(site.port) == 200

    run(scenario())


def test_a_late_body_whose_answer_has_begun_is_cut(run: Any) -> None:
    """No 408 can go into an answer under way; the connection is cut, not left waiting
    for the rest of the body."""

    async def scenario() -> None:
        async with guarded() as site, connection(site.port) as (reader, writer):
            writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            trickling = asyncio.create_task(trickle(writer, b" " * 100000))
            received = await until_closed(reader)
            trickling.cancel()
            assert received.startswith(b"HTTP/1.1 200")
            assert b"started" in received
            assert b"408" not in received
            assert site.count("rscore_client_timeouts_total", phase="body") == 1

    run(scenario())


def test_an_idle_kept_alive_connection_is_closed_after_its_answer(run: Any) -> None:
    async def scenario() -> None:
        async with guarded() as site, connection(site.port) as (reader, writer):
            writer.write(POST_HEAD + b"Content-Length: 2\r\n\r\n{}")
            first = await until_closed(reader)
            status, headers, body = answer(first)
            assert (status, body) == (200, {"bytes": 2})
            assert headers.get("connection") != "close"  # it was kept alive...
            assert site.count("rscore_client_timeouts_total", phase="idle") == 1  # ...until
            assert site.count("rscore_client_timeouts_total", phase="header") == 0

    run(scenario())


def test_a_handler_slower_than_every_deadline_still_answers(run: Any) -> None:
    """The deadlines are the client's: while the server answers, none of them runs."""

    async def scenario() -> None:
        async with guarded() as site, connection(site.port) as (reader, writer):
            writer.write(b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = answer(await until_closed(reader))
            assert (status, body) == (200, {"slept": True})
            assert site.count("rscore_client_timeouts_total", phase="idle") == 1  # after it

    run(scenario())


def test_beyond_the_cap_a_connection_is_closed_unread_and_served_ones_carry_on(
    run: Any,
) -> None:
    limits = ClientLimits(header_timeout_s=30.0, keepalive_timeout_s=30.0, max_connections=2)

    async def scenario() -> None:
        async with (
            guarded(limits) as site,
            connection(site.port) as (first_reader, first_writer),
            connection(site.port) as (_, idle_writer),
        ):
            first_writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")  # being served
            async with asyncio.timeout(BOUND_S):
                while site.guard.cap.open < 2:  # both accepted on the server's side
                    await asyncio.sleep(0.01)
            async with connection(site.port) as (refused_reader, refused_writer):
                refused_writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await until_closed(refused_reader) == b""  # closed, unanswered
            assert site.count("rscore_connections_refused_total") == 1
            assert site.count("rscore_open_connections") == 2
            site.release.set()
            line = await asyncio.wait_for(first_reader.readline(), BOUND_S)
            assert line.startswith(b"HTTP/1.1 200")  # the served one was not disturbed
            idle_writer.close()  # a place frees up: a new connection is served again
            async with asyncio.timeout(BOUND_S):
                while site.guard.cap.open > 1:
                    await asyncio.sleep(0.01)
            assert await served(site.port) == 200

    run(scenario())


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context that trusts it."""
    ca = make_ca()
    cert, key = ca.issue_server().write(tmp_path_factory.mktemp("tls"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return server, client


def handshake(port: int, trusting: ssl.SSLContext, version: ssl.TLSVersion) -> str:
    """A blocking client's handshake, at `version`: the version negotiated."""
    context = ssl.create_default_context(cadata=trusting.get_ca_certs(binary_form=True)[0])
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection((HOST, port), timeout=BOUND_S) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        return tls.version() or ""


def test_tls_handshakes_count_in_the_header_deadline(
    run: Any, tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """HTTPS serves (a ClientHello sent the moment the connection opens too); a TCP
    connection that never starts its handshake is closed by the header deadline."""
    server_tls, client_tls = tls_pair
    limits = ClientLimits(header_timeout_s=2.0)

    async def scenario() -> None:
        async with guarded(limits, server_tls) as site:
            assert await served(site.port, client_tls) == 200
            for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                assert await asyncio.to_thread(handshake, site.port, client_tls, version)
            async with connection(site.port) as (reader, _):  # plain TCP, no ClientHello
                assert await until_closed(reader) == b""
            assert site.count("rscore_client_timeouts_total", phase="header") == 1
            assert await served(site.port, client_tls) == 200

    run(scenario())


def test_beyond_the_cap_a_tls_connection_is_closed_before_its_handshake(
    run: Any, tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, client_tls = tls_pair
    limits = ClientLimits(header_timeout_s=60.0, max_connections=2)

    async def scenario() -> None:
        async with guarded(limits, server_tls) as site:
            async with connection(site.port) as _, connection(site.port) as _:
                async with asyncio.timeout(BOUND_S):
                    while site.guard.cap.open < 2:  # both accepted, handshakes pending
                        await asyncio.sleep(0.01)
                with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
                    async with connection(site.port, client_tls):
                        pass
                assert site.count("rscore_connections_refused_total") == 1
            async with asyncio.timeout(BOUND_S):
                while site.guard.cap.open > 0:  # the two gave their places back
                    await asyncio.sleep(0.01)
            assert await served(site.port, client_tls) == 200

    run(scenario())


def test_on_shutdown_a_body_still_arriving_is_answered_503(run: Any) -> None:
    limits = ClientLimits(body_timeout_s=60.0)

    async def scenario() -> None:
        async with guarded(limits) as site, connection(site.port) as (reader, writer):
            writer.write(POST_HEAD + b"Content-Length: 1000\r\n\r\n{")
            await writer.drain()
            await asyncio.wait_for(site.reading.wait(), BOUND_S)
            site.guard.shut_down()
            status, _, body = answer(await until_closed(reader))
            assert status == 503
            assert body["error"]["code"] == "unavailable"

    run(scenario())


@pytest.mark.parametrize("over", ["tcp", "tls"])
@pytest.mark.parametrize("cut", ["body deadline", "shutdown"])
def test_a_client_still_sending_when_cut_reads_its_whole_answer_then_eof(
    run: Any, cut: str, over: str, tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A socket closed with unread input sends RST, which throws away an answer still
    in flight: the cut connection half-closes after its answer and reads on a moment,
    so a client sending flat out reads the answer and a clean end, not a reset."""
    limits = ClientLimits(body_timeout_s=1.0 if cut == "body deadline" else 60.0)

    async def scenario() -> None:
        server_tls, client_tls = tls_pair if over == "tls" else (None, None)
        async with (
            guarded(limits, server_tls) as site,
            connection(site.port, client_tls) as (reader, writer),
        ):
            writer.write(POST_HEAD + b"Content-Length: 10000000\r\n\r\n{")
            sending = asyncio.create_task(trickle(writer, b" " * 10000000, every_s=0.001))
            await asyncio.wait_for(site.reading.wait(), BOUND_S)
            if cut == "shutdown":
                site.guard.shut_down()
            received = b""
            async with asyncio.timeout(BOUND_S):
                while chunk := await reader.read(65536):  # a reset raises here
                    received += chunk
            sending.cancel()
            status, _, body = answer(received)
            expected = (408, "request_timeout") if cut == "body deadline" else (503, "unavailable")
            assert (status, body["error"]["code"]) == expected

    run(scenario())


# --- end to end: `rscore serve` and the activator ----------------------------------------

KEY = "slow-client-test-key-0123456789"
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
MTCARS_ROW = {"data": [{"wt": 2.62, "hp": 110, "qsec": 16.46}]}


@dataclass
class Serving:
    process: asyncio.subprocess.Process
    port: int
    metrics_port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def metric(self, name: str, **labels: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{HOST}:{self.metrics_port}/metrics") as response,
        ):
            return metric_value(await response.text(), name, **labels)


@asynccontextmanager
async def rscore_serve(bundle: Path, tmp_path: Path, *flags: str) -> AsyncIterator[Serving]:
    """`rscore serve` with a keys file, in its own process group, ready; killed if it is
    still there at the end."""
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    keys.chmod(0o600)
    port, metrics_port = free_port(), free_port()
    log = os.open(tmp_path / "serve.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rscore.cli", "serve", str(bundle), "--port", str(port),
        "--metrics-port", str(metrics_port), "--keys-file", str(keys), *flags,
        stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    os.close(log)
    serving = Serving(process, port, metrics_port)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(90):
            while True:
                assert process.returncode is None, (tmp_path / "serve.log").read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{serving.url}/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield serving
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


@pytest.mark.real_r
@pytest.mark.e2e
async def test_rscore_serve_closes_each_kind_of_slow_client_and_counts_it(
    example_bundles: Path, tmp_path: Path
) -> None:
    async with rscore_serve(
        example_bundles / "mtcars-lm", tmp_path, "--workers", "1",
        "--header-timeout-s", "1", "--body-timeout-s", "1", "--keepalive-timeout-s", "1",
    ) as server:  # fmt: skip
        async with (
            connection(server.port) as (idle, _),
            connection(server.port) as (header_reader, header_writer),
            connection(server.port) as (body_reader, body_writer),
        ):
            body_writer.write(
                b"POST /score HTTP/1.1\r\nHost: x\r\n" + AUTH
                + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )  # fmt: skip
            header = b"POST /score HTTP/1.1\r\n" + SLOW_HEADER
            tricklers = [
                asyncio.create_task(trickle(header_writer, header)),
                asyncio.create_task(trickle(body_writer, b" " * 100000)),
            ]
            async with (  # a normal client meanwhile
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session,
                session.post(f"{server.url}/score", json=MTCARS_ROW) as response,
            ):
                assert response.status == 200
            assert await until_closed(idle) == b""
            header_status, _, header_body = answer(await until_closed(header_reader))
            body_status, body_headers, body_body = answer(await until_closed(body_reader))
            for task in tricklers:
                task.cancel()
        assert (header_status, header_body["error"]["code"]) == (408, "request_timeout")
        # The body's 408 is the app's own answer: contract shape, request id, counted.
        assert (body_status, body_body["error"]["code"]) == (408, "request_timeout")
        assert body_headers["x-request-id"]
        assert await server.metric("rscore_requests_total", code="408") == 1
        assert await server.metric("rscore_client_timeouts_total", phase="header") == 2
        assert await server.metric("rscore_client_timeouts_total", phase="body") == 1


@pytest.mark.real_r
@pytest.mark.e2e
async def test_a_slow_body_cannot_hold_rscore_serve_past_its_drain_timeout(
    slow_bundle: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGTERM with two requests being scored and one authenticated body trickling in
    (its own deadline far away): the two are answered 200, the slow one 503, and the
    process exits within the drain timeout plus a margin. It used to wait 60 s for the
    slow body (aiohttp's shutdown timeout), past a pod's grace period."""
    drain_s = 5.0
    flags = ("--workers", "2", "--drain-timeout-s", str(drain_s), "--body-timeout-s", "300")
    async with (
        rscore_serve(slow_bundle, tmp_path, *flags) as server,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session,
        connection(server.port) as (slow_reader, slow_writer),
    ):

        async def score(x: int) -> tuple[int, Any]:
            async with session.post(
                f"{server.url}/score", json={"data": [{"x": x, "sleep": 2.0}]}
            ) as response:
                return response.status, await response.json()

        scoring = [asyncio.create_task(score(x)) for x in (1, 2)]
        slow_writer.write(
            b"POST /score HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )  # fmt: skip
        trickling = asyncio.create_task(trickle(slow_writer, b" " * 100000, every_s=0.5))
        async with asyncio.timeout(BOUND_S):  # both accepted: queued or in R
            while (
                await server.metric("rscore_queue_depth")
                + await server.metric("rscore_inflight_requests")
                < 2
            ):
                await asyncio.sleep(0.02)
        os.killpg(server.process.pid, signal.SIGTERM)
        exit_code = await asyncio.wait_for(server.process.wait(), drain_s + 10)
        slow_status, _, slow_body = answer(await until_closed(slow_reader))
        trickling.cancel()
        assert exit_code == 0
        assert await asyncio.gather(*scoring) == [
            (200, {"predictions": [2.0]}),
            (200, {"predictions": [4.0]}),
        ]
        assert (slow_status, slow_body["error"]["code"]) == (503, "unavailable")


@asynccontextmanager
async def activator(limits: ClientLimits, drain_timeout_s: float = 30.0) -> AsyncIterator[Any]:
    """`rscore activator`'s serve() in this process, before an upstream that is not
    there (the requests here never get that far). Yields (url port, metrics url, stop
    event, the serving task)."""
    port, metrics_port = free_port(), free_port()
    stop = asyncio.Event()
    nobody = f"http://{HOST}:{free_port()}"
    config = ProxyConfig(upstream=nobody, drain_timeout_s=drain_timeout_s)
    listen = ActivatorListen(
        host=HOST, port=port, metrics_port=metrics_port, access_log=False, clients=limits
    )
    task = asyncio.create_task(serve_activator(config, listen, stop))
    metrics_url = f"http://{HOST}:{metrics_port}/metrics"
    async with aiohttp.ClientSession() as probe, asyncio.timeout(BOUND_S):
        while True:
            if task.done():
                task.result()
            with contextlib.suppress(aiohttp.ClientError):
                async with probe.get(metrics_url):
                    break
            await asyncio.sleep(0.02)
    try:
        yield port, metrics_url, stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND_S + drain_timeout_s)


async def test_the_activator_answers_a_slow_body_408_in_the_contracts_shape() -> None:
    async with (
        activator(SHORT) as (port, metrics_url, _, _),
        connection(port) as (reader, writer),
    ):
        writer.write(POST_HEAD + b"Content-Length: 100000\r\n\r\n{")
        trickling = asyncio.create_task(trickle(writer, b" " * 100000))
        status, headers, body = answer(await until_closed(reader))
        trickling.cancel()
        assert (status, body["error"]["code"]) == (408, "request_timeout")
        assert headers["x-request-id"]
        async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
            page = await response.text()
        assert 'rscore_activator_client_timeouts_total{phase="body"} 1.0' in page
        assert "rscore_activator_open_connections" in page


async def test_the_activator_drain_answers_a_slow_body_503_and_returns() -> None:
    limits = ClientLimits(body_timeout_s=300.0)
    async with (
        activator(limits, drain_timeout_s=1.0) as (port, metrics_url, stop, task),
        connection(port) as (reader, writer),
        aiohttp.ClientSession() as session,
    ):
        writer.write(POST_HEAD + b"Content-Length: 100000\r\n\r\n{")
        trickling = asyncio.create_task(trickle(writer, b" " * 100000, every_s=0.5))
        async with asyncio.timeout(BOUND_S):  # accepted on the activator's side
            while True:
                async with session.get(metrics_url) as response:
                    if "rscore_activator_open_connections 1.0" in await response.text():
                        break
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 1.0 + 10)  # within the drain timeout plus a margin
        status, _, body = answer(await until_closed(reader))
        trickling.cancel()
        assert (status, body["error"]["code"]) == (503, "unavailable")
