"""Runs `rscore activator`: the proxy site, the metrics site, until SIGTERM or SIGINT.

The only activator module that binds sockets or installs signal handlers. On a signal it
stops being ready, answers new requests 503, gives held and in-flight requests until
the drain timeout, and exits; it never waits longer than that. Its public site listens
through the sidecar's client deadlines and connection cap (`rscore.sidecar.client_deadlines`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from aiohttp import web

from rscore.activator.proxy import (
    Activator,
    ProxyConfig,
    create_app,
    create_metrics_app,
    upstream_context,
)
from rscore.sidecar import access_log
from rscore.sidecar.access_log import JsonAccessLogger
from rscore.sidecar.client_deadlines import (
    ClientGuard,
    GuardedSite,
    apply_fd_budget,
    runner_options,
)
from rscore.sidecar.client_limits import ClientLimits
from rscore.sidecar.http_hardening import harden_parser_errors
from rscore.sidecar.tls import ReloadingTLS, plain_http_warning
from rscore.sidecar.watch import FileWatcher, ReloadError

__all__ = ["Listen", "run"]

log = logging.getLogger("rscore.activator")


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8443
    metrics_port: int = 9090
    tls_cert: Path | None = None
    tls_key: Path | None = None
    access_log: bool = True
    # It holds up to --max-held requests (1000), each on a connection of its own.
    clients: ClientLimits = field(default_factory=lambda: ClientLimits(max_connections=2000))


def run(config: ProxyConfig, listen: Listen) -> None:
    uvloop.run(serve(config, listen))


def _ca_watcher(activator: Activator) -> FileWatcher | None:
    """Re-reads --upstream-ca when it changes (a rotated `rscore-tls` is a new anchor);
    connections already in the pool keep the context they were made with."""
    ca = activator.config.upstream_ca
    if ca is None:
        return None

    def reload() -> None:
        try:
            activator.ssl_context = upstream_context(ca)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise ReloadError(
                f"cannot load the upstream CA {ca} ({type(error).__name__})"
            ) from error

    return FileWatcher([ca], reload)


async def serve(config: ProxyConfig, listen: Listen, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (default: SIGTERM or SIGINT), then drain and return."""
    harden_parser_errors()
    tls = ReloadingTLS.from_flags(listen.tls_cert, listen.tls_key)
    activator = Activator(config)
    # Two descriptors per connection: the client's, and the upstream one it may need.
    limits = apply_fd_budget(listen.clients, per_connection=2)
    guard = ClientGuard(
        limits, registry=activator.metrics.registry, metric_prefix="rscore_activator"
    )
    await activator.start()
    runner = web.AppRunner(
        create_app(activator),
        handle_signals=False,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("aiohttp.access") if listen.access_log else None,
        # A client that hangs up cancels its request: a held one stops counting as demand
        # (and is never sent to a pod), a forwarded one closes its upstream connection.
        handler_cancellation=True,
        **runner_options(limits),
    )
    metrics_runner = web.AppRunner(create_metrics_app(activator), access_log=None)
    watchers = [w for w in (tls.watcher() if tls else None, _ca_watcher(activator)) if w]
    await runner.setup()
    await metrics_runner.setup()
    try:
        for watcher in watchers:
            await watcher.start()
        site = GuardedSite(
            runner,
            listen.host,
            listen.port,
            guard=guard,
            ssl_context=tls.context if tls else None,
        )
        await site.start()
        await web.TCPSite(metrics_runner, listen.host, listen.metrics_port).start()
        warning = None if tls else plain_http_warning(listen.host)
        if warning:
            log.warning(warning)
        log.info(
            "activator on %s://%s:%d -> %s (hold up to %d requests for %g s; metrics on "
            ":%d/metrics)",
            "https" if tls else "http", listen.host, listen.port, config.base,
            config.limits.max_held, config.limits.hold_timeout_s, listen.metrics_port,
        )  # fmt: skip
        if stop is None:
            stop = _signalled()
        await stop.wait()
        log.info(
            "draining: %d request(s) in hand (%d held), up to %g s",
            activator.inflight, activator.held, config.drain_timeout_s,
        )  # fmt: skip
        activator.begin_drain()
        await site.stop()  # no new connections; open ones get 503 and Connection: close
        if not await activator.drained():
            log.warning("drain timeout passed with %d request(s) unanswered", activator.inflight)
    finally:
        guard.shut_down()  # bodies still arriving get 503: no slow client holds the exit
        for watcher in watchers:
            await watcher.stop()
        await runner.cleanup()
        await metrics_runner.cleanup()
        await activator.close()
        access_log.flush()


def _signalled() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
