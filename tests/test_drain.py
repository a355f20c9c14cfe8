"""Shutdown under load: SIGTERM to everything at once loses no accepted request.

Real processes: `rscore serve` in its own process group, or the pod's two containers
(`python -m rscore.r_scorer` and `python -m rscore.sidecar`) signalled at the same moment, as the
kubelet does. Clients are real aiohttp clients on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

pytestmark = [pytest.mark.real_r, pytest.mark.e2e]  # markers: pyproject.toml

SLOW_SCORE_R = """
init <- function(model_dir) list()
score <- function(state, data) { Sys.sleep(max(data$sleep)); data$x * 2 }
"""


@pytest.fixture
def slow_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "slow"
    bundle.mkdir()
    (bundle / "score.R").write_text(SLOW_SCORE_R)
    # One request per R call, so that draining takes a while to watch.
    (bundle / "rscore.toml").write_text("[serving]\nbatchable = false\n")
    return bundle


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def start(*args: str, log: Path) -> asyncio.subprocess.Process:
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=log_fd,
            start_new_session=True,  # its own process group, like a container
        )  # fmt: skip
    finally:
        os.close(log_fd)  # the child has its own copy


async def wait_ready(session: aiohttp.ClientSession, base: str, timeout_s: float = 60) -> None:
    async def poll() -> None:
        while True:
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout_s)


async def score(session: aiohttp.ClientSession, base: str, x: int) -> tuple[int, object]:
    try:
        async with session.post(
            f"{base}/score", json={"data": [{"x": x, "sleep": 0.4}]}
        ) as response:
            return response.status, await response.json()
    except aiohttp.ClientConnectionError as exc:
        return -1, repr(exc)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    """Poll `check()` until it holds (a bound, not a speed)."""

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def load_then_sigterm(
    base: str, metrics: str, groups: list[int], *, requests: int = 10
) -> tuple[list[tuple[int, object]], int, list[tuple[int, object]]]:
    """Send `requests` slow requests (2 workers: most wait in the queue), SIGTERM every
    process group once the sidecar has accepted them all, then probe readiness once the
    signal is handled and send more."""
    async with aiohttp.ClientSession() as session:
        await wait_ready(session, base)
        accepted = [asyncio.create_task(score(session, base, x)) for x in range(requests)]

        async def all_accepted() -> bool:
            queued = await metric(session, metrics, "rscore_queue_depth")
            running = await metric(session, metrics, "rscore_inflight_requests")
            answered = sum(task.done() for task in accepted)  # on a slow machine, some
            return queued + running + answered == requests

        await until(all_accepted)
        for group in groups:
            os.killpg(group, signal.SIGTERM)
        ready_status = 200

        async def signal_handled() -> bool:
            nonlocal ready_status
            async with session.get(f"{base}/readyz") as response:
                ready_status = response.status
            return ready_status != 200

        await until(signal_handled)  # 503 expected: not ready, though still answering
        late = [await score(session, base, 100)]
        return await asyncio.gather(*accepted), ready_status, late


async def test_sigterm_to_rscore_serves_process_group_loses_nothing(
    slow_bundle: Path, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    server = await start(
        "-m", "rscore.cli", "serve", str(slow_bundle), "--workers", "2",
        "--port", str(port), "--metrics-port", str(metrics_port), "--auth", "none",
        log=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        answers, ready_status, late = await load_then_sigterm(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", [server.pid]
        )
        assert answers == [(200, {"predictions": [2.0 * x]}) for x in range(10)]
        assert ready_status == 503  # not ready from the moment of the signal
        assert late[0][0] in (503, -1)  # refused: 503 while draining, or already closed
        assert await asyncio.wait_for(server.wait(), 30) == 0
    finally:
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGKILL)
            await server.wait()


async def test_sigterm_to_both_pod_containers_at_once_loses_nothing(
    example_bundles: Path, slow_bundle: Path, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    socket_dir = tmp_path / "run"
    scorer = await start(
        "-m", "rscore.r_scorer", "--bundle", str(slow_bundle), "--socket-dir", str(socket_dir),
        "--workers", "2", log=tmp_path / "scorer.log",
    )  # fmt: skip
    sidecar = await start(
        "-m", "rscore.sidecar", "--socket-dir", str(socket_dir), "--port", str(port),
        "--metrics-port", str(metrics_port), "--auth", "none", log=tmp_path / "sidecar.log",
    )  # fmt: skip
    try:
        answers, ready_status, _ = await load_then_sigterm(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{metrics_port}",
            [scorer.pid, sidecar.pid],
        )
        assert answers == [(200, {"predictions": [2.0 * x]}) for x in range(10)]
        assert ready_status == 503
        assert await asyncio.wait_for(sidecar.wait(), 30) == 0
        assert await asyncio.wait_for(scorer.wait(), 30) == 0
    finally:
        for process in (scorer, sidecar):
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


def worker_pids(session_id: int) -> set[int]:
    """The R worker processes (`python -m rscore.r_scorer.worker`) in a process session."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"rscore.r_scorer.worker" in command and os.getsid(int(entry.name)) == session_id:
                pids.add(int(entry.name))
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile
    return pids


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return -1.0


@pytest.mark.parametrize("killed", [1, 2], ids=["one-restarted", "both-restarted"])
async def test_a_restarted_worker_drains_like_the_first_ones(
    slow_bundle: Path, tmp_path: Path, killed: int
) -> None:
    """A worker killed and restarted (by the supervisor's monitor thread) keeps serving
    through a SIGTERM drain: every accepted request is answered 200. It used to be
    SIGKILLed as soon as the drain began (its parent-death signal followed the monitor
    thread, which ended there): 502 for the request in R, 504 for the queued."""
    port, metrics_port = free_port(), free_port()
    server = await start(
        "-m", "rscore.cli", "serve", str(slow_bundle), "--workers", "2",
        "--port", str(port), "--metrics-port", str(metrics_port), "--auth", "none",
        log=tmp_path / "serve.log",
    )  # fmt: skip
    base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base)
            first = worker_pids(server.pid)
            assert len(first) == 2
            for pid in sorted(first)[:killed]:
                os.kill(pid, signal.SIGKILL)

            async def restarted() -> None:
                while not (
                    await metric(session, metrics, "rscore_worker_restarts_total") >= killed
                    and await metric(session, metrics, "rscore_workers") == 2
                    and len(worker_pids(server.pid) - first) == killed
                ):
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(restarted(), 60)
            await wait_ready(session, base)
        answers, ready_status, _ = await load_then_sigterm(base, metrics, [server.pid])
        assert answers == [(200, {"predictions": [2.0 * x]}) for x in range(10)]
        assert ready_status == 503
        assert await asyncio.wait_for(server.wait(), 30) == 0
    finally:
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGKILL)
            await server.wait()
