"""Large requests over real HTTP with real R workers: a `dataframe_split` body of numbers
read straight into columns, split over idle workers, and answered with the workers'
JSON text joined, gives exactly the answer of the general path (the same rows as
records, whole on one worker); a bad large body keeps the general path's error; a
worker killed while it scores a chunk is a 502 for that request, and only that one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from helpers import eventually
from prometheus_client.parser import text_string_to_metric_families
from test_fanout_workers import HOLD_SCORE_R
from test_sidecar import ServeFactory, _collected, serve  # noqa: F401  (fixtures)

from rscore.r_scorer.protocol import JSON_REPLY_ROWS
from rscore.sidecar.app import SidecarConfig

pytestmark = pytest.mark.real_r

ROWS = 3 * JSON_REPLY_ROWS  # each of two chunks answers as JSON text
COLUMNS = {"mtcars-lm": ("wt", "hp", "qsec"), "iris-rf": ("Sepal.Length", "Sepal.Width",
           "Petal.Length", "Petal.Width")}  # fmt: skip
SPLIT = SidecarConfig(min_chunk_rows=JSON_REPLY_ROWS, fanout_quiet_ms=0)


def table(bundle: str) -> list[list[Any]]:
    rng = np.random.default_rng(20)
    values = np.round(rng.uniform(1.0, 6.0, (ROWS, len(COLUMNS[bundle]))), 2).tolist()
    values[17][1] = None  # NA in: NA (null) out, or R's own answer for it
    return values


def split_body(bundle: str, rows: list[list[Any]]) -> bytes:
    return orjson.dumps({"dataframe_split": {"columns": COLUMNS[bundle], "data": rows}})


def records_body(bundle: str, rows: list[list[Any]]) -> bytes:
    names = COLUMNS[bundle]
    return orjson.dumps({"dataframe_records": [dict(zip(names, row, strict=True)) for row in rows]})


async def post(served: Any, body: bytes) -> tuple[int, Any]:
    response = await served.client.post(
        "/score", data=body, headers={"Content-Type": "application/json"}
    )
    return response.status, await response.json()


@pytest.mark.parametrize("bundle", ["mtcars-lm", "iris-rf"])
async def test_a_big_numeric_body_answers_exactly_as_the_general_path(
    serve: ServeFactory,  # noqa: F811
    example_bundles: Path,
    bundle: str,
) -> None:
    served = await serve(example_bundles / bundle, workers=2, config=SPLIT)
    rows = table(bundle)
    fast_status, fast = await post(served, split_body(bundle, rows))
    general_status, general = await post(served, records_body(bundle, rows))
    assert (fast_status, general_status) == (200, 200)
    assert len(fast["predictions"]) == ROWS
    assert fast == general  # exactly: the same values, in the same order


async def test_a_big_numeric_body_is_read_by_the_fast_path(
    serve: ServeFactory,  # noqa: F811
    example_bundles: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/score reads a large all-number body with numeric_split (not the general path),
    and without the data-collection document when nothing collects."""
    from rscore.sidecar import app

    reads: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        reads.append((app_numeric_split(*args, **kwargs), kwargs))
        return reads[-1][0]

    app_numeric_split = app.numeric_split
    monkeypatch.setattr(app, "numeric_split", spy)
    served = await serve(example_bundles / "mtcars-lm", workers=2, config=SPLIT)
    status, answer = await post(served, split_body("mtcars-lm", table("mtcars-lm")))
    assert status == 200
    assert len(answer["predictions"]) == ROWS
    ((read, kwargs),) = reads
    assert read is not None
    assert read.frame.nrows == ROWS
    assert kwargs["keep_document"] is False
    assert read.document is None


async def test_the_big_request_is_split_over_the_idle_workers(
    serve: ServeFactory,  # noqa: F811
    example_bundles: Path,
) -> None:
    served = await serve(example_bundles / "mtcars-lm", workers=2, config=SPLIT)
    status, answer = await post(served, split_body("mtcars-lm", table("mtcars-lm")))
    assert status == 200
    assert len(answer["predictions"]) == ROWS
    page = await (await served.metrics_client.get("/metrics")).text()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }
    assert samples["rscore_batch_rows_count"] == 2  # two R calls: one chunk each
    assert samples["rscore_batch_rows_sum"] == ROWS


@pytest.mark.parametrize(
    ("bad", "status", "message"),
    [
        (b"+1.5", 400, "not valid JSON"),
        (b"1.5 2", 400, "not valid JSON"),
        (b'"1.5"', 400, "row 2000 has string"),
        (b"true", 400, "row 2000 has boolean"),
    ],
    ids=["plus", "no-comma", "string", "boolean"],
)
async def test_a_bad_big_body_keeps_the_general_paths_error(
    serve: ServeFactory,  # noqa: F811
    example_bundles: Path,
    bad: bytes,
    status: int,
    message: str,
) -> None:
    served = await serve(example_bundles / "mtcars-lm", workers=1)
    rows = [[2.5, 110.0, 16.5] for _ in range(ROWS)]
    rows[2000][1] = 123456.0
    body = split_body("mtcars-lm", rows).replace(b"123456.0", bad)
    got_status, answer = await post(served, body)
    assert got_status == status
    assert message in answer["error"]["message"]


@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "pretty-printed"])
async def test_a_big_body_is_collected_as_sent(
    serve: ServeFactory,  # noqa: F811
    example_bundles: Path,
    tmp_path: Path,
    indent: int | None,
) -> None:
    """One record, on one line of JSON Lines, however the body was laid out."""
    collect = tmp_path / "collected"
    config = SidecarConfig(collect_dir=collect, collect_sample_rate=1.0)
    served = await serve(example_bundles / "mtcars-lm", workers=1, config=config)
    body = split_body("mtcars-lm", table("mtcars-lm"))
    if indent is not None:
        body = json.dumps(json.loads(body), indent=indent).encode()
    status, answer = await post(served, body)
    assert status == 200
    (record,) = await asyncio.wait_for(_collected(collect, 1), 30)
    assert record["inputs"] == json.loads(body)
    assert record["outputs"] == answer["predictions"]


async def test_a_worker_killed_mid_chunk_is_a_502_for_that_request_only(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    bundle = tmp_path / "held"
    bundle.mkdir()
    (bundle / "score.R").write_text(HOLD_SCORE_R % {"release": json.dumps(str(release))})
    config = SidecarConfig(min_chunk_rows=5, fanout_quiet_ms=0, fanout_saving_ms=0)
    served = await serve(bundle, workers=2, config=config)
    first, second = served.pool.workers
    big = {"dataframe_records": [{"x": 1, "hold": 1}] * 10}
    other = {"dataframe_records": [{"x": 1, "hold": 0}] * 3}
    try:
        big_answer = asyncio.create_task(post(served, orjson.dumps(big)))
        await eventually(lambda: first.busy and second.busy, every_s=0.01)  # split over both
        other_answer = asyncio.create_task(post(served, orjson.dumps(other)))
        await eventually(lambda: served.dispatcher.queue_depth == 1, every_s=0.01)
        os.kill(first.pid, signal.SIGKILL)
        status, answer = await asyncio.wait_for(big_answer, 60)
        assert status == 502
        assert answer["error"]["code"] == "worker_crashed"
        # The request waiting meanwhile is answered (by the restarted worker).
        assert await asyncio.wait_for(other_answer, 60) == (200, {"predictions": [3, 3, 3]})
    finally:
        release.touch()  # the surviving worker's chunk ends; its answer goes nowhere
    assert await post(served, orjson.dumps(other)) == (200, {"predictions": [3, 3, 3]})
    assert served.supervisor is not None
    assert served.supervisor.stats.restarts == 1
