"""The Dispatcher's event-driven hand-off, against fake worker links (no R, no sockets).

A request that finds a worker idle (and nobody queued before it) is written to that
worker by the end of the loop iteration it arrived in, with no task to wake; an answer
settles its jobs when the link hands it over, and the worker's next turn starts the
same way. These tests pin the behaviour that must not change with it: FIFO order,
batches of waiting requests, the queue bound (429), give-ups (504) and crashes (502).
They assert what is sent and answered, never how fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from rscore.r_scorer.errors import ModelError, WorkerCrashed
from rscore.r_scorer.pool import ModelInfo, WorkerLink
from rscore.r_scorer.prototype import Prototype, TypedColumn, TypedFrame
from rscore.sidecar.admission import Dispatcher, Job
from rscore.sidecar.errors import Overloaded

OnAnswer = Callable[[asyncio.Future[dict[str, Any]]], None]


def frame(*xs: float) -> TypedFrame:
    return TypedFrame((TypedColumn("x", "numeric", list(xs)),), len(xs))


class FakeLink:
    """A worker link that records what is sent and answers when the test says so."""

    def __init__(self, slot: int = 0, *, batchable: bool = True) -> None:
        self.slot = slot
        self.pid = 1000 + slot
        self.model = ModelInfo("m", "1", batchable, (), Prototype.from_json({}))
        self.usable = True
        self.sent: list[list[float]] = []  # the x column of every R call, in order
        self._pending: tuple[asyncio.Future[dict[str, Any]], OnAnswer | None] | None = None

    reply_of = staticmethod(WorkerLink.reply_of)

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def send(
        self, frame: TypedFrame, timeout_s: float | None = None, on_answer: OnAnswer | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        assert self._pending is None, "a second request overlapped the first"
        if not self.usable:
            raise WorkerCrashed(f"R worker pid {self.pid} is gone")
        self.sent.append(list(frame.columns[0].values))
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending = (reply, on_answer)
        return reply

    def answer(self, outcome: dict[str, Any] | WorkerCrashed | None = None) -> None:
        """Answer the call in flight: by default each x doubled."""
        assert self._pending is not None, "nothing in flight"
        (reply, on_answer), self._pending = self._pending, None
        if outcome is None:
            outcome = {"ok": True, "predictions": [2 * x for x in self.sent[-1]], "r_seconds": 0}
        if isinstance(outcome, WorkerCrashed):
            reply.set_exception(outcome)
        else:
            reply.set_result(outcome)
        if on_answer is not None:
            on_answer(reply)

    def crash(self) -> None:
        self.usable = False
        self.answer(WorkerCrashed(f"R worker pid {self.pid} died"))


def dispatcher(*links: FakeLink, max_queue: int = 8, **options: Any) -> Dispatcher:
    dispatcher = Dispatcher(max_queue_per_worker=max_queue, **options)
    for link in links:
        dispatcher.add_worker(link)
    return dispatcher


def submit(dispatcher: Dispatcher, *xs: float, deadline: float = 1e9) -> Job:
    return dispatcher.submit(frame(*xs), deadline)


async def next_iteration() -> None:
    """Let the loop run what is due now (the dispatcher's writes, done callbacks)."""
    await asyncio.sleep(0)


async def test_an_idle_worker_gets_the_request_in_the_same_iteration() -> None:
    link = FakeLink()
    jobs = dispatcher(link)
    await next_iteration()
    job = submit(jobs, 1.0)
    await next_iteration()
    assert link.sent == [[1.0]]  # no task had to wake for it
    assert (jobs.queue_depth, jobs.inflight) == (0, 1)
    link.answer()
    assert job.future.done()  # settled by the answer itself, not a loop iteration later
    assert job.future.result().predictions == [2.0]
    await next_iteration()  # the future's done callbacks
    assert (jobs.queue_depth, jobs.inflight, jobs.busy) == (0, 0, False)


async def test_requests_behind_a_busy_worker_share_its_next_call_in_order() -> None:
    link = FakeLink()
    jobs = dispatcher(link)
    first = submit(jobs, 1.0)
    await next_iteration()
    waiting = [submit(jobs, 10.0), submit(jobs, 20.0, 21.0), submit(jobs, 30.0)]
    await next_iteration()
    assert link.sent == [[1.0]]  # the worker is busy: the others wait
    assert (jobs.queue_depth, jobs.inflight) == (3, 1)
    link.answer()
    assert first.future.result().predictions == [2.0]
    await next_iteration()
    assert link.sent[-1] == [10.0, 20.0, 21.0, 30.0]  # one merged call, first come first
    link.answer()
    assert [job.future.result().predictions for job in waiting] == [[20.0], [40.0, 42.0], [60.0]]


async def test_requests_arriving_together_at_an_idle_worker_share_a_call() -> None:
    link = FakeLink()
    jobs = dispatcher(link)
    await next_iteration()
    submit(jobs, 1.0)
    submit(jobs, 2.0)  # in the same loop iteration: both waiting when the worker is fed
    await next_iteration()
    assert link.sent == [[1.0, 2.0]]


async def test_idle_workers_each_take_one_before_any_batch_forms() -> None:
    one, two = FakeLink(0), FakeLink(1)
    jobs = dispatcher(one, two)
    await next_iteration()
    first, second = submit(jobs, 1.0), submit(jobs, 2.0)  # in the same loop iteration
    assert (jobs.queue_depth, jobs.inflight) == (0, 2)  # each given to a worker at once
    third = submit(jobs, 3.0)  # no worker idle: it waits, and may join a call
    assert (jobs.queue_depth, jobs.inflight) == (1, 2)
    await next_iteration()
    assert sorted(one.sent + two.sent) == [[1.0, 3.0], [2.0]]
    one.answer()
    two.answer()
    assert [job.future.result().predictions for job in (first, second, third)] == [
        [2.0],
        [4.0],
        [6.0],
    ]


async def test_batches_stop_at_max_batch_rows() -> None:
    link = FakeLink()
    jobs = dispatcher(link, max_batch_rows=3)
    submit(jobs, 0.0)
    await next_iteration()
    submit(jobs, 1.0, 2.0)
    submit(jobs, 3.0)
    submit(jobs, 4.0)
    link.answer()
    await next_iteration()
    assert link.sent[-1] == [1.0, 2.0, 3.0]
    link.answer()
    await next_iteration()
    assert link.sent[-1] == [4.0]


async def test_a_model_not_batchable_gets_one_request_per_call() -> None:
    link = FakeLink(batchable=False)
    jobs = dispatcher(link)
    for x in (1.0, 2.0, 3.0):
        submit(jobs, x)
    for _ in range(3):
        await next_iteration()
        link.answer()
    assert link.sent == [[1.0], [2.0], [3.0]]


async def test_the_oldest_waiting_request_goes_first_whichever_worker_frees_up() -> None:
    one, two = FakeLink(0, batchable=False), FakeLink(1, batchable=False)
    jobs = dispatcher(one, two)
    submit(jobs, 1.0)
    submit(jobs, 2.0)
    await next_iteration()  # both workers busy now
    submit(jobs, 3.0)
    submit(jobs, 4.0)
    await next_iteration()
    assert sorted(one.sent + two.sent) == [[1.0], [2.0]]
    two.answer()
    submit(jobs, 5.0)  # arrives while 3.0 and 4.0 wait: goes behind them
    await next_iteration()
    assert two.sent[-1] == [3.0]
    one.answer()
    await next_iteration()
    assert one.sent[-1] == [4.0]
    two.answer()
    await next_iteration()
    assert two.sent[-1] == [5.0]


async def test_a_worker_that_connects_takes_the_oldest_waiting_request() -> None:
    jobs = dispatcher()
    first, second = submit(jobs, 1.0), submit(jobs, 2.0)  # no worker yet: both queued
    assert jobs.queue_depth == 2
    link = FakeLink(batchable=False)
    jobs.add_worker(link)
    await next_iteration()
    assert link.sent == [[1.0]]
    link.answer()
    await next_iteration()
    assert link.sent == [[1.0], [2.0]]
    link.answer()
    assert [first.future.result().predictions, second.future.result().predictions] == [
        [2.0],
        [4.0],
    ]


async def test_the_queue_bound_is_unchanged() -> None:
    link = FakeLink()
    jobs = dispatcher(link, max_queue=1)
    submit(jobs, 1.0)  # goes to the idle worker
    await next_iteration()
    submit(jobs, 2.0)  # the one queued place
    with pytest.raises(Overloaded):
        submit(jobs, 3.0)
    assert (jobs.queue_depth, jobs.inflight) == (1, 1)


@pytest.mark.parametrize("workers", [1, 2])
async def test_with_no_queue_only_idle_workers_take_requests(workers: int) -> None:
    links = [FakeLink(slot, batchable=False) for slot in range(workers)]
    jobs = dispatcher(*links, max_queue=0)
    await next_iteration()
    for x in range(workers):  # in one loop iteration, before any is sent
        submit(jobs, float(x))
    with pytest.raises(Overloaded):
        submit(jobs, 99.0)
    await next_iteration()
    assert sorted(sent for link in links for sent in link.sent) == [
        [float(x)] for x in range(workers)
    ]


async def test_a_waiting_request_whose_caller_gave_up_is_never_sent() -> None:
    link = FakeLink()
    jobs = dispatcher(link)
    submit(jobs, 1.0)
    await next_iteration()
    gave_up, kept = submit(jobs, 2.0), submit(jobs, 3.0)
    gave_up.future.cancel()  # what the request timeout does (504)
    await next_iteration()
    assert jobs.queue_depth == 1
    link.answer()
    await next_iteration()
    assert link.sent[-1] == [3.0]
    link.answer()
    assert kept.future.result().predictions == [6.0]


async def test_a_request_in_flight_that_timed_out_keeps_its_worker_busy_until_answered() -> None:
    link = FakeLink()
    jobs = dispatcher(link)
    stuck = submit(jobs, 1.0)
    await next_iteration()
    stuck.future.cancel()  # 504 for its caller; R is still working on it
    later = submit(jobs, 2.0)
    await next_iteration()
    assert link.sent == [[1.0]]  # never two requests at once on one worker
    link.answer()
    await next_iteration()
    assert link.sent[-1] == [2.0]
    link.answer()
    assert later.future.result().predictions == [4.0]
    await next_iteration()
    assert not jobs.busy


async def test_a_crash_fails_every_member_and_the_queue_moves_to_another_worker() -> None:
    victim, other = FakeLink(0), FakeLink(1)
    jobs = dispatcher(victim, other)
    doomed = [submit(jobs, 1.0)]
    await next_iteration()
    doomed.append(submit(jobs, 2.0))
    await next_iteration()  # one on each worker
    behind = submit(jobs, 3.0)
    await next_iteration()
    on_victim = doomed[0] if victim.sent == [[1.0]] else doomed[1]
    victim.crash()
    jobs.remove_worker(victim)
    with pytest.raises(WorkerCrashed):
        on_victim.future.result()
    await next_iteration()
    assert not behind.future.done()  # waits for the live worker, is never sent to the dead
    assert victim.sent in ([[1.0]], [[2.0]])
    other.answer()
    await next_iteration()
    assert other.sent[-1] == [3.0]
    other.answer()
    assert behind.future.result().predictions == [6.0]


async def test_r_failing_on_a_merged_batch_scores_each_member_alone_in_order() -> None:
    link = FakeLink()
    jobs = dispatcher(link)
    submit(jobs, 0.0)
    await next_iteration()
    members = [submit(jobs, 1.0), submit(jobs, 2.0), submit(jobs, 3.0)]
    link.answer()
    await next_iteration()
    assert link.sent[-1] == [1.0, 2.0, 3.0]
    failed = {"ok": False, "error": {"code": "model_error", "message": "bad row"}}
    link.answer(failed)  # the merged call: each member is sent alone next, at once
    assert link.sent[-1] == [1.0]
    link.answer()
    link.answer(failed)  # 2.0 alone fails
    link.answer()
    assert link.sent[-3:] == [[1.0], [2.0], [3.0]]
    assert members[0].future.result().predictions == [2.0]
    with pytest.raises(ModelError, match="bad row"):
        members[1].future.result()
    assert members[2].future.result().predictions == [6.0]
    await next_iteration()
    assert (jobs.inflight, jobs.queue_depth) == (0, 0)


async def test_with_a_batch_delay_the_first_request_waits_for_company() -> None:
    link = FakeLink()
    jobs = dispatcher(link, max_batch_delay_s=0.01)
    first = submit(jobs, 1.0)
    await next_iteration()
    assert link.sent == []  # the delay lets a batch gather
    second = submit(jobs, 2.0)
    async with asyncio.timeout(5):
        while not link.sent:
            await asyncio.sleep(0.005)
    assert link.sent == [[1.0, 2.0]]
    link.answer()
    assert [first.future.result().predictions, second.future.result().predictions] == [
        [2.0],
        [4.0],
    ]


async def test_a_retiring_worker_is_not_given_more() -> None:
    link, other = FakeLink(0, batchable=False), FakeLink(1, batchable=False)
    jobs = dispatcher(link, other)
    submit(jobs, 1.0)
    submit(jobs, 2.0)
    await next_iteration()
    behind = submit(jobs, 3.0)
    await next_iteration()
    busy_first = link if link.sent == [[1.0]] else other
    busy_first.usable = False  # its answer said "last": it recycles
    busy_first.answer()
    await next_iteration()
    assert busy_first.sent == [[1.0]]
    assert not behind.future.done()
    idle_next = other if busy_first is link else link
    idle_next.answer()
    await next_iteration()
    assert idle_next.sent[-1] == [3.0]


async def test_a_request_given_to_a_worker_that_dies_before_the_write_waits_for_another() -> None:
    doomed = FakeLink(0)
    jobs = dispatcher(doomed)
    await next_iteration()
    job = submit(jobs, 1.0)  # given to the idle worker; written at the end of the iteration
    doomed.usable = False  # ...which dies first
    jobs.remove_worker(doomed)
    await next_iteration()
    assert doomed.sent == []
    assert (jobs.queue_depth, jobs.inflight) == (1, 0)  # first in line again
    fresh = FakeLink(1)
    jobs.add_worker(fresh)
    await next_iteration()
    assert fresh.sent == [[1.0]]
    fresh.answer()
    assert job.future.result().predictions == [2.0]
