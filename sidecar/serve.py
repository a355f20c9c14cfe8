"""Runs the sidecar: the public site, the metrics site, and (for `rscore serve`) the
R workers' supervisor in the same process, until SIGTERM or SIGINT.

The only place that binds sockets and installs signal handlers; the app itself is
built by `sidecar.app.create_app` and knows nothing of either.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry

from r_scorer.pool import SOCKET_NAME, WorkerPool
from r_scorer.supervisor import Supervisor
from sidecar import access_log
from sidecar.access_log import JsonAccessLogger
from sidecar.app import STATE, SidecarConfig, create_app, create_metrics_app
from sidecar.auth import AuthConfig, Authenticator
from sidecar.tls import ReloadingTLS, TLSConfigError, plain_http_warning

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
    own_folder = None
    if listen.socket_path is None:  # rscore serve: a private folder, removed on exit
        own_folder = tempfile.TemporaryDirectory(prefix="rscore-")
        socket_path = Path(own_folder.name) / SOCKET_NAME
    else:
        socket_path = listen.socket_path
    registry = CollectorRegistry()
    authenticator = Authenticator(auth, registry=registry)  # bad files fail here, at once
    tls = _tls(listen)
    app = create_app(
        config, pool=WorkerPool(socket_path), registry=registry, authenticator=authenticator
    )
    runner = web.AppRunner(app, handle_signals=False, access_log_class=JsonAccessLogger)
    metrics_runner = web.AppRunner(create_metrics_app(registry), access_log=None)
    watchers = [
        watcher
        for watcher in (authenticator.watcher(), tls.watcher() if tls else None)
        if watcher is not None
    ]
    await runner.setup()  # starts the worker pool: workers can connect from here on
    await metrics_runner.setup()
    supervisor: Supervisor | None = None
    try:
        for watcher in watchers:
            await watcher.start()
        if supervisor_factory is not None:
            supervisor = supervisor_factory(socket_path)
            model = await asyncio.to_thread(supervisor.start)
            log.info("model %r loaded by %d R worker(s)", model["name"], len(supervisor.pids))
        context = tls.context if tls else None
        await web.TCPSite(runner, listen.host, listen.port, ssl_context=context).start()
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
        if supervisor is not None:
            supervisor.begin_stop()  # drained workers must not be restarted
        dispatcher = app[STATE].dispatcher
        log.info("draining: not ready, new requests get 503, accepted ones are answered")
        if not await dispatcher.drain(config.drain_timeout_s):
            log.warning(
                "drain timeout of %.0f s passed with %d request(s) unanswered",
                config.drain_timeout_s, dispatcher.queue_depth + dispatcher.inflight,
            )  # fmt: skip
    finally:
        for watcher in watchers:
            await watcher.stop()
        await runner.cleanup()
        await metrics_runner.cleanup()
        access_log.flush()  # the last requests' lines, before the process goes
        if supervisor is not None:
            await asyncio.to_thread(supervisor.stop)
        if own_folder is not None:
            own_folder.cleanup()


def _tls(listen: Listen) -> ReloadingTLS | None:
    if listen.tls_cert is None and listen.tls_key is None:
        return None
    if listen.tls_cert is None or listen.tls_key is None:
        raise TLSConfigError("give both --tls-cert and --tls-key")
    return ReloadingTLS(listen.tls_cert, listen.tls_key, listen.tls_client_ca)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signalled: shutting down")
