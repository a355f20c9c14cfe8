"""The ceiling of `make bench`: a bare aiohttp server on uvloop that answers POST /score.

    python -m bench.echo_server --port 8002

The server is rscore/cli/echo_server.py (`rscore sim validate` measures its client's
floor against it too); see there. Listens on 127.0.0.1 only and does no work per
request beyond reading the body.
"""

from __future__ import annotations

from rscore.cli.echo_server import ANSWER, HOST, create_app, main

__all__ = ["ANSWER", "HOST", "create_app", "main"]

if __name__ == "__main__":
    main()
