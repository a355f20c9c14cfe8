"""`rscore autoscaler`: load the API configuration, start the watch, the elected control
loop and the metrics endpoint, and stop cleanly on SIGTERM or SIGINT.

Wiring only; the loop is `autoscaler.controller`, the decisions `autoscaler.policy`, the
API client `autoscaler.kube_io` (never kubernetes_asyncio here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from autoscaler.controller import Controller
from autoscaler.kube_io import KubeApi
from autoscaler.leader import Leadership, candidate_identity
from autoscaler.metrics import ControllerMetrics

__all__ = ["Options", "run"]

log = logging.getLogger("rscore.autoscaler")


@dataclass(frozen=True)
class Options:
    kubeconfig: Path | None = None
    namespace: str | None = None
    interval_s: float = 2.0
    leader_elect: bool = True
    lease_name: str = "rscore-autoscaler"
    lease_namespace: str = "default"
    lease_duration_s: int = 15  # the Lease stores whole seconds
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    dry_run: bool = False
    metrics_host: str = "0.0.0.0"  # scraped by Prometheus from other pods
    metrics_port: int = 9091
    scrape_timeout_s: float = 1.0
    request_timeout_s: float = 5.0


def metrics_app(metrics: ControllerMetrics, healthy: Callable[[], bool]) -> web.Application:
    async def scrape(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

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
    api = await KubeApi.connect(
        options.kubeconfig, metrics, request_timeout_s=options.request_timeout_s
    )
    try:
        controller = Controller(
            api,
            metrics,
            namespace=options.namespace,
            interval_s=options.interval_s,
            dry_run=options.dry_run,
            scrape_timeout_s=options.scrape_timeout_s,
        )
        tasks = [asyncio.create_task(controller.watch_forever(), name="watch")]
        if options.leader_elect:
            identity = candidate_identity()
            log.info(
                "standing for election as %s (Lease %s/%s)",
                identity,
                options.lease_namespace,
                options.lease_name,
            )
            leadership = Leadership(
                api,
                metrics,
                lease_name=options.lease_name,
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
