"""Fan-out of a large request over idle workers: the Dispatcher's shell, against fake
worker links (no R, no sockets).

What is pinned: a request is split only for a splittable model, only over idle workers
(idle meaning quiet: no other request answered for `quiet_s`) and only when nobody
else waits; chunks are contiguous and joined in order; one chunk's
failure (R's error, or its worker's death) is the request's answer, and nobody else's.
The decision itself is tested as a table in tests/test_fanout.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from rscore.r_scorer.errors import ModelError, WorkerCrashed
from rscore.r_scorer.pool import ModelInfo
from rscore.r_scorer.prototype import Prototype
from tests.test_fast_path import FakeLink, dispatcher, next_iteration, submit


class SplittableLink(FakeLink):
    def __init__(self, slot: int = 0, *, splittable: bool = True) -> None:
        super().__init__(slot)
        self.model = ModelInfo("m", "1", True, (), Prototype.from_json({}), splittable=splittable)


def rows(count: int, start: float = 0.0) -> list[float]:
    return [start + index for index in range(count)]


async def test_a_large_request_is_split_over_idle_workers_and_joined_in_order() -> None:
    links = [SplittableLink(slot) for slot in range(3)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    job = submit(jobs, *rows(14))
    await next_iteration()
    sent = sorted((link.sent[0] for link in links), key=lambda chunk: chunk[0])
    assert sent == [rows(5), rows(5, 5.0), rows(4, 10.0)]
    assert jobs.inflight == 3  # one per worker it occupies
    for link in reversed(links):  # answers in any order: joined by position
        link.answer()
    await next_iteration()  # the chunks' done callbacks
    assert job.future.result().predictions == [2 * x for x in rows(14)]
    await next_iteration()
    assert (jobs.queue_depth, jobs.inflight, jobs.busy) == (0, 0, False)
    # The workers are idle again, each ready for the next request.
    second = submit(jobs, 1.0)
    await next_iteration()
    assert sum(len(link.sent) for link in links) == 4
    next(link for link in links if link.busy).answer()
    assert second.future.result().predictions == [2.0]


async def test_a_request_under_twice_the_chunk_minimum_is_not_split() -> None:
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    submit(jobs, *rows(7))
    await next_iteration()
    assert sorted(len(link.sent) for link in links) == [0, 1]


async def test_splittable_false_is_never_split() -> None:
    links = [SplittableLink(slot, splittable=False) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    job = submit(jobs, *rows(40))
    await next_iteration()
    (busy,) = [link for link in links if link.busy]
    assert busy.sent == [rows(40)]
    busy.answer()
    await next_iteration()
    assert job.future.result().predictions == [2 * x for x in rows(40)]


async def test_a_busy_pod_does_not_split() -> None:
    """Every worker busy: the big request waits for one worker, and takes only that one,
    while others wait behind it."""
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4, max_batch_rows=1)
    await next_iteration()
    small = [submit(jobs, 1.0), submit(jobs, 2.0)]
    await next_iteration()
    big = submit(jobs, *rows(40))
    after = submit(jobs, 3.0)
    await next_iteration()
    assert all(link.busy for link in links)
    first = next(link for link in links if link.sent == [[1.0]])
    other = next(link for link in links if link is not first)
    first.answer()  # one worker free, one request still waiting behind the big one
    assert small[0].future.done()
    assert first.sent[-1] == rows(40)  # whole, on one worker
    other.answer()
    assert other.sent[-1] == [3.0]
    first.answer()
    other.answer()
    await next_iteration()
    assert big.future.result().predictions == [2 * x for x in rows(40)]
    assert after.future.result().predictions == [6.0]


async def test_a_pod_serving_a_stream_of_requests_does_not_split() -> None:
    """Both workers free at this instant, but one answered a small request a moment ago:
    the pod is serving a stream of requests, so the big request takes one worker. Once
    no other request has been answered for `quiet_s`, the next big one is split."""
    now = [0.0]
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4, quiet_s=0.1, clock=lambda: now[0])
    await next_iteration()
    small = submit(jobs, 1.0)
    await next_iteration()
    next(link for link in links if link.busy).answer(answered([1.0], 1.0))
    assert small.future.result().predictions == [2.0]
    now[0] += 0.05  # within quiet_s of that answer
    big = submit(jobs, *rows(40))
    await next_iteration()
    (taken,) = [link for link in links if link.busy]
    assert taken.sent[-1] == rows(40)  # whole, on one worker
    taken.answer(answered(rows(40), 1.0))  # R is slow: a split is worth it
    await next_iteration()
    assert big.future.result().predictions == [2 * x for x in rows(40)]
    now[0] += 0.1  # quiet: nobody else answered since (the big one was whole: it counts)
    later = submit(jobs, *rows(40))
    await next_iteration()
    assert sorted(link.sent[-1] for link in links) == [rows(20), rows(20, 20.0)]
    for link in links:
        link.answer()
    await next_iteration()
    assert later.future.result().predictions == [2 * x for x in rows(40)]


async def test_back_to_back_big_requests_each_split() -> None:
    """A chunk is not another request: workers that just scored chunks split the next
    big request at once."""
    now = [0.0]
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4, quiet_s=0.1, clock=lambda: now[0])
    await next_iteration()
    for _ in range(2):
        big = submit(jobs, *rows(40))
        await next_iteration()
        assert sorted(link.sent[-1] for link in links) == [rows(20), rows(20, 20.0)]
        for link in links:
            link.answer(answered(link.sent[-1], 1.0))
        await next_iteration()
        assert big.future.result().predictions == [2 * x for x in rows(40)]


def test_quiet_s_and_min_saving_s_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="quiet_s"):
        dispatcher(quiet_s=-1.0)
    with pytest.raises(ValueError, match="min_saving_s"):
        dispatcher(min_saving_s=-1.0)


def answered(xs: list[float], r_seconds: float) -> dict[str, Any]:
    return {"ok": True, "predictions": [2 * x for x in xs], "r_seconds": r_seconds}


async def test_a_request_whose_r_time_is_too_short_to_gain_is_not_split() -> None:
    """The first large request is split (nothing is known of R's cost yet); its chunks
    teach R's seconds per row. At 1 ms per 20 rows, 40 rows save 1 ms in two chunks: under
    min_saving_s, so the next 40 rows go whole; 400 rows save 10 ms: split."""
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4, min_saving_s=0.005, quiet_s=0)
    await next_iteration()
    first = submit(jobs, *rows(40))
    await next_iteration()
    for link in links:
        link.answer(answered(link.sent[-1], 0.001))  # 20 rows in 1 ms
    await next_iteration()
    assert first.future.result().predictions == [2 * x for x in rows(40)]
    assert jobs.seconds_per_row == pytest.approx(0.001 / 20)
    again = submit(jobs, *rows(40))
    await next_iteration()
    (taken,) = [link for link in links if link.busy]
    assert taken.sent[-1] == rows(40)
    taken.answer(answered(rows(40), 0.002))
    await next_iteration()
    assert again.future.result().predictions == [2 * x for x in rows(40)]
    large = submit(jobs, *rows(400))
    await next_iteration()
    assert sorted(link.sent[-1] for link in links) == [rows(200), rows(200, 200.0)]
    for link in links:
        link.answer()
    await next_iteration()
    assert large.future.result().predictions == [2 * x for x in rows(400)]


async def test_only_idle_workers_are_used() -> None:
    """One of three workers busy: the big request is split over the two idle ones."""
    links = [SplittableLink(slot) for slot in range(3)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    small = submit(jobs, 1.0)
    await next_iteration()
    (taken,) = [link for link in links if link.busy]
    big = submit(jobs, *rows(20))
    await next_iteration()
    chunks = sorted((link.sent[0] for link in links if link is not taken), key=min)
    assert chunks == [rows(10), rows(10, 10.0)]
    assert taken.sent == [[1.0]]
    for link in links:
        link.answer()
    await next_iteration()
    assert small.future.result().predictions == [2.0]
    assert big.future.result().predictions == [2 * x for x in rows(20)]


async def test_a_failing_chunk_fails_the_request_with_its_error() -> None:
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    job = submit(jobs, *rows(10))
    await next_iteration()
    failing = next(link for link in links if link.sent[0][0] == 5.0)
    failing.answer({"ok": False, "error": {"code": "model_error", "message": "row 7 is bad"}})
    await next_iteration()
    with pytest.raises(ModelError, match="row 7 is bad"):
        job.future.result()
    next(link for link in links if link is not failing).answer()  # answered, ignored
    await next_iteration()
    assert (jobs.inflight, jobs.busy) == (0, False)


async def test_a_worker_dying_mid_chunk_fails_that_request_only() -> None:
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    job = submit(jobs, *rows(10))
    await next_iteration()
    waiting = submit(jobs, 100.0)  # waits for a worker meanwhile
    links[0].crash()
    jobs.remove_worker(links[0])
    await next_iteration()
    with pytest.raises(WorkerCrashed):
        job.future.result()
    links[1].answer()  # its chunk: no one wants it any more; the worker goes on
    await next_iteration()
    assert links[1].sent[-1] == [100.0]
    links[1].answer()
    assert waiting.future.result().predictions == [200.0]
    await next_iteration()
    assert (jobs.queue_depth, jobs.inflight, jobs.busy) == (0, 0, False)


async def test_a_caller_giving_up_frees_the_chunks() -> None:
    links = [SplittableLink(slot) for slot in range(2)]
    jobs = dispatcher(*links, min_chunk_rows=4)
    await next_iteration()
    job = submit(jobs, *rows(10))
    await next_iteration()
    job.future.cancel()  # the request timed out
    await next_iteration()
    for link in links:  # the workers finish their chunks regardless
        link.answer()
    await next_iteration()
    assert (jobs.inflight, jobs.busy) == (0, False)
    assert not any(link.busy for link in links)
    again = submit(jobs, *rows(10))
    await next_iteration()
    for link in links:
        link.answer()
    await next_iteration()
    assert again.future.result().predictions == [2 * x for x in rows(10)]


def test_min_chunk_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_chunk_rows"):
        dispatcher(min_chunk_rows=0)
