"""R worker processes behind the worker protocol: real subprocesses, real R, a real socket.

The supervisor starts workers; the pool (the sidecar's side) accepts them and sends
requests. Workers are killed for real to show restarts and the callers' errors. The
tests of what a worker does (answer, fail one request, crash, watchdog, recycle, drain)
run with both ways of starting workers: forked from the zygote, and spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from helpers import assert_same_predictions, eventually

from rscore.r_scorer.errors import BundleError, ModelError, WorkerCrashed
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.pool import SOCKET_NAME, WorkerLink, WorkerPool
from rscore.r_scorer.prototype import TypedFrame, coerce
from rscore.r_scorer.supervisor import Supervisor

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

SLOW_SCORE_R = """
init <- function(model_dir) list(factor = 2)
score <- function(state, data) {
  if (!is.null(data$sleep)) Sys.sleep(data$sleep[1])
  if (!is.null(data$fail)) stop("asked to fail")
  data$x * state$factor
}
"""


@pytest.fixture(params=["fork", "spawn"])
def worker_start(request: pytest.FixtureRequest) -> str:
    """Both ways of starting workers (`--worker-start`): each test runs with each."""
    return str(request.param)


@pytest.fixture
def slow_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "slow"
    bundle.mkdir()
    (bundle / "score.R").write_text(SLOW_SCORE_R)
    return bundle


def frame_of(rows: list[dict], pool: WorkerPool) -> TypedFrame:
    assert pool.model is not None
    return coerce(parse_body(orjson.dumps({"data": rows})), pool.model.prototype)


class Running:
    """A pool listening on a socket and a supervisor whose workers connect to it."""

    def __init__(self, pool: WorkerPool, supervisor: Supervisor) -> None:
        self.pool = pool
        self.supervisor = supervisor


@contextlib.asynccontextmanager
async def started(
    bundle: Path,
    tmp_path: Path,
    workers: int,
    max_requests: int = 0,
    worker_start: str = "fork",
) -> AsyncIterator[Running]:
    """A listening pool and a supervisor whose workers have all connected to it."""
    pool = WorkerPool(tmp_path / "sock" / SOCKET_NAME)
    await pool.start()
    supervisor = Supervisor(
        bundle,
        pool.socket_path,
        workers=workers,
        max_requests=max_requests,
        worker_start=worker_start,
    )
    try:
        await asyncio.to_thread(supervisor.start)
        await asyncio.wait_for(pool.wait_for_workers(workers), 60)
        yield Running(pool, supervisor)
    finally:
        await pool.close()  # the sidecar hangs up first: drained workers then exit at once
        await asyncio.to_thread(supervisor.stop)


async def score(pool: WorkerPool, rows: list[dict], timeout_s: float | None = None) -> list:
    async with pool.acquire() as link:
        return (await link.score(frame_of(rows, pool), timeout_s)).predictions


async def test_workers_answer_like_r_itself(
    test_bundles: Path, tmp_path: Path, worker_start: str
) -> None:
    async with started(
        test_bundles / "glm-factors", tmp_path, workers=2, worker_start=worker_start
    ) as running:
        assert running.pool.model is not None
        assert running.pool.model.prototype.columns[0].name == "wool"
        request = json.loads((test_bundles / "glm-factors" / "request.json").read_text())
        expected = json.loads((test_bundles / "glm-factors" / "expected.json").read_text())
        rows = [
            dict(zip(request["dataframe_split"]["columns"], row, strict=True))
            for row in request["dataframe_split"]["data"]
        ]
        answers = await asyncio.gather(*(score(running.pool, rows) for _ in range(20)))
        for answer in answers:
            assert_same_predictions(answer, expected)
        assert sorted(link.slot for link in running.pool.workers) == [0, 1]


async def test_model_error_answers_that_request_and_the_worker_serves_on(
    slow_bundle: Path, tmp_path: Path, worker_start: str
) -> None:
    async with started(slow_bundle, tmp_path, 1, worker_start=worker_start) as running:
        with pytest.raises(ModelError, match="asked to fail"):
            await score(running.pool, [{"x": 1, "fail": True}])
        assert await score(running.pool, [{"x": 1.5}]) == [3.0]
        assert running.supervisor.stats.restarts == 0


async def test_worker_killed_mid_call_is_restarted_and_its_caller_told(
    slow_bundle: Path, tmp_path: Path, worker_start: str
) -> None:
    async with started(slow_bundle, tmp_path, 2, worker_start=worker_start) as running:
        pool = running.pool
        first, second = pool.workers
        doomed = asyncio.create_task(first.score(frame_of([{"x": 1, "sleep": 30}], pool)))
        bystander = asyncio.create_task(second.score(frame_of([{"x": 4, "sleep": 0.5}], pool)))
        await eventually(lambda: first.busy and second.busy, every_s=0.01)  # both sent
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="the R worker died while scoring") as crash:
            await asyncio.wait_for(doomed, 10)
        assert str(first.pid) not in crash.value.message  # for the log, not for clients
        assert (await bystander).predictions == [8.0]  # the other worker is unharmed
        await asyncio.wait_for(_wait_for_generation(pool, first.slot, 2), 60)
        assert running.supervisor.stats.restarts == 1
        assert await score(pool, [{"x": 5}]) == [10.0]


async def test_watchdog_ends_a_worker_stuck_past_its_deadline(
    slow_bundle: Path, tmp_path: Path, worker_start: str
) -> None:
    async with started(slow_bundle, tmp_path, 1, worker_start=worker_start) as running:
        pool = running.pool
        (stuck,) = pool.workers
        with pytest.raises(WorkerCrashed):
            await asyncio.wait_for(
                stuck.score(frame_of([{"x": 1, "sleep": 60}], pool), timeout_s=0.2), 30
            )
        await asyncio.wait_for(_wait_for_generation(pool, 0, 2), 60)
        assert await score(pool, [{"x": 2}], timeout_s=5.0) == [4.0]


async def test_workers_recycle_without_failing_a_request(
    slow_bundle: Path, tmp_path: Path, worker_start: str
) -> None:
    async with started(slow_bundle, tmp_path, 1, 3, worker_start) as running:
        pids = set()
        for x in range(10):
            async with running.pool.acquire() as link:
                pids.add(link.pid)
                reply = await link.score(frame_of([{"x": x}], running.pool))
                assert reply.predictions == [2.0 * x]
        assert len(pids) == 4  # 3 + 3 + 3 + 1 requests
        assert running.supervisor.stats.recycles >= 3


async def test_a_caller_that_gives_up_does_not_free_a_busy_worker(
    slow_bundle: Path, tmp_path: Path, worker_start: str
) -> None:
    async with started(slow_bundle, tmp_path, 1, worker_start=worker_start) as running:
        pool = running.pool
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(score(pool, [{"x": 1, "sleep": 0.6}]), 0.2)
        # The only worker is still in R: the next caller waits for it, then is served.
        assert await asyncio.wait_for(score(pool, [{"x": 3}]), 30) == [6.0]


async def test_a_bad_bundle_stops_the_supervisor_with_rs_message(
    test_bundles: Path, tmp_path: Path, worker_start: str
) -> None:
    supervisor = Supervisor(
        test_bundles / "bad-init-fails", tmp_path / "w.sock", workers=2, worker_start=worker_start
    )
    with pytest.raises(BundleError, match="cannot reach the feature store"):
        await asyncio.to_thread(supervisor.start)
    assert supervisor.pids == []


async def _wait_for_generation(pool: WorkerPool, slot: int, generation: int) -> WorkerLink:
    while True:
        for link in pool.workers:
            if link.slot == slot and link.generation >= generation:
                return link
        await asyncio.sleep(0.05)


IRIS_ROW = {"Sepal.Length": 5.1, "Sepal.Width": 3.5, "Petal.Length": 1.4, "Petal.Width": 0.2}


@contextlib.asynccontextmanager
async def scorer_process(
    bundle: Path, tmp_path: Path, workers: int, *flags: str
) -> AsyncIterator[tuple[WorkerPool, asyncio.subprocess.Process]]:
    """`rscore scorer` as a process, its workers dialling a pool in this test (the
    sidecar's side); killed at the end if still running."""
    pool = WorkerPool(tmp_path / SOCKET_NAME)
    await pool.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rscore.cli", "scorer", str(bundle),
        "--socket-dir", str(tmp_path), "--workers", str(workers), *flags,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield pool, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await pool.close()


async def stderr_until(process: asyncio.subprocess.Process, text: bytes) -> bytes:
    """The process's stderr up to the line holding `text` (it has got that far)."""
    stream = process.stderr
    assert stream is not None
    lines = []

    async def read() -> None:
        while text not in (lines[-1] if lines else b""):
            line = await stream.readline()
            assert line, f"stderr ended before {text!r}: {b''.join(lines)!r}"
            lines.append(line)

    await asyncio.wait_for(read(), 30)
    return b"".join(lines)


SIGNALLED = b"signalled: workers serve until the sidecar hangs up"


async def test_rscore_scorer_serves_after_sigterm_until_the_sidecar_hangs_up(
    example_bundles: Path, tmp_path: Path, worker_start: str
) -> None:
    flags = ("--worker-start", worker_start)
    async with scorer_process(example_bundles / "iris-rf", tmp_path, 2, *flags) as (
        pool,
        process,
    ):
        await asyncio.wait_for(pool.wait_for_workers(2), 60)
        assert await asyncio.wait_for(score(pool, [IRIS_ROW]), 30) == ["setosa"]
        process.send_signal(signal.SIGTERM)
        # Still serving after its SIGTERM, until the sidecar hangs up (a pod's drain).
        before = await stderr_until(process, SIGNALLED)
        assert await asyncio.wait_for(score(pool, [IRIS_ROW]), 30) == ["setosa"]
        await pool.close()
        _, rest = await asyncio.wait_for(process.communicate(), 30)
        stderr = before + rest
        assert process.returncode == 0
        assert b"2 R worker(s) serving model 'iris-rf'" in stderr
        assert json.loads(stderr.splitlines()[0])["level"]  # logs are JSON lines


async def test_rscore_scorer_signalled_while_workers_start_still_drains(
    example_bundles: Path, tmp_path: Path, worker_start: str
) -> None:
    """SIGTERM as soon as the first worker is serving, while the others may still load:
    the connected worker keeps serving until the sidecar hangs up, then all exit cleanly.
    (A worker not yet connected when the drain begins has nothing to serve and exits.)"""
    flags = ("--worker-start", worker_start)
    async with scorer_process(example_bundles / "iris-rf", tmp_path, 2, *flags) as (
        pool,
        process,
    ):
        await asyncio.wait_for(pool.wait_for_workers(1), 60)
        process.send_signal(signal.SIGTERM)
        await stderr_until(process, SIGNALLED)  # honoured once the load is done
        assert await asyncio.wait_for(score(pool, [IRIS_ROW]), 30) == ["setosa"]
        await pool.close()
        await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0


async def test_rscore_scorer_reports_a_bad_bundle_and_exits(
    test_bundles: Path, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rscore.cli", "scorer", str(test_bundles / "bad-no-predict"),
        "--socket-dir", str(tmp_path), "--workers", "1",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    error = json.loads(stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "bundle_error"
    assert "'mystery_model'" in error["message"]


async def test_the_monitor_survives_a_failed_restart_and_tries_again(
    slow_bundle: Path, tmp_path: Path
) -> None:
    """A restart that raises (here: the interpreter is gone, as EMFILE or a vanished file
    would make it) used to end the monitor thread, and with it every later restart. It
    is logged, backed off and tried again; once spawning works, the worker is back."""
    # Spawned workers: a forked restart does not start an interpreter.
    async with started(slow_bundle, tmp_path, 1, worker_start="spawn") as running:
        pool, supervisor = running.pool, running.supervisor
        python = supervisor.python
        supervisor.python = str(tmp_path / "no-such-python")
        (worker,) = pool.workers
        os.kill(worker.pid, signal.SIGKILL)

        async def failed_twice() -> None:
            while supervisor.stats.spawn_failures < 2:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(failed_twice(), 30)
        assert supervisor._monitor is not None
        assert supervisor._monitor.is_alive()
        assert supervisor.stats.restarts == 0
        supervisor.python = python  # spawning works again: the next try restarts it
        await asyncio.wait_for(_wait_for_generation(pool, 0, 2), 60)
        assert supervisor.stats.restarts == 1
        assert await score(pool, [{"x": 3}]) == [6.0]
