"""The control loop: a watch keeps the ScoringAutoscalers in memory; every interval
each one of this shard's is reconciled (concurrently, each isolated from the others'
failures and bounded in time on its own).

The watch re-lists on 410 Gone and reconnects after drops, with backoff. Ticks run only
while `leading()` says so; memory of past ticks is dropped when leadership is lost, so a
new term starts from fresh observations. Ticks start on a grid (`rscore.autoscaler.ticks`): a
tick waits for its reconciles at most 0.8 of the interval; one that still runs past
its slot skips the ticks it overlapped (counted in `rscore_autoscaler_tick_overruns`),
never queues them. A reconcile still running is left alone by the next ticks (counted in
`rscore_autoscaler_overruns`) and cancelled at `reconcile_timeout_s`. Nothing here
decides a replica count.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from rscore.autoscaler.informer import PodCache
from rscore.autoscaler.kube_io import ApiError, KubeApi, MayWrite
from rscore.autoscaler.metric_streams import MetricStreams
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.options import Options
from rscore.autoscaler.reconcile import Memory, TickContext, reconcile
from rscore.autoscaler.sampling import SamplingPolicy
from rscore.autoscaler.shards import shard_of
from rscore.autoscaler.ticks import next_tick, tick_budget_s

__all__ = ["Controller"]

log = logging.getLogger("rscore.autoscaler")
Key = tuple[str, str]


def _key(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class FrozenHeap:
    """Keeps the cyclic garbage collector off the long-lived heap.

    At scale the controller holds millions of objects that live for its term (the pod
    cache, each ScoringAutoscaler's memory, a stream per pod), and Python's full
    collections walk all of them: 0.6 to 1 s each, every few seconds, at 1,000
    ScoringAutoscalers and 10,000 pods here, which alone pushed ticks past the interval.
    So after every tick the survivors are frozen (`gc.freeze`, a list splice: kept out of
    every collection; reference counting still frees whatever they drop), and about once
    every `COLLECT_S` the whole heap is collected once and frozen afresh, after a tick
    that left half its interval free (at the latest after twice that), so that cyclic
    garbage caught in a freeze lives about an hour at most."""

    COLLECT_S = 3600.0

    def __init__(self, clock: Callable[[], float], interval_s: float) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.collected_at = clock()
        self.collections = 0

    def after_tick(self, tick_s: float) -> None:
        now = self.clock()
        since = now - self.collected_at
        if since >= 2 * self.COLLECT_S or (
            since >= self.COLLECT_S and tick_s < self.interval_s / 2
        ):
            gc.unfreeze()
            gc.collect()
            self.collected_at = now
            self.collections += 1
        gc.freeze()


def _pod_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    """A session for reading pods' metrics."""
    return aiohttp.ClientSession(
        connector=connector,
        # Less per reading: no cookie jar to consult or fill (pods set none), and no
        # Accept-Encoding offered, so no pod spends CPU compressing its page.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding",),
    )


def _iso(wall_s: float) -> str:
    return (
        datetime.fromtimestamp(wall_s, UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


class Controller:
    def __init__(
        self,
        api: KubeApi,
        metrics: ControllerMetrics,
        *,
        namespace: str | None = None,
        interval_s: float = 2.0,
        dry_run: bool = False,
        scrape_timeout_s: float = 1.0,
        watch_timeout_s: int = 300,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        reconcile_timeout_s: float | None = None,
        sampling: SamplingPolicy | None = None,
        max_concurrent_scrapes: int | None = None,
        pods: PodCache | None = None,
        shards: int = 1,
        shard_index: int = 0,
        status_heartbeat_s: float = Options.status_heartbeat_s,
        metric_streams: bool = Options.metric_streams,
        freeze_heap: bool = Options.freeze_heap,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.namespace = namespace
        self.interval_s = interval_s
        self.dry_run = dry_run
        self.scrape_timeout_s = scrape_timeout_s
        self.watch_timeout_s = watch_timeout_s
        # The policy's clock: by default the event loop's (monotonic, and the one its
        # sleeps and timeouts run on, so the tick schedule and the policy's delays agree).
        self.clock = clock or _loop_time
        self.wall_clock = wall_clock  # Unix seconds: status and event times, the forecast
        self.objects: dict[Key, dict[str, Any]] = {}
        self.memory: dict[Key, Memory] = {}
        self.synced = asyncio.Event()  # set after the first successful list
        self._inflight: dict[Key, asyncio.Task[None]] = {}  # reconciles still running
        self.ticks = 0
        # A reconcile's own bound: by default five intervals (its API calls retry within
        # their own timeouts; one stuck past this is cancelled and starts afresh).
        self.reconcile_timeout_s = reconcile_timeout_s or 5 * interval_s
        self.sampling = sampling or SamplingPolicy()
        self.max_concurrent_scrapes = max_concurrent_scrapes
        self.pods = pods  # the pod informer; None: pods are listed per tick
        self.shards, self.shard_index = shards, shard_index
        self._owners: dict[Key, bool] = {}  # the hash, once per object (events are many)
        self.status_heartbeat_s = status_heartbeat_s  # readings alone: rscore.autoscaler.status
        self.metric_streams = metric_streams  # follow pods' /metrics/stream (metric_streams)
        self.freeze_heap = freeze_heap  # FrozenHeap after each tick: this process is ours

    def owns(self, key: Key) -> bool:
        """Is this ScoringAutoscaler this controller's shard's?"""
        if self.shards == 1:
            return True
        owned = self._owners.get(key)
        if owned is None:
            owned = self._owners[key] = shard_of(*key, self.shards) == self.shard_index
        return owned

    # --- the watch ------------------------------------------------------------------------

    def _replace_all(self, items: list[dict[str, Any]]) -> None:
        fresh = {_key(obj): obj for obj in items}
        for key in set(self.objects) - set(fresh):
            self._forget(key)
        for key, obj in fresh.items():
            self._forget_if_replaced(key, obj)
        self.objects = fresh
        self._owners = {key: owned for key, owned in self._owners.items() if key in fresh}
        self.metrics.watched.set(len(self.objects))

    def _forget(self, key: Key) -> None:
        self.objects.pop(key, None)
        self._owners.pop(key, None)
        self.memory.pop(key, None)
        self.metrics.forget(*key)

    def _forget_if_replaced(self, key: Key, obj: dict[str, Any]) -> None:
        """A new object under an old name (deleted and created while we were not
        watching) starts with no memory of its predecessor's ticks."""
        known = self.objects.get(key)
        if known is not None and _uid(known) != _uid(obj):
            self.memory.pop(key, None)

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self._forget(key)
        elif kind in ("ADDED", "MODIFIED"):
            self._forget_if_replaced(key, obj)
            self.objects[key] = obj
        self.metrics.watched.set(len(self.objects))

    async def watch_forever(self) -> None:
        """List, then watch from the list's resourceVersion; never returns.

        Any failure (an API error, a dropped connection, a line the client cannot parse)
        is followed by a reconnect with capped exponential backoff; a 410 re-lists at
        once, but a 410 again before any event arrived counts as a failure, so a server
        that keeps answering 410 is not hammered with lists.
        """
        resource_version: str | None = None
        failures = 0
        fresh_list = False  # no event since the last list
        while True:
            try:
                if resource_version is None:
                    items, resource_version = await self.api.list_autoscalers(self.namespace)
                    self._replace_all(items)
                    self.synced.set()
                    fresh_list = True
                async for kind, obj in self.api.watch_autoscalers(
                    self.namespace, resource_version, self.watch_timeout_s
                ):
                    failures, fresh_list = 0, False
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if version:
                        resource_version = str(version)
                    if kind != "BOOKMARK":
                        self._apply(kind, obj)
                failures = 0  # the server ended the watch (its timeout): all is well
                self.metrics.watch_restarts.labels("timeout").inc()
            except ApiError as error:
                if error.status == 410:  # history compacted: list again
                    log.info("watch: resourceVersion %s expired, re-listing", resource_version)
                    self.metrics.watch_restarts.labels("expired").inc()
                    resource_version = None
                    if fresh_list:
                        failures += 1
                elif error.status is None:  # no answer: a timeout or a dropped stream
                    failures += 1
                    self.metrics.watch_restarts.labels("dropped").inc()
                    log.warning("watch dropped (%s), reconnecting", error)
                else:
                    failures += 1
                    self.metrics.watch_restarts.labels(f"http_{error.status}").inc()
                    log.warning("watch failed (%s), retrying", error)
            except Exception:  # e.g. a malformed line: never let the watch task die
                failures += 1
                self.metrics.watch_restarts.labels("error").inc()
                log.exception("watch failed unexpectedly, reconnecting")
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)) if failures else 0)

    # --- the ticks -----------------------------------------------------------------------

    async def tick(
        self,
        session: aiohttp.ClientSession,
        may_write: MayWrite,
        scrape_slots: asyncio.Semaphore | None = None,
        streams: MetricStreams | None = None,
    ) -> None:
        """Start a reconcile for every object of this shard whose last one has finished,
        and wait for them at most `tick_budget_s`: an object whose API calls hang (say,
        a node pool served by an unreachable aggregated API) is skipped while it hangs,
        and never holds back the others' scaling."""
        started = self.clock()
        wall_s = self.wall_clock()
        ctx = TickContext(
            api=self.api,
            session=session,
            metrics=self.metrics,
            now=started,
            now_iso=_iso(wall_s),
            dry_run=self.dry_run,
            scrape_timeout_s=self.scrape_timeout_s,
            may_write=may_write,
            clock=self.clock,
            wall_s=wall_s,
            sampling=self.sampling,
            scrape_slots=scrape_slots,
            pods=self.pods if self.pods is not None and self.pods.synced.is_set() else None,
            status_heartbeat_s=self.status_heartbeat_s,
            streams=streams,
        )

        async def one(key: Key, obj: dict[str, Any]) -> None:
            try:
                async with asyncio.timeout(self.reconcile_timeout_s):
                    memory = self.memory.get(key)
                    if memory is None:  # not setdefault: a Memory seeds a Random from urandom
                        memory = self.memory[key] = Memory()
                    await reconcile(obj, memory, ctx)
            except TimeoutError:
                self.metrics.reconcile_timeouts.labels(*key).inc()
                log.warning(
                    "reconciling %s/%s took over %gs: cancelled", *key, self.reconcile_timeout_s
                )
            except Exception:  # one object's bug must not stop the others' scaling
                log.exception("reconciling %s/%s failed", *key)

        started_now = []
        owned = 0
        for key, obj in list(self.objects.items()):
            if not self.owns(key):
                continue
            owned += 1
            running = self._inflight.get(key)
            if running is not None and not running.done():
                self.metrics.overruns.labels(*key).inc()
                continue
            self._inflight[key] = asyncio.create_task(one(key, obj), name=f"reconcile {key}")
            started_now.append(self._inflight[key])
        self.metrics.owned.set(owned)
        if started_now:
            await asyncio.wait(started_now, timeout=tick_budget_s(self.interval_s))
        self._inflight = {k: t for k, t in self._inflight.items() if not t.done()}
        self.ticks += 1
        self.metrics.ticks.inc()
        self.metrics.tick_duration.observe(self.clock() - started)

    async def lead(self, may_write: MayWrite) -> None:
        """Tick on the interval's grid until cancelled (leadership lost, or shutdown);
        a tick that overruns its slot skips the slots it overlapped."""
        self.memory.clear()
        await self.synced.wait()
        limit = self.max_concurrent_scrapes
        scrape_slots = asyncio.Semaphore(limit) if limit else None
        # One session for the term: its connector keeps each pod's connection alive
        # between ticks (the sidecar's /metrics server keeps it), bounded per host.
        connector = aiohttp.TCPConnector(limit=limit or 0, limit_per_host=4, keepalive_timeout=30)
        # The streams hold a connection per pod for the term: their own session, unbounded
        # (one stream per pod), so that they never take the scrapes' slots.
        stream_connector = aiohttp.TCPConnector(limit=0, limit_per_host=2)
        async with (
            _pod_session(connector) as session,
            _pod_session(stream_connector) as stream_session,
        ):
            slot = self.clock()
            streams = (
                MetricStreams(
                    stream_session,
                    interval_s=self.interval_s,
                    tick_wall_s=self.wall_clock(),
                    clock=self.clock,
                    failed=lambda cause: self.metrics.stream_failures.labels(cause).inc(),
                    connect_timeout_s=self.scrape_timeout_s,
                )
                if self.metric_streams
                else None
            )
            try:
                frozen = FrozenHeap(self.clock, self.interval_s) if self.freeze_heap else None
                while True:
                    await self.tick(session, may_write, scrape_slots, streams)
                    if frozen is not None:
                        frozen.after_tick(self.clock() - slot)
                    if streams is not None:
                        await streams.prune()
                        self.metrics.live_streams.set(streams.following())
                    upcoming = next_tick(slot, self.clock(), self.interval_s)
                    if upcoming.skipped:
                        self.metrics.tick_overruns.inc(upcoming.skipped)
                        log.warning(
                            "a tick took %.3fs (interval %gs): %d tick(s) skipped",
                            self.clock() - slot,
                            self.interval_s,
                            upcoming.skipped,
                        )
                    slot = upcoming.at
                    await asyncio.sleep(max(0.0, slot - self.clock()))
            finally:
                # A term's reconciles end with it (their writes check may_write anyway).
                inflight, self._inflight = list(self._inflight.values()), {}
                for task in inflight:
                    task.cancel()
                await asyncio.gather(*inflight, return_exceptions=True)
                if streams is not None:
                    await streams.close()
