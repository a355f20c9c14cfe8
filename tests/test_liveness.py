"""Liveness: a pod that cannot get an R worker back fails its probes; one that merely
restarts a worker does not.

The decision is a table (`liveness_problem`, `probe_file`). Then real processes: the
sidecar's /healthz over HTTP with real R workers killed (a fake clock for the pool, so
"past the bound" needs no waiting); `rscore scorer` with its exec probe `rscore
scorer-live`, through a normal restart and through restarts that cannot succeed (the
bundle stopped loading; spawning hits the fd limit, a real RLIMIT_NOFILE in a
subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from rscore.r_scorer.liveness import (
    LIVENESS_NAME,
    LivenessBounds,
    liveness_problem,
    probe_file,
    write_liveness_file,
)
from rscore.r_scorer.pool import SOCKET_NAME, WorkerLink, WorkerPool
from rscore.r_scorer.supervisor import Supervisor
from rscore.sidecar.app import SidecarConfig, create_app

BOUNDS = LivenessBounds(no_worker_grace_s=60.0, monitor_stall_s=30.0)


@pytest.mark.parametrize(
    ("now", "worker_seen_at", "heartbeat_at", "bounds", "complaint"),
    [
        (1000.0, None, None, BOUNDS, None),  # the sidecar before any worker: starting
        (1000.0, None, 999.0, BOUNDS, None),  # the scorer, still starting
        (1000.0, 1000.0, 1000.0, BOUNDS, None),  # a worker up now
        (1000.0, 940.0, 1000.0, BOUNDS, None),  # restarting, at the bound
        (1000.0, 939.0, 1000.0, BOUNDS, "no R worker for 61 s (--no-worker-grace-s 60)"),
        (1000.0, 939.0, None, BOUNDS, "no R worker for 61 s"),  # the sidecar's view
        (1000.0, 1.0, None, LivenessBounds(no_worker_grace_s=0), None),  # 0: check off
        (1000.0, 1000.0, 970.0, BOUNDS, None),  # the monitor, at its bound
        (1000.0, 1000.0, 969.0, BOUNDS, "monitor has not beaten for 31 s (bound 30 s)"),
        (1000.0, None, 969.0, BOUNDS, "monitor has not beaten"),  # stuck while starting
        (1000.0, 900.0, 900.0, BOUNDS, "monitor has not beaten"),  # the cause comes first
        (1000.0, 1010.0, 1010.0, BOUNDS, None),  # times ahead of now: no negative ages
    ],
)
def test_liveness_decision(
    now: float,
    worker_seen_at: float | None,
    heartbeat_at: float | None,
    bounds: LivenessBounds,
    complaint: str | None,
) -> None:
    problem = liveness_problem(
        now, worker_seen_at=worker_seen_at, heartbeat_at=heartbeat_at, bounds=bounds
    )
    if complaint is None:
        assert problem is None
    else:
        assert problem is not None
        assert complaint in problem


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "no liveness file at"),
        (b"", "unreadable liveness file"),
        (b"[1, 2]", "unreadable liveness file"),
        (b'{"heartbeat_at": "soon"}', "unreadable liveness file"),
    ],
)
def test_the_probe_fails_on_a_missing_or_garbled_file(
    tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    path = tmp_path / LIVENESS_NAME
    if content is not None:
        path.write_bytes(content)
    problem = probe_file(path, now=100.0)
    assert problem is not None
    assert complaint in problem
    assert str(path) in problem


def test_the_probe_judges_what_the_monitor_wrote_with_its_bounds(tmp_path: Path) -> None:
    path = tmp_path / LIVENESS_NAME
    bounds = LivenessBounds(no_worker_grace_s=5, monitor_stall_s=2)
    write_liveness_file(path, heartbeat_at=100.0, worker_seen_at=99.0, bounds=bounds)
    assert probe_file(path, now=101.0) is None
    assert "monitor has not beaten for 3 s (bound 2 s)" in (probe_file(path, now=103.0) or "")
    write_liveness_file(path, heartbeat_at=110.0, worker_seen_at=99.0, bounds=bounds)
    assert "no R worker for 11 s (--no-worker-grace-s 5)" in (probe_file(path, now=110.0) or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == [LIVENESS_NAME]  # no partial left


# --- the sidecar: /healthz ---------------------------------------------------------

SCORE_R = """
init <- function(model_dir) {
  if (!file.exists(file.path(model_dir, "loadable"))) stop("the feature store is gone")
  list(factor = 2)
}
score <- function(state, data) data$x * state$factor
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A bundle that loads while its `loadable` file exists (a feature store, say)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "score.R").write_text(SCORE_R)
    (folder / "loadable").touch()
    return folder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def probe(client: TestClient, path: str = "/healthz") -> tuple[int, dict]:
    response = await client.get(path)
    return response.status, await response.json()


@pytest.mark.real_r
async def test_healthz_fails_only_after_the_bound_without_any_worker(
    aiohttp_client, bundle: Path, tmp_path: Path
) -> None:
    clock = Clock()
    pool = WorkerPool(tmp_path / "sock" / SOCKET_NAME, clock=clock)
    config = SidecarConfig(no_worker_grace_s=60.0)
    client = await aiohttp_client(create_app(config, pool=pool, registry=CollectorRegistry()))
    clock.now += 10_000  # no worker yet, long past the bound: starting, live
    assert await probe(client) == (200, {"status": "ok"})
    supervisor = Supervisor(bundle, pool.socket_path, workers=1)
    try:
        await asyncio.to_thread(supervisor.start)
        await asyncio.wait_for(pool.wait_for_workers(1), 60)
        clock.now += 10_000  # connected: live however long
        assert (await probe(client))[0] == 200

        # A normal restart: no worker for a while, within the bound: live throughout.
        (first,) = pool.workers
        os.kill(first.pid, signal.SIGKILL)
        await until(lambda: not pool.workers, "the worker to drop")
        clock.now += 60
        assert (await probe(client))[0] == 200
        await until(lambda: _generation(pool) == 2, "the restarted worker")
        clock.now += 10_000
        assert (await probe(client))[0] == 200

        # No restart this time: past the bound, /healthz and V2's live turn 503.
        supervisor.begin_stop()
        (second,) = pool.workers
        os.kill(second.pid, signal.SIGKILL)
        await until(lambda: not pool.workers, "the worker to drop")
        clock.now += 60
        assert (await probe(client))[0] == 200
        clock.now += 1.5
        status, body = await probe(client)
        assert status == 503
        assert body["error"]["code"] == "unavailable"
        assert body["error"]["message"].startswith(
            "not live: no R worker for 62 s (--no-worker-grace-s 60)"
        )
        assert await probe(client, "/v2/health/live") == (503, {"live": False})
    finally:
        await pool.close()
        await asyncio.to_thread(supervisor.stop)


def _generation(pool: WorkerPool) -> int:
    links: list[WorkerLink] = pool.workers
    return links[0].generation if links else 0


# --- the scorer: `rscore scorer-live` ----------------------------------------------


def scorer_live(socket_dir: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "rscore.cli", "scorer-live", "--socket-dir", str(socket_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


@contextlib.asynccontextmanager
async def scorer(
    bundle: Path, socket_dir: Path, grace_s: float
) -> AsyncIterator[tuple[WorkerPool, asyncio.subprocess.Process]]:
    """`rscore scorer` as a process, its worker dialling a pool here (the sidecar)."""
    pool = WorkerPool(socket_dir / SOCKET_NAME)
    await pool.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rscore.cli", "scorer", str(bundle),
        "--socket-dir", str(socket_dir), "--workers", "1",
        "--no-worker-grace-s", str(grace_s),
        # Spawned: these tests make a restart reload the bundle (a fork needs none;
        # test_zygote has the fork version).
        "--worker-start", "spawn",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.wait_for(pool.wait_for_workers(1), 60)
        yield pool, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await pool.close()


def worker_seen_at(socket_dir: Path) -> float:
    return float(orjson.loads((socket_dir / LIVENESS_NAME).read_bytes())["worker_seen_at"])


@pytest.mark.real_r
@pytest.mark.e2e
async def test_the_scorer_stays_live_through_a_normal_restart(bundle: Path, tmp_path: Path) -> None:
    """A killed worker is restarted; the probe passes throughout, and the restarted
    worker counts as up again once it has loaded (its status pipe says so)."""
    async with scorer(bundle, tmp_path, grace_s=120) as (pool, _):
        await asyncio.to_thread(_until_live, tmp_path)
        (first,) = pool.workers
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        answers = []
        while _generation(pool) < 2:
            answers.append(await asyncio.to_thread(scorer_live, tmp_path))
        await until(lambda: worker_seen_at(tmp_path) > killed_at + 0.01, "a fresh worker time")
        answers.append(await asyncio.to_thread(scorer_live, tmp_path))
        assert answers
        assert all(answer == (0, "live") for answer in answers), answers


def _until_live(socket_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while scorer_live(socket_dir)[0] != 0:
        assert time.monotonic() < deadline, scorer_live(socket_dir)
        time.sleep(0.1)


@pytest.mark.real_r
@pytest.mark.e2e
async def test_the_scorer_is_not_live_once_restarts_cannot_bring_a_worker_back(
    bundle: Path, tmp_path: Path
) -> None:
    """The bundle stops loading (its feature store is gone) and the worker dies: each
    restart fails to load, with R's reason logged, and after --no-worker-grace-s the
    probe fails, never before (less the file's one-second write period)."""
    grace_s = 3.0
    async with scorer(bundle, tmp_path, grace_s=grace_s) as (pool, process):
        await asyncio.to_thread(_until_live, tmp_path)
        (bundle / "loadable").unlink()
        (worker,) = pool.workers
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while True:
            code, answer = await asyncio.to_thread(scorer_live, tmp_path)
            answered_at = time.monotonic()
            if code != 0:
                break
            assert answered_at < killed_at + 60, "the probe never failed"
        assert answered_at >= killed_at + grace_s - 1.0
        assert answer.startswith("not live: no R worker for ")
        assert f"(--no-worker-grace-s {grace_s:.0f}): restarts are not bringing one back" in (
            answer
        )
        assert process.returncode is None  # the scorer runs on; kubelet restarts it
        process.kill()
        _, stderr = await process.communicate()
        assert b"could not load the bundle: " in stderr
        assert b"the feature store is gone" in stderr


@pytest.mark.real_r
@pytest.mark.e2e
async def test_the_scorer_is_not_live_when_its_monitor_is_stuck(
    bundle: Path, tmp_path: Path
) -> None:
    """The monitor thread blocks (here on its own lock, as a hung spawn would hold it):
    its heartbeat goes stale and the probe fails, although the worker runs on."""
    supervisor = Supervisor(
        bundle,
        tmp_path / SOCKET_NAME,  # no sidecar: the worker reports its load on its pipe
        workers=1,
        liveness_file=tmp_path / LIVENESS_NAME,
        liveness=LivenessBounds(no_worker_grace_s=600, monitor_stall_s=1.0),
    )
    await asyncio.to_thread(supervisor.start)

    def probe_while_stuck() -> tuple[int, str]:
        with supervisor._lock:  # the monitor waits for it from its next tick on
            deadline = time.monotonic() + 60
            while (answer := scorer_live(tmp_path))[0] == 0:
                assert time.monotonic() < deadline, "the probe never failed"
            return answer

    try:
        assert scorer_live(tmp_path) == (0, "live")
        code, reason = await asyncio.to_thread(probe_while_stuck)
        assert code == 1
        assert "the supervisor's monitor has not beaten for" in reason
        assert len(supervisor.pids) == 1  # the worker itself is fine
        await until(lambda: scorer_live(tmp_path)[0] == 0, "the monitor to beat again")
    finally:
        await asyncio.to_thread(supervisor.stop)


# Start a supervisor (no sidecar needed: a worker reports its load on its status pipe),
# leave exactly one free descriptor (enough to rewrite the liveness file, too few for a
# worker's pipes), and kill the worker: every restart now fails with EMFILE.
_FD_STARVED = textwrap.dedent(
    """
    import fcntl, os, resource, signal, sys, threading
    from pathlib import Path
    from rscore.r_scorer.liveness import LIVENESS_NAME, LivenessBounds
    from rscore.r_scorer.supervisor import Supervisor

    bundle, folder, grace = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    supervisor = Supervisor(
        bundle, folder / "workers.sock", workers=1,
        liveness_file=folder / LIVENESS_NAME,
        liveness=LivenessBounds(no_worker_grace_s=grace),
    )
    supervisor.start()

    def is_open(fd):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            return False
        return True

    open_fds = {fd for fd in map(int, os.listdir("/proc/self/fd")) if is_open(fd)}
    limit = next(n for n in range(1, 1 << 16) if n - len({fd for fd in open_fds if fd < n}) == 1)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    os.kill(supervisor.pids[0], signal.SIGKILL)
    print("starved", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.real_r
@pytest.mark.e2e
async def test_the_scorer_is_not_live_when_spawning_hits_the_fd_limit(
    bundle: Path, tmp_path: Path
) -> None:
    grace_s = 3.0
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FD_STARVED, str(bundle), str(tmp_path), str(grace_s),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 60) == b"starved\n"
        deadline = time.monotonic() + 60
        while (answer := await asyncio.to_thread(scorer_live, tmp_path))[0] == 0:
            assert time.monotonic() < deadline, "the probe never failed"
        _, reason = answer
        # The monitor is alive and beating (it still writes the file): the reason is the
        # missing worker, not a dead monitor.
        assert reason.startswith("not live: no R worker for "), reason
        assert process.returncode is None
    finally:
        if process.returncode is None:
            process.kill()
        _, stderr = await process.communicate()
    assert b"Too many open files" in stderr
    assert b"could not tend it" in stderr
