"""Fan-out of a large request over idle workers: the Dispatcher's shell, against fake
worker links (no R, no sockets).

What is pinned: a request is split only for a splittable model, only over idle workers
and only when nobody else waits; chunks are contiguous and joined in order; one chunk's
failure (R's error, or its worker's death) is the request's answer, and nobody else's.
The decision itself is tested as a table in tests/test_fanout.py.
"""

from __future__ import annotations

import pytest

from r_scorer.errors import ModelError, WorkerCrashed
from r_scorer.pool import ModelInfo
from r_scorer.prototype import Prototype
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
