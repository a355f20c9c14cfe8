"""`rscore autoscaler`: load the API configuration, start the watch, the elected control
loop and the metrics endpoint, and stop cleanly on SIGTERM or SIGINT.

Wiring only; the loop is `rscore.autoscaler.controller`, the decisions
`rscore.autoscaler.policy`, the API client `rscore.autoscaler.kube_io` (never
kubernetes_asyncio here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rscore.autoscaler.controller import Controller
from rscore.autoscaler.informer import PodCache
from rscore.autoscaler.kube_io import KubeApi
from rscore.autoscaler.leader import Leadership, candidate_identity
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.options import Options
from rscore.autoscaler.shards import lease_name, shard_index

__all__ = ["Options", "run"]

log = logging.getLogger("rscore.autoscaler")


def metrics_app(metrics: ControllerMetrics, healthy: Callable[[], bool]) -> web.Application:
    async def scrape(_request: web.Request) -> web.Response:
        # On a thread: with a thousand ScoringAutoscalers the page has tens of thousands
        # of series (0.3 s to render here), which would hold the ticks' loop that long.
        page = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_request: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"status": "ok" if ok else "failing"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", health)
    return app


async def run(options: Options, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    metrics = ControllerMetrics()
    shard = shard_index(
        options.shards,
        options.shard_index,
        os.environ.get("POD_NAME") or socket.gethostname(),
    )
    api = await KubeApi.connect(
        options.kubeconfig, metrics, request_timeout_s=options.request_timeout_s
    )
    try:
        pods = (
            PodCache(api, metrics, namespace=options.namespace, selector=options.pod_selector)
            if options.watch_pods
            else None
        )
        controller = Controller(
            api,
            metrics,
            namespace=options.namespace,
            interval_s=options.interval_s,
            dry_run=options.dry_run,
            scrape_timeout_s=options.scrape_timeout_s,
            reconcile_timeout_s=options.reconcile_timeout_s,
            sampling=options.sampling(),
            max_concurrent_scrapes=options.max_concurrent_scrapes or None,
            pods=pods,
            shards=options.shards,
            shard_index=shard,
            status_heartbeat_s=options.status_heartbeat_s,
            metric_streams=options.metric_streams,
            freeze_heap=options.freeze_heap,
        )
        tasks = [asyncio.create_task(controller.watch_forever(), name="watch")]
        if pods is not None:
            tasks.append(asyncio.create_task(pods.run_forever(), name="pod-watch"))
        if options.leader_elect:
            identity = candidate_identity()
            lease = lease_name(options.lease_name, shard, options.shards)
            log.info(
                "standing for election as %s (Lease %s/%s, shard %d of %d)",
                identity,
                options.lease_namespace,
                lease,
                shard,
                options.shards,
            )
            leadership = Leadership(
                api,
                metrics,
                lease_name=lease,
                lease_namespace=options.lease_namespace,
                identity=identity,
                lease_duration_s=options.lease_duration_s,
                renew_deadline_s=options.renew_deadline_s,
                retry_period_s=options.retry_period_s,
            )
            tasks.append(asyncio.create_task(leadership.run(controller.lead), name="elected"))
        else:
            metrics.is_leader.set(1)
            tasks.append(asyncio.create_task(controller.lead(lambda: True), name="loop"))

        def healthy() -> bool:
            return all(not t.done() for t in tasks)

        runner = web.AppRunner(metrics_app(metrics, healthy), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, options.metrics_host, options.metrics_port).start()
        log.info(
            "autoscaler up: namespace %s, interval %gs, dry run %s, metrics on :%d",
            options.namespace or "(all)",
            options.interval_s,
            options.dry_run,
            options.metrics_port,
        )
        done_waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([done_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                failure = task.exception() if task.done() and not task.cancelled() else None
                if failure is not None:
                    raise failure
        finally:
            done_waiter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
    finally:
        await api.close()
    log.info("autoscaler stopped")
