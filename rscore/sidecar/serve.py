"""Runs the sidecar: the public site, the metrics site, and (for `rscore serve`) the
R workers' supervisor in the same process, until SIGTERM or SIGINT.

The only place that binds sockets and installs signal handlers; the app itself is
built by `rscore.sidecar.app.create_app` and knows nothing of either. The public site listens
through `rscore.sidecar.client_deadlines` (deadlines for slow clients, a connection cap), and
a shutdown never outlasts --drain-timeout-s by more than a fixed margin.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry

from rscore.r_scorer.pool import SOCKET_NAME, WorkerPool
from rscore.r_scorer.supervisor import Supervisor
from rscore.sidecar import access_log, heap
from rscore.sidecar.access_log import JsonAccessLogger
from rscore.sidecar.app import STATE, SidecarConfig, create_app, create_metrics_app
from rscore.sidecar.auth import AuthConfig, Authenticator
from rscore.sidecar.client_deadlines import (
    ClientGuard,
    GuardedSite,
    apply_fd_budget,
    runner_options,
)
from rscore.sidecar.client_limits import ClientLimits
from rscore.sidecar.tls import ReloadingTLS, plain_http_warning

log = logging.getLogger("rscore.serve")

SupervisorFactory = Callable[[Path], Supervisor]


@dataclass(frozen=True)
class Listen:
    """Where and how to listen."""

    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 9090
    socket_path: Path | None = None  # the workers' socket; default: a fresh temp folder
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS
    clients: ClientLimits = field(default_factory=ClientLimits)  # slow clients, the cap


def run(
    config: SidecarConfig,
    listen: Listen,
    supervisor_factory: SupervisorFactory | None,
    auth: AuthConfig,
) -> None:
    """Serve until a signal; `supervisor_factory(socket_path)` adds local R workers."""
    uvloop.run(_serve(config, listen, supervisor_factory, auth))


async def _serve(
    config: SidecarConfig,
    listen: Listen,
    supervisor_factory: SupervisorFactory | None,
    auth: AuthConfig,
) -> None:
    heap.keep_freed_memory_for_trim()  # large requests reuse memory; a trim returns it
    own_folder = None
    if listen.socket_path is None:  # rscore serve: a private folder, removed on exit
        own_folder = tempfile.TemporaryDirectory(prefix="rscore-")
        socket_path = Path(own_folder.name) / SOCKET_NAME
    else:
        socket_path = listen.socket_path
    registry = CollectorRegistry()
    authenticator = Authenticator(auth, registry=registry)  # bad files fail here, at once
    tls = ReloadingTLS.from_flags(listen.tls_cert, listen.tls_key, listen.tls_client_ca)
    guard = ClientGuard(apply_fd_budget(listen.clients, per_connection=1), registry=registry)
    app = create_app(
        config, pool=WorkerPool(socket_path), registry=registry, authenticator=authenticator
    )
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=JsonAccessLogger,
        **runner_options(guard.limits),
    )
    metrics_runner = web.AppRunner(create_metrics_app(registry), access_log=None)
    watchers = [
        watcher
        for watcher in (authenticator.watcher(), tls.watcher() if tls else None)
        if watcher is not None
    ]
    await runner.setup()  # starts the worker pool: workers can connect from here on
    await metrics_runner.setup()
    supervisor: Supervisor | None = None
    site: GuardedSite | None = None
    try:
        for watcher in watchers:
            await watcher.start()
        if supervisor_factory is not None:
            supervisor = supervisor_factory(socket_path)
            model = await asyncio.to_thread(supervisor.start)
            log.info("model %r loaded by %d R worker(s)", model["name"], len(supervisor.pids))
        context = tls.context if tls else None
        public = GuardedSite(runner, listen.host, listen.port, guard=guard, ssl_context=context)
        await public.start()
        site = public
        await web.TCPSite(metrics_runner, listen.host, listen.metrics_port).start()
        warning = None if tls else plain_http_warning(listen.host)
        if warning:
            log.warning(warning)
        log.info(
            "serving on %s://%s:%d (auth %s; metrics on :%d/metrics), workers at %s",
            "https" if tls else "http", listen.host, listen.port, auth.mode,
            listen.metrics_port, socket_path,
        )  # fmt: skip
        await _until_signalled()
        await _drain(app, config, supervisor)
    finally:
        if site is not None:
            await site.stop()  # no new connections
        guard.shut_down()  # bodies still arriving get 503: no slow client holds the exit
        for watcher in watchers:
            await watcher.stop()
        await runner.cleanup()
        await metrics_runner.cleanup()
        access_log.flush()  # the last requests' lines, before the process goes
        if supervisor is not None:
            await asyncio.to_thread(supervisor.stop)
        if own_folder is not None:
            own_folder.cleanup()


async def _drain(
    app: web.Application, config: SidecarConfig, supervisor: Supervisor | None
) -> None:
    if supervisor is not None:
        supervisor.begin_stop()  # drained workers must not be restarted
    dispatcher = app[STATE].dispatcher
    log.info("draining: not ready, new requests get 503, accepted ones are answered")
    if not await dispatcher.drain(config.drain_timeout_s):
        log.warning(
            "drain timeout of %.0f s passed with %d request(s) unanswered",
            config.drain_timeout_s, dispatcher.queue_depth + dispatcher.inflight,
        )  # fmt: skip


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signalled: shutting down")
