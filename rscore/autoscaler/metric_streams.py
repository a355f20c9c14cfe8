"""Each ready pod's metrics as a stream of readings, held by the controller for its term.

A GET of `/metrics` per pod per tick costs the controller about 200 us of CPU at 10,000
keep-alive connections here (`python -m bench.controller read-cost`), which caps one
controller core at some 10,000 pods per 2-s tick before any decision. The sidecar also
streams its readings (`GET /metrics/stream?interval_s=S&phase_s=P&name[]=...`, a
chunked response with a text-format page every S seconds, each ending in `# TIME`
and `# EOF`): following it costs a chunk per reading (about 20 us), and the request is
paid once per pod, not once per tick (docs/autoscaler.md, "Streamed readings"). The
phase puts every pod's reading a little before each tick (`reading_phase_s`).

`take(url)` hands the tick a pod's newest reading not yet used (parsed then, once,
and dated by the pod's clock: `PodClock`), or None when there is none. With the stream
`live` (open, delivering) the caller repeats the pod's latest interval; without (no
stream yet, a broken or silent one, a sidecar without streams: 404, then that pod is
read by GET for the rest of the term) it reads the pod by GET. Which pods are read is
the sample's choice either way: a stream makes a reading cheaper, never loses one.

Never: two streams for one pod; a reading used twice; a stream kept for a pod nobody
asked about for `forget_after_s`; a reading over aiohttp's read buffer bound (the
stream is dropped); a stream that outlives `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp
import yarl

from rscore.autoscaler.scrape import SAMPLES_USED, PodScrape, ScrapeError, parse_pod_metrics
from rscore.autoscaler.ticks import READING_LEAD, READING_SPREAD, stable_fraction

__all__ = [
    "END_OF_READING",
    "MetricStreams",
    "PodClock",
    "compact_url",
    "reading_phase_s",
    "stream_url",
    "taken_at",
]

log = logging.getLogger("rscore.autoscaler")

END_OF_READING = b"# EOF\n"
TIME_MARK = b"# TIME "  # the reading's Unix time, from the pod's clock
NAMES = tuple(sorted(SAMPLES_USED))  # the series the policy reads, and no other
MAX_RETRY_S = 30.0
UNSUPPORTED = (404, 405)  # a sidecar older than streams


def reading_phase_s(tick_wall_s: float, interval_s: float, metrics_url: str) -> float:
    """The phase to ask a pod for (`phase_s`): its readings are taken between
    `READING_LEAD` and `READING_LEAD + READING_SPREAD` of an interval before each tick of
    the grid through `tick_wall_s` (Unix seconds), at a point fixed by a hash of its URL,
    so that every pod's reading is in when the tick starts, and a thousand pods' are not
    all sent, nor all read, in the same instant."""
    spread = READING_SPREAD * stable_fraction(metrics_url)
    return (tick_wall_s - (READING_LEAD + spread) * interval_s) % interval_s


@functools.lru_cache(maxsize=1 << 16)
def compact_url(metrics_url: str) -> str:
    """A pod's /metrics restricted to the series the policy reads (`name[]`); a sidecar
    that ignores the parameter answers the whole page, which parses the same."""
    return str(yarl.URL(metrics_url, encoded=True).update_query([("name[]", n) for n in NAMES]))


def stream_url(metrics_url: str, interval_s: float, phase_s: float | None = None) -> yarl.URL:
    base = yarl.URL(metrics_url.rstrip("/") + "/stream", encoded=True)
    timing = [("interval_s", f"{interval_s:g}")]
    if phase_s is not None:
        timing.append(("phase_s", f"{phase_s:.6f}"))
    return base.update_query([*timing, *(("name[]", n) for n in NAMES)])


def taken_at(reading: bytes) -> float | None:
    """The pod's Unix time of a reading (its `# TIME` line), or None without one."""
    mark = reading.rfind(TIME_MARK)
    if mark < 0:
        return None
    line = reading[mark + len(TIME_MARK) : reading.find(b"\n", mark)]
    try:
        value = float(line)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class PodClock:
    """A pod's reading times on the controller's clock: the pod's own time plus the
    smallest offset seen (arrival minus pod time: the delay of the fastest delivery,
    plus the clocks' difference). A reading that reached a busy controller late is
    then dated when the pod took it, and the counters are divided by the pod's own
    intervals (the clocks' difference cancels in an interval)."""

    offset: float | None = None

    def at(self, arrived: float, pod_time: float | None) -> float:
        if pod_time is None:
            return arrived
        offset = arrived - pod_time
        if self.offset is None or offset < self.offset:
            self.offset = offset
        return pod_time + self.offset


@dataclass
class _Stream:
    url: yarl.URL
    wanted_at: float
    task: asyncio.Task[None] | None = None
    reading: bytes | None = None  # the newest reading not yet taken
    at: float = 0.0  # when the pod took it (on the controller's clock: PodClock)
    arrived: float = 0.0  # when it arrived (the controller's clock)
    live: bool = False  # open, and a reading has come
    clock: PodClock = field(default_factory=PodClock)
    unsupported: bool = False  # the sidecar has no stream: read it by GET


class MetricStreams:
    """The streams of one controller term, keyed by the pod's metrics URL."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        interval_s: float,
        clock: Callable[[], float],
        tick_wall_s: float | None = None,
        failed: Callable[[str], None] = lambda _cause: None,
        connect_timeout_s: float = 1.0,
        forget_after_s: float = 60.0,
        max_opening: int = 256,
    ) -> None:
        self.session = session
        self.interval_s = interval_s
        # A tick's Unix time: the pods' readings come before the ticks (reading_phase_s);
        # None: every interval from a stream's start.
        self.tick_wall_s = tick_wall_s
        self.clock = clock
        self.forget_after_s = forget_after_s
        self.failed = failed  # told each failure's cause (an exception's class name)
        # A stream silent this long is broken: dropped, followed again (checked when a
        # tick takes from it, not by a read timeout rescheduled at every chunk).
        # Generous: a busy controller's loop may come late to a reading that did arrive.
        self.silence_s = max(10.0, 5 * interval_s)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
        self._streams: dict[str, _Stream] = {}
        self._opening = asyncio.Semaphore(max_opening)

    def take(self, metrics_url: str) -> PodScrape | None:
        """The pod's newest reading since the last take, or None (then read it by GET);
        starts following the pod if it is not followed yet. ScrapeError if the reading
        is no metrics page."""
        now = self.clock()
        stream = self._streams.get(metrics_url)
        if stream is None:
            phase_s = (
                None
                if self.tick_wall_s is None
                else reading_phase_s(self.tick_wall_s, self.interval_s, metrics_url)
            )
            url = stream_url(metrics_url, self.interval_s, phase_s)
            stream = self._streams[metrics_url] = _Stream(url, wanted_at=now)
            stream.task = asyncio.create_task(self._follow(metrics_url, stream))
        elif stream.live and now - stream.arrived > self.silence_s and stream.task is not None:
            # Silent too long (a pod that stopped writing, a connection that went dark):
            # follow it afresh; until a reading comes, it is read by GET.
            self.failed("Silent")
            stream.task.cancel()
            stream.reading, stream.live = None, False
            stream.task = asyncio.create_task(self._follow(metrics_url, stream))
        stream.wanted_at = now
        reading, stream.reading = stream.reading, None
        if reading is None:
            return None
        return parse_pod_metrics(reading.decode("utf-8", "replace"), stream.at)

    def live(self, metrics_url: str) -> bool:
        """Is the pod's stream open and delivering? (Then a tick without a new reading
        from it waits for the next rather than reading the pod by GET.)"""
        stream = self._streams.get(metrics_url)
        return stream is not None and stream.live

    def following(self) -> int:
        """Pods whose stream has delivered a reading and is open."""
        return sum(1 for s in self._streams.values() if s.live)

    async def prune(self) -> None:
        """Stop following pods no tick has asked about for `forget_after_s` (gone, or
        their ScoringAutoscaler is)."""
        horizon = self.clock() - self.forget_after_s
        stale = [key for key, s in self._streams.items() if s.wanted_at < horizon]
        await self._stop(self._streams.pop(key) for key in stale)

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        await self._stop(streams)

    @staticmethod
    async def _stop(streams: Iterable[_Stream]) -> None:
        tasks = [s.task for s in streams if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, metrics_url: str, stream: _Stream) -> None:
        """Open the stream and keep the newest reading; on any failure drop it, wait
        (an interval, doubling to MAX_RETRY_S) and open it again."""
        delay = self.interval_s
        while True:
            try:
                # Bounded openings: a new term opens a stream to every pod at once.
                async with self._opening:
                    response = await self.session.get(stream.url, timeout=self._timeout)
                async with response:
                    if response.status in UNSUPPORTED:
                        stream.unsupported = True
                        log.info("%s has no metrics stream: read by GET", metrics_url)
                        return
                    if response.status != 200:
                        raise ScrapeError(f"answered {response.status}")
                    delay = self.interval_s
                    while True:
                        reading = await response.content.readuntil(END_OF_READING)
                        if not reading.endswith(END_OF_READING):
                            break  # the pod ended the stream (shutting down)
                        stream.reading, stream.live = reading, True
                        stream.arrived = self.clock()
                        stream.at = stream.clock.at(stream.arrived, taken_at(reading))
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                # ValueError: a reading beyond the read buffer's bound, or a bad answer.
                self.failed(type(error).__name__)
                log.debug("metrics stream of %s: %s", metrics_url, error)
            stream.reading, stream.live = None, False
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_S)
