"""Click options more than one `rscore` command takes (kept free of heavy imports)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def file_option(flag: str, help_text: str) -> Callable[..., Any]:
    """An optional path to a file (not checked here: the command reads it)."""
    return click.option(
        flag, type=click.Path(dir_okay=False, path_type=Path), default=None, help=help_text
    )


TLS_CERT = file_option(
    "--tls-cert", "PEM certificate chain: serve HTTPS (re-read when it changes)."
)
TLS_KEY = file_option("--tls-key", "PEM private key of --tls-cert.")
