"""The sidecar over real HTTP with real R workers behind the worker protocol.

Each test starts the aiohttp app on a local port (pytest-aiohttp), a supervisor with
real R worker processes, and talks HTTP to it. Workers are killed for real.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from helpers import assert_same_predictions, eventually
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rscore.r_scorer.pool import WorkerPool
from rscore.r_scorer.supervisor import Supervisor
from rscore.sidecar.admission import Dispatcher
from rscore.sidecar.app import STATE, SidecarConfig, create_app, create_metrics_app

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

# `gate`: R waits until the file exists, so a test decides when a call ends (`sleep` is
# for the calls that are slow on purpose).
SLOW_SCORE_R = """
init <- function(model_dir) list(factor = 2)
score <- function(state, data) {
  if (!is.null(data$gate)) while (!file.exists(data$gate[1])) Sys.sleep(0.01)
  if (!is.null(data$sleep)) Sys.sleep(max(data$sleep, na.rm = TRUE))
  if (!is.null(data$fail) && any(data$fail, na.rm = TRUE)) stop("asked to fail")
  data$x * state$factor
}
"""


@dataclass
class Served:
    client: TestClient
    metrics_client: TestClient
    pool: WorkerPool
    supervisor: Supervisor | None

    @property
    def dispatcher(self) -> Dispatcher:
        """The sidecar's admission: its queue and in-flight counts are the state to wait on."""
        return self.client.server.app[STATE].dispatcher

    async def metrics(self) -> dict[str, float]:
        """Every sample on the metrics port, keyed `name{label="value"}`."""
        text = await (await self.metrics_client.get("/metrics")).text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


ServeFactory = Callable[..., Awaitable[Served]]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def slow_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "slow"
    bundle.mkdir()
    (bundle / "score.R").write_text(SLOW_SCORE_R)
    return bundle


@pytest.fixture
def unbatched_bundle(slow_bundle: Path) -> Path:
    """The slow model marked not batchable: one request per R call."""
    (slow_bundle / "rscore.toml").write_text("[serving]\nbatchable = false\n")
    return slow_bundle


@pytest.fixture
async def serve(aiohttp_client, tmp_path: Path) -> AsyncIterator[ServeFactory]:
    supervisors: list[Supervisor] = []
    pools: list[WorkerPool] = []

    async def start(
        bundle: Path | None, *, workers: int = 1, config: SidecarConfig | None = None
    ) -> Served:
        registry = CollectorRegistry()
        pool = WorkerPool(tmp_path / f"sock{len(pools)}" / "workers.sock")
        pools.append(pool)
        app = create_app(config or SidecarConfig(), pool=pool, registry=registry)
        client = await aiohttp_client(app)
        supervisor = None
        if bundle is not None:
            supervisor = Supervisor(bundle, pool.socket_path, workers=workers)
            supervisors.append(supervisor)
            await asyncio.to_thread(supervisor.start)
            await asyncio.wait_for(pool.wait_for_workers(workers), 60)
        metrics_client = await aiohttp_client(create_metrics_app(registry))
        return Served(client, metrics_client, pool, supervisor)

    yield start
    for pool in pools:  # the sidecar hangs up first: drained workers then exit at once
        await pool.close()
    for supervisor in supervisors:
        await asyncio.to_thread(supervisor.stop)


def rows_of(case_dir: Path) -> list[dict]:
    request = json.loads((case_dir / "request.json").read_text())
    split = request["dataframe_split"]
    return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]


async def post_score(served: Served, body: object, **kwargs) -> tuple[int, dict, Any]:
    response = await served.client.post("/score", json=body, **kwargs)
    return response.status, await response.json(), response.headers


# --- scoring ------------------------------------------------------------------------


async def test_score_in_all_three_formats_gives_rs_answers(
    serve: ServeFactory, test_bundles: Path
) -> None:
    served = await serve(test_bundles / "glm-factors", workers=2)
    rows = rows_of(test_bundles / "glm-factors")
    expected = json.loads((test_bundles / "glm-factors" / "expected.json").read_text())
    columns = list(rows[0])
    bodies = [
        {"dataframe_records": rows},
        {"data": rows},
        {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}},
    ]
    for body in bodies:
        status, answer, headers = await post_score(served, body)
        assert status == 200, answer
        assert headers["Content-Type"].startswith("application/json")
        assert_same_predictions(answer["predictions"], expected)


async def test_concurrent_requests_each_get_their_own_answer(
    serve: ServeFactory, slow_bundle: Path
) -> None:
    served = await serve(slow_bundle, workers=2)
    bodies = [{"data": [{"x": i}, {"x": i + 0.5}]} for i in range(40)]
    answers = await asyncio.gather(*(post_score(served, body) for body in bodies))
    for i, (status, answer, _) in enumerate(answers):
        assert status == 200
        assert answer == {"predictions": [2.0 * i, 2.0 * i + 1.0]}


async def test_request_id_is_echoed_or_generated(serve: ServeFactory, slow_bundle: Path) -> None:
    served = await serve(slow_bundle)
    _, _, headers = await post_score(
        served, {"data": [{"x": 1}]}, headers={"x-request-id": "abc-1"}
    )
    assert headers["x-request-id"] == "abc-1"
    _, _, headers = await post_score(served, {"data": [{"x": 1}]})
    assert len(headers["x-request-id"]) == 32
    bad = "x" * 300  # too long to echo: replaced
    _, _, headers = await post_score(served, {"data": [{"x": 1}]}, headers={"x-request-id": bad})
    assert headers["x-request-id"] != bad
    response = await served.client.get("/healthz", headers={"x-request-id": "probe-7"})
    assert response.headers["x-request-id"] == "probe-7"


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "fragment"),
    [
        (b"{not json", {}, 400, "bad_request", "not valid JSON"),
        (b'{"rows": []}', {}, 400, "bad_request", "dataframe_records"),
        (b'{"data": [{"wool": "A"}]}', {}, 400, "schema_mismatch", "'tension'"),
        (b'{"data": [{"wool": "Z", "tension": "L"}]}', {}, 400, "schema_mismatch", "'Z'"),
        (b'{"data": [{"wool": 1.5, "tension": "L"}]}', {}, 400, "schema_mismatch", "'wool'"),
        (
            b'{"data": [{"wool": "A", "tension": "L"}]}',
            {"Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
            "text/plain",
        ),
    ],
    ids=["not-json", "wrong-shape", "missing-column", "unknown-level", "wrong-type", "415"],
)
async def test_bad_requests_are_named_and_harm_no_one(
    serve: ServeFactory,
    test_bundles: Path,
    body: bytes,
    headers: dict,
    status: int,
    code: str,
    fragment: str,
) -> None:
    served = await serve(test_bundles / "glm-factors")
    headers = {"Content-Type": "application/json", **headers}
    response = await served.client.post("/score", data=body, headers=headers)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    # The next good request is served as if nothing happened.
    ok, answer, _ = await post_score(served, {"data": [{"wool": "A", "tension": "L"}]})
    assert ok == 200
    assert len(answer["predictions"]) == 1


async def test_pythons_nan_is_a_400_that_says_send_null(
    serve: ServeFactory, test_bundles: Path
) -> None:
    served = await serve(test_bundles / "glm-factors")
    hint = "JSON has no NaN or Infinity; send null for a missing value"
    body = json.dumps({"data": [{"wool": "A", "tension": math.nan}]})  # as Python writes it
    response = await served.client.post(
        "/score", data=body, headers={"Content-Type": "application/json", "x-request-id": "n-1"}
    )
    assert response.status == 400
    assert response.headers["x-request-id"] == "n-1"
    assert await response.json() == {
        "error": {
            "code": "bad_request",
            "message": f"body is not valid JSON: NaN at line 1 column 36 — {hint}",
        }
    }
    tensor = {"name": "tension", "shape": [1], "datatype": "FP64", "data": [-math.inf]}
    response = await served.client.post(
        "/v2/models/glm-factors/infer",
        data=json.dumps({"inputs": [tensor]}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 400
    assert await response.json() == {
        "error": f"body is not valid JSON: -Infinity at line 1 column 76 — {hint}"
    }
    ok, answer, _ = await post_score(served, {"data": [{"wool": "A", "tension": None}]})
    assert (ok, answer) == (200, {"predictions": [None]})


EMPTY_BODIES = [
    {"dataframe_records": []},
    {"data": []},
    {"dataframe_split": {"columns": [], "data": []}},
    {"dataframe_split": {"columns": ["wool", "tension"], "data": []}},
]


@pytest.mark.parametrize(
    "body", EMPTY_BODIES, ids=["records", "data", "split-no-columns", "split-columns"]
)
async def test_zero_rows_answer_no_predictions_in_every_format(
    serve: ServeFactory, test_bundles: Path, body: dict
) -> None:
    served = await serve(test_bundles / "glm-factors")
    status, answer, _ = await post_score(served, body)
    assert (status, answer) == (200, {"predictions": []})


@pytest.mark.parametrize("names", [["wool", "tension"], ["wool"]], ids=["every-input", "one-input"])
async def test_zero_length_v2_tensors_follow_the_same_rule(
    serve: ServeFactory, test_bundles: Path, names: list[str]
) -> None:
    served = await serve(test_bundles / "glm-factors")
    zero_length = {
        "inputs": [{"name": name, "shape": [0], "datatype": "BYTES", "data": []} for name in names]
    }
    response = await served.client.post("/v2/models/glm-factors/infer", json=zero_length)
    assert response.status == 200
    assert (await response.json())["outputs"] == [
        {"name": "predictions", "shape": [0], "datatype": "FP64", "data": []}
    ]


async def test_missing_content_type_is_read_as_json(serve: ServeFactory, slow_bundle: Path) -> None:
    served = await serve(slow_bundle)
    response = await served.client.post(
        "/score", data=b'{"data": [{"x": 3}]}', skip_auto_headers={"Content-Type"}
    )
    assert response.status == 200
    assert await response.json() == {"predictions": [6.0]}


async def test_body_over_the_limit_is_413_with_or_without_length(
    serve: ServeFactory, slow_bundle: Path
) -> None:
    served = await serve(slow_bundle, config=SidecarConfig(max_body_bytes=200))
    big = json.dumps({"data": [{"x": i} for i in range(100)]}).encode()
    response = await served.client.post("/score", data=big, headers=JSON)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(big), 64):
            yield big[start : start + 64]

    response = await served.client.post("/score", data=chunks(), headers=JSON)
    assert response.status == 413
    ok, _, _ = await post_score(served, {"data": [{"x": 1}]})
    assert ok == 200


async def test_r_error_is_500_with_rs_message(serve: ServeFactory, slow_bundle: Path) -> None:
    served = await serve(slow_bundle)
    status, answer, _ = await post_score(served, {"data": [{"x": 1, "fail": True}]})
    assert status == 500
    assert answer["error"]["code"] == "model_error"
    assert "asked to fail" in answer["error"]["message"]


async def test_full_queue_is_429_at_once_and_accepted_requests_are_answered(
    serve: ServeFactory, slow_bundle: Path, tmp_path: Path
) -> None:
    served = await serve(slow_bundle, config=SidecarConfig(max_queue=1))
    gate = tmp_path / "gate"
    in_flight = asyncio.create_task(post_score(served, {"data": [{"x": 1, "gate": str(gate)}]}))
    await eventually(lambda: served.dispatcher.inflight == 1, every_s=0.01)
    queued = asyncio.create_task(post_score(served, {"data": [{"x": 2}]}))
    await eventually(lambda: served.dispatcher.queue_depth == 1, every_s=0.01)
    status, answer, headers = await post_score(served, {"data": [{"x": 3}]})
    assert status == 429
    assert answer["error"]["code"] == "overloaded"
    assert headers["Retry-After"] == "1"
    gate.touch()  # the worker finishes: the accepted requests are answered
    assert (await in_flight)[:2] == (200, {"predictions": [2.0]})
    assert (await queued)[:2] == (200, {"predictions": [4.0]})


async def test_timeout_is_504_and_the_stuck_worker_is_replaced(
    serve: ServeFactory, slow_bundle: Path
) -> None:
    served = await serve(slow_bundle, config=SidecarConfig(request_timeout_ms=400))
    (stuck,) = served.pool.workers
    status, answer, _ = await post_score(served, {"data": [{"x": 1, "sleep": 30}]})
    assert status == 504
    assert answer["error"]["code"] == "timeout"
    # The worker's watchdog ends it; the supervisor starts a fresh one.
    await asyncio.wait_for(_worker_replaced(served.pool, stuck.pid), 60)
    status, answer, _ = await post_score(served, {"data": [{"x": 5}]})
    assert (status, answer) == (200, {"predictions": [10.0]})


async def test_a_worker_killed_mid_request_gives_502_and_comes_back(
    serve: ServeFactory, slow_bundle: Path
) -> None:
    served = await serve(slow_bundle)
    (victim,) = served.pool.workers
    request = asyncio.create_task(post_score(served, {"data": [{"x": 1, "sleep": 30}]}))
    await eventually(lambda: victim.busy, every_s=0.01)  # the call is with the worker
    os.kill(victim.pid, signal.SIGKILL)
    status, answer, _ = await request
    assert status == 502
    assert answer["error"]["code"] == "worker_crashed"
    await asyncio.wait_for(_worker_replaced(served.pool, victim.pid), 60)
    ok, answer, _ = await post_score(served, {"data": [{"x": 2}]})
    assert (ok, answer) == (200, {"predictions": [4.0]})
    assert (await served.metrics())["rscore_worker_restarts_total"] == 1


async def _worker_replaced(pool: WorkerPool, old_pid: int) -> None:
    while not pool.workers or any(link.pid == old_pid for link in pool.workers):
        await asyncio.sleep(0.05)


# --- health, readiness, metadata -------------------------------------------------------


async def test_not_ready_until_the_workers_connect(serve: ServeFactory, slow_bundle: Path) -> None:
    served = await serve(None)  # no workers yet
    assert (await served.client.get("/healthz")).status == 200
    assert (await served.client.get("/v2/health/live")).status == 200
    response = await served.client.get("/readyz")
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert (await served.client.get("/v2/health/ready")).status == 503
    status, answer, _ = await post_score(served, {"data": [{"x": 1}]})
    assert status == 503
    assert answer["error"]["code"] == "unavailable"
    supervisor = Supervisor(slow_bundle, served.pool.socket_path, workers=2)
    try:
        await asyncio.to_thread(supervisor.start)
        await asyncio.wait_for(served.pool.wait_for_workers(2), 60)
        assert (await served.client.get("/readyz")).status == 200
        assert await (await served.client.get("/v2/health/ready")).json() == {"ready": True}
    finally:
        await served.pool.close()
        await asyncio.to_thread(supervisor.stop)


async def test_v2_inference_protocol(serve: ServeFactory, test_bundles: Path) -> None:
    served = await serve(test_bundles / "glm-factors")
    expected = json.loads((test_bundles / "glm-factors" / "expected.json").read_text())
    rows = rows_of(test_bundles / "glm-factors")
    metadata = await (await served.client.get("/v2/models/glm-factors")).json()
    assert metadata["name"] == "glm-factors"
    assert [i["name"] for i in metadata["inputs"]] == ["wool", "tension"]
    ready = await served.client.get("/v2/models/glm-factors/ready")
    assert ready.status == 200
    body = {
        "id": "req-9",
        "inputs": [
            {"name": c, "shape": [len(rows)], "datatype": "BYTES", "data": [r[c] for r in rows]}
            for c in ("wool", "tension")
        ],
    }
    response = await served.client.post("/v2/models/glm-factors/infer", json=body)
    assert response.status == 200
    answer = await response.json()
    assert answer["model_name"] == "glm-factors"
    assert answer["id"] == "req-9"
    (output,) = answer["outputs"]
    assert output["name"] == "predictions"
    assert output["shape"] == [len(rows)]
    assert output["datatype"] == "FP64"
    assert_same_predictions(output["data"], expected)


async def test_v2_errors_use_the_v2_error_shape(serve: ServeFactory, test_bundles: Path) -> None:
    served = await serve(test_bundles / "glm-factors")
    response = await served.client.get("/v2/models/other")
    assert response.status == 404
    assert "other" in (await response.json())["error"]
    response = await served.client.post("/v2/models/glm-factors/infer", json={"inputs": []})
    assert response.status == 400
    assert isinstance((await response.json())["error"], str)
    bad_level = {"inputs": [
        {"name": "wool", "shape": [1], "datatype": "BYTES", "data": ["Q"]},
        {"name": "tension", "shape": [1], "datatype": "BYTES", "data": ["L"]},
    ]}  # fmt: skip
    response = await served.client.post("/v2/models/glm-factors/infer", json=bad_level)
    assert response.status == 400
    assert "'Q'" in (await response.json())["error"]


async def test_swagger_describes_the_models_inputs(serve: ServeFactory, test_bundles: Path) -> None:
    served = await serve(test_bundles / "glm-factors")
    response = await served.client.get("/swagger.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.")
    assert "/score" in document["paths"]
    assert "'wool'" not in json.dumps(document)  # levels appear as an enum, not as text
    assert ["A", "B", None] in _all_enums(document)  # null allowed: NA


def _all_enums(node: object) -> list:
    found = []
    if isinstance(node, dict):
        if "enum" in node:
            found.append(node["enum"])
        for value in node.values():
            found.extend(_all_enums(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_all_enums(value))
    return found


async def test_unknown_route_and_method_get_json_errors(
    serve: ServeFactory, slow_bundle: Path
) -> None:
    served = await serve(slow_bundle)
    response = await served.client.get("/nothing-here")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await served.client.get("/score")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"


# --- metrics ----------------------------------------------------------------------------


async def test_metrics_follow_the_contract(serve: ServeFactory, slow_bundle: Path) -> None:
    served = await serve(slow_bundle, workers=2)
    await asyncio.gather(
        *(post_score(served, {"data": [{"x": 1, "sleep": 0.2}]}) for _ in range(4))
    )
    await post_score(served, {"data": [{"x": 1, "fail": True}]})
    await post_score(served, {"data": [{"x": 1}, {"x": 2}, {"x": 3}]})
    samples = await served.metrics()
    assert samples['rscore_requests_total{code="200"}'] == 5
    assert samples['rscore_requests_total{code="500"}'] == 1
    assert samples["rscore_request_duration_seconds_count"] == 6
    # One sample per R call that answered: queued requests may have shared a call.
    r_calls = samples["rscore_batch_rows_count"]
    assert 3 <= r_calls <= 5
    assert samples["rscore_scoring_duration_seconds_count"] == r_calls
    assert samples["rscore_batch_rows_sum"] == 4 + 3
    assert samples["rscore_queue_depth"] == 0
    assert samples["rscore_inflight_requests"] == 0
    assert samples["rscore_workers"] == 2
    assert samples["rscore_worker_restarts_total"] == 0
    # Four requests of >= 0.2 s each were queued or in flight: at least 0.8 request-seconds.
    assert samples["rscore_concurrency_seconds_total"] >= 0.8


async def test_data_collection_writes_sampled_requests(
    serve: ServeFactory, slow_bundle: Path, tmp_path: Path
) -> None:
    collect = tmp_path / "collected"
    config = SidecarConfig(collect_dir=collect, collect_sample_rate=1.0)
    served = await serve(slow_bundle, config=config)
    for x in range(3):
        await post_score(served, {"data": [{"x": x}]}, headers={"x-request-id": f"r{x}"})
    records = await asyncio.wait_for(_collected(collect, 3), 30)
    assert sorted(r["request_id"] for r in records) == ["r0", "r1", "r2"]
    by_id = {r["request_id"]: r for r in records}
    assert by_id["r2"]["inputs"] == {"data": [{"x": 2}]}
    assert by_id["r2"]["outputs"] == [4.0]


async def _collected(folder: Path, count: int) -> list[dict]:
    while True:
        records = [
            json.loads(line)
            for path in folder.rglob("*.jsonl")
            for line in path.read_text().splitlines()
            if line
        ]
        if len(records) >= count:
            return records
        await asyncio.sleep(0.05)


async def test_slow_model_under_load_shows_workers_in_flight_and_the_queue_bound(
    serve: ServeFactory, unbatched_bundle: Path
) -> None:
    # 2 workers, 2 queued per worker: 2 in flight + 4 waiting; the 7th is refused.
    served = await serve(unbatched_bundle, workers=2, config=SidecarConfig(max_queue=2))
    slow = [{"data": [{"x": i, "sleep": 1.5}]} for i in range(6)]
    accepted = [asyncio.create_task(post_score(served, body)) for body in slow]
    samples = await _poll_metrics(served, lambda s: s["rscore_queue_depth"] == 4)
    assert samples["rscore_inflight_requests"] == 2  # exactly one per worker
    status, answer, headers = await post_score(served, {"data": [{"x": 99}]})
    assert (status, answer["error"]["code"], headers["Retry-After"]) == (429, "overloaded", "1")
    results = await asyncio.gather(*accepted)
    assert [(s, a) for s, a, _ in results] == [(200, {"predictions": [2.0 * i]}) for i in range(6)]
    samples = await served.metrics()
    assert samples['rscore_requests_total{code="200"}'] == 6
    assert samples['rscore_requests_total{code="429"}'] == 1
    assert samples["rscore_queue_depth"] == 0
    assert samples["rscore_inflight_requests"] == 0
    # Six requests of 1.5 s each, queued or running: at least 9 request-seconds.
    assert samples["rscore_concurrency_seconds_total"] >= 9.0


async def _poll_metrics(
    served: Served, condition: Callable[[dict[str, float]], bool], timeout_s: float = 20
) -> dict[str, float]:
    async def poll() -> dict[str, float]:
        while True:
            samples = await served.metrics()
            if condition(samples):
                return samples
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), timeout_s)


# --- dynamic batching ----------------------------------------------------------------

# Each prediction tells how many rows its R call had: x + 1000 * nrow(data).
BATCH_SIZE_SCORE_R = """
init <- function(model_dir) list()
score <- function(state, data) {
  if (!is.null(data$gate)) while (!file.exists(data$gate[1])) Sys.sleep(0.01)
  Sys.sleep(max(data$sleep))
  if (any(data$fail)) stop("a row asked to fail")
  data$x + 1000 * nrow(data)
}
"""


def batch_bundle(tmp_path: Path, *, batchable: bool) -> Path:
    bundle = tmp_path / ("batched" if batchable else "unbatched")
    bundle.mkdir()
    (bundle / "score.R").write_text(BATCH_SIZE_SCORE_R)
    (bundle / "rscore.toml").write_text(f"[serving]\nbatchable = {str(batchable).lower()}\n")
    return bundle


def rows(x: float, *, n: int = 1, fail: bool = False, sleep: float = 0.3) -> dict:
    return {"data": [{"x": x + i, "fail": fail, "sleep": sleep} for i in range(n)]}


async def behind_a_busy_worker(
    served: Served, bodies: list[dict]
) -> tuple[tuple[int, dict, Any], list[asyncio.Task]]:
    """Occupy the only worker, send `bodies` while it is busy (so they wait and may
    merge), and return the first answer and the waiting requests' tasks, in order.

    The first call waits in R on a gate file, opened once every body is queued."""
    gate = served.pool.socket_path.parent / "gate"
    busy = {"data": [{**rows(0, sleep=0)["data"][0], "gate": str(gate)}]}
    first = asyncio.create_task(post_score(served, busy))
    await eventually(lambda: served.dispatcher.inflight == 1, every_s=0.01)
    waiting = []
    for body in bodies:  # one at a time: they queue in this order
        waiting.append(asyncio.create_task(post_score(served, body)))
        await eventually(lambda: served.dispatcher.queue_depth == len(waiting), every_s=0.01)
    gate.touch()
    return await first, waiting


async def test_waiting_requests_share_one_r_call_in_order(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(batch_bundle(tmp_path, batchable=True))
    first, waiting = await behind_a_busy_worker(served, [rows(10 * k, n=k) for k in (1, 2, 3)])
    assert first[:2] == (200, {"predictions": [1000.0]})
    merged_rows = 1 + 2 + 3
    for k, task in zip((1, 2, 3), waiting, strict=True):
        status, answer, _ = await task
        assert status == 200
        assert answer["predictions"] == [10 * k + i + 1000 * merged_rows for i in range(k)]
    samples = await served.metrics()
    assert samples["rscore_batch_rows_count"] == 2  # two R calls for four requests
    assert samples["rscore_batch_rows_sum"] == 1 + merged_rows


async def test_batches_respect_max_batch_rows(serve: ServeFactory, tmp_path: Path) -> None:
    config = SidecarConfig(max_batch_rows=4)
    served = await serve(batch_bundle(tmp_path, batchable=True), config=config)
    _, waiting = await behind_a_busy_worker(served, [rows(10 * k, n=2) for k in (1, 2, 3)])
    sizes = [(await task)[1]["predictions"][0] // 1000 for task in waiting]
    assert sizes == [4, 4, 2]  # 2 + 2 rows fit in 4; the third request waits for the next


async def test_one_requests_bad_rows_fail_only_that_request(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(batch_bundle(tmp_path, batchable=True))
    _, (good_before, bad, good_after) = await behind_a_busy_worker(
        served, [rows(10), rows(20, fail=True), rows(30)]
    )
    status, answer, _ = await bad
    assert (status, answer["error"]["code"]) == (500, "model_error")
    assert "a row asked to fail" in answer["error"]["message"]
    # The merged call failed; each member was scored alone and got its own answer.
    assert (await good_before)[:2] == (200, {"predictions": [10.0 + 1000]})
    assert (await good_after)[:2] == (200, {"predictions": [30.0 + 1000]})


async def test_a_bundle_marked_not_batchable_never_merges(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(batch_bundle(tmp_path, batchable=False))
    _, waiting = await behind_a_busy_worker(served, [rows(10 * k, sleep=0.05) for k in (1, 2)])
    for k, task in zip((1, 2), waiting, strict=True):
        assert (await task)[:2] == (200, {"predictions": [10.0 * k + 1000]})


async def test_a_worker_killed_during_a_merged_call_fails_every_member_with_502(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(batch_bundle(tmp_path, batchable=True))
    (victim,) = served.pool.workers
    # The two waiting requests then share one (long) R call.
    first, merged = await behind_a_busy_worker(served, [rows(10 * k, sleep=30) for k in (1, 2)])
    assert first[0] == 200
    # both in one call, sent to the worker
    await eventually(lambda: served.dispatcher.inflight == 2 and victim.busy, every_s=0.01)
    os.kill(victim.pid, signal.SIGKILL)
    for task in merged:
        status, answer, _ = await asyncio.wait_for(task, 10)
        assert (status, answer["error"]["code"]) == (502, "worker_crashed")


async def test_records_with_a_key_each_of_their_own_score_the_known_columns(
    serve: ServeFactory, test_bundles: Path
) -> None:
    """10,000 records, each with a key of its own besides the model's inputs (the body
    that used to build 10,001 columns of 10,000 entries): answered from the two inputs,
    and a body without them is still a missing column."""
    served = await serve(test_bundles / "glm-factors")
    records = [{"wool": "A", "tension": "L", f"junk{i}": i} for i in range(10_000)]
    status, answer, _ = await post_score(served, {"dataframe_records": records})
    assert status == 200
    assert len(answer["predictions"]) == 10_000
    assert len(set(answer["predictions"])) == 1  # the same inputs in every row
    junk_only = [{f"junk{i}": i} for i in range(10_000)]
    status, answer, _ = await post_score(served, {"data": junk_only})
    assert status == 400
    assert answer["error"]["code"] == "schema_mismatch"
    assert "missing columns" in answer["error"]["message"]
