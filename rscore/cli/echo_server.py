"""A bare aiohttp server on uvloop that answers POST /score: the floor of a client.

    python -m rscore.cli.echo_server --port 8002

It reads the request body (as any server must) and answers a fixed small JSON, with no
parsing, no access log and no R: what the same HTTP stack costs before any work. `make
bench` compares rscore's sidecar with it (bench/echo_server.py runs this), and `rscore
sim validate` replays each schedule against it to measure its own client's floor.

A measuring fixture only: it listens on 127.0.0.1 and nowhere else, and must never do
any work per request beyond reading the body.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

HOST = "127.0.0.1"  # never anything else: only the loopback is ever loaded
ANSWER = b'{"predictions":[22.638350924442673]}'


async def score(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/score", score)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(),
        host=HOST,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
