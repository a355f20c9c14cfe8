"""WorkerLink.send(): the answer is handed over synchronously, and a worker that answers
out of turn is dropped (it is restarted) instead of being trusted again. A fake worker
speaks the protocol over the pool's real Unix socket; no R."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rscore.r_scorer import protocol
from rscore.r_scorer.errors import WorkerCrashed
from rscore.r_scorer.pool import WorkerLink, WorkerPool
from rscore.r_scorer.prototype import TypedColumn, TypedFrame

FRAME = TypedFrame((TypedColumn("x", "numeric", [1.0]),), 1)
MODEL = {"name": "m", "version": "1", "batchable": True, "packages": [], "prototype": {}}


async def fake_worker(socket_path: Path, *, id_offset: int) -> None:
    """Say hello, then answer each request with its x doubled, under its id plus
    `id_offset` (0: in turn)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(protocol.encode(protocol.hello(0, 4242, 1, MODEL)))
    try:
        while True:
            header = await reader.readexactly(protocol.HEADER.size)
            request = protocol.decode(await reader.readexactly(protocol.frame_length(header)))
            x = request["columns"][0][2]
            reply = protocol.ok_reply(request["id"] + id_offset, [2 * v for v in x], 0.0)
            writer.write(protocol.encode(reply))
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(tmp_path / "workers.sock")
    await pool.start()
    yield pool
    await pool.close()


async def connected(pool: WorkerPool, id_offset: int) -> tuple[WorkerLink, asyncio.Task[None]]:
    worker = asyncio.create_task(fake_worker(pool.socket_path, id_offset=id_offset))
    await asyncio.wait_for(pool.wait_for_workers(1), 10)
    return pool.workers[0], worker


async def test_on_answer_sees_the_answer_as_soon_as_it_is_read(pool: WorkerPool) -> None:
    link, worker = await connected(pool, id_offset=0)
    seen: list[dict[str, Any]] = []
    reply = link.send(FRAME, 5.0, lambda future: seen.append(future.result()))
    assert link.busy
    async with asyncio.timeout(10):
        answer = await asyncio.shield(reply)
    assert seen == [answer]  # called by the reader, before any awaiter of the future
    assert link.reply_of(answer).predictions == [2.0]
    assert not link.busy
    assert (await link.score(FRAME)).predictions == [2.0]  # score() is send() + reply_of()
    worker.cancel()


async def test_an_answer_out_of_turn_drops_the_worker(pool: WorkerPool) -> None:
    link, worker = await connected(pool, id_offset=1)
    with pytest.raises(WorkerCrashed, match="broke the worker protocol"):
        async with asyncio.timeout(10):
            await link.score(FRAME)
    assert not link.usable
    async with asyncio.timeout(10):
        await worker  # the sidecar hung up on it: its supervisor would restart it
