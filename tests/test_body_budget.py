"""The byte budget of admission, the parse thread and the heap trim (issue 13, item 3).

The accounting (`BodyBudget`, `BodyHold`) and the trim policy (`HeapTrimmer`) are tested
with tables and fakes; over real HTTP with a real R worker: bodies beyond the budget get
429 before a byte of them is read, the admitted ones are answered, a chunked body is
counted as it arrives, every path gives its bytes back, and /healthz is answered while a
large body is being parsed. The tests sequence themselves by polling state with a bounded
deadline and assert outcomes and their order, never durations.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import platform
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from test_sidecar import JSON, Served, ServeFactory, serve, slow_bundle  # noqa: F401  (fixtures)

from rscore.cli.main import cli
from rscore.sidecar.app import INLINE_PARSE_BYTES, STATE, SidecarConfig
from rscore.sidecar.body_budget import BodyBudget, BodyHold
from rscore.sidecar.heap import (
    LONGEST_DEFERRAL_S,
    QUIET_S,
    TRIM_AFTER_BYTES,
    HeapTrimmer,
    keep_freed_memory_for_trim,
    malloc_trim,
)

WAIT_S = 30.0  # bound of every poll: only a failing test waits this long

# --- the accounting ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "steps", "held"),
    [
        (100, [("take", 60, True), ("take", 40, True)], 100),  # exactly full
        (100, [("take", 60, True), ("take", 41, False)], 60),  # a refusal holds nothing
        (100, [("take", 101, False)], 0),  # more than the whole budget
        (100, [("take", 60, True), ("give", 60, None), ("take", 100, True)], 100),
        (100, [("take", 0, True), ("take", 100, True), ("take", 0, True)], 100),
        (100, [("take", 30, True), ("take", 30, True), ("give", 30, None)], 30),
    ],
    ids=["fills", "refuses-excess", "refuses-oversize", "room-after-give", "zero", "partial"],
)  # fmt: skip
def test_budget_holds_what_fits_and_nothing_else(
    limit: int, steps: list[tuple[str, int, bool | None]], held: int
) -> None:
    budget = BodyBudget(limit)
    for action, nbytes, expected in steps:
        if action == "take":
            assert budget.take(nbytes) is expected, (action, nbytes)
        else:
            budget.give_back(nbytes)
        assert 0 <= budget.held <= limit
    assert budget.held == held


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda budget: BodyBudget(0), "at least one byte"),
        (lambda budget: budget.take(-1), "negative"),
        (lambda budget: budget.give_back(11), "11 bytes but 10 are held"),
        (lambda budget: budget.give_back(-1), "-1 bytes"),
    ],
    ids=["empty-budget", "negative-take", "give-more-than-held", "negative-give"],
)
def test_budget_misuse_is_an_error(call: Callable[[BodyBudget], Any], error: str) -> None:
    budget = BodyBudget(100)
    assert budget.take(10)
    with pytest.raises(ValueError, match=error):
        call(budget)


def test_a_hold_gives_back_what_it_took_once() -> None:
    budget = BodyBudget(100)
    hold = BodyHold(budget)
    assert hold.take(30)
    assert hold.take(20)
    assert not hold.take(60)  # refused: the hold keeps what it had
    assert (hold.nbytes, budget.held) == (50, 50)
    other = BodyHold(budget)
    assert other.take(50)
    assert hold.release() == 50
    assert hold.release() == 0  # the error path and the answer may both release
    assert budget.held == 50


# --- the heap trim -----------------------------------------------------------------


class QueuedExecutor(Executor):
    """Runs what is submitted only when the test says so."""

    def __init__(self) -> None:
        self.queued: list[Callable[[], Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.queued.append(lambda: fn(*args, **kwargs))
        return Future()

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for fn in queued:
            fn()


class FakeTimer:
    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due, self.callback, self.cancelled = due, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """call_later and a clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.armed: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self.armed.append(FakeTimer(self.now + delay, callback))
        return self.armed[-1]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [timer for timer in self.armed if timer.due <= self.now]
        self.armed = [timer for timer in self.armed if timer.due > self.now]
        for timer in due:
            if not timer.cancelled:
                timer.callback()


# (seconds since the last step, body bytes answered) ...; "run" runs the queued trims.
Step = tuple[float, int | str]
ONE_MIB = TRIM_AFTER_BYTES


@pytest.mark.parametrize(
    ("steps", "trims"),
    [
        ([(0, 100), (0, 1000), (0, 20_000), (5, "run")] * 100, 0),  # small ones never do
        ([(0, ONE_MIB - 1), (5, "run")], 0),  # under a MiB in all
        ([(0, 644_000), (0.1, 644_000), (QUIET_S, "run")], 1),  # large bodies add up
        ([(0, ONE_MIB), (QUIET_S - 0.01, "run")], 0),  # not yet quiet
        ([(0, ONE_MIB), (QUIET_S, "run")], 1),
        # a burst: each body pushes the trim back; one trim once it is over
        ([(0, ONE_MIB), (0.3, 10 * ONE_MIB), (0.3, ONE_MIB), (0.3, "run"), (0.3, "run")], 1),
        # a stream without a pause: trimmed LONGEST_DEFERRAL_S after its first body
        ([(0, ONE_MIB)] + [(0.2, ONE_MIB)] * 60 + [(0, "run")], 1),
        # two bursts apart: a trim after each
        ([(0, ONE_MIB), (1, "run"), (5, ONE_MIB), (1, "run")], 2),
        # a trim still queued (the parse thread busy) is not queued twice
        ([(0, ONE_MIB), (1, ONE_MIB), (1, ONE_MIB), (1, "run")], 1),
    ],
    ids=[
        "small",
        "under-a-mib",
        "adding-up",
        "not-quiet-yet",
        "one-large",
        "burst",
        "stream",
        "two-bursts",
        "one-queued",
    ],
)
def test_large_bodies_trim_the_heap_once_they_stop(steps: list[Step], trims: int) -> None:
    executor = QueuedExecutor()
    timers = FakeTimers()
    calls: list[float] = []
    trimmer = HeapTrimmer(
        executor,
        lambda: calls.append(timers.now),
        parsed_inline_up_to=INLINE_PARSE_BYTES,
        call_later=timers.call_later,
        clock=lambda: timers.now,
    )
    for seconds, what in steps:
        timers.advance(seconds)
        if what == "run":
            executor.run_queued()
        else:
            assert isinstance(what, int)
            trimmer.answered(what)
    assert len(calls) == trimmer.trims == trims


def test_a_steady_stream_is_trimmed_within_the_longest_deferral() -> None:
    executor = QueuedExecutor()
    timers = FakeTimers()
    trimmer = HeapTrimmer(executor, lambda: None, parsed_inline_up_to=INLINE_PARSE_BYTES,
                          call_later=timers.call_later, clock=lambda: timers.now)  # fmt: skip
    while timers.now < LONGEST_DEFERRAL_S - 0.2:
        trimmer.answered(ONE_MIB)
        timers.advance(0.2)
        assert not executor.queued
    trimmer.answered(ONE_MIB)
    timers.advance(0.2)
    assert len(executor.queued) == 1


async def test_a_response_lets_go_of_its_body_once_written() -> None:
    """aiohttp holds a keep-alive connection's last response until its next request:
    a large answer must not stay resident that long."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from rscore.sidecar.app import json_response

    answered: list[web.Response] = []

    async def handler(_: web.Request) -> web.Response:
        answered.append(json_response({"predictions": list(range(100_000))}))
        return answered[-1]

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/")
        assert (await response.json())["predictions"][-1] == 99_999
        assert int(response.headers["Content-Length"]) > 500_000
        assert answered[0].body is None  # the connection is still open (keep-alive)


def test_without_malloc_trim_nothing_is_submitted() -> None:
    executor = QueuedExecutor()
    HeapTrimmer(executor, None, parsed_inline_up_to=INLINE_PARSE_BYTES).answered(
        10 * TRIM_AFTER_BYTES
    )
    assert executor.queued == []


def test_malloc_trim_and_mallopt_are_found_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim and the mmap threshold are glibc's")
    trim = malloc_trim()
    assert trim is not None
    trim()
    assert keep_freed_memory_for_trim()


# --- the flag -----------------------------------------------------------------------


def test_a_budget_smaller_than_one_body_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--max-body-bytes-in-flight"):
        SidecarConfig(max_body_bytes=1000, max_body_bytes_in_flight=999)
    result = CliRunner().invoke(
        cli,
        ["sidecar", "--socket-dir", str(tmp_path), "--auth", "none",
         "--max-body-bytes", "1000", "--max-body-bytes-in-flight", "999"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--max-body-bytes-in-flight (999) must be at least --max-body-bytes (1000)" in (
        result.output
    )


# --- over HTTP ----------------------------------------------------------------------


def records(n: int, *, last: Any = None) -> bytes:
    """A records body of `n` rows of the slow model's `x`; `last` replaces the last x."""
    rows = [{"x": index * 0.5} for index in range(n)]
    if last is not None:
        rows[-1] = {"x": last}
    return orjson.dumps({"data": rows})


class Raw:
    """One HTTP/1.1 request over its own connection, written by hand: the head first, the
    body when the test says so, so a response can come before the body is sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def head(self, head: dict[str, str]) -> None:
        lines = ["POST /score HTTP/1.1", "Host: test", "Content-Type: application/json"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_chunk(self, data: bytes) -> None:
        await self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def response(self) -> tuple[int, dict[str, str], Any]:
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, orjson.loads(body)

    def close(self) -> None:
        self.writer.close()


Connect = Callable[[Served, dict[str, str]], Awaitable[Raw]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens a Raw request to a served app and sends its head; closes it at the end."""
    opened: list[Raw] = []

    async def open_raw(served: Served, head: dict[str, str]) -> Raw:
        raw = Raw(*await asyncio.open_connection(served.client.host, served.client.port))
        opened.append(raw)
        await raw.head(head)
        return raw

    yield open_raw
    for raw in opened:
        raw.close()
        await raw.writer.wait_closed()


def budget_of(served: Served) -> BodyBudget:
    return served.client.server.app[STATE].body_budget


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


async def test_bodies_beyond_the_budget_get_429_before_they_are_read(
    serve: ServeFactory,  # noqa: F811
    slow_bundle: Path,  # noqa: F811
    connect: Connect,
) -> None:
    body = records(8000)  # above INLINE_PARSE_BYTES: parsed on the parse thread
    size = len(body)
    assert size > INLINE_PARSE_BYTES
    config = SidecarConfig(max_body_bytes=size, max_body_bytes_in_flight=3 * size + size // 2)
    served = await serve(slow_bundle, config=config)
    # Ten requests announce their bodies and send none of them.
    raws = [await connect(served, {"Content-Length": str(size)}) for _ in range(10)]
    answers = {asyncio.ensure_future(raw.response()): raw for raw in raws}
    refused: list[tuple[int, dict[str, str], Any]] = []
    pending = set(answers)
    while len(refused) < 7:
        done, pending = await asyncio.wait(
            pending, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, "seven requests should have been refused without sending a body"
        refused += [task.result() for task in done]
    assert len(refused) == 7
    assert len(pending) == 3
    for status, headers, error in refused:
        assert status == 429
        assert headers["retry-after"] == "1"
        assert error["error"]["code"] == "overloaded"
        assert "--max-body-bytes-in-flight" in error["error"]["message"]
    assert budget_of(served).held == 3 * size  # the three admitted, waiting for their bodies
    for task in pending:
        await answers[task].send(body)
    for task in pending:
        status, _, answer = await task
        assert status == 200
        assert answer["predictions"][:3] == [0.0, 1.0, 2.0]
        assert len(answer["predictions"]) == 8000
    await until(lambda: budget_of(served).held == 0, "every byte given back")


async def test_a_chunked_body_is_counted_as_it_arrives(
    serve: ServeFactory,  # noqa: F811
    slow_bundle: Path,  # noqa: F811
    connect: Connect,
) -> None:
    body = records(8000)
    size = len(body)
    served = await serve(
        slow_bundle,
        config=SidecarConfig(max_body_bytes=2 * size, max_body_bytes_in_flight=2 * size),
    )
    waiting = await connect(served, {"Content-Length": str(size)})  # holds half the budget
    await until(lambda: budget_of(served).held == size, "the first body's bytes held")
    chunked = await connect(served, {"Transfer-Encoding": "chunked"})
    await chunked.send_chunk(body[: size // 2])
    await chunked.send_chunk(body[size // 2 :] + b" " * 1000)  # one more than fits
    status, headers, error = await chunked.response()
    assert (status, headers["retry-after"]) == (429, "1")
    assert "so far" in error["error"]["message"]
    await waiting.send(body)
    status, _, answer = await waiting.response()
    assert status == 200
    assert len(answer["predictions"]) == 8000
    await until(lambda: budget_of(served).held == 0, "every byte given back")


async def test_every_path_gives_the_bytes_back(
    serve: ServeFactory,  # noqa: F811
    slow_bundle: Path,  # noqa: F811
    connect: Connect,
) -> None:
    config = SidecarConfig(max_rows=10_000, request_timeout_ms=1500)
    served = await serve(slow_bundle, config=config)
    big = records(8000)
    cases: list[tuple[str, bytes, int]] = [
        ("answered", records(3), 200),
        ("answered, parsed on the parse thread", big, 200),
        ("not JSON", b'{"data": [', 400),
        ("not JSON, large", big[:-1], 400),
        ("wrong type, large", records(8000, last="a"), 400),
        ("too many rows", records(10_001), 413),
        ("NUL in a string", orjson.dumps({"data": [{"x": 1, "s": "a\u0000b"}]}), 400),
        ("timeout", orjson.dumps({"data": [{"x": 1, "sleep": 5}]}), 504),
    ]
    for what, body, status in cases:
        response = await served.client.post(
            "/score", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == status, (what, await response.text())
        await until(lambda: budget_of(served).held == 0, f"bytes back after {what}")
    # A client that goes away half way through its body.
    gone = await connect(served, {"Content-Length": str(len(big))})
    await gone.send(big[: len(big) // 2])
    await until(lambda: budget_of(served).held == len(big), "the body's bytes held")
    gone.close()
    await until(lambda: budget_of(served).held == 0, "bytes back after the client left")


def _unsent(writer: asyncio.StreamWriter) -> int:
    """Bytes of the client's request not yet in the server's kernel: in the transport's
    buffer, or sent and not acknowledged."""
    queued = array.array("i", [0])
    fcntl.ioctl(writer.get_extra_info("socket").fileno(), termios.TIOCOUTQ, queued)
    return writer.transport.get_write_buffer_size() + queued[0]


def _unread(served: Served) -> int:
    """Bytes the server's kernel holds that the server has not read yet."""
    total = 0
    for handler in served.client.server.runner.server.connections:
        transport = handler.transport
        if transport is None:
            continue
        pending = array.array("i", [0])
        fcntl.ioctl(transport.get_extra_info("socket").fileno(), termios.FIONREAD, pending)
        total += pending[0]
    return total


async def test_healthz_is_answered_while_a_large_body_is_parsed(
    serve: ServeFactory,  # noqa: F811
    slow_bundle: Path,  # noqa: F811
    connect: Connect,
) -> None:
    # 9 MB of records whose last value makes coercion fail: answered (400) as soon as
    # its parsing ends, with no R call after it. On the event loop that parsing would
    # hold every other request until the 400 was written.
    body = records(700_000, last="a")
    assert 8_000_000 < len(body) < SidecarConfig().max_body_bytes
    served = await serve(slow_bundle)
    big = await connect(served, {"Content-Length": str(len(body))})
    await big.send(body)
    # The test and the server share this event loop: once the server has read the
    # whole body, it is parsing (or already done, if the parse ran on the loop).
    await until(lambda: _unsent(big.writer) == 0 and _unread(served) == 0, "body read")
    finished: list[str] = []

    async def big_answer() -> None:
        status, _, error = await big.response()
        assert status == 400
        assert "mixes" in error["error"]["message"]
        finished.append("big")

    async def healthz() -> None:
        response = await served.client.get("/healthz")
        assert response.status == 200
        finished.append("healthz")

    await asyncio.wait_for(asyncio.gather(big_answer(), healthz()), WAIT_S)
    assert finished == ["healthz", "big"]
