"""`rscore activator`: flags for the scale-from-zero proxy (rscore.activator.serve).

Parses and checks flags only; the proxy is imported when the command runs, so `rscore`
itself stays quick to start and never loads aiohttp's client for other commands.
"""

from __future__ import annotations

from typing import Any

import click

from rscore.cli.options import (
    TLS_CERT,
    TLS_KEY,
    client_limit_options,
    client_limits,
    file_option,
)
from rscore.r_scorer.logs import configure_json_logging


@click.command("activator")
@click.option(
    "--upstream",
    required=True,
    envvar="RSCORE_UPSTREAM",
    show_envvar=True,
    help="The model's Service, scheme://host:port (no path), e.g. "
    "https://mtcars-lm-scorer-pods:443.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--metrics-port",
    default=9090,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of /metrics, /healthz and /readyz.",
)
@click.option(
    "--max-held",
    default=1000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Requests held at most while no pod is ready; beyond that, 503 with Retry-After.",
)
@click.option(
    "--hold-timeout-s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="How long a request may wait for a ready pod (a pod start); then 504.",
)
@click.option(
    "--retry-after-s",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Retry-After of the 503 when the hold queue is full.",
)
@click.option(
    "--max-body-bytes",
    default=10 * 1024 * 1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Larger bodies get 413 (bodies are buffered for retries).",
)
@click.option(
    "--upstream-timeout-s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="One forwarded request, connect to last byte; then 504.",
)
@click.option(
    "--connect-timeout-s",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="A connection not made by then counts as no ready pod.",
)
@click.option(
    "--probe-path",
    default="/readyz",
    show_default=True,
    help="Upstream path probed while requests are held; any answer but 503 wakes them.",
)
@file_option(
    "--upstream-ca",
    "PEM: trust anchors for an https upstream (the sidecar's certificate "
    "itself will do); re-read when it changes. Default: the system's roots.",
)
@click.option(
    "--upstream-server-name",
    default=None,
    help="TLS name to verify the upstream's certificate against [default: the URL's host].",
)
@TLS_CERT
@TLS_KEY
@click.option(
    "--drain-timeout-s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="After SIGTERM, how long held and in-flight requests may still take.",
)
@client_limit_options(max_connections=2000)  # up to --max-held (1000) held, and more
@click.option("--access-log/--no-access-log", default=True, show_default=True)
def activator(**options: Any) -> None:
    """Hold requests while the model has no ready pod (scale from zero), then forward them.

    Runs in front of the model's Service; exports how many requests it holds
    (rscore_activator_held_requests), which the autoscaler reads as unrouted demand.
    """  # fmt: skip
    from rscore.activator.hold import HoldLimits
    from rscore.activator.proxy import ProxyConfig
    from rscore.activator.serve import Listen, run
    from rscore.sidecar.tls import TLSConfigError

    configure_json_logging()
    try:
        config = ProxyConfig(
            upstream=options["upstream"],
            limits=HoldLimits(
                max_held=options["max_held"],
                hold_timeout_s=options["hold_timeout_s"],
                retry_after_s=options["retry_after_s"],
            ),
            max_body_bytes=options["max_body_bytes"],
            upstream_timeout_s=options["upstream_timeout_s"],
            connect_timeout_s=options["connect_timeout_s"],
            probe_path=options["probe_path"],
            upstream_ca=options["upstream_ca"],
            upstream_server_name=options["upstream_server_name"],
            drain_timeout_s=options["drain_timeout_s"],
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    listen = Listen(
        host=options["host"],
        port=options["port"],
        metrics_port=options["metrics_port"],
        tls_cert=options["tls_cert"],
        tls_key=options["tls_key"],
        access_log=options["access_log"],
        clients=client_limits(options),
    )
    try:
        run(config, listen)
    except KeyboardInterrupt:
        pass
    except (TLSConfigError, OSError) as error:  # a bad certificate, a port in use
        raise click.ClickException(str(error)) from error
