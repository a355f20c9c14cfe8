"""Leader election over a coordination.k8s.io Lease, as client-go's leaderelection does it.

Two controllers may run (the install has 2 replicas); only the Lease holder writes. A
candidate reads the Lease every retry period and takes it when it is free, released, or
not renewed for its lease duration *as this candidate observed it* (each candidate counts
on its own clock from when it saw the record change, never from the timestamps another
machine wrote). The holder renews every retry period. Every call goes through
`rscore.autoscaler.kube_io` (the package's one door to the API); this module never touches
kubernetes_asyncio, and never decides anything but who leads.

`leading()` is checked before each write attempt: it is true only while the last
successful write of the Lease was *sent* less than the renew deadline ago. A follower
takes over no earlier than the lease duration after it saw that write, and the write
cannot have reached the server before it was sent; the renew deadline is shorter than
the lease, so an old leader stops writing before anyone else may start (up to a write
already on the wire: keep lease duration - renew deadline above the API request
timeout). A renewal round may retry until its own renew deadline (as client-go's), but
never past the lease duration after our last write, when a follower may take over (our
write, conditional on the resourceVersion we last wrote, would fail anyway then); each
Lease call is bounded by the time left, so a hung call cannot stretch the term. While a
round retries past `leading()`'s deadline the term goes on, keeping its memory, but
writes nothing; a renewal that succeeds resumes it.

The term's work runs as a task of its own: it is cancelled however the term ends, the
term ends if the work dies (a leader that holds the Lease but no longer acts would block
the other replica forever), and then the candidate stands again. A term that ends while
the Lease is still ours (shutdown, or the work died) releases it once the work has
stopped, so the other replica need not wait it out.

All times are the event loop's monotonic clock (`loop.time()`), the clock its sleeps and
timeouts run on: deadlines and the waits between attempts can never disagree (and a test
may run the loop on fake time).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from rscore.autoscaler.kube_io import ApiError, KubeApi, LeaseRecord, MayWrite
from rscore.autoscaler.metrics import ControllerMetrics

__all__ = ["Leadership", "Work", "candidate_identity"]

log = logging.getLogger("rscore.autoscaler")

Work = Callable[[MayWrite], Coroutine[Any, Any, None]]  # a term's work, given `leading`


def candidate_identity() -> str:
    """Hostname plus a random suffix: two controllers on one host are two candidates."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


def _micro_time() -> str:
    """Now as a Lease's MicroTime (for people reading the Lease; no candidate uses it)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it is done (Python 3.11's `wait_for`, used by libraries, can
    lose a cancel that races its own completion); raises CancelledError only if the
    caller itself is cancelled, never the task's own outcome."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


class Leadership:
    def __init__(
        self,
        api: KubeApi,
        metrics: ControllerMetrics,
        *,
        lease_name: str,
        lease_namespace: str,
        identity: str,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.lease_name = lease_name
        self.lease_namespace = lease_namespace
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.terms = 0  # terms started (for tests and logs)
        self._observed: LeaseRecord | None = None  # the Lease as last read or written
        self._observed_at = 0.0  # when it last changed, on our clock
        self._written_at: float | None = None  # when our last successful write was sent
        self._round_deadline: float | None = None  # a renewal round's end, while it runs

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def leading(self) -> bool:
        """May this candidate write? (Its last Lease write, sent within the deadline.)"""
        if self._written_at is None or self._observed is None:
            return False
        if self._observed.holder != self.identity:
            return False
        return self._now() - self._written_at < self.renew_deadline_s

    def _call_timeout(self) -> float:
        """A Lease call may take until the renewal round's end; outside one, a deadline."""
        if self._round_deadline is None:
            return self.renew_deadline_s
        return max(0.0, self._round_deadline - self._now())

    def _observe(self, record: LeaseRecord) -> None:
        if record != self._observed:
            self._observed, self._observed_at = record, self._now()

    async def _try_acquire_or_renew(self) -> bool:
        """One attempt to take or keep the Lease; True if our write went through."""
        now = _micro_time()
        try:
            current = await self.api.read_lease(
                self.lease_namespace, self.lease_name, timeout_s=self._call_timeout()
            )
            if current is None:
                mine = LeaseRecord(self.identity, self.lease_duration_s, now, now)
                sent = self._now()
                stored = await self.api.create_lease(
                    self.lease_namespace, self.lease_name, mine, timeout_s=self._call_timeout()
                )
            else:
                self._observe(current)
                duration_s = current.lease_duration_s or self.lease_duration_s
                held = current.holder is not None and current.holder != self.identity
                if held and self._observed_at + duration_s > self._now():
                    return False  # another candidate's term, not yet expired
                ours = current.holder == self.identity
                mine = LeaseRecord(
                    self.identity,
                    self.lease_duration_s,
                    acquire_time=current.acquire_time if ours else now,
                    renew_time=now,
                    transitions=current.transitions if ours else current.transitions + 1,
                    resource_version=current.resource_version,
                )
                sent = self._now()
                stored = await self.api.replace_lease(
                    self.lease_namespace, self.lease_name, mine, timeout_s=self._call_timeout()
                )
        except ApiError as error:
            log.warning("%s: the Lease call failed: %s", self.identity, error)
            return False
        self._observe(stored)
        self._written_at = sent
        return True

    async def _acquire(self) -> None:
        """Return once this candidate holds the Lease."""
        while not await self._try_acquire_or_renew():
            await asyncio.sleep(self.retry_period_s)

    async def _renew_until_lost(self) -> None:
        """Renew every retry period; return once a round of renewals has failed."""
        while True:
            await asyncio.sleep(self.retry_period_s)
            assert self._written_at is not None  # a term starts with a write
            self._round_deadline = min(
                self._now() + self.renew_deadline_s, self._written_at + self.lease_duration_s
            )
            try:
                while not await self._try_acquire_or_renew():
                    left = self._round_deadline - self._now()
                    if left <= 0:
                        return
                    await asyncio.sleep(min(self.retry_period_s, left))
            finally:
                self._round_deadline = None

    async def _release(self) -> None:
        """Clear the holder of a Lease still ours (client-go's ReleaseOnCancel).

        Called only once the work has stopped; a candidate reading a Lease without a
        holder takes it at once, instead of waiting out the lease duration.
        """
        try:
            current = await self.api.read_lease(
                self.lease_namespace, self.lease_name, timeout_s=self.renew_deadline_s
            )
            if current is None or current.holder != self.identity:
                return
            released = LeaseRecord(
                holder=None,
                lease_duration_s=1,
                acquire_time=current.acquire_time,
                renew_time=_micro_time(),
                transitions=current.transitions,
                resource_version=current.resource_version,  # a 409 if anyone moved it
            )
            await self.api.replace_lease(
                self.lease_namespace, self.lease_name, released, timeout_s=self.renew_deadline_s
            )
            log.info("%s released the Lease", self.identity)
        except ApiError as error:
            log.warning("releasing the Lease failed (it will expire): %s", error)

    async def _term(self, work: Work) -> None:
        """Run `work` while the Lease is renewed; stop it when the term ends, however."""
        log.info("%s leads (Lease %s/%s)", self.identity, self.lease_namespace, self.lease_name)
        self.terms += 1
        self.metrics.is_leader.set(1)
        working = asyncio.create_task(work(self.leading), name="leader-work")
        renewing = asyncio.create_task(self._renew_until_lost(), name="lease-renewal")
        try:
            await asyncio.wait({working, renewing}, return_when=asyncio.FIRST_COMPLETED)
            if renewing.done():
                log.warning("%s lost the Lease", self.identity)
            else:
                log.error("the leader's work ended; giving up the term")
        finally:
            still_ours = self.leading()
            renewing.cancel()
            self.metrics.is_leader.set(0)
            await _cancel_and_wait(working)
            failure = None if working.cancelled() else working.exception()
            if failure is not None:
                log.error("the leader's work failed", exc_info=failure)
            await _cancel_and_wait(renewing)
            self._written_at = None  # no write of ours counts any more
            if still_ours:  # shutdown, or the work died: hand over now, not at expiry
                await self._release()

    async def run(self, work: Work) -> None:
        """Stand for election forever; run `work(leading)` during each term."""
        while True:
            await self._acquire()
            await self._term(work)
            await asyncio.sleep(self.retry_period_s)
