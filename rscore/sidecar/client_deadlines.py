"""What a client connection may hold: deadlines for its header, body and idle time, and
a cap on open connections. Shared by the sidecar's and the activator's public sites.

aiohttp reads a request for as long as the client takes: a connection that sends
nothing, a request line at a byte a second or a body trickled slower than that holds
a file descriptor forever, unauthenticated. Here every accepted connection is, at
each moment, owed something by the client, and has a deadline for it:

- `header`: the whole header block, within `header_timeout_s` of the accept (the TLS
  handshake included) or, on a kept-alive connection, of the next request's first byte;
- `body`: the whole body, within `body_timeout_s` of the header's end;
- `idle`: on a kept-alive connection, the next request's first byte, within
  `keepalive_timeout_s` of the last answer.

Past a deadline the connection is closed: silently if the client had sent nothing of a
request; with a 408 (`request_timeout`, the contract's JSON error) if it had begun one
and nothing of an answer has begun. Beyond `max_connections` open connections a new one
is closed at once, before a byte of it is read (TLS included). Expiries and refusals
are counted for Prometheus. On shutdown, `ClientGuard.shut_down()` answers requests
whose body is still arriving 503, so the drain never waits for a slow client.

The decisions (which deadline, what to do when it passes, whether to admit, how many
descriptors to ask for) are `rscore.sidecar.client_limits`; `_GuardedHandler`, a subclass of
aiohttp's RequestHandler, `ClientGuard` and `GuardedSite` only carry them out. The
subclass reads some of aiohttp's private per-connection state (the parsed-message
queue, the idle waiter, the current request): aiohttp has no public hook before the
application runs; tests/test_slow_clients.py pins the behaviour.

Never reads, logs or echoes the bytes of a request (credentials live there); never
writes to a connection whose answer the application has begun; never blocks the loop.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import dataclasses
import functools
import logging
import resource
import socket
import ssl
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
import uvloop
import uvloop.loop
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter, Gauge

from rscore.r_scorer.errors import ScoringError
from rscore.sidecar.client_limits import (
    RESERVED_FDS,
    ClientLimits,
    ConnectionCap,
    Handling,
    Outcome,
    Phase,
    deadline,
    fd_budget,
    on_expiry,
)
from rscore.sidecar.errors import RequestTimedOut, Unavailable

__all__ = [
    "ClientGuard",
    "ClientLimits",
    "GuardedSite",
    "RefusedBody",
    "apply_fd_budget",
    "runner_options",
]

log = logging.getLogger("rscore.clients")

# After a drain, how long aiohttp may still wait for a running handler, twice (before
# and after cancelling it): what is left then is cut, so exit stays within the drain.
CUT_AFTER_DRAIN_S = 1.0
# Loops may run a timer this much before its time (uvloop counts in milliseconds).
_EARLY_S = 0.002
# A connection answered before its client finished sending: how long it stays open
# after the answer's FIN, discarding what still arrives, before it is really closed.
FIN_LINGER_S = 1.0


def runner_options(limits: ClientLimits) -> dict[str, Any]:
    """AppRunner settings that go with a guarded site."""
    return {
        # aiohttp's own idle timer (it also runs from each connection's start) stays as
        # a backstop, set to fire after every deadline here so it never closes first.
        "keepalive_timeout": limits.keepalive_timeout_s + limits.header_timeout_s,
        # after the drain, what is still running is cut at once
        "shutdown_timeout": CUT_AFTER_DRAIN_S,
    }


def apply_fd_budget(limits: ClientLimits, *, per_connection: int) -> ClientLimits:
    """`fd_budget` for this process: raises its soft RLIMIT_NOFILE if needed, and lowers
    the cap (with a warning) if the hard limit is too low for it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    budget = fd_budget(
        limits.max_connections,
        soft=None if soft == infinity else soft,
        hard=None if hard == infinity else hard,
        per_connection=per_connection,
    )
    if budget.soft_limit is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (budget.soft_limit, hard))
    if budget.max_connections == limits.max_connections:
        return limits
    log.warning(
        "--max-connections %d needs %d file descriptors, over the limit of %d: "
        "at most %d connections will be open",
        limits.max_connections, limits.max_connections * per_connection + RESERVED_FDS,
        hard, budget.max_connections,
    )  # fmt: skip
    return dataclasses.replace(limits, max_connections=budget.max_connections)


# --- what a client sees -----------------------------------------------------------------


class RefusedBody(web.HTTPException):
    """Raised from a handler's body read when the body will not be read: the client is
    too slow, or the server shuts down. Carries the contract's error, so a middleware
    can answer it in its own shape; aiohttp answers it as is (JSON, then close)."""

    def __init__(self, error: ScoringError) -> None:
        self.error = error
        super().__init__(
            text=orjson.dumps(error.to_json()).decode(),
            content_type="application/json",
            headers={"Connection": "close"},
        )


class SlowBody(RefusedBody, web.HTTPRequestTimeout):
    pass


class BodyCutByShutdown(RefusedBody, web.HTTPServiceUnavailable):
    pass


def _timeout_answer(message: str) -> bytes:
    """A complete 408 for a connection whose request header never completed."""
    body = orjson.dumps(RequestTimedOut(message).to_json())
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-request-id: {uuid.uuid4().hex}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _tls_protocol(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's own TLS protocol class (uvloop's is compiled; same signature)."""
    if isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    return asyncio.sslproto.SSLProtocol


# --- carrying it out ----------------------------------------------------------------------


class _FinThenClose:
    """The transport of a connection answered while its client is still sending, as
    aiohttp sees it: close() sends FIN after the answer and keeps reading (aiohttp drops
    what arrives once it is closing) for `FIN_LINGER_S` before the socket is closed.

    Closing a socket whose input is unread makes the kernel send RST, which throws away
    the answer still in flight: the client of a cut request would see a reset instead
    of its 408 or 503. aiohttp's own lingering close reads the body through the request,
    which a refused body cannot do. TLS transports cannot half-close; their close sends
    close_notify and reads on until the peer's, which serves the same end."""

    __slots__ = ("_closing", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._closing = False

    def close(self) -> None:
        transport = self._transport
        if self._closing or not transport.can_write_eof() or transport.is_closing():
            transport.close()
            return
        self._closing = True
        transport.write_eof()  # after what is buffered: the answer, then FIN
        self._loop.call_later(FIN_LINGER_S, transport.close)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, with one deadline for whatever the client owes.

    One timer per connection, moved only when a deadline comes earlier than it: on the
    usual path (a request in one read, its answer) no timer is made or cancelled."""

    __slots__ = (
        "_accepted_at", "_began", "_body", "_deadline_at", "_deadline_timer", "_guard",
        "_phase", "_timer_at", "released",
    )  # fmt: skip

    def __init__(self, guard: ClientGuard, accepted_at: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._accepted_at = accepted_at
        self._phase: Phase | None = Phase.HEADER  # None: closing, no deadline any more
        self._began = False  # bytes of a request arrived since the connection was idle
        self._body: Any = None  # the StreamReader of the body owed
        self._deadline_at = 0.0
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The header deadline runs from the accept: a TLS handshake has used some of it.
        self._owe(Phase.HEADER, self._accepted_at)

    def _owe(self, phase: Phase, since: float) -> None:
        self._phase = phase
        at = deadline(self._guard.limits, phase, since)
        self._deadline_at = at
        if self._deadline_timer is None or at < self._timer_at:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_timer = self._loop.call_at(at, self._expired)
            self._timer_at = at

    def _owes_nothing(self, since: float) -> None:
        self._body = None
        self._began = False
        self._owe(Phase.IDLE, since)

    def _disarm(self) -> None:
        self._phase = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if not data or phase is None or self._force_close or self._close:
            super().data_received(data)
            return
        parsed = self._request_count
        super().data_received(data)
        now = self._loop.time()
        if self._request_count != parsed:
            # A header block ended. Only the last one parsed can still owe body bytes.
            # (Bytes of a further pipelined header, if any, are bounded by the idle
            # deadline and then the header one.)
            body = self._messages[-1][1] if self._messages else None
            if body is not None and not body.is_eof():
                self._body = body
                self._began = True
                self._owe(Phase.BODY, now)
            else:
                self._owes_nothing(now)
        elif phase is Phase.BODY:
            if self._body is not None and self._body.is_eof():
                self._owes_nothing(now)
        elif phase is Phase.IDLE:  # the first bytes of a header still incomplete
            self._began = True
            self._owe(Phase.HEADER, now)
        else:
            self._began = True

    def log_access(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        # aiohttp calls this once an answer is sent, whatever the path: the idle time
        # counts from there (a hook that costs no extra coroutine per request).
        super().log_access(request, response, time)
        if self._phase is Phase.IDLE:
            self._owe(Phase.IDLE, self._loop.time())

    def _handling(self) -> Handling:
        if self._waiter is not None and not self._waiter.done():
            return Handling.WAITING
        request = self._current_request
        if request is None:
            return Handling.BETWEEN
        if self._body is None or request.content is not self._body:
            return Handling.ANSWERING
        # aiohttp resets output_size after an interim "100 Continue": this is the answer.
        return Handling.STREAMING if request.writer.output_size > 0 else Handling.READING

    def _expired(self) -> None:
        self._deadline_timer = None
        phase = self._phase
        if phase is None or self.transport is None:
            return
        if self._loop.time() + _EARLY_S < self._deadline_at:  # moved later meanwhile
            self._deadline_timer = self._loop.call_at(self._deadline_at, self._expired)
            self._timer_at = self._deadline_at
            return
        outcome = on_expiry(phase, self._handling(), self._began)
        if outcome is Outcome.KEEP:
            self._owe(phase, self._loop.time())
            return
        self._disarm()
        self._guard.count_expiry(phase)
        log.debug("closing a connection from %s: %s deadline passed", self.peername, phase)
        limits = self._guard.limits
        if outcome is Outcome.ANSWER_408:
            self.transport.write(
                _timeout_answer(
                    f"no complete request header within {limits.header_timeout_s:g} s; "
                    "the connection is closed"
                )
            )
            self._close_after_sending()
            self.force_close()
        elif outcome is Outcome.FAIL_BODY_READ:
            self._fail_body_read(
                SlowBody(
                    RequestTimedOut(
                        f"the request body did not arrive within {limits.body_timeout_s:g} s "
                        "of its header; the connection is closed"
                    )
                )
            )
        elif outcome is Outcome.CLOSE_AFTER_ANSWER:
            self.close()
        else:
            self.force_close()

    def _fail_body_read(self, refusal: RefusedBody) -> None:
        """The handler's read of the body raises `refusal` (which it answers), and the
        connection closes after that answer, without reading the rest."""
        self._body.set_exception(refusal)
        self._lingering_time = 0.0  # aiohttp would otherwise read on after the answer
        self._close_after_sending()

    def _close_after_sending(self) -> None:
        """The client is still sending: close with FIN after the answer, not RST."""
        if self.transport is not None and not isinstance(self.transport, _FinThenClose):
            self.transport = _FinThenClose(self.transport, self._loop)  # type: ignore[assignment]

    def shut_down(self) -> None:
        """Server shutdown: a request whose body is still arriving is answered 503."""
        if self._phase is Phase.BODY and self._handling() is Handling.READING:
            self._disarm()
            self._fail_body_read(
                BodyCutByShutdown(
                    Unavailable("the server is shutting down; the request body was not read")
                )
            )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self.release()

    def release(self) -> None:
        """Give the connection's place back (once, whichever way it ended)."""
        if not self.released:
            self.released = True
            self._guard.release(self)


class _Gate(asyncio.Protocol):
    """The first protocol of every accepted TCP connection: admits it or closes it
    before reading a byte, then hands the transport over (to TLS, then aiohttp)."""

    __slots__ = ("_guard",)

    def __init__(self, guard: ClientGuard) -> None:
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.accepted(transport)  # type: ignore[arg-type]


class ClientGuard:
    """The deadlines and the cap of one public site, and their counters."""

    def __init__(
        self,
        limits: ClientLimits,
        *,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = "rscore",
    ) -> None:
        self.limits = limits
        self.cap = ConnectionCap(limits.max_connections)
        self._handlers: set[_GuardedHandler] = set()
        self._handshaking: dict[_GuardedHandler, asyncio.Transport] = {}
        self._server: Any = None  # aiohttp's web.Server, set by the site
        self._tls: ssl.SSLContext | None = None
        self._timeouts = Counter(
            f"{metric_prefix}_client_timeouts",
            "Client connections closed because a deadline passed: header (request header "
            "incomplete), body (request body incomplete), idle (keep-alive, no new request).",
            ["phase"],
            registry=registry,
        )
        for phase in Phase:
            self._timeouts.labels(phase.value)  # every phase shows, at 0
        self._refused = Counter(
            f"{metric_prefix}_connections_refused",
            "Client connections closed unread because --max-connections were open.",
            registry=registry,
        )
        Gauge(
            f"{metric_prefix}_open_connections",
            "Client connections open now (TLS handshakes included).",
            registry=registry,
        ).set_function(lambda: self.cap.open)

    # --- the site's side ----------------------------------------------------------------

    def serve(self, server: Any, tls: ssl.SSLContext | None) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for `loop.create_server` in front of aiohttp's `server`."""
        self._server = server
        self._tls = tls
        return lambda: _Gate(self)

    def shut_down(self) -> None:
        """End of a drain: TLS handshakes under way are cut, and requests whose body is
        still arriving are answered 503; idle connections and running handlers are
        aiohttp's (runner.cleanup) to close."""
        for transport in list(self._handshaking.values()):
            transport.abort()
        for handler in list(self._handlers):
            handler.shut_down()

    # --- a connection's life ----------------------------------------------------------

    def accepted(self, transport: asyncio.Transport) -> None:
        """A TCP connection, just accepted: nothing of it has been read yet."""
        if not self.cap.admit():
            self._refused.inc()
            transport.abort()  # nothing read, nothing to flush: free the descriptor now
            return
        loop = asyncio.get_running_loop()
        accepted_at = loop.time()
        server = self._server
        # What aiohttp's own Server.__call__ does, with the guarded subclass.
        handler = _GuardedHandler(
            self, accepted_at, manager=server, loop=server._loop, **server._kwargs
        )
        self._handlers.add(handler)
        if self._tls is None:
            transport.set_protocol(handler)
            handler.connection_made(transport)
            return
        # TLS as the loop's create_server(ssl=...) does it, in this same callback: the
        # ClientHello must reach the TLS protocol, so no await may come before it.
        waiter = loop.create_future()
        tls = _tls_protocol(loop)(
            loop, handler, self._tls, waiter, server_side=True,
            # backstops: the header deadline below ends a slow handshake first
            ssl_handshake_timeout=self.limits.header_timeout_s + 1.0,
            ssl_shutdown_timeout=self.limits.header_timeout_s,
        )  # fmt: skip
        transport.set_protocol(tls)
        tls.connection_made(transport)  # handler.connection_made follows the handshake
        self._handshaking[handler] = transport
        too_slow = loop.call_at(
            deadline(self.limits, Phase.HEADER, accepted_at), self._handshake_too_slow, handler
        )
        waiter.add_done_callback(
            functools.partial(self._handshake_over, handler=handler, too_slow=too_slow)
        )

    def _handshake_too_slow(self, handler: _GuardedHandler) -> None:
        transport = self._handshaking.get(handler)
        if transport is not None:
            self.count_expiry(Phase.HEADER)
            transport.abort()  # the handshake's waiter then ends, and with it the place

    def _handshake_over(
        self, waiter: asyncio.Future[None], *, handler: _GuardedHandler, too_slow: asyncio.Handle
    ) -> None:
        too_slow.cancel()
        self._handshaking.pop(handler, None)
        error = None if waiter.cancelled() else waiter.exception()
        if error is not None:  # a plain-HTTP client, an unknown CA, ...: logged, not raised
            log.debug("TLS handshake failed: %s", type(error).__name__)
        if handler.transport is None:  # never connected (or already gone): free the place
            handler.release()

    def release(self, handler: _GuardedHandler) -> None:
        self._handlers.discard(handler)
        self.cap.release()

    def count_expiry(self, phase: Phase) -> None:
        self._timeouts.labels(phase.value).inc()


@runtime_checkable
class _Listening(Protocol):
    """A server that tells its sockets: asyncio's Server and uvloop's (no subclass of it)."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...


class GuardedSite(web.BaseSite):
    """A TCP site (optionally TLS) whose connections go through a `ClientGuard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ClientGuard,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)  # TLS is the guard's, after admission
        self._host = host
        self._port = port
        self._guard = guard
        self._tls = ssl_context

    @property
    def port(self) -> int:
        """The bound port (the one asked for until started; useful with port 0)."""
        server = self._server  # what start()'s create_server made: asyncio's or uvloop's
        if isinstance(server, _Listening) and server.sockets:
            return int(server.sockets[0].getsockname()[1])
        return self._port

    @property
    def name(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.serve(server, self._tls), self._host, self._port, backlog=self._backlog
        )
