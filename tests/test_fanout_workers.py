"""Fan-out with real R workers: a request split over idle workers answers exactly what
one worker answers for it whole, for every example bundle; `splittable = false` keeps a
request whole; a busy pod does not split; a chunk's R error or its worker's death is
that request's answer only.

Real subprocesses, real R, a real socket; the Dispatcher wired to the pool as the
sidecar wires it (rscore/sidecar/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import eventually

from rscore.r_scorer.errors import ModelError, WorkerCrashed
from rscore.r_scorer.payload import Frame, parse_body
from rscore.r_scorer.pool import SOCKET_NAME, WorkerLink, WorkerPool
from rscore.r_scorer.protocol import JSON_REPLY_ROWS, JsonArray
from rscore.r_scorer.prototype import TypedFrame, coerce
from rscore.r_scorer.supervisor import Supervisor
from rscore.sidecar.admission import Dispatcher

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

ROOT = Path(__file__).resolve().parent.parent
# Every example: one per request file (examples/build/ is built from examples/, untracked).
EXAMPLES = tuple(sorted(path.stem for path in (ROOT / "examples" / "requests").glob("*.json")))

# Rows are scored independently, but what a call sees is visible: each prediction is
# the number of rows in its call (so a split shows), and a row asking to fail fails it.
CALL_SIZE_SCORE_R = """
init <- function(model_dir) list()
score <- function(state, data) {
  if (any(data$x < 0)) stop("asked to fail")
  if (!is.null(data$sleep) && data$sleep[1] > 0) Sys.sleep(data$sleep[1])
  rep(nrow(data), nrow(data))
}
"""


# Like CALL_SIZE_SCORE_R, but a call with `hold` holds its worker until the file named
# here exists: the test decides when, and waits on the pool's state, never on a clock.
HOLD_SCORE_R = """
init <- function(model_dir) list()
score <- function(state, data) {
  if (!is.null(data$hold) && any(data$hold > 0)) {
    while (!file.exists(%(release)s)) Sys.sleep(0.01)
  }
  rep(nrow(data), nrow(data))
}
"""


class Scoring:
    """A pool, its supervisor's workers and a Dispatcher fed by the pool."""

    def __init__(self, pool: WorkerPool, supervisor: Supervisor, dispatcher: Dispatcher) -> None:
        self.pool = pool
        self.supervisor = supervisor
        self.dispatcher = dispatcher
        self.calls: list[int] = []  # rows of every R call answered, in order

    def frame(self, document: dict) -> TypedFrame:
        assert self.pool.model is not None
        return coerce(parse_body(orjson.dumps(document)), self.pool.model.prototype)

    async def score(self, frame: TypedFrame, timeout_s: float = 60) -> list:
        job = self.dispatcher.submit(frame, time.monotonic() + timeout_s)
        return (await asyncio.wait_for(job.future, timeout_s)).predictions


@contextlib.asynccontextmanager
async def scoring(
    bundle: Path, tmp_path: Path, workers: int, min_chunk_rows: int, quiet_s: float = 0.0
) -> AsyncIterator[Scoring]:
    calls: list[int] = []
    # Split whenever workers are idle: neither how recently a worker answered another
    # request (quiet_s) nor R's measured cost (min_saving_s) may keep these small
    # requests whole; those rules are pinned in tests/test_fanout_dispatch.py.
    dispatcher = Dispatcher(
        max_queue_per_worker=8,
        min_chunk_rows=min_chunk_rows,
        quiet_s=quiet_s,
        min_saving_s=0,
        on_r_call=lambda rows, _seconds: calls.append(rows),
    )

    def worker_down(link: WorkerLink, _crashed: bool) -> None:
        dispatcher.remove_worker(link)

    pool = WorkerPool(
        tmp_path / "sock" / SOCKET_NAME,
        on_worker_up=dispatcher.add_worker,
        on_worker_down=worker_down,
    )
    await pool.start()
    supervisor = Supervisor(bundle, pool.socket_path, workers=workers)
    try:
        await asyncio.to_thread(supervisor.start)
        await asyncio.wait_for(pool.wait_for_workers(workers), 60)
        running = Scoring(pool, supervisor, dispatcher)
        running.calls = calls
        yield running
    finally:
        await dispatcher.close()
        await pool.close()
        await asyncio.to_thread(supervisor.stop)


def write_bundle(folder: Path, toml: str = "") -> Path:
    folder.mkdir()
    (folder / "score.R").write_text(CALL_SIZE_SCORE_R)
    if toml:
        (folder / "rscore.toml").write_text(toml)
    return folder


def test_every_example_bundle_is_covered(example_bundles: Path) -> None:
    built = sorted(path.name for path in example_bundles.iterdir() if path.is_dir())
    assert built == list(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
async def test_split_answers_equal_unsplit_answers_exactly(
    example_bundles: Path, tmp_path: Path, name: str
) -> None:
    request = (ROOT / "examples" / "requests" / f"{name}.json").read_bytes()
    async with scoring(example_bundles / name, tmp_path, workers=3, min_chunk_rows=64) as running:
        assert running.pool.model is not None
        sample = parse_body(request)
        # 200 rows, the example's over and over: long enough for the columnar path
        # (numpy columns, the binary frame) whole and in each chunk.
        rows = {
            name: [values[i % sample.nrows] for i in range(200)]
            for name, values in sample.columns.items()
        }
        frame = coerce(Frame(rows, 200), running.pool.model.prototype)
        for column in frame.columns:  # warpbreaks-glm has factors only
            assert isinstance(column.values, np.ndarray) == (column.kind == "numeric")
        whole = (await running.pool.workers[0].score(frame)).predictions  # one call, no split
        assert running.calls == []
        joined = await running.score(frame)
        assert sorted(running.calls) == [66, 67, 67]  # three chunks, one per idle worker
        assert joined == whole  # exactly: same values, same order
        assert len(joined) == 200


@pytest.mark.parametrize("name", ["mtcars-lm", "iris-rf"])
async def test_long_split_answers_join_as_text_exactly_as_unsplit(
    example_bundles: Path, tmp_path: Path, name: str
) -> None:
    """Chunks of JSON_REPLY_ROWS rows or more come back as JSON text (never parsed by
    the sidecar); joined, the text is the whole answer's, byte for byte."""
    request = (ROOT / "examples" / "requests" / f"{name}.json").read_bytes()
    rows = 3 * JSON_REPLY_ROWS + 30
    async with scoring(example_bundles / name, tmp_path, workers=3, min_chunk_rows=64) as running:
        assert running.pool.model is not None
        sample = parse_body(request)
        columns = {
            name: [values[i % sample.nrows] for i in range(rows)]
            for name, values in sample.columns.items()
        }
        frame = coerce(Frame(columns, rows), running.pool.model.prototype)
        whole = (await running.pool.workers[0].score(frame)).predictions
        job = running.dispatcher.submit(frame, time.monotonic() + 60)
        joined = (await asyncio.wait_for(job.future, 60)).predictions
        assert sorted(running.calls) == [JSON_REPLY_ROWS + 10] * 3
        assert isinstance(whole, JsonArray)
        assert isinstance(joined, JsonArray)
        assert joined == whole  # the same bytes, the same count
        assert len(whole.values()) == whole.count == rows


async def test_splittable_false_keeps_a_request_whole(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "whole", "[serving]\nsplittable = false\n")
    async with scoring(bundle, tmp_path, workers=2, min_chunk_rows=5) as running:
        assert running.pool.model is not None
        assert running.pool.model.splittable is False
        assert await running.score(running.frame({"data": [{"x": 1}] * 30})) == [30] * 30


async def test_a_splittable_bundle_is_split(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "split")
    async with scoring(bundle, tmp_path, workers=2, min_chunk_rows=5) as running:
        assert await running.score(running.frame({"data": [{"x": 1}] * 30})) == [15] * 30


async def test_a_failing_chunk_fails_the_request_with_its_error(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "fails")
    async with scoring(bundle, tmp_path, workers=2, min_chunk_rows=5) as running:
        rows = [{"x": 1}] * 25 + [{"x": -1}] + [{"x": 1}] * 4  # the second chunk's row
        with pytest.raises(ModelError, match="asked to fail"):
            await running.score(running.frame({"data": rows}))
        # Both workers serve on (the other chunk is answered too, then ignored).
        await eventually(lambda: not running.dispatcher.busy, every_s=0.01)
        assert await running.score(running.frame({"data": [{"x": 1}] * 10})) == [5] * 10


async def test_a_worker_dying_mid_chunk_fails_that_request_only(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "dies")
    async with scoring(bundle, tmp_path, workers=2, min_chunk_rows=5) as running:
        pool, dispatcher = running.pool, running.dispatcher
        first, second = pool.workers
        big = asyncio.create_task(
            running.score(running.frame({"data": [{"x": 1, "sleep": 3}] * 10}))
        )
        await eventually(lambda: first.busy and second.busy, every_s=0.01)  # split over both
        other = asyncio.create_task(running.score(running.frame({"data": [{"x": 1, "sleep": 0}]})))
        await eventually(lambda: dispatcher.queue_depth == 1, every_s=0.01)  # waits its turn
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="the R worker died while scoring"):
            await asyncio.wait_for(big, 10)
        # The other request is answered by a worker (the restarted one, or the survivor
        # once its chunk is done), the dead worker's slot comes back.
        assert await asyncio.wait_for(other, 60) == [1]
        await eventually(lambda: len(pool.workers) == 2, every_s=0.05)
        assert running.supervisor.stats.restarts == 1


async def test_a_busy_pod_does_not_split(tmp_path: Path) -> None:
    """One of two workers busy: a big request takes the idle one whole, and is answered
    while the other worker is still held."""
    release = tmp_path / "release"
    bundle = tmp_path / "busy"
    bundle.mkdir()
    (bundle / "score.R").write_text(HOLD_SCORE_R % {"release": json.dumps(str(release))})
    async with scoring(bundle, tmp_path, workers=2, min_chunk_rows=5) as running:
        workers = running.pool.workers
        held = asyncio.create_task(running.score(running.frame({"data": [{"x": 1, "hold": 1}]})))
        try:
            await eventually(lambda: sum(link.busy for link in workers) == 1, every_s=0.01)
            big = running.frame({"data": [{"x": 1, "hold": 0}] * 30})
            assert await running.score(big) == [30] * 30  # whole: one R call of 30 rows
            assert running.calls == [30]
            assert not held.done()
        finally:
            release.touch()
        assert await asyncio.wait_for(held, 60) == [1]
        # Idle again, the pod splits the same request.
        await eventually(lambda: not running.dispatcher.busy, every_s=0.01)
        assert await running.score(big) == [15] * 30
