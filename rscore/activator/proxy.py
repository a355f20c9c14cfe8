"""The activator's HTTP shell: any method, path, headers and body, to one upstream URL.

Sits in front of the model's Service. Every request's body is read whole (at most
`max_body_bytes`), so that a request can be sent again; the answer is streamed back.
Connections to the upstream are pooled (keep-alive). While the upstream has no ready
pod, requests are held and woken by a readiness probe loop (`/readyz` of the upstream,
run only while something is held); `rscore.activator.hold` decides what happens to each.

What it must never do: read, log or change a credential (`Authorization` passes through
untouched, the sidecar authenticates); log a header or a body; answer for the model
(only for itself: 408, 413, 502, 503, 504 with the contract's JSON error shape); hold a
request beyond its hold timeout or the drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from rscore.activator.hold import (
    Action,
    Attempt,
    HoldLimits,
    after_attempt,
    classify,
    on_arrival,
    on_wake,
    probe_delay,
)
from rscore.activator.metrics import ActivatorMetrics
from rscore.sidecar.client_deadlines import RefusedBody
from rscore.sidecar.http_hardening import name_the_server

__all__ = ["ACTIVATOR", "Activator", "ProxyConfig", "create_app", "create_metrics_app"]

log = logging.getLogger("rscore.activator")

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. `Host` is the
# upstream's (the original goes in X-Forwarded-Host), `Content-Length` is recomputed,
# `Expect` was answered here already.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
NOT_RETURNED = HOP_BY_HOP | {"content-length"}
# aiohttp's client would add these (Content-Type: application/octet-stream for a bytes
# body, which the sidecar answers 415); a proxy sends only what the client sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
INLINE_BYTES = 256 * 1024  # answers up to this size are read whole: fewer writes


@dataclass(frozen=True)
class ProxyConfig:
    upstream: str  # scheme://host:port of the model's Service, no path
    limits: HoldLimits = field(default_factory=HoldLimits)
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_timeout_s: float = 60.0  # one attempt, connect to last byte
    connect_timeout_s: float = 1.0  # a Service without endpoints may drop, not refuse
    probe_path: str = "/readyz"
    upstream_ca: Path | None = None  # PEM: trust anchors for an HTTPS upstream
    upstream_server_name: str | None = None  # TLS name to verify, if not the URL's host
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        url = URL(self.upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"--upstream must be http(s)://host[:port], got {self.upstream!r}")
        if url.path not in ("", "/") or url.query_string or url.fragment:
            raise ValueError(f"--upstream must have no path or query, got {self.upstream!r}")
        if self.upstream_ca is not None and url.scheme != "https":
            raise ValueError("--upstream-ca is only for an https:// upstream")
        if self.max_body_bytes < 1 or not self.upstream_timeout_s > 0:
            raise ValueError("max_body_bytes >= 1 and upstream_timeout_s > 0")
        if not self.connect_timeout_s > 0 or self.drain_timeout_s < 0:
            raise ValueError("connect_timeout_s > 0 and drain_timeout_s >= 0")
        if not self.probe_path.startswith("/"):
            raise ValueError(f"the probe path must start with /, got {self.probe_path!r}")

    @property
    def base(self) -> str:
        return str(URL(self.upstream).with_path("")).rstrip("/")


def upstream_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the upstream's certificate against `ca_file` (else the system's roots).

    Partial chains are accepted, so the sidecar's own certificate (or an intermediate)
    can be the trust anchor: a self-signed `rscore-tls` works without a CA of its own.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _error_body(path: str, code: str, message: str) -> bytes:
    # The V2 routes answer in the Open Inference Protocol's shape, as the sidecar does.
    if path.startswith("/v2/"):
        return orjson.dumps({"error": message})
    return orjson.dumps({"error": {"code": code, "message": message}})


@dataclass(frozen=True)
class Refusal:
    """An answer the activator gives itself instead of the model's."""

    status: int
    code: str
    message: str
    retry_after_s: int | None = None


SHUTTING_DOWN = Refusal(503, "unavailable", "the activator is shutting down; retry", 1)


def _refusal(action: Action, limits: HoldLimits, why: str) -> Refusal:
    if action is Action.FULL:
        return Refusal(
            503,
            "unavailable",
            f"no scoring pod is ready and {limits.max_held} requests are held already",
            limits.retry_after_s,
        )
    if action is Action.EXPIRED:
        return Refusal(
            504,
            "timeout",
            f"no scoring pod became ready within {limits.hold_timeout_s:g} s (last: {why})",
        )
    if action is Action.DROPPED:
        return Refusal(
            502,
            "upstream_error",
            f"the model's service closed the connection without answering ({why})",
        )
    raise AssertionError(f"{action} is not a refusal")


class Activator:
    """The state behind the handler: is the upstream ready, who is held, the pool."""

    def __init__(
        self,
        config: ProxyConfig,
        metrics: ActivatorMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.metrics = metrics or ActivatorMetrics()
        self.clock = clock
        self.held = 0  # requests held now (the gauge's value)
        self.inflight = 0  # requests being handled, held or not
        self.ready = True  # optimistic: the first refusal says otherwise
        self.draining = False
        self._ready_event = asyncio.Event()
        self._ready_event.set()
        self._drain_deadline: float | None = None
        self._prober: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base = config.base
        self.ssl_context: ssl.SSLContext | bool = (
            upstream_context(config.upstream_ca) if config.upstream.startswith("https") else False
        )
        self._timeout = aiohttp.ClientTimeout(
            total=config.upstream_timeout_s, sock_connect=config.connect_timeout_s
        )
        self._probe_timeout = aiohttp.ClientTimeout(
            total=config.connect_timeout_s + 1.0, sock_connect=config.connect_timeout_s
        )

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # the hold queue and the sidecar's admission bound concurrency
            # shorter than the sidecar's keep-alive (aiohttp's 75 s): the pool closes an
            # idle connection before the server does, so a request never meets a dead one
            keepalive_timeout=15.0,
            ttl_dns_cache=10,  # the Service's address is stable, but do re-resolve
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through as the upstream encoded them
            skip_auto_headers=SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep a client's cookies
        )

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._session is not None:
            await self._session.close()

    def begin_drain(self) -> None:
        """SIGTERM: refuse new requests (503), give held ones until the drain deadline."""
        self.draining = True
        self._drain_deadline = self.clock() + self.config.drain_timeout_s
        # Wake every held request so it takes the drain deadline as its own; later
        # waiters get a fresh event (a set one would let them spin while no pod is ready).
        woken = self._ready_event
        if not self.ready:
            self._ready_event = asyncio.Event()
        woken.set()

    async def drained(self) -> bool:
        """Wait until no request is in hand or the drain deadline passes; True if drained.

        Held requests still waiting at the deadline are answered 503 (retry elsewhere).
        """
        assert self._drain_deadline is not None, "begin_drain first"
        while self.inflight > 0 and self.clock() < self._drain_deadline:
            await asyncio.sleep(0.01)
        # Held requests wait at most until the drain deadline, then answer 503 themselves.
        for _ in range(100):
            if not self.held:
                break
            await asyncio.sleep(0.01)
        return self.inflight == 0

    # --- readiness of the upstream ----------------------------------------------------------

    def _mark_ready(self) -> None:
        if not self.ready:
            log.info("upstream %s is ready: releasing %d held request(s)", self._base, self.held)
        self.ready = True
        self.metrics.upstream_ready.set(1)
        self._ready_event.set()

    def _mark_unready(self, why: str) -> None:
        if self.ready:
            log.info("upstream %s has no ready pod (%s): holding requests", self._base, why)
            self.ready = False
            self.metrics.upstream_ready.set(0)
            self._ready_event = asyncio.Event()
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_until_ready(), name="probe upstream")

    async def _probe_until_ready(self) -> None:
        """GET the upstream's probe path until it answers (anything but 503), while
        requests are held; a pod that turned ready wakes them within one probe delay."""
        assert self._session is not None
        url = URL(self._base + self.config.probe_path, encoded=True)
        failures = 0
        while not self.ready:
            if self.held == 0 and failures > 0:
                return  # nobody waits: the next held request starts a new loop
            try:
                async with self._session.get(
                    url,
                    timeout=self._probe_timeout,
                    ssl=self.ssl_context,
                    server_hostname=self.config.upstream_server_name,
                ) as response:
                    await response.read()
                    if response.status != 503:
                        self._mark_ready()
                        return
            except aiohttp.ClientSSLError as error:
                # A pod answers, with a certificate that does not verify: no pod start will
                # mend that. Release the held requests to fail fast (502), not wait (504).
                log.warning("TLS to the upstream %s failed: %s", self._base, error)
                self._mark_ready()
                return
            except (aiohttp.ClientError, TimeoutError):
                pass  # refused, reset, timed out: no ready pod yet
            failures += 1
            await asyncio.sleep(probe_delay(failures))

    async def _wait_ready(self, deadline: float) -> bool:
        """Wait for the upstream to look ready until `deadline`; True if it does."""
        event = self._ready_event
        remaining = deadline - self.clock()
        if event.is_set():
            return True
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return False
        return True

    # --- one request ----------------------------------------------------------------------

    def _forward_headers(self, request: web.BaseRequest, request_id: str) -> CIMultiDict[str]:
        incoming = request.headers
        # Headers the client named in `Connection` are hop-by-hop too (RFC 9110 7.6.1).
        extra = {
            name.strip().lower()
            for value in incoming.getall("Connection", [])
            for name in value.split(",")
        }
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v)
            for k, v in incoming.items()
            if k.lower() not in NOT_FORWARDED and k.lower() not in extra
        )
        remote = request.remote or ""
        forwarded_for = incoming.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
        if "X-Forwarded-Proto" not in headers:
            headers["X-Forwarded-Proto"] = "https" if request.secure else "http"
        if "X-Forwarded-Host" not in headers and request.host:
            headers["X-Forwarded-Host"] = request.host
        if "x-request-id" not in headers:
            headers["x-request-id"] = request_id
        return headers

    async def _attempt(
        self, request: web.BaseRequest, headers: CIMultiDict[str], body: bytes
    ) -> tuple[Attempt, aiohttp.ClientResponse | None, str]:
        """One try upstream: (outcome, the response to pass on or None, why not)."""
        assert self._session is not None
        try:
            response = await self._session.request(
                request.method,
                URL(self._base + request.raw_path, encoded=True),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                timeout=self._timeout,
                ssl=self.ssl_context,
                server_hostname=self.config.upstream_server_name,
            )
        except aiohttp.ClientSSLError:
            raise  # a certificate that does not verify is no pod start: do not hold
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            return classify(None, connected=False), None, f"{type(error).__name__}: {error}"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
            return classify(None, connected=True), None, f"{type(error).__name__}: {error}"
        attempt = classify(response.status)
        if attempt is Attempt.UNAVAILABLE:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await response.read()  # so the connection goes back to the pool
            response.release()
            return attempt, None, "upstream answered 503"
        return attempt, response, ""

    def _answer(self, request: web.BaseRequest, request_id: str, refusal: Refusal) -> web.Response:
        """The activator's own answer (never the model's), in the contract's shape."""
        response = web.Response(
            body=_error_body(request.path, refusal.code, refusal.message),
            status=refusal.status,
            content_type="application/json",
        )
        response.headers["x-request-id"] = request_id
        if refusal.retry_after_s is not None:
            response.headers["Retry-After"] = str(refusal.retry_after_s)
        if self.draining:
            response.force_close()
        return response

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in NOT_RETURNED
        )
        length = upstream.content_length
        if length is not None and length <= INLINE_BYTES:
            body = await upstream.read()
            response = web.Response(
                status=upstream.status, reason=upstream.reason, body=body, headers=headers
            )
            if self.draining:
                response.force_close()
            return response
        stream = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            stream.content_length = length
        if self.draining:
            stream.force_close()
        await stream.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await stream.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as error:
            # The status is sent: all that is left is to cut the answer short, as the pod
            # did, so the client sees a truncated body and not a complete wrong one.
            log.warning("the upstream's answer broke off: %s", type(error).__name__)
            if request.transport is not None:
                request.transport.close()
            return stream
        await stream.write_eof()
        return stream

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.inflight += 1
        try:
            response = await self._handle(request)
        finally:
            self.inflight -= 1
        self.metrics.count(response.status)
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if self.draining:
            return self._answer(request, request_id, SHUTTING_DOWN)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.max_body_bytes
            return self._answer(
                request,
                request_id,
                Refusal(413, "too_large", f"body is over the size limit ({limit} bytes)"),
            )
        except RefusedBody as refused:  # too slow a body, or shutdown (client deadlines)
            error = refused.error
            return self._answer(
                request, request_id, Refusal(refused.status, error.code, error.message)
            )
        headers = self._forward_headers(request, request_id)
        try:
            outcome = await self._until_answered(request, headers, body)
        except aiohttp.ClientSSLError as error:
            log.warning("TLS to the upstream %s failed: %s", self._base, error)
            outcome = Refusal(
                502, "upstream_error", "TLS to the model's service failed (see the activator's log)"
            )
        except TimeoutError:  # the upstream took longer than its timeout
            timeout = self.config.upstream_timeout_s
            outcome = Refusal(
                504, "timeout", f"the model's service did not answer within {timeout:g} s"
            )
        except aiohttp.ClientError as error:  # the answer began and broke off
            outcome = Refusal(
                502,
                "upstream_error",
                f"the model's service failed mid-answer ({type(error).__name__})",
            )
        if isinstance(outcome, Refusal):
            return self._answer(request, request_id, outcome)
        try:
            return await self._relay(request, outcome)
        finally:
            outcome.release()

    async def _until_answered(
        self, request: web.BaseRequest, headers: CIMultiDict[str], body: bytes
    ) -> aiohttp.ClientResponse | Refusal:
        """Forward, hold and retry as `rscore.activator.hold` says, until there is an answer to
        pass on (the upstream's) or to give (the activator's own)."""
        limits = self.limits
        arrival = self.clock()
        action = on_arrival(limits, upstream_ready=self.ready, held=self.held)
        was_held = holding = False
        held_since = arrival
        drops = retries = 0
        why = "no ready pod"
        try:
            while True:
                if action is Action.FORWARD:
                    attempt, upstream, reason = await self._attempt(request, headers, body)
                    why = reason or why
                    if attempt is Attempt.DROPPED:
                        drops += 1
                    elif attempt is not Attempt.ANSWERED:
                        self._mark_unready(reason)
                    action = after_attempt(
                        limits,
                        attempt,
                        is_held=was_held,
                        held=self.held,
                        waited_s=self.clock() - arrival,
                        drops=drops,
                    )
                    if action is Action.PASS:
                        assert upstream is not None
                        if not self.ready:
                            self._mark_ready()
                        return upstream
                elif action is Action.HOLD:
                    deadline = arrival + limits.hold_timeout_s
                    if self._drain_deadline is not None:
                        deadline = min(deadline, self._drain_deadline)
                    holding = self._enter_hold(holding)
                    if was_held:
                        # Woken, tried, and still no pod took it: pause before the next
                        # try, so an upstream whose probe passes while its requests get
                        # 503 costs a few tries a second, not a busy loop.
                        retries += 1
                        pause = min(probe_delay(retries), max(0.0, deadline - self.clock()))
                        await asyncio.sleep(pause)
                    else:
                        was_held, held_since = True, self.clock()
                    if not self.ready:
                        self._mark_unready(why)  # make sure a probe loop runs
                    await self._wait_ready(deadline)
                    # Out of the count while it tries: the pod it reaches counts it then.
                    holding = self._leave_hold(holding)
                    if self.draining and self.clock() >= (self._drain_deadline or 0.0):
                        return SHUTTING_DOWN
                    action = on_wake(limits, waited_s=self.clock() - arrival)
                else:
                    return _refusal(action, limits, why)
        finally:
            self._leave_hold(holding)
            if was_held:
                self.metrics.hold_duration.observe(self.clock() - held_since)

    def _enter_hold(self, holding: bool) -> bool:
        if not holding:
            self.held += 1
            self.metrics.held.set(self.held)
        return True

    def _leave_hold(self, holding: bool) -> bool:
        if holding:
            self.held -= 1
            self.metrics.held.set(self.held)
        return False


ACTIVATOR = web.AppKey("activator", Activator)


def create_app(activator: Activator) -> web.Application:
    """The proxy: every method on every path goes to `activator.handle`."""
    app = web.Application(client_max_size=activator.config.max_body_bytes)
    name_the_server(app)  # also over a proxied answer's own Server header
    app[ACTIVATOR] = activator
    app.router.add_route("*", "/{tail:.*}", activator.handle)
    return app


def create_metrics_app(activator: Activator) -> web.Application:
    """`/metrics` (Prometheus), `/healthz` (the loop answers), `/readyz` (not draining)."""
    registry = activator.metrics.registry

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_request: web.Request) -> web.Response:
        # Ready whether or not the model has a pod: holding requests is the job.
        ready = not activator.draining
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app = web.Application()
    name_the_server(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
