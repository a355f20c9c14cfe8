"""Workers forked from one warmed zygote (`--worker-start fork`, rscore.r_scorer.zygote).

The pure decisions (what makes a loaded process unsafe to fork, the made-up warm-up
row) by tables; then real R: a restart is a fork of the zygote, a dead zygote brings
everything back, forked workers draw their own random numbers, and a score.R that
breaks the fork-safety rule stops start-up with a clear error instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from test_liveness import scorer_live
from test_workers import _wait_for_generation, score, scorer_process, started

from rscore.r_scorer.errors import BundleError
from rscore.r_scorer.prototype import Column, Prototype
from rscore.r_scorer.supervisor import Supervisor
from rscore.r_scorer.zygote import fork_safety_problems, process_title, warm_up_row

# --- pure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "connections", "sockets", "expected"),
    [
        (1, [], 0, []),
        (3, [], 0, ["3 threads"]),
        (1, ["/tmp/x.log"], 0, ["1 R connection(s) open (/tmp/x.log)"]),
        (1, [], 2, ["2 network socket(s)"]),
        (2, ["a", "b"], 1, ["2 threads", "2 R connection(s) open (a, b)", "1 network socket"]),
    ],
)
def test_fork_safety_names_every_problem(
    threads: int, connections: list[str], sockets: int, expected: list[str]
) -> None:
    problems = fork_safety_problems(threads=threads, connections=connections, sockets=sockets)
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ((), None),  # no prototype: nothing to make up
        ((Column("x", "numeric"), Column("n", "integer")), {"x": 1.0, "n": 1}),
        ((Column("f", "factor", ("b", "a")),), {"f": "b"}),
        ((Column("o", "ordered", ("lo", "hi")), Column("ok", "logical")), {"o": "lo", "ok": True}),
        ((Column("d", "date"), Column("s", "character")), {"d": "2000-01-01", "s": "a"}),
        ((Column("f", "factor", ()),), None),  # a factor with no level: no row
        ((Column("x", "numeric"), Column("a", "any")), None),
    ],
)
def test_warm_up_row_follows_the_prototype(
    columns: tuple[Column, ...], expected: dict[str, object] | None
) -> None:
    source = "ptype.rds" if columns else "none"
    assert warm_up_row(Prototype(columns, source)) == expected


@pytest.mark.parametrize(
    ("words", "room", "expected"),
    [
        (["python", "-m", "w"], 16, b"python\0-m\0w\0\0\0\0\0"),
        (["python", "-m", "w"], 8, b"python\0\0"),  # cut, and still NUL-terminated
        ([], 3, b"\0\0\0"),
    ],
)
def test_process_title_fills_the_room_it_has(words: list[str], room: int, expected: bytes) -> None:
    assert process_title(words, room) == expected


# --- real R ----------------------------------------------------------------------------

pytest_real_r = pytest.mark.real_r

SCORE_R = """
init <- function(model_dir) list(factor = 2)
score <- function(state, data) {
  if (!is.null(data$sleep)) Sys.sleep(data$sleep[1])
  data$x * state$factor
}
"""


def _bundle(tmp_path: Path, name: str, score_r: str) -> Path:
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "score.R").write_text(score_r)
    return bundle


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest_real_r
async def test_a_dead_worker_is_forked_again_from_the_zygote(tmp_path: Path) -> None:
    async with started(_bundle(tmp_path, "doubles", SCORE_R), tmp_path, 2) as running:
        pool, supervisor = running.pool, running.supervisor
        assert supervisor.zygote is not None
        assert supervisor.zygote.process is not None
        zygote_pid = supervisor.zygote.process.pid
        assert all(_parent_of(link.pid) == zygote_pid for link in pool.workers)
        for link in pool.workers:  # ps shows a worker as a worker, with its slot
            words = Path(f"/proc/{link.pid}/cmdline").read_bytes().split(b"\0")
            assert words[1:5] == [
                b"-m",
                b"rscore.r_scorer.worker",
                b"--slot",
                str(link.slot).encode(),
            ]
        assert b"rscore.r_scorer.zygote" in Path(f"/proc/{zygote_pid}/cmdline").read_bytes()
        doomed = pool.workers[0]
        os.kill(doomed.pid, signal.SIGKILL)
        back = await asyncio.wait_for(_wait_for_generation(pool, doomed.slot, 2), 60)
        assert back.pid != doomed.pid
        assert _parent_of(back.pid) == zygote_pid  # a fork, not a new interpreter
        assert supervisor.stats.restarts == 1
        assert await score(pool, [{"x": 4}]) == [8.0]


@pytest_real_r
async def test_a_dead_zygote_restarts_every_worker(tmp_path: Path) -> None:
    async with started(_bundle(tmp_path, "doubles", SCORE_R), tmp_path, 2) as running:
        pool, supervisor = running.pool, running.supervisor
        assert supervisor.zygote is not None
        assert supervisor.zygote.process is not None
        old_zygote = supervisor.zygote.process.pid
        os.kill(old_zygote, signal.SIGKILL)
        for slot in (0, 1):  # its workers died with it, and are forked from a new one
            await asyncio.wait_for(_wait_for_generation(pool, slot, 2), 60)
        assert supervisor.zygote.process is not None
        new_zygote = supervisor.zygote.process.pid
        assert new_zygote != old_zygote
        assert {_parent_of(link.pid) for link in pool.workers} == {new_zygote}
        assert await score(pool, [{"x": 1.5}]) == [3.0]


@pytest_real_r
async def test_forked_workers_draw_their_own_random_numbers(tmp_path: Path) -> None:
    bundle = _bundle(
        tmp_path,
        "draws",
        "init <- function(model_dir) { runif(1); list() }\n"  # the zygote draws: a seed exists
        "score <- function(state, data) {\n"
        "  if (!is.null(data$sleep)) Sys.sleep(data$sleep[1])\n"
        "  runif(nrow(data))\n"
        "}\n",
    )
    async with started(bundle, tmp_path, 2) as running:
        pool = running.pool
        first, second = pool.workers
        from test_workers import frame_of

        draws = await asyncio.gather(
            first.score(frame_of([{"x": 1}], pool)), second.score(frame_of([{"x": 1}], pool))
        )
        assert draws[0].predictions != draws[1].predictions


CONNECTION_LEFT_OPEN = """
init <- function(model_dir) {
  log <- file(file.path(tempdir(), "scores.log"), open = "w")
  list(log = log)
}
score <- function(state, data) data$x
"""

SOCKET_LEFT_OPEN = """
init <- function(model_dir) {
  listener <- serverSocket(0L)
  list(listener = listener)
}
score <- function(state, data) data$x
"""


@pytest_real_r
@pytest.mark.parametrize(
    ("score_r", "named"),
    [(CONNECTION_LEFT_OPEN, "scores.log"), (SOCKET_LEFT_OPEN, "R connection")],
)
async def test_a_score_r_that_cannot_be_forked_fails_at_start_up(
    tmp_path: Path, score_r: str, named: str
) -> None:
    bundle = _bundle(tmp_path, "unforkable", score_r)
    supervisor = Supervisor(bundle, tmp_path / "w.sock", workers=2, worker_start="fork")
    with pytest.raises(BundleError, match="cannot be forked safely") as failure:
        await asyncio.to_thread(supervisor.start)
    assert named in failure.value.message
    assert "--worker-start spawn" in failure.value.message
    assert supervisor.pids == []
    # The same bundle is served by spawned workers, which share nothing.
    (tmp_path / "spawned").mkdir()
    async with started(bundle, tmp_path / "spawned", 1, worker_start="spawn") as running:
        assert await score(running.pool, [{"x": 2.0}]) == [2.0]


LOADS_WHILE_THE_FILE_EXISTS = """
init <- function(model_dir) {
  if (!file.exists(file.path(model_dir, "loadable"))) stop("the feature store is gone")
  list(factor = 2)
}
score <- function(state, data) data$x * state$factor
"""


@pytest_real_r
@pytest.mark.e2e
async def test_the_scorer_is_not_live_once_a_new_zygote_cannot_load(tmp_path: Path) -> None:
    """Forked restarts need no load: only a new zygote loads the bundle again. Once the
    bundle stops loading and the zygote dies, no worker comes back and the liveness
    probe fails after --no-worker-grace-s, with R's reason logged."""
    bundle = _bundle(tmp_path, "feature-store", LOADS_WHILE_THE_FILE_EXISTS)
    (bundle / "loadable").touch()
    socket_dir = tmp_path / "socket"
    socket_dir.mkdir()
    flags = ("--no-worker-grace-s", "2")
    async with scorer_process(bundle, socket_dir, 1, *flags) as (pool, process):
        await asyncio.wait_for(pool.wait_for_workers(1), 60)
        (worker,) = pool.workers
        (bundle / "loadable").unlink()
        os.kill(_parent_of(worker.pid), signal.SIGKILL)  # the zygote
        code, answer = 0, ""
        for _ in range(600):
            code, answer = await asyncio.to_thread(scorer_live, socket_dir)
            if code != 0:
                break
            await asyncio.sleep(0.1)
        assert code != 0
        assert "restarts are not bringing one back" in answer
        assert not pool.workers
        process.kill()
        _, stderr = await process.communicate()
    assert b"the new zygote could not load the bundle" in stderr
    assert b"the feature store is gone" in stderr


@pytest_real_r
async def test_a_package_thread_known_to_be_harmless_is_paused_for_the_fork(
    tmp_path: Path,
) -> None:
    """cli (loaded by most of the tidyverse) starts a ticker thread as it loads: the
    zygote stops it before forking, and each worker starts its own again."""
    bundle = _bundle(
        tmp_path,
        "uses-cli",
        'init <- function(model_dir) { loadNamespace("cli"); list() }\n'
        "score <- function(state, data) data$x\n",
    )
    async with started(bundle, tmp_path, 1) as running:
        (worker,) = running.pool.workers
        assert running.supervisor.zygote is not None
        assert running.supervisor.zygote.process is not None
        zygote_pid = running.supervisor.zygote.process.pid
        assert len(os.listdir(f"/proc/{zygote_pid}/task")) == 1
        assert len(os.listdir(f"/proc/{worker.pid}/task")) == 2  # its own ticker
        assert await score(running.pool, [{"x": 2.0}]) == [2.0]
