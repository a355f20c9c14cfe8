"""Stand-ins for scoring pods as the autoscaler sees them: real aiohttp servers on
127.0.0.x that serve the metrics contract (ARCHITECTURE.md, "Metrics contract").

Each keeps the concurrency integral the way the sidecar does: the test sets how many
requests are queued + in flight, and `rscore_concurrency_seconds_total` grows at that
rate between scrapes. Only for tests; nothing here scores anything.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rscore.sidecar.metrics_stream import STREAM_PATH, MetricStreams, metrics_page, serve_stream


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def shared_free_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (pods share the CR's metricsPort)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _now() -> float:
    """The event loop's clock, as the sidecar's (and the controller's) is: a test on fake
    time (looptime) moves both together."""
    return asyncio.get_running_loop().time()


class FakePod(Collector):
    def __init__(
        self,
        ip: str,
        port: int,
        *,
        workers: int = 2,
        concurrency: float = 0.0,
        streams: bool = False,
    ) -> None:
        self.ip = ip
        self.port = port
        self.workers = workers
        self.failing = False  # answer 500 instead of metrics
        self.scrapes = 0  # GETs of /metrics
        self.streams = MetricStreams() if streams else None  # serve /metrics/stream too
        self.stream_requests = 0
        self._concurrency = concurrency
        self._integral = 0.0
        self._since = _now()
        self._registry = CollectorRegistry()
        self._registry.register(self)
        self._runner: web.AppRunner | None = None

    def set_concurrency(self, value: float) -> None:
        now = _now()
        self._integral += self._concurrency * (now - self._since)
        self._since = now
        self._concurrency = value

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = _now()
        total = self._integral + self._concurrency * (now - self._since)
        inflight = min(self._concurrency, self.workers)
        yield GaugeMetricFamily("rscore_queue_depth", "waiting", value=self._concurrency - inflight)
        yield GaugeMetricFamily("rscore_inflight_requests", "scoring", value=inflight)
        yield CounterMetricFamily("rscore_concurrency_seconds", "integral", value=total)
        yield GaugeMetricFamily("rscore_workers", "slots", value=self.workers)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.failing:
            return web.Response(status=500, text="metrics unavailable")
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        assert self.streams is not None
        self.stream_requests += 1
        if self.failing:
            return web.Response(status=500, text="metrics unavailable")
        return await serve_stream(request, self.streams, self._reading)

    def _reading(self, names: Sequence[str]) -> bytes:
        if self.failing:  # the stream breaks off, as a pod whose metrics fail
            raise ConnectionResetError("metrics unavailable")
        return metrics_page(self._registry, names)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        if self.streams is not None:
            self.streams.closing = False  # a pod started again streams again
            app.on_shutdown.append(self.streams.close_all)
            app.router.add_get(STREAM_PATH, self._stream)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
