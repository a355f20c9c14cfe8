"""Admission of scoring requests: one request per worker at a time, a bounded FIFO.

`Dispatcher` keeps the queue of jobs and the idle workers. Work starts on events, never
in a waiting task: a job that arrives while a worker is idle (and nobody is queued
before it) is given to that worker inside `submit()` and written to it by one callback
at the end of the same event-loop iteration, once its handler has parked (the fast
path); an answer, handed over synchronously by the worker's link, settles its jobs,
and the worker's next turn starts the same way with the oldest live job (with, for a
batchable model, the waiting jobs that may share its R call: see `batching`); a worker
that connects takes the oldest job. Before, a per-worker feeding task had to wake for
every request, and an answer went through three more loop iterations (a shield, that
task, then the handler) to reach its handler. A job whose caller gave up (its future
cancelled on timeout) is skipped if still queued; one in flight is left to the
worker's watchdog. A job is never handed to a worker that has gone: it waits for the
next one. A large request of a splittable model that finds other workers idle and
nobody waiting is cut into contiguous chunks, one per idle worker (`fanout`), scored at
once and joined in order; while it runs it counts once per chunk (it occupies that many
workers). Idle here means quiet: a worker that answered another request (one not split)
within the last `quiet_s` is serving a stream of requests, even if it is free at this
instant, and takes no chunk; so under load a big request takes one worker. Nor is a
request split whose R time, at the seconds per row measured on earlier large calls,
would shrink by less than `min_saving_s` (an lm's: its chunks would cost more than R).
The decisions (room in the queue, how concurrency integrates over time) are
plain functions and a small class, tested with tables.

Asyncio only; never touches HTTP (statuses are chosen by the handlers) or R.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rscore.r_scorer.errors import ModelError, ScoringError
from rscore.r_scorer.pool import ModelInfo, ScoreReply
from rscore.r_scorer.protocol import prediction_list
from rscore.r_scorer.prototype import TypedFrame
from rscore.sidecar.batching import can_join, merge_frames, signature, split_predictions
from rscore.sidecar.config import (
    DEFAULT_FANOUT_QUIET_MS,
    DEFAULT_FANOUT_SAVING_MS,
    DEFAULT_MIN_CHUNK_ROWS,
)
from rscore.sidecar.errors import Overloaded, Unavailable
from rscore.sidecar.fanout import chunk_bounds, join_predictions, slice_frame

log = logging.getLogger("rscore.admission")


class ScoringLink(Protocol):
    """What the dispatcher uses of a worker's link (rscore.r_scorer.pool.WorkerLink is one; a
    test's fake worker is one too, without inheriting anything)."""

    @property
    def pid(self) -> int: ...

    @property
    def model(self) -> ModelInfo: ...

    @property
    def usable(self) -> bool: ...

    def send(
        self,
        frame: TypedFrame,
        timeout_s: float | None = None,
        on_answer: Callable[[asyncio.Future[dict[str, Any]]], None] | None = None,
    ) -> asyncio.Future[dict[str, Any]]: ...

    def reply_of(self, answer: dict[str, Any]) -> ScoreReply: ...


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


@dataclass(eq=False)
class Turn:
    """One worker's turn: the jobs started on it together, scored in one R call, or
    (after R failed on a merged batch) in one call per member, one after another."""

    link: ScoringLink
    batch: list[Job]  # every job of the turn: in flight until the turn ends
    todo: deque[list[Job]]  # the R calls still to make, in order
    sent: list[Job] = field(default_factory=list)  # the members of the call in flight
    rows: int = 0  # rows of the call in flight
    chunk: bool = False  # a chunk of a split request (its end leaves the worker quiet)


class Dispatcher:
    """Hands queued jobs to idle workers, first come first served."""

    def __init__(
        self,
        *,
        max_queue_per_worker: int,
        max_batch_rows: int = 256,
        max_batch_delay_s: float = 0.0,
        min_chunk_rows: int = DEFAULT_MIN_CHUNK_ROWS,
        quiet_s: float = DEFAULT_FANOUT_QUIET_MS / 1000,
        min_saving_s: float = DEFAULT_FANOUT_SAVING_MS / 1000,
        on_r_call: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue_per_worker < 0:
            raise ValueError("max_queue_per_worker must be >= 0")
        if min_chunk_rows < 1:
            raise ValueError("min_chunk_rows must be >= 1")
        if quiet_s < 0 or min_saving_s < 0:
            raise ValueError("quiet_s and min_saving_s must be >= 0")
        self.min_chunk_rows = min_chunk_rows  # fan-out: the fewest rows a chunk may have
        self.quiet_s = quiet_s  # fan-out: how long a worker has answered nobody else
        self.min_saving_s = min_saving_s  # fan-out: R seconds a split must save at least
        # R's seconds per row on calls of min_chunk_rows rows or more (a moving average);
        # None until one is answered: the first large request is split if it may be.
        self.seconds_per_row: float | None = None
        # When each worker last ended a turn that was not a chunk: its last other request.
        self._served_at: dict[ScoringLink, float] = {}
        if max_batch_rows < 1 or max_batch_delay_s < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_batch_delay_s >= 0")
        self.max_queue_per_worker = max_queue_per_worker
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay_s = max_batch_delay_s
        self._on_r_call = on_r_call  # (rows, seconds inside R) of every call: metrics
        self.draining = False
        self._clock = clock
        self._jobs: deque[Job] = deque()
        self._links: set[ScoringLink] = set()  # connected and fed by this dispatcher
        self._idle: dict[ScoringLink, None] = {}  # connected, nothing to do; last in first
        self._gathering: dict[ScoringLink, tuple[asyncio.TimerHandle, list[Job]]] = {}
        self._assigned: list[tuple[ScoringLink, list[Job]]] = []  # given, not yet written
        self._send_scheduled = False
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
        return len(self._links)

    @property
    def busy(self) -> bool:
        """Any request accepted and not yet answered?"""
        return self._queued + self._inflight > 0

    def submit(self, frame: TypedFrame, deadline: float, *, expected_workers: int = 0) -> Job:
        """Admit a request or raise Unavailable (draining) / Overloaded (queue full). An
        idle worker is given it at once (the fast path: it is written at the end of this
        loop iteration); else it waits its turn."""
        if self.draining:
            raise Unavailable("the server is shutting down")
        workers = max(len(self._links), expected_workers)
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
        self._jobs.append(job)  # behind any waiting job: the fast path never jumps the queue
        if self._idle:
            self._pump(now=False)
        return job

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait until every accepted one is answered; False if
        `timeout_s` ran out first."""
        self.draining = True
        deadline = self._clock() + timeout_s
        while self.busy and self._clock() < deadline:
            await asyncio.sleep(0.01)  # shutdown only: polling keeps the hot path free
        return not self.busy

    def add_worker(self, link: ScoringLink) -> None:
        """Start feeding a newly connected worker: the oldest waiting job is its."""
        self._links.add(link)
        self._idle[link] = None
        self._pump()

    def remove_worker(self, link: ScoringLink) -> None:
        """A worker went away: feed it no more. Its call in flight, if any, has already
        been answered with WorkerCrashed by its link."""
        self._links.discard(link)
        self._idle.pop(link, None)
        self._served_at.pop(link, None)

    async def close(self) -> None:
        """Shutdown: batches not sent yet will never be; their callers hear so."""
        for timer, batch in self._gathering.values():
            timer.cancel()
            for job in batch:
                self._settle(job, Unavailable("the server is shutting down"))
        self._gathering.clear()
        for _, batch in self._assigned:
            for job in batch:
                self._settle(job, Unavailable("the server is shutting down"))
        self._assigned.clear()

    def _pump(self, *, now: bool = True) -> None:
        """Give each idle worker the oldest live job, while both exist; the jobs count as
        in flight from here. `now`: write at once, with the waiting jobs that may share
        the R call, as when a worker is done (R waits for nothing but this write; the
        answered handlers run after it). Else the writes wait for the end of the loop
        iteration: see `_send_assigned`."""
        while self._idle and self._jobs:
            job = self._jobs.popleft()
            if job.state is not JobState.QUEUED or job.future.done():
                continue  # its caller gave up; _settled() counts it out
            link = self._idle_link()
            if link is None:
                self._jobs.appendleft(job)
                return
            self._start(job)
            if self._fan_out(job, link):
                continue
            if link.model.batchable and self.max_batch_delay_s > 0:
                # Let a batch gather (Triton's delay); the joiners go at its end.
                timer = asyncio.get_running_loop().call_later(
                    self.max_batch_delay_s, self._gathered, link
                )
                self._gathering[link] = (timer, [job])
                continue
            if now:
                # With more workers idle, each takes one job before any batch forms.
                batchable = link.model.batchable and not self._idle
                self._begin(link, [job, *(self._joiners(job) if batchable else ())])
                continue
            self._assigned.append((link, [job]))
            if not self._send_scheduled:
                self._send_scheduled = True
                asyncio.get_running_loop().call_soon(self._send_assigned)

    def _send_assigned(self) -> None:
        """Write the jobs given to idle workers in this loop iteration, each with the
        queued jobs that may share its R call. Run last in the iteration, after the
        handlers and answers already due: the R process woken by a write tends to take
        the writer's core, and the sidecar's own work left would then wait for R
        (measured: more CPU per request, no lower latency, when the write came first)."""
        self._send_scheduled = False
        assigned, self._assigned = self._assigned, []
        stranded = [job for link, batch in assigned if not link.usable for job in batch]
        for job in reversed(stranded):  # their worker died meanwhile: first in line again
            self._requeue(job)
        for link, batch in assigned:
            if link.usable:
                joiners = self._joiners(batch[0]) if link.model.batchable else []
                self._begin(link, batch + joiners)
        if self._jobs:
            self._pump()

    def _fan_out(self, job: Job, link: ScoringLink) -> bool:
        """Split `job` over `link` and the other idle workers if `fanout` says so: each
        chunk is a job of its own, alone in its worker's turn, written now; the answers
        settle `job` (see `_chunk_done`). False, touching nothing, if it is not split."""
        if job.frame.nrows < 2 * self.min_chunk_rows or not self._idle or not link.model.splittable:
            return False  # the common case, decided without counting anything
        if not self._quiet(link):
            return False  # it is serving a stream of requests: the pod is not idle
        per_row = self.seconds_per_row
        if per_row is not None and job.frame.nrows * per_row / 2 < self.min_saving_s:
            return False  # two chunks would save less R time than they cost
        links: list[ScoringLink] = [link]
        busy: list[ScoringLink] = []
        while (other := self._idle_link()) is not None:
            (links if self._quiet(other) else busy).append(other)
        bounds = chunk_bounds(
            job.frame.nrows,
            idle_workers=len(links),
            waiting=self._queued,  # live jobs still queued (this one has started)
            splittable=link.model.splittable,
            min_chunk_rows=self.min_chunk_rows,
        )
        for spare in reversed([*links[len(bounds) :], *busy]):  # idle again
            self._idle[spare] = None
        if len(bounds) < 2:
            return False
        loop = asyncio.get_running_loop()
        chunks = [
            Job(slice_frame(job.frame, start, stop), job.deadline, loop.create_future())
            for start, stop in bounds
        ]
        # The request occupies one worker per chunk: count it so until each chunk's turn
        # ends (`_end` takes one off per chunk; the job itself never has a turn).
        extra = len(chunks) - 1
        self._inflight += extra
        self.concurrency.change(self._clock(), +extra)
        for chunk in chunks:
            chunk.state = JobState.RUNNING
            chunk.future.add_done_callback(functools.partial(self._chunk_done, job, chunks))
        job.future.add_done_callback(functools.partial(self._split_done, chunks))
        for chunk_link, chunk in zip(links, chunks, strict=False):
            self._begin(chunk_link, [chunk], chunk=True)
        return True

    def _learn_cost(self, rows: int, r_seconds: float) -> None:
        """Fold a large call's seconds per row into the moving average (a third each)."""
        measured = r_seconds / rows
        known = self.seconds_per_row
        self.seconds_per_row = measured if known is None else (2 * known + measured) / 3

    def _quiet(self, link: ScoringLink) -> bool:
        """Has `link` answered no other request (one not split) for `quiet_s`?"""
        served_at = self._served_at.get(link)
        return served_at is None or self._clock() - served_at >= self.quiet_s

    @staticmethod
    def _chunk_done(job: Job, chunks: list[Job], _: asyncio.Future[ScoreReply]) -> None:
        """A chunk is answered: a failure fails the request with that chunk's error at
        once; the last success answers it with every chunk's predictions, in order."""
        if job.future.done():
            return
        outcomes = [chunk.future for chunk in chunks]
        for outcome in outcomes:
            if outcome.done() and not outcome.cancelled() and outcome.exception() is not None:
                job.future.set_exception(outcome.exception())  # type: ignore[arg-type]
                return
        if all(outcome.done() for outcome in outcomes):
            replies = [outcome.result() for outcome in outcomes]
            job.future.set_result(
                ScoreReply(
                    join_predictions([reply.predictions for reply in replies]),
                    sum(reply.r_seconds for reply in replies),
                )
            )

    @staticmethod
    def _split_done(chunks: list[Job], _: asyncio.Future[ScoreReply]) -> None:
        """The request is settled (answered, failed, or its caller gave up): chunks not
        yet answered are of no use to anyone (their workers finish them regardless)."""
        for chunk in chunks:
            if not chunk.future.done():
                chunk.future.cancel()

    def _idle_link(self) -> ScoringLink | None:
        while self._idle:
            link, _ = self._idle.popitem()  # the most recently idle: its caches are warm
            if link.usable:
                return link
        return None

    def _gathered(self, link: ScoringLink) -> None:
        """The batch delay is over: the queued jobs that may join go along."""
        _, batch = self._gathering.pop(link)
        if not link.usable:  # died meanwhile: the jobs go to another worker
            for job in reversed(batch):
                self._requeue(job)
            self._pump()
            return
        self._begin(link, batch + self._joiners(batch[0]))

    def _start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        self._queued -= 1
        self._inflight += 1

    def _requeue(self, job: Job) -> None:
        """A job started on a worker that died before it was sent: first in line again."""
        job.state = JobState.QUEUED
        self._inflight -= 1
        self._queued += 1
        if job.future.done():  # its caller gave up meanwhile
            self._settled(job)
        else:
            self._jobs.appendleft(job)

    def _joiners(self, first: Job) -> list[Job]:
        """Queued jobs that may share `first`'s R call (contiguous, same columns)."""
        joiners: list[Job] = []
        if not self._jobs:
            return joiners
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
            self._start(candidate)
            joiners.append(candidate)
            rows += candidate.frame.nrows
        return joiners

    def _begin(self, link: ScoringLink, batch: list[Job], *, chunk: bool = False) -> None:
        self._next_call(Turn(link, batch, deque([batch]), chunk=chunk))

    def _next_call(self, turn: Turn) -> None:
        """Send the turn's next R call, or end the turn if none is left. Callers that
        gave up already are skipped."""
        while turn.todo:
            jobs = [job for job in turn.todo.popleft() if not job.future.done()]
            if not jobs:
                continue
            try:
                frame = merge_frames([job.frame for job in jobs])
                timeout_s = max(0.0, min(job.deadline for job in jobs) - self._clock())
                turn.link.send(frame, timeout_s, functools.partial(self._answered, turn))
            except ScoringError as exc:  # worker_crashed: it went away between two calls
                for job in jobs:
                    self._settle(job, exc)
                continue
            except Exception:  # a bug must cost answers, never the dispatcher
                log.exception("sending to worker pid %s failed unexpectedly", turn.link.pid)
                for job in jobs:
                    self._settle(job, ScoringError("internal error while scoring"))
                continue
            turn.sent, turn.rows = jobs, frame.nrows
            return
        self._end(turn)

    def _answered(self, turn: Turn, reply: asyncio.Future[dict[str, Any]]) -> None:
        """The worker answered the turn's call in flight (or died): settle its jobs and go
        on. Called synchronously by the link's reader."""
        jobs, turn.sent = turn.sent, []
        try:
            self._settle_call(turn, jobs, reply)
        except Exception:  # a bug must cost answers, never the dispatcher
            log.exception("scoring on worker pid %s failed unexpectedly", turn.link.pid)
            for job in jobs:
                self._settle(job, ScoringError("internal error while scoring"))
        self._next_call(turn)

    def _settle_call(
        self, turn: Turn, jobs: list[Job], reply: asyncio.Future[dict[str, Any]]
    ) -> None:
        """Give each job its answer or its error. If R fails on a merged batch, each
        member is scored alone next, for an answer of its own."""
        try:
            answer = turn.link.reply_of(reply.result())
        except ModelError as exc:
            if len(jobs) == 1:
                self._settle(jobs[0], exc)
            else:  # one request's bad rows must fail only that request
                turn.todo.extendleft([job] for job in reversed(jobs))
            return
        except ScoringError as exc:  # worker_crashed, ...: the answer of every member
            for job in jobs:
                self._settle(job, exc)
            return
        if self._on_r_call is not None:
            self._on_r_call(turn.rows, answer.r_seconds)
        if turn.rows >= self.min_chunk_rows and answer.r_seconds > 0:  # 0: not measured
            self._learn_cost(turn.rows, answer.r_seconds)
        if len(jobs) == 1:
            replies = [answer]
        else:
            predictions = prediction_list(answer.predictions)
            parts = split_predictions(predictions, [job.frame.nrows for job in jobs])
            replies = [ScoreReply(part, answer.r_seconds) for part in parts]
        for job, job_reply in zip(jobs, replies, strict=True):
            if not job.future.done():
                job.future.set_result(job_reply)

    def _end(self, turn: Turn) -> None:
        """The turn is over: its jobs leave the count, its worker takes the next."""
        for job in turn.batch:
            job.state = JobState.DONE
        self._inflight -= len(turn.batch)
        now = self._clock()
        self.concurrency.change(now, -len(turn.batch))
        link = turn.link
        if not turn.chunk:
            self._served_at[link] = now
        if link.usable and link in self._links:
            self._idle[link] = None
            self._pump()

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
