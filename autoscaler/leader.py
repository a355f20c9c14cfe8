"""Leader election over a coordination.k8s.io Lease (kubernetes_asyncio's LeaseLock).

Two controllers may run (the install has 2 replicas); only the Lease holder writes. The
library calls back when leadership starts and returns from `run()` when a renewal fails
past the deadline; this wrapper runs the election and the leader's work as tasks of its
own, so that the work is cancelled however the election ends (even by a connection error
the library does not catch), the term ends if the work dies (a leader that holds the
Lease but no longer acts would block the other replica forever), and then stands again
as a candidate. A term that ends while the Lease is still ours (shutdown, or the work
died) releases it once the work has stopped, so the other replica need not wait it out.

`leading()` is checked before each write attempt: it is true only while the last
successful write of the Lease was *sent* less than the renew deadline ago (on the
monotonic clock). A follower takes over no earlier than the lease duration after it saw
that write, and the write cannot have reached the server before it was sent; the renew
deadline is shorter than the lease, so an old leader stops writing before anyone else
may start (up to a write already on the wire: keep lease duration - renew deadline above
the API request timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from autoscaler.metrics import ControllerMetrics

__all__ = ["Leadership", "candidate_identity"]

log = logging.getLogger("rscore.autoscaler")

Work = Callable[[Callable[[], bool]], Awaitable[None]]


def candidate_identity() -> str:
    """Hostname plus a random suffix: two controllers on one host are two candidates."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it is done (Python 3.11's `wait_for`, used by libraries, can
    lose a cancel that races its own completion); raises CancelledError only if the
    caller itself is cancelled, never the task's own outcome."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


class _TimedLeaseLock(LeaseLock):
    """A LeaseLock that remembers when its last successful write was sent (monotonic),
    bounds each Lease call by a timeout, and reports a dropped connection or a timeout
    as a failed attempt, as the library does for API errors.

    The library stamps its own record after the answer arrives, on the wall clock: a slow
    answer or a clock step would stretch the term past what the followers assume. It
    sends its calls without a timeout (a hung call would stall the renewals for minutes)
    and catches only `ApiException`: one dropped connection would end the term at once
    (and with it the policy's memory) instead of being retried within the renew deadline.
    """

    written_at: float | None = None
    call_timeout_s: float = 5.0

    async def get(self, name: str, namespace: str) -> Any:
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await super().get(name, namespace)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("reading the Lease failed: %s", error or type(error).__name__)
            # what the library expects of a failed read: an ApiException with a Status body
            failure = ApiException(status=503, reason=type(error).__name__)
            failure.body = json.dumps({"kind": "Status", "code": 503})
            return False, failure

    async def _timed(self, call: Awaitable[bool]) -> bool:
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.call_timeout_s):
                ok = await call
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("writing the Lease failed: %s", error or type(error).__name__)
            return False
        if ok:
            self.written_at = sent
        return ok

    async def create(
        self, name: str, namespace: str, election_record: LeaderElectionRecord
    ) -> bool:
        return await self._timed(super().create(name, namespace, election_record))

    async def update(self, name: str, namespace: str, updated_record: LeaderElectionRecord) -> bool:
        return await self._timed(super().update(name, namespace, updated_record))


class Leadership:
    def __init__(
        self,
        api_client: ApiClient,
        metrics: ControllerMetrics,
        *,
        lease_name: str,
        lease_namespace: str,
        identity: str,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
    ) -> None:
        self.api_client = api_client
        self.metrics = metrics
        self.lease_name = lease_name
        self.lease_namespace = lease_namespace
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.terms = 0  # terms started (for tests and logs)
        self._election: LeaderElection | None = None
        self._lock: _TimedLeaseLock | None = None
        self._election_task: asyncio.Task[None] | None = None
        self._work: asyncio.Task[None] | None = None

    def leading(self) -> bool:
        election, lock = self._election, self._lock
        if election is None or lock is None or lock.written_at is None:
            return False
        record = election.observed_record
        if record is None or record.holder_identity != self.identity:
            return False
        return time.monotonic() - lock.written_at < self.renew_deadline_s

    async def _stop_work(self) -> None:
        """Cancel the term's work and wait for it, without swallowing our own cancel."""
        work, self._work = self._work, None
        self.metrics.is_leader.set(0)
        if work is None:
            return
        await _cancel_and_wait(work)
        if not work.cancelled() and work.exception() is not None:
            error = work.exception()
            log.error(
                "the leader's work failed", exc_info=(type(error), error, error.__traceback__)
            )

    async def _release(self, lock: _TimedLeaseLock) -> None:
        """Clear the holder of a Lease still ours (client-go's ReleaseOnCancel).

        Called only once the work has stopped; a candidate reading a Lease without a
        holder takes it at once, instead of waiting out the lease duration.
        """
        api = lock.api_instance
        try:
            async with asyncio.timeout(lock.call_timeout_s):
                lease = await api.read_namespaced_lease(self.lease_name, self.lease_namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            # carries the resourceVersion read: a 409 if anyone moved it meanwhile
            async with asyncio.timeout(lock.call_timeout_s):
                await api.replace_namespaced_lease(self.lease_name, self.lease_namespace, lease)
            log.info("%s released the Lease", self.identity)
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.warning("releasing the Lease failed (it will expire): %s", error)

    def _work_ended(self, work: asyncio.Task[None]) -> None:
        """The work never ends by itself: if it did, end the term (and stand again)."""
        if self._work is work and self._election_task is not None:
            if not work.cancelled():
                log.error("the leader's work ended; giving up the term")
            self._election_task.cancel()

    async def run(self, work: Work) -> None:
        """Stand for election forever; run `work(leading)` during each term."""

        async def stopped() -> None:
            log.warning("%s lost the Lease", self.identity)

        while True:
            lock = self._lock = _TimedLeaseLock(
                self.lease_name, self.lease_namespace, self.identity, self.api_client
            )
            lock.call_timeout_s = self.renew_deadline_s  # as client-go bounds each try

            async def started(lock: _TimedLeaseLock = lock) -> None:
                # The library runs this as a task of its own: it may come late, after
                # the term it belongs to has already ended.
                if self._lock is not lock or self._election_task is None:
                    return
                log.info(
                    "%s leads (Lease %s/%s)", self.identity, self.lease_namespace, self.lease_name
                )
                self.terms += 1
                self.metrics.is_leader.set(1)
                self._work = asyncio.create_task(work(self.leading), name="leader-work")
                self._work.add_done_callback(self._work_ended)

            self._election = LeaderElection(
                Config(
                    self._lock,
                    lease_duration=self.lease_duration_s,
                    renew_deadline=self.renew_deadline_s,
                    retry_period=self.retry_period_s,
                    onstarted_leading=started,
                    onstopped_leading=stopped,
                )
            )
            election = self._election_task = asyncio.create_task(self._election.run(), name="lease")
            try:
                await asyncio.wait({election})
            finally:
                self._election_task = None
                still_ours = self.leading()
                election.cancel()
                await self._stop_work()
                await _cancel_and_wait(election)
                self._election = self._lock = None
                if still_ours:  # shutdown, or the work died: hand over now, not at expiry
                    await self._release(lock)
            if not election.cancelled() and election.exception() is not None:
                # the library lets connection errors escape
                log.warning("leader election interrupted: %s", election.exception())
            await asyncio.sleep(self.retry_period_s)
