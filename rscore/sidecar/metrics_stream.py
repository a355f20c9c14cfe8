"""The metrics port's readings for a reader of many pods: `name[]` and `/metrics/stream`.

A controller that reads thousands of pods every tick pays for an HTTP request per pod
per tick (about 200 us of its CPU each across 10,000 keep-alive connections here:
docs/benchmarks.md, "The controller at cluster scale"). Two things make a reading cheap:

- `name[]=...` (as prometheus_client's own exposition servers take it) restricts a page
  to the samples asked for (every family is collected, then filtered: the sidecar's
  state families describe nothing in advance), on `/metrics` and on the stream: the
  reader parses a dozen lines, not a hundred;
- `GET /metrics/stream?interval_s=S[&phase_s=P]` answers with one chunked response
  that lasts: a reading (a Prometheus text page ending in the comment line `# EOF`) at
  once, then one every S seconds (at the Unix times that are P modulo S, when P is
  given) until the client goes or the server shuts down. The reader pays a
  chunk per reading (about 20 us here), not a request. Before the end mark, a comment
  `# TIME <unix seconds>` says when the reading was taken.

Every reading is a valid text-format page on its own (a comment line is allowed), so
the reader parses it as it parses `/metrics`. Pure parts (`stream_request`) are apart
from the handler. Never: more than `MAX_STREAMS` streams at once (429 beyond, with
Retry-After), a stream that outlives the server's shutdown, or an interval outside
[`MIN_INTERVAL_S`, `MAX_INTERVAL_S`] (400, naming the bound).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

__all__ = [
    "END_OF_READING",
    "MAX_INTERVAL_S",
    "MAX_STREAMS",
    "MIN_INTERVAL_S",
    "NAMES_PARAM",
    "STREAM_PATH",
    "MetricStreams",
    "StreamRequest",
    "metrics_page",
    "reading",
    "serve_stream",
    "stream_request",
]

STREAM_PATH = "/metrics/stream"
END_OF_READING = b"# EOF\n"  # a comment line: the reading stays a valid page
TIME_MARK = b"# TIME "  # then the Unix seconds the reading was taken, on the line before
MIN_INTERVAL_S = 0.1  # a reader wanting more than ten readings a second wants a profiler
MAX_INTERVAL_S = 300.0
MAX_STREAMS = 16  # per server: a controller's shards and their successors, with room
NAMES_PARAM = "name[]"


@dataclass(frozen=True)
class StreamRequest:
    """What a stream's client asked for: a reading every `interval_s` of `names` (every
    series when empty)."""

    interval_s: float
    names: tuple[str, ...] = ()
    # Readings at the Unix times that are phase_s modulo interval_s (after the first,
    # at once); None: every interval from the first. A reader ticking on a grid asks for
    # its readings a little before each tick, every pod's at the same moment.
    phase_s: float | None = None

    def next_reading(self, now: float) -> float:
        """The Unix time of the reading after one taken at `now`."""
        if self.phase_s is None:
            return now + self.interval_s
        periods = math.floor((now - self.phase_s) / self.interval_s) + 1
        upcoming = self.phase_s + periods * self.interval_s
        # On a grid point the division may fall a hair short of the whole number of
        # periods, which would give `now` itself: the next one is then one more period.
        return upcoming if upcoming > now else upcoming + self.interval_s


def stream_request(query: Mapping[str, str], names: Sequence[str]) -> StreamRequest | str:
    """The stream asked for by a query (`interval_s`, and the `name[]` values given as
    `names`), or the problem with it, in words."""
    raw = query.get("interval_s")
    if raw is None:
        return f"interval_s is required (seconds between readings, {_bounds()})"
    try:
        interval_s = float(raw)
    except ValueError:
        return f"interval_s must be a number of seconds ({_bounds()}), got {raw[:40]!r}"
    if not (math.isfinite(interval_s) and MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S):
        return f"interval_s must be within {_bounds()}, got {raw[:40]!r}"
    phase_s = None
    raw_phase = query.get("phase_s")
    if raw_phase is not None:
        try:
            phase_s = float(raw_phase)
        except ValueError:
            phase_s = math.nan
        if not (math.isfinite(phase_s) and 0 <= phase_s < interval_s):
            return f"phase_s must be seconds in [0, interval_s), got {raw_phase[:40]!r}"
    return StreamRequest(interval_s, tuple(n for n in names if n), phase_s)


def reading(page: bytes, taken_at: float) -> bytes:
    """One reading on a stream: the page, the Unix time it was taken (a comment line:
    the reader divides counters by the pod's own intervals, not by when each reading
    happened to reach it), and the end mark."""
    return page + TIME_MARK + f"{taken_at:.6f}\n".encode() + END_OF_READING


def _bounds() -> str:
    return f"{MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}"


def metrics_page(registry: CollectorRegistry, names: Sequence[str]) -> bytes:
    """The exposition of `registry`, restricted to the samples named `names` when any
    (as prometheus_client's servers read `name[]`)."""
    return generate_latest(_Restricted(registry, frozenset(names)) if names else registry)


class _Restricted:
    """A registry's families with only the samples named. Not the registry's own
    `restricted_registry`: that finds collectors by what they describe, and the
    sidecar's state (queue depth, workers...) is read at collect time and describes
    nothing, so it would vanish from the page."""

    def __init__(self, registry: CollectorRegistry, names: frozenset[str]) -> None:
        self.registry = registry
        self.names = names

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            samples = [sample for sample in family.samples if sample.name in self.names]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


@dataclass
class MetricStreams:
    """The streams a server holds: their count (bounded by `limit`) and the signal that
    ends them all at shutdown."""

    limit: int = MAX_STREAMS
    open: int = 0
    closing: bool = False
    _waits: set[asyncio.Future[None]] = field(default_factory=set)

    async def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the streams close meanwhile. A timer and a future,
        not a task: a server may hold thousands of streams (a bench's pods)."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, woken)
        self._waits.add(woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._waits.discard(woken)

    async def close_all(self, _app: web.Application | None = None) -> None:
        """End every stream now (an aiohttp on_shutdown hook)."""
        self.closing = True
        for woken in list(self._waits):
            _wake(woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


async def serve_stream(
    request: web.Request, streams: MetricStreams, render: Callable[[Sequence[str]], bytes]
) -> web.StreamResponse:
    """Answer `GET /metrics/stream`: a reading of `render(names)` at once, then one each
    interval, until the client leaves or `streams` closes."""
    asked = stream_request(request.query, request.query.getall(NAMES_PARAM, []))
    if isinstance(asked, str):
        raise web.HTTPBadRequest(text=asked + "\n")
    if streams.closing:
        raise web.HTTPServiceUnavailable(text="the server is shutting down\n")
    if streams.open >= streams.limit:
        raise web.HTTPTooManyRequests(
            text=f"{streams.limit} metrics streams are open on this server already\n",
            headers={"Retry-After": str(math.ceil(asked.interval_s))},
        )
    response = web.StreamResponse(
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )
    streams.open += 1
    try:
        await response.prepare(request)
        while not streams.closing:
            taken_at = time.time()
            await response.write(reading(render(asked.names), taken_at))
            await streams.wait(max(0.0, asked.next_reading(taken_at) - time.time()))
        await response.write_eof()
    except (ConnectionResetError, ClientConnectionResetError):
        pass  # the reader left: nothing to answer
    finally:
        streams.open -= 1
    return response
