"""Admission of scoring requests: one request per worker at a time, a bounded FIFO.

`Dispatcher` keeps the queue of jobs and one loop per connected worker that takes the
oldest live job (with, for a batchable model, the waiting jobs that may share its R
call: see `batching`), sends it, and settles the futures. A job whose caller gave up (its
future cancelled on timeout) is skipped if still queued; one in flight is left to the
worker's watchdog. A job is never handed to a worker that has gone: it waits for the
next one. The decisions (room in the queue, how concurrency integrates over time) are
plain functions and a small class, tested with tables.

Asyncio only; never touches HTTP (statuses are chosen by the handlers) or R.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from r_scorer.errors import ModelError, ScoringError
from r_scorer.pool import ScoreReply, WorkerLink
from r_scorer.prototype import TypedFrame
from sidecar.batching import can_join, merge_frames, signature, split_predictions
from sidecar.errors import Overloaded, Unavailable

log = logging.getLogger("rscore.admission")


def queue_has_room(queued: int, max_queue_per_worker: int, workers: int) -> bool:
    """Room for one more waiting request? The bound scales with the worker count (at
    least one worker's worth, so a pod whose workers are restarting still queues)."""
    return queued < max_queue_per_worker * max(1, workers)


class ConcurrencyIntegral:
    """The exact integral over time of a piecewise-constant level (queued + in flight).

    Its growth between two scrapes divided by their interval is the exact average
    concurrency in between: no sampling. Time is given, never read.
    """

    def __init__(self, now: float) -> None:
        self._since = now
        self._level = 0
        self._total = 0.0

    def change(self, now: float, delta: int) -> None:
        self._total += self._level * (now - self._since)
        self._since = now
        self._level += delta

    @property
    def level(self) -> int:
        return self._level

    def total(self, now: float) -> float:
        return self._total + self._level * (now - self._since)


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class Job:
    """One admitted request waiting for (or being scored by) a worker."""

    frame: TypedFrame
    deadline: float  # monotonic seconds
    future: asyncio.Future[ScoreReply]
    state: JobState = JobState.QUEUED


class Dispatcher:
    """Hands queued jobs to idle workers, first come first served."""

    def __init__(
        self,
        *,
        max_queue_per_worker: int,
        max_batch_rows: int = 256,
        max_batch_delay_s: float = 0.0,
        on_r_call: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue_per_worker < 0:
            raise ValueError("max_queue_per_worker must be >= 0")
        if max_batch_rows < 1 or max_batch_delay_s < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_batch_delay_s >= 0")
        self.max_queue_per_worker = max_queue_per_worker
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay_s = max_batch_delay_s
        self._on_r_call = on_r_call  # (rows, seconds inside R) of every call: metrics
        self.draining = False
        self._clock = clock
        self._jobs: deque[Job] = deque()
        self._idle: dict[WorkerLink, asyncio.Future[Job]] = {}
        self._loops: dict[WorkerLink, asyncio.Task[None]] = {}
        self._queued = 0
        self._inflight = 0
        self.concurrency = ConcurrencyIntegral(clock())

    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def workers(self) -> int:
        return len(self._loops)

    @property
    def busy(self) -> bool:
        """Any request accepted and not yet answered?"""
        return self._queued + self._inflight > 0

    def submit(self, frame: TypedFrame, deadline: float, *, expected_workers: int = 0) -> Job:
        """Admit a request or raise Unavailable (draining) / Overloaded (queue full)."""
        if self.draining:
            raise Unavailable("the server is shutting down")
        workers = max(self.workers, expected_workers)
        idle_worker_waiting = bool(self._idle) and not self._jobs
        if not idle_worker_waiting and not queue_has_room(
            self._queued, self.max_queue_per_worker, workers
        ):
            raise Overloaded(
                f"all {workers} R worker(s) are busy and {self._queued} request(s) are queued"
            )
        job = Job(frame, deadline, asyncio.get_running_loop().create_future())
        job.future.add_done_callback(lambda _: self._settled(job))
        self._queued += 1
        self.concurrency.change(self._clock(), +1)
        self._offer(job)
        return job

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait until every accepted one is answered; False if
        `timeout_s` ran out first."""
        self.draining = True
        deadline = self._clock() + timeout_s
        while self.busy and self._clock() < deadline:
            await asyncio.sleep(0.01)  # shutdown only: polling keeps the hot path free
        return not self.busy

    def add_worker(self, link: WorkerLink) -> None:
        """Start feeding a newly connected worker."""
        self._loops[link] = asyncio.get_running_loop().create_task(
            self._feed(link), name=f"rscore-feed-{link.slot}"
        )

    def remove_worker(self, link: WorkerLink) -> None:
        """A worker went away: stop waiting for work on its behalf."""
        waiting = self._idle.pop(link, None)
        if waiting is not None and not waiting.done():
            waiting.cancel()

    async def close(self) -> None:
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)

    def _offer(self, job: Job) -> None:
        """Give a job to a waiting worker at once, or queue it."""
        while self._idle:
            link, waiting = self._idle.popitem()
            if not waiting.done() and link.usable:
                self._start(job, link)  # counted as in flight from this moment
                waiting.set_result(job)
                return
        self._jobs.append(job)

    def _next_live_job(self) -> Job | None:
        while self._jobs:
            job = self._jobs.popleft()
            if job.state is JobState.QUEUED:
                return job
        return None

    def _start(self, job: Job, link: WorkerLink) -> None:
        job.state = JobState.RUNNING
        self._queued -= 1
        self._inflight += 1

    def _requeue(self, job: Job) -> None:
        """A job handed to a worker that died before sending it: first in line again."""
        job.state = JobState.QUEUED
        self._inflight -= 1
        self._queued += 1
        if job.future.done():  # its caller gave up meanwhile
            self._settled(job)
        else:
            self._jobs.appendleft(job)

    async def _feed(self, link: WorkerLink) -> None:
        try:
            while link.usable:
                job = self._next_live_job()
                if job is not None:
                    self._start(job, link)
                else:
                    waiting: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
                    self._idle[link] = waiting
                    try:
                        job = await waiting  # _offer() has started it for this link
                    except asyncio.CancelledError:
                        if waiting.cancelled():  # remove_worker(): the link is gone
                            return
                        raise
                batch = [job]
                if link.model.batchable:
                    if self.max_batch_delay_s > 0:  # let a batch gather (Triton's delay)
                        await asyncio.sleep(self.max_batch_delay_s)
                    batch += self._joiners(job, link)
                if not link.usable:  # died meanwhile: the jobs go to another worker
                    for waiting_job in reversed(batch):
                        self._requeue(waiting_job)
                    return
                await self._run(link, batch)
        finally:
            self._loops.pop(link, None)
            self._idle.pop(link, None)
            if self._jobs and self._idle:  # hand a stranded job to a live waiting worker
                job = self._next_live_job()
                if job is not None:
                    self._offer(job)

    def _joiners(self, first: Job, link: WorkerLink) -> list[Job]:
        """Queued jobs that may share `first`'s R call (contiguous, same columns)."""
        joiners: list[Job] = []
        rows = first.frame.nrows
        first_signature = signature(first.frame)
        while self._jobs:
            candidate = self._jobs[0]
            if candidate.state is not JobState.QUEUED:
                self._jobs.popleft()  # its caller gave up
                continue
            if not can_join(rows, first_signature, candidate.frame, self.max_batch_rows):
                break
            self._jobs.popleft()
            self._start(candidate, link)
            joiners.append(candidate)
            rows += candidate.frame.nrows
        return joiners

    async def _run(self, link: WorkerLink, batch: list[Job]) -> None:
        """Score started jobs in one R call; callers that gave up already are skipped."""
        try:
            live = [job for job in batch if not job.future.done()]
            if live:
                await self._score_settling(link, live)
        finally:
            for job in batch:
                job.state = JobState.DONE
            self._inflight -= len(batch)
            self.concurrency.change(self._clock(), -len(batch))

    async def _score_settling(self, link: WorkerLink, jobs: list[Job]) -> None:
        """Score jobs in one R call and give each its answer or its error. If R fails on
        a merged batch, each member is scored alone, for an answer of its own."""
        try:
            replies = await self._score(link, jobs)
        except ModelError as exc:
            if len(jobs) == 1:
                self._settle(jobs[0], exc)
                return
            for job in jobs:  # one request's bad rows must fail only that request
                await self._score_settling(link, [job])
        except ScoringError as exc:  # worker_crashed, ...: the answer of every member
            for job in jobs:
                self._settle(job, exc)
        except Exception:  # a bug must cost answers, never the feeding loop
            log.exception("scoring on worker pid %s failed unexpectedly", link.pid)
            for job in jobs:
                self._settle(job, ScoringError("internal error while scoring"))
        else:
            for job, reply in zip(jobs, replies, strict=True):
                if not job.future.done():
                    job.future.set_result(reply)

    async def _score(self, link: WorkerLink, jobs: list[Job]) -> list[ScoreReply]:
        """One R call for `jobs`, its predictions split back per job."""
        frame = merge_frames([job.frame for job in jobs])
        timeout_s = max(0.0, min(job.deadline for job in jobs) - self._clock())
        reply = await link.score(frame, timeout_s)
        if self._on_r_call is not None:
            self._on_r_call(frame.nrows, reply.r_seconds)
        if len(jobs) == 1:
            return [reply]
        parts = split_predictions(reply.predictions, [job.frame.nrows for job in jobs])
        return [ScoreReply(part, reply.r_seconds) for part in parts]

    @staticmethod
    def _settle(job: Job, error: ScoringError) -> None:
        if not job.future.done():
            job.future.set_exception(error)

    def _settled(self, job: Job) -> None:
        """The job's future is done: if nobody took it from the queue, it leaves now."""
        if job.state is JobState.QUEUED:
            job.state = JobState.DONE
            self._queued -= 1
            self.concurrency.change(self._clock(), -1)
