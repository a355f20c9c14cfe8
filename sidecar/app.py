"""The sidecar's aiohttp application: routes, middleware and thin handlers.

`create_app()` builds the public app (scoring, V2, health, OpenAPI) around an injected
worker pool and Prometheus registry; `create_metrics_app()` the metrics port's app.
Handlers parse, call the pure conversions and the dispatcher, and turn a ScoringError
into a status only here, at the edge. Middleware, outermost first: request context
(request id, timing, counting, error bodies), then (later) auth, so a rejected
request is still counted but never takes a worker slot.

Never imports rpy2 or starts R; never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from r_scorer.errors import BadRequest, ScoringError
from r_scorer.payload import Frame, frame_from_document, parse_json
from r_scorer.pool import ModelInfo, WorkerLink, WorkerPool
from r_scorer.prototype import TypedFrame, coerce
from sidecar import openapi, v2
from sidecar.admission import Dispatcher
from sidecar.auth import Authenticator, Unauthorized, auth_middleware
from sidecar.collector import DataCollector
from sidecar.errors import (
    MethodNotAllowed,
    NotFound,
    TimedOut,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
    status_of,
)
from sidecar.http_hardening import harden_parser_errors
from sidecar.metrics import SidecarMetrics

log = logging.getLogger("rscore.sidecar")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # what we echo back; else a fresh one
_ID_PREFIX = secrets.token_hex(8)  # per process, so ids are unique across pods
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique per process and across processes
    (a random prefix and a counter: cheaper than a uuid4 per request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass(frozen=True)
class SidecarConfig:
    """The sidecar's flags (see `rscore serve --help`)."""

    max_queue: int = 128  # per worker
    request_timeout_ms: int = 5000  # queue wait + scoring, as Azure ML's default
    max_body_bytes: int = 10 * 1024 * 1024
    collect_dir: Path | None = None
    collect_sample_rate: float = 0.1
    drain_timeout_s: float = 30.0  # after SIGTERM, how long accepted requests may take
    max_batch_rows: int = 256  # rows of waiting requests merged into one R call
    max_batch_delay_ms: float = 0.0  # wait this long for a batch to gather (Triton: 0)


@dataclass
class SidecarState:
    """Everything the handlers share, held in the app under one typed key."""

    config: SidecarConfig
    pool: WorkerPool
    dispatcher: Dispatcher
    metrics: SidecarMetrics
    clock: Callable[[], float]
    collector: DataCollector | None = None


STATE = web.AppKey("rscore_state", SidecarState)
SCORE_ROUTE = "score"
INFER_ROUTE = "v2-infer"
MODEL_ROUTE = "v2-model"
SCORING_ROUTES = frozenset({SCORE_ROUTE, INFER_ROUTE})  # counted in the metrics; probes not
PROTECTED_ROUTES = SCORING_ROUTES | {MODEL_ROUTE}  # health, readiness, OpenAPI stay open
ARRIVAL = web.RequestKey("rscore_arrival", float)
REQUEST_ID = web.RequestKey("rscore_request_id", str)


def create_app(
    config: SidecarConfig,
    *,
    pool: WorkerPool,
    registry: CollectorRegistry,
    authenticator: Authenticator | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The public app. `pool` must not be started yet: the app starts and closes it.
    Without an authenticator every route is open (`--auth none`)."""
    harden_parser_errors()
    metrics = SidecarMetrics(registry)
    dispatcher = Dispatcher(
        max_queue_per_worker=config.max_queue,
        max_batch_rows=config.max_batch_rows,
        max_batch_delay_s=config.max_batch_delay_ms / 1000,
        on_r_call=metrics.r_call,
        clock=clock,
    )
    metrics.watch(dispatcher, pool, clock)
    state = SidecarState(config, pool, dispatcher, metrics, clock)
    middlewares = [request_context]
    if authenticator is not None and authenticator.config.mode != "none":
        middlewares.append(auth_middleware(authenticator, PROTECTED_ROUTES))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[STATE] = state
    app.cleanup_ctx.append(_run_pool)
    app.router.add_post("/score", score, name=SCORE_ROUTE)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/swagger.json", swagger)
    app.router.add_get("/v2", v2_server_metadata)
    app.router.add_get("/v2/health/live", v2_live)
    app.router.add_get("/v2/health/ready", v2_ready)
    app.router.add_get("/v2/models/{name}", v2_model_metadata, name=MODEL_ROUTE)
    app.router.add_get("/v2/models/{name}/ready", v2_model_ready)
    app.router.add_post("/v2/models/{name}/infer", v2_infer, name=INFER_ROUTE)
    return app


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    """The metrics port: Prometheus exposition of `registry` at /metrics."""

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def _run_pool(app: web.Application) -> Any:
    state = app[STATE]
    pool = state.pool

    def worker_up(link: WorkerLink) -> None:
        if link.generation > 1:
            state.metrics.worker_restarts.inc()
        if state.collector is None and state.config.collect_dir is not None and pool.model:
            state.collector = DataCollector(
                state.config.collect_dir,
                model_name=pool.model.name,
                sample_rate=state.config.collect_sample_rate,
                registry=state.metrics.registry,
            )
            state.collector.start()
        state.dispatcher.add_worker(link)

    def worker_down(link: WorkerLink, _crashed: bool) -> None:
        state.dispatcher.remove_worker(link)

    pool.on_worker_up = worker_up
    pool.on_worker_down = worker_down
    await pool.start()
    yield
    await state.dispatcher.close()
    await pool.close()
    if state.collector is not None:
        await asyncio.to_thread(state.collector.close)


# --- middleware -------------------------------------------------------------------


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, timing, the requests counter, and JSON bodies for every error."""
    state = request.app[STATE]
    arrival = state.clock()
    request[ARRIVAL] = arrival
    given = request.headers.get("x-request-id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else new_request_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ScoringError as error:
        response = error_response(request, error)
    except web.HTTPException as http_error:  # aiohttp's own: 404 route, 405 method...
        response = error_response(request, _from_http_exception(http_error))
        if "Allow" in http_error.headers:  # a 405 must say which methods are allowed
            response.headers["Allow"] = http_error.headers["Allow"]
    response.headers["x-request-id"] = request_id
    if request.match_info.route.name in SCORING_ROUTES:
        state.metrics.count_request(response.status, state.clock() - arrival)
    return response


def error_response(request: web.Request, error: ScoringError) -> web.Response:
    status = status_of(error)
    if status >= 500 and status != 503:
        log.warning(
            "%s %s -> %d %s: %s",
            request.method, request.path, status, error.code, error.message,
        )  # fmt: skip
    # The V2 routes answer in the Open Inference Protocol's error shape.
    body = v2.v2_error(error.message) if request.path.startswith("/v2/") else error.to_json()
    response = json_response(body, status=status)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = error.www_authenticate
    elif status == 429:
        response.headers["Retry-After"] = "1"
    elif status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _from_http_exception(http_error: web.HTTPException) -> ScoringError:
    if http_error.status == 404:
        return NotFound("no such route")
    if http_error.status == 405:
        return MethodNotAllowed("method not allowed on this route")
    if http_error.status == 413:
        return TooLarge("body is over the size limit")
    return BadRequest(http_error.reason)


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# --- scoring ----------------------------------------------------------------------


async def score(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = _model_or_unavailable(state)
    document = await read_json(request, state.config)
    frame = frame_from_document(document, model.prototype.known)
    predictions = await score_rows(request, model, frame, document)
    return json_response({"predictions": predictions})


async def score_rows(
    request: web.Request, model: ModelInfo, frame: Frame, document: Any
) -> list[Any]:
    """Coerce to the prototype, admit, wait (queue + scoring) within the request
    timeout, offer the sample to data collection, and return the predictions."""
    state = request.app[STATE]
    predictions = await _admit_and_wait(request, coerce(frame, model.prototype))
    if state.collector is not None:
        state.collector.offer(request[REQUEST_ID], document, predictions)
    return predictions


async def _admit_and_wait(request: web.Request, frame: TypedFrame) -> list[Any]:
    state = request.app[STATE]
    timeout_s = state.config.request_timeout_ms / 1000
    deadline = request[ARRIVAL] + timeout_s
    job = state.dispatcher.submit(frame, deadline, expected_workers=state.pool.expected_workers)
    # One timer that cancels the job at its deadline: lighter than asyncio.wait_for's
    # extra future per request. A cancelled queued job leaves the queue (Dispatcher).
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        job.future.cancel()

    timer = asyncio.get_running_loop().call_later(max(0.0, deadline - state.clock()), expire)
    try:
        reply = await job.future
    except asyncio.CancelledError:
        if not expired:
            raise  # the request itself was cancelled
        raise TimedOut(
            f"no answer within the request timeout of {state.config.request_timeout_ms} ms "
            f"(queue wait + scoring)"
        ) from None
    finally:
        timer.cancel()
    return reply.predictions


async def read_json(request: web.Request, config: SidecarConfig) -> Any:
    """The body as parsed JSON: 415 for a non-JSON Content-Type (a missing one is read
    as JSON), 413 over the limit without reading the rest, 400 if not JSON."""
    if "Content-Type" in request.headers and not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"Content-Type {request.content_type!r} is not JSON; send application/json"
        )
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes is over the limit of {limit}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"body is over the limit of {limit} bytes") from None
    return parse_json(body)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _model_or_unavailable(state: SidecarState) -> ModelInfo:
    if state.pool.model is None:
        raise Unavailable("no R worker has connected yet; the model is still loading")
    return state.pool.model


# --- health and metadata ----------------------------------------------------------


async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def _readiness(state: SidecarState) -> str | None:
    """Why the sidecar is not ready, or None if it is."""
    if state.dispatcher.draining:
        return "draining after SIGTERM"
    pool = state.pool
    if not pool.all_connected:
        expected = pool.expected_workers or "?"
        return f"{len(pool.workers)} of {expected} R workers connected"
    return None


async def readyz(request: web.Request) -> web.Response:
    reason = _readiness(request.app[STATE])
    if reason is not None:
        raise Unavailable(f"not ready: {reason}")
    return json_response({"status": "ready"})


async def swagger(request: web.Request) -> web.Response:
    return json_response(openapi.openapi_document(_model_or_unavailable(request.app[STATE])))


async def v2_server_metadata(_: web.Request) -> web.Response:
    return json_response({"name": "rscore", "version": _version(), "extensions": []})


async def v2_live(_: web.Request) -> web.Response:
    return json_response({"live": True})


async def v2_ready(request: web.Request) -> web.Response:
    ready = _readiness(request.app[STATE]) is None
    return json_response({"ready": ready}, status=200 if ready else 503)


def _named_model(request: web.Request) -> ModelInfo:
    model = _model_or_unavailable(request.app[STATE])
    name = request.match_info["name"]
    if name != model.name:
        raise NotFound(f"no model named {name!r}; this server serves {model.name!r}")
    return model


async def v2_model_metadata(request: web.Request) -> web.Response:
    return json_response(v2.model_metadata(_named_model(request)))


async def v2_model_ready(request: web.Request) -> web.Response:
    model = _named_model(request)
    ready = _readiness(request.app[STATE]) is None
    return json_response({"name": model.name, "ready": ready}, status=200 if ready else 503)


async def v2_infer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = _named_model(request)
    if "Inference-Header-Content-Length" in request.headers:  # a binary-extension body
        raise BadRequest(f"binary request body: {v2.BINARY_UNSUPPORTED}")
    document = await read_json(request, state.config)
    frame, inference_id = v2.frame_from_infer(document)
    predictions = await score_rows(request, model, frame, document)
    return json_response(v2.infer_response(model, inference_id, predictions))


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rscore")
    except PackageNotFoundError:
        return "0"
