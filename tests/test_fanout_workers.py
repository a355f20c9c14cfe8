"""Fan-out with real R workers: a request split over idle workers answers exactly what
one worker answers for it whole, for every example bundle; `splittable = false` keeps a
request whole; a chunk's R error or its worker's death is that request's answer only.

Real subprocesses, real R, a real socket; the Dispatcher wired to the pool as the
sidecar wires it (sidecar/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import eventually

from r_scorer.errors import ModelError, WorkerCrashed
from r_scorer.payload import Frame, parse_body
from r_scorer.pool import SOCKET_NAME, WorkerLink, WorkerPool
from r_scorer.prototype import TypedFrame, coerce
from r_scorer.supervisor import Supervisor
from sidecar.admission import Dispatcher

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("mtcars-lm", "iris-rf", "warpbreaks-glm")

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
    bundle: Path, tmp_path: Path, workers: int, min_chunk_rows: int
) -> AsyncIterator[Scoring]:
    calls: list[int] = []
    dispatcher = Dispatcher(
        max_queue_per_worker=8,
        min_chunk_rows=min_chunk_rows,
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
