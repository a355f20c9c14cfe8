"""An open-loop HTTP/1.1 client for `rscore sim validate`: replays an arrival schedule.

    python -m rscore.cli.replay_client PLAN.json RESULT.npz

Run as a process of its own (never inside the server's), on uvloop, with a bare
`asyncio.Protocol` per keep-alive connection and no HTTP library on the hot path: the
lighter the client, the less of its own time shows up as the server's. The plan (JSON)
says what to do:

- `"mode": "replay"`: send request i at `start + offsets[i]` whatever the answers (open
  loop: a slow answer never delays the next send), on the idle connection that answered
  last; a request with no idle connection opens a new one (counted: `opened`).
- `"mode": "closed"`: `concurrency` loops each send the next request as soon as the
  last one is answered, for `duration_s` (the pod's saturation throughput).

Every request is recorded: scheduled send, actual send (the moment its bytes were
handed to the socket), answer (the moment the whole response was read) as seconds from
the start, and the status (0: no HTTP answer: refused, reset, or no answer within
`timeout_s`). The result also holds the client's own CPU seconds (its floor: what it
spent per request) and how many connections it opened.

It only ever connects to 127.0.0.1 (the plan's port), sends only the plan's body, and
stops by itself: every request has a timeout and the run ends when the last one is
answered or timed out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # the only address this client ever connects to
NO_ANSWER = 0  # status of a request that got no HTTP answer
START_LEAD_S = 0.05  # the schedule starts this long after the plan is read and connected

__all__ = ["HOST", "NO_ANSWER", "Plan", "parse_response_head", "run_plan"]


@dataclass(frozen=True)
class Plan:
    mode: str  # "replay" or "closed"
    port: int
    path: str
    body: bytes
    timeout_s: float
    connections: int  # opened before the start (replay); the loops (closed)
    offsets: tuple[float, ...] = ()  # replay: send times, seconds from the start
    duration_s: float = 0.0  # closed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        mode = data["mode"]
        if mode not in ("replay", "closed"):
            raise ValueError(f"plan mode must be replay or closed, got {mode!r}")
        offsets = tuple(float(x) for x in data.get("offsets", ()))
        if any(b < a for a, b in itertools.pairwise(offsets)):
            raise ValueError("plan offsets must be sorted")
        return cls(
            mode=mode,
            port=int(data["port"]),
            path=str(data.get("path", "/score")),
            body=str(data["body"]).encode(),
            timeout_s=float(data["timeout_s"]),
            connections=int(data["connections"]),
            offsets=offsets,
            duration_s=float(data.get("duration_s", 0.0)),
        )


def parse_response_head(head: bytes) -> tuple[int, int]:
    """(status, Content-Length) of an HTTP/1.1 response head (without the blank line).
    ValueError when it has no Content-Length: the sidecar always sends one for /score
    (a chunked answer would be a different server; this client refuses to guess)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value.strip())
    raise ValueError("response without Content-Length")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time (no pipelining:
    an answer on a busy connection would wait for the one before)."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need: int | None = None  # body bytes of the response being read
        self.status = NO_ANSWER
        self.request: int | None = None  # index of the request in flight
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.request is not None:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                try:
                    self.status, self.need = parse_response_head(bytes(self.buffer[:end]))
                except ValueError:
                    self._fail()
                    return
                del self.buffer[: end + 4]
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            index, status = self.request, self.status
            self.request, self.need = None, None
            self.client.answered(self, index, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail()

    def _fail(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.request is not None:
            index, self.request = self.request, None
            self.client.answered(self, index, NO_ANSWER)

    def send(self, index: int, payload: bytes) -> None:
        assert self.transport is not None
        self.request = index
        self.transport.write(payload)


class _Client:
    """The connections and the per-request record of one run."""

    def __init__(self, plan: Plan, count: int) -> None:
        self.plan = plan
        self.payload = (
            f"POST {plan.path} HTTP/1.1\r\nHost: {HOST}:{plan.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(plan.body)}\r\n\r\n"
        ).encode() + plan.body
        self.idle: deque[_Connection] = deque()
        self.opened = 0
        self.connections: list[_Connection] = []
        self.sent = [float("nan")] * count
        self.done = [float("nan")] * count
        self.status = [NO_ANSWER] * count
        self.outstanding = 0
        self.finished = asyncio.Event()
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.start = 0.0
        self.on_answer: Any = None  # closed mode: send the next request

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Connection(self), HOST, self.plan.port
        )
        self.opened += 1
        self.connections.append(connection)
        return connection

    async def close(self) -> None:
        """Hang up every connection, and let their goodbyes run before the loop ends."""
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()
        for _ in range(3):
            await asyncio.sleep(0)

    def now(self) -> float:
        return time.perf_counter() - self.start

    def fire(self, index: int) -> None:
        """Send request `index` now, on an idle connection or a new one."""
        self.outstanding += 1
        self.finished.clear()
        loop = asyncio.get_running_loop()
        self.timers[index] = loop.call_later(self.plan.timeout_s, self._expire, index)
        while self.idle:
            # The connection answered last (LIFO, as client pools reuse them): as few
            # connections stay busy as the load needs, the rest idle.
            connection = self.idle.pop()
            if not connection.closed:
                self.sent[index] = self.now()
                connection.send(index, self.payload)
                return
        self.sent[index] = self.now()  # the connect is part of this request's time
        task = loop.create_task(self._send_on_new(index))
        task.add_done_callback(_reraise)

    async def _send_on_new(self, index: int) -> None:
        try:
            connection = await self.connect()
        except OSError:
            self._record(index, NO_ANSWER)
            return
        if math.isnan(self.done[index]):
            connection.send(index, self.payload)
        else:  # timed out while connecting
            self.idle.append(connection)

    def _expire(self, index: int) -> None:
        self.timers.pop(index, None)
        self._record(index, NO_ANSWER)

    def answered(self, connection: _Connection, index: int, status: int) -> None:
        if not connection.closed:
            self.idle.append(connection)
        self._record(index, status)

    def _record(self, index: int, status: int) -> None:
        if not math.isnan(self.done[index]):  # already recorded (an answer after its timeout)
            return
        self.done[index] = self.now()
        self.status[index] = status
        timer = self.timers.pop(index, None)
        if timer is not None:
            timer.cancel()
        self.outstanding -= 1
        if self.on_answer is not None:
            self.on_answer()
        if self.outstanding == 0:
            self.finished.set()


def _reraise(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


async def _replay(plan: Plan, announce: Callable[[str], None]) -> tuple[_Client, list[float]]:
    client = _Client(plan, len(plan.offsets))
    for _ in range(plan.connections):
        client.idle.append(await client.connect())
    announce("go")
    client.start = time.perf_counter() + START_LEAD_S
    scheduled = list(plan.offsets)
    index, total = 0, len(scheduled)
    while index < total:
        # The loop's timers tick in milliseconds: send everything due within half a tick.
        horizon = client.now() + 0.0005
        while index < total and scheduled[index] <= horizon:
            client.fire(index)
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, scheduled[index] - client.now()))
    if client.outstanding:
        await client.finished.wait()
    announce("end")
    await client.close()
    return client, scheduled


async def _closed(plan: Plan, announce: Callable[[str], None]) -> tuple[_Client, list[float]]:
    client = _Client(plan, 0)
    for _ in range(plan.connections):
        client.idle.append(await client.connect())
    announce("go")
    client.start = time.perf_counter()
    scheduled: list[float] = []

    def next_request() -> None:
        if client.now() < plan.duration_s:
            scheduled.append(client.now())
            client.sent.append(math.nan)
            client.done.append(math.nan)
            client.status.append(NO_ANSWER)
            client.fire(len(scheduled) - 1)

    client.on_answer = next_request
    for _ in range(plan.connections):
        next_request()
    await client.finished.wait()
    client.on_answer = None
    announce("end")
    await client.close()
    return client, scheduled


def _quiet(_word: str) -> None:
    pass


def run_plan(plan: Plan, announce: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Run the plan on a fresh uvloop; the per-request record and the client's cost.
    `announce("go")` is called once connected, just before the first request, and
    `announce("end")` once the last is answered."""
    import uvloop

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    runner = _replay if plan.mode == "replay" else _closed
    client, scheduled = uvloop.run(runner(plan, announce))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "scheduled": scheduled,
        "sent": client.sent,
        "done": client.done,
        "status": client.status,
        "cpu_s": cpu_s,
        "opened": client.opened,
    }


def _say(word: str) -> None:
    """Tell the parent (stdout, one word a line) when the run starts and ends."""
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    import numpy as np

    if len(argv) != 2:
        print("usage: python -m rscore.cli.replay_client PLAN.json RESULT.npz", file=sys.stderr)
        return 2
    plan = Plan.from_json(json.loads(Path(argv[0]).read_text()))
    result = run_plan(plan, _say)
    np.savez(
        argv[1],
        scheduled=np.array(result["scheduled"], dtype=np.float64),
        sent=np.array(result["sent"], dtype=np.float64),
        done=np.array(result["done"], dtype=np.float64),
        status=np.array(result["status"], dtype=np.int64),
        cpu_s=np.array(result["cpu_s"]),
        opened=np.array(result["opened"]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
