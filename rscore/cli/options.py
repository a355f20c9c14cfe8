"""Click options more than one `rscore` command takes (kept free of heavy imports)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rscore.sidecar.client_limits import ClientLimits

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def file_option(flag: str, help_text: str) -> Callable[..., Any]:
    """An optional path to a file (not checked here: the command reads it)."""
    return click.option(
        flag, type=click.Path(dir_okay=False, path_type=Path), default=None, help=help_text
    )


TLS_CERT = file_option(
    "--tls-cert", "PEM certificate chain: serve HTTPS (re-read when it changes)."
)
TLS_KEY = file_option("--tls-key", "PEM private key of --tls-cert.")


def client_limit_options(*, max_connections: int) -> Decorator:
    """What a client connection may hold on a public site (rscore.sidecar.client_deadlines)."""
    options = [
        click.option(
            "--header-timeout-s", default=10.0, show_default=True,
            type=click.FloatRange(min=0, min_open=True),
            help="A request's header must arrive whole within this long of the connection's "
            "start (TLS handshake included) or of its first byte; else 408 and close.",
        ),
        click.option(
            "--body-timeout-s", default=30.0, show_default=True,
            type=click.FloatRange(min=0, min_open=True),
            help="A request's body must arrive whole within this long of its header; "
            "else 408 and close.",
        ),
        click.option(
            "--keepalive-timeout-s", default=75.0, show_default=True,
            type=click.FloatRange(min=0, min_open=True),
            help="A kept-alive connection with no new request for this long is closed.",
        ),
        click.option(
            "--max-connections", default=max_connections, show_default=True,
            type=click.IntRange(min=1),
            help="Client connections open at most; a new one beyond is closed unread.",
        ),
    ]  # fmt: skip

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return add


def client_limits(options: dict[str, Any]) -> ClientLimits:
    """The values of `client_limit_options` in a command's `options`."""
    from rscore.sidecar.client_limits import ClientLimits

    return ClientLimits(
        header_timeout_s=options["header_timeout_s"],
        body_timeout_s=options["body_timeout_s"],
        keepalive_timeout_s=options["keepalive_timeout_s"],
        max_connections=options["max_connections"],
    )
