"""The sidecar's aiohttp application: routes, middleware and thin handlers.

`create_app()` builds the public app (scoring, V2, health, OpenAPI) around an injected
worker pool and Prometheus registry; `create_metrics_app()` the metrics port's app.
Handlers parse, call the pure conversions and the dispatcher, and turn a ScoringError
into a status only here, at the edge. Middleware, outermost first: request context
(request id, timing, counting, error bodies), then (later) auth, so a rejected
request is still counted but never takes a worker slot. A scoring request's body is
held against the byte budget (`rscore.sidecar.body_budget`) from before it is read until it is
answered; a large one is parsed and coerced on the parse thread, a small one inline
(a large `dataframe_split` of numbers read straight into columns there:
`rscore.r_scorer.numeric_split`). A long answer is the worker's JSON text, written into the
response unparsed.

Never imports rpy2 or starts R; never blocks the event loop for longer than a small
body's parse or one orjson call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from rscore.r_scorer.errors import BadRequest, ScoringError, TooLarge, quoted
from rscore.r_scorer.liveness import LivenessBounds, liveness_problem
from rscore.r_scorer.numeric_split import NumericSplit, numeric_split
from rscore.r_scorer.payload import (
    Frame,
    RequestLimits,
    frame_from_document,
    parse_json,
)
from rscore.r_scorer.pool import ModelInfo, WorkerLink, WorkerPool
from rscore.r_scorer.protocol import Predictions, prediction_json, prediction_list
from rscore.r_scorer.prototype import TypedFrame, coerce
from rscore.sidecar import openapi, v2
from rscore.sidecar.admission import Dispatcher
from rscore.sidecar.auth import Authenticator, Unauthorized, auth_middleware
from rscore.sidecar.body_budget import BodyBudget, BodyHold
from rscore.sidecar.client_deadlines import RefusedBody
from rscore.sidecar.collector import DataCollector
from rscore.sidecar.config import SidecarConfig
from rscore.sidecar.errors import (
    MethodNotAllowed,
    NotFound,
    Overloaded,
    TimedOut,
    Unavailable,
    UnsupportedMediaType,
    status_of,
)
from rscore.sidecar.heap import HeapTrimmer, malloc_trim
from rscore.sidecar.http_hardening import harden_parser_errors, name_the_server
from rscore.sidecar.metrics import SidecarMetrics
from rscore.sidecar.metrics_stream import (
    NAMES_PARAM,
    STREAM_PATH,
    MetricStreams,
    metrics_page,
    serve_stream,
)

log = logging.getLogger("rscore.sidecar")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # what we echo back; else a fresh one
_ID_PREFIX = secrets.token_hex(8)  # per process, so ids are unique across pods
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, unique per process and across processes
    (a random prefix and a counter: cheaper than a uuid4 per request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass
class SidecarState:
    """Everything the handlers share, held in the app under one typed key."""

    config: SidecarConfig
    pool: WorkerPool
    dispatcher: Dispatcher
    metrics: SidecarMetrics
    clock: Callable[[], float]
    collector: DataCollector | None = None
    authenticator: Authenticator | None = None  # its reload problems make /readyz 503
    body_budget: BodyBudget = field(init=False)
    limits: RequestLimits = field(init=False)
    # Large bodies are parsed here, one at a time: orjson and the conversions hold the
    # GIL, so a second thread would not parse faster, only hold a second parsed document.
    parse_executor: concurrent.futures.ThreadPoolExecutor = field(init=False)
    heap_trimmer: HeapTrimmer = field(init=False)  # on the parse thread, after big bodies

    def __post_init__(self) -> None:
        self.body_budget = BodyBudget(self.config.max_body_bytes_in_flight)
        self.limits = RequestLimits(self.config.max_rows, self.config.max_columns)
        self.parse_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rscore-parse"
        )
        self.heap_trimmer = HeapTrimmer(
            self.parse_executor, malloc_trim(), parsed_inline_up_to=INLINE_PARSE_BYTES
        )


STATE = web.AppKey("rscore_state", SidecarState)
SCORE_ROUTE = "score"
INFER_ROUTE = "v2-infer"
MODEL_ROUTE = "v2-model"
SCORING_ROUTES = frozenset({SCORE_ROUTE, INFER_ROUTE})  # counted in the metrics; probes not
PROTECTED_ROUTES = SCORING_ROUTES | {MODEL_ROUTE}  # health, readiness, OpenAPI stay open
ARRIVAL = web.RequestKey("rscore_arrival", float)
REQUEST_ID = web.RequestKey("rscore_request_id", str)
BODY_HOLD = web.RequestKey("rscore_body_hold", BodyHold)


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
        min_chunk_rows=config.min_chunk_rows,
        quiet_s=config.fanout_quiet_ms / 1000,
        min_saving_s=config.fanout_saving_ms / 1000,
        on_r_call=metrics.r_call,
        clock=clock,
    )
    metrics.watch(dispatcher, pool, clock)
    state = SidecarState(config, pool, dispatcher, metrics, clock, authenticator=authenticator)
    middlewares: list[Middleware] = [request_context]
    if authenticator is not None and authenticator.config.mode != "none":
        middlewares.append(auth_middleware(authenticator, PROTECTED_ROUTES))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    name_the_server(app)
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
    """The metrics port: Prometheus exposition of `registry` at /metrics (restricted
    by `name[]` when given), and the same readings streamed at /metrics/stream
    (`rscore.sidecar.metrics_stream`)."""
    streams = MetricStreams()

    def render(names: Sequence[str]) -> bytes:
        return metrics_page(registry, names)

    async def metrics(request: web.Request) -> web.Response:
        names = [name for name in request.query.getall(NAMES_PARAM, []) if name]
        response = web.Response(body=render(names))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def stream(request: web.Request) -> web.StreamResponse:
        return await serve_stream(request, streams, render)

    app = web.Application()
    name_the_server(app)
    app.on_shutdown.append(streams.close_all)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(STREAM_PATH, stream)
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
                max_bytes=state.config.collect_max_bytes,
                max_record_bytes=state.config.collect_max_record_bytes,
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
    state.parse_executor.shutdown(wait=False, cancel_futures=True)
    if state.collector is not None:
        await asyncio.to_thread(state.collector.close)


# --- middleware -------------------------------------------------------------------


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, timing, the requests counter, JSON bodies for every error, and the
    body's bytes given back to the budget once answered, whatever the path."""
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
    finally:
        hold = request.get(BODY_HOLD)
        if hold is not None:
            state.heap_trimmer.answered(hold.release())
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
    if isinstance(http_error, RefusedBody):  # a body cut short: client deadline, shutdown
        return http_error.error
    if http_error.status == 404:
        return NotFound("no such route")
    if http_error.status == 405:
        return MethodNotAllowed("method not allowed on this route")
    if http_error.status == 413:
        return TooLarge("body is over the size limit")
    return BadRequest(http_error.reason)


class WrittenOnce(web.Response):
    """A response that lets go of its body once written. aiohttp keeps a keep-alive
    connection's last response until its next request: a large answer (MBs) would
    stay resident, on every such connection, as long as the client keeps it open."""

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self.body = None


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return WrittenOnce(body=orjson.dumps(body), status=status, content_type="application/json")


# --- scoring ----------------------------------------------------------------------


# A body up to this size is parsed on the event loop: at ~30 ns per byte (parse, build,
# coerce; measured) that is at most ~1 ms, and a 1-row request pays no thread hop. A
# larger one goes to the parse thread, so /healthz and small requests are not held up
# for the whole of it (a 9 MB body: 330 ms on the loop; in the thread, only orjson's own
# ~80 ms keeps the GIL: docs/security.md).
INLINE_PARSE_BYTES = 32 * 1024

# What turns a parsed document into a Frame (and, for V2, the request's id).
ToFrame = Callable[[Any], tuple[Frame, str | None]]
# What reads a large body straight into its coerced frame, or None: the general path.
FastParse = Callable[[bytes | bytearray], NumericSplit | None]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is 3x slower
class ScoringInput:
    """A request body parsed and coerced to the prototype: what admission takes."""

    frame: TypedFrame
    document: Any  # for data collection; None when nothing collects
    inference_id: str | None = None  # V2's `id`


async def score(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = _model_or_unavailable(state)
    known, limits = model.prototype.known, state.limits

    def to_frame(document: Any) -> tuple[Frame, str | None]:
        return frame_from_document(document, known, limits), None

    scoring_input = await read_input(request, model, to_frame, numbers_first=True)
    predictions = await score_rows(request, scoring_input)
    # A long answer is the worker's JSON text, written into the response unparsed.
    return json_response({"predictions": prediction_json(predictions)})


async def score_rows(request: web.Request, scoring_input: ScoringInput) -> Predictions:
    """Admit, wait (queue + scoring) within the request timeout, offer the sample to
    data collection, and return the predictions."""
    state = request.app[STATE]
    predictions = await _admit_and_wait(request, scoring_input.frame)
    if state.collector is not None and scoring_input.document is not None:
        outputs = prediction_json(predictions)
        state.collector.offer(request[REQUEST_ID], scoring_input.document, outputs)
    return predictions


async def _admit_and_wait(request: web.Request, frame: TypedFrame) -> Predictions:
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


async def read_input(
    request: web.Request, model: ModelInfo, to_frame: ToFrame, *, numbers_first: bool = False
) -> ScoringInput:
    """Read the body (within the byte budget), parse it, build its frame and coerce it
    to the prototype: on the event loop if small, on the parse thread if not. There,
    with `numbers_first` (`/score`), a `dataframe_split` body of numbers is read straight
    into columns (`rscore.r_scorer.numeric_split`), and any other goes the general way."""
    state = request.app[STATE]
    body = await read_body(request, state)
    keep_document = state.collector is not None
    if len(body) <= INLINE_PARSE_BYTES:
        return _parse_input(body, to_frame, model, keep_document)
    fast = None
    if numbers_first:
        fast = functools.partial(
            numeric_split,
            prototype=model.prototype,
            limits=state.limits,
            keep_document=keep_document,
        )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        state.parse_executor, _parse_input, body, to_frame, model, keep_document, fast
    )


def _parse_input(
    body: bytes | bytearray,
    to_frame: ToFrame,
    model: ModelInfo,
    keep_document: bool,
    fast: FastParse | None = None,
) -> ScoringInput:
    if fast is not None:
        read = fast(body)
        if read is not None:
            return ScoringInput(read.frame, read.document)
    document = parse_json(body)
    frame, inference_id = to_frame(document)
    typed = coerce(frame, model.prototype)
    return ScoringInput(typed, document if keep_document else None, inference_id)


async def read_body(request: web.Request, state: SidecarState) -> bytearray:
    """The body, its bytes held against the budget until the request is answered
    (`request_context` gives them back). 415 for a non-JSON Content-Type (a missing one
    is read as JSON); 413 over --max-body-bytes and 429 when the budget has no room:
    before reading, when the Content-Length says so, else as the chunks arrive."""
    if "Content-Type" in request.headers and not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"Content-Type {quoted(request.content_type)} is not JSON; send application/json"
        )
    limit = state.config.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(f"body of {length} bytes is over the limit of {limit} (--max-body-bytes)")
    hold = BodyHold(state.body_budget)
    request[BODY_HOLD] = hold
    if length is not None and not hold.take(length):
        raise _over_budget(state.body_budget, f"a body of {length:,} bytes")
    body = bytearray()  # orjson reads it as is: no copy into bytes
    while chunk := await request.content.readany():
        if len(body) + len(chunk) > limit:
            raise TooLarge(f"body is over the limit of {limit} bytes (--max-body-bytes)")
        if length is None and not hold.take(len(chunk)):
            raise _over_budget(
                state.body_budget, f"a body of {len(body) + len(chunk):,} bytes so far"
            )
        body += chunk
    return body


def _over_budget(budget: BodyBudget, this_body: str) -> Overloaded:
    return Overloaded(
        f"request bodies being read or scored hold {budget.held:,} of the {budget.limit:,} "
        f"bytes allowed at once (--max-body-bytes-in-flight); {this_body} must wait: "
        "retry later"
    )


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _model_or_unavailable(state: SidecarState) -> ModelInfo:
    if state.pool.model is None:
        raise Unavailable("no R worker has connected yet; the model is still loading")
    return state.pool.model


# --- health and metadata ----------------------------------------------------------


def _liveness(state: SidecarState) -> str | None:
    """Why the process is not live (no worker for longer than the bound), or None."""
    pool = state.pool
    bounds = LivenessBounds(no_worker_grace_s=state.config.no_worker_grace_s)
    return liveness_problem(
        pool.clock(), worker_seen_at=pool.worker_seen_at, heartbeat_at=None, bounds=bounds
    )


async def healthz(request: web.Request) -> web.Response:
    problem = _liveness(request.app[STATE])
    if problem is not None:
        raise Unavailable(f"not live: {problem}")
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


def _warnings(state: SidecarState) -> list[str]:
    """What is wrong but does not stop this pod serving. A credential file that failed
    to reload leaves the last good credentials in effect: the pod still serves, so it
    stays ready (a bad edit of a Secret every replica mounts must not empty the
    Service), and says what failed here, in its log and in a metric."""
    if state.authenticator is not None and state.authenticator.problem is not None:
        return [f"credential reload failed: {state.authenticator.problem}"]
    return []


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reason = _readiness(state)
    if reason is not None:
        raise Unavailable(f"not ready: {reason}")
    warnings = _warnings(state)
    return json_response({"status": "ready", **({"warnings": warnings} if warnings else {})})


async def swagger(request: web.Request) -> web.Response:
    return json_response(openapi.openapi_document(_model_or_unavailable(request.app[STATE])))


async def v2_server_metadata(_: web.Request) -> web.Response:
    return json_response({"name": "rscore", "version": _version(), "extensions": []})


async def v2_live(request: web.Request) -> web.Response:
    live = _liveness(request.app[STATE]) is None
    return json_response({"live": live}, status=200 if live else 503)


async def v2_ready(request: web.Request) -> web.Response:
    ready = _readiness(request.app[STATE]) is None
    return json_response({"ready": ready}, status=200 if ready else 503)


def _named_model(request: web.Request) -> ModelInfo:
    model = _model_or_unavailable(request.app[STATE])
    name = request.match_info["name"]
    if name != model.name:
        raise NotFound(f"no model named {quoted(name)}; this server serves {model.name!r}")
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
    to_frame = functools.partial(v2.frame_from_infer, limits=state.limits)
    scoring_input = await read_input(request, model, to_frame)
    predictions = prediction_list(await score_rows(request, scoring_input))
    return json_response(v2.infer_response(model, scoring_input.inference_id, predictions))


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rscore")
    except PackageNotFoundError:
        return "0"
