"""Leader election over a coordination.k8s.io Lease (kubernetes_asyncio's LeaseLock).

Two controllers may run (the install has 2 replicas); only the Lease holder writes. The
library calls back when leadership starts and returns from `run()` when a renewal fails
past the deadline; this wrapper runs the leader's work as its own task so that the work
is cancelled however the election ends (even by a connection error the library does not
catch), and then stands again as a candidate. `leading()` is checked before each write:
it is false once the last successful renewal is older than the renew deadline, which is
shorter than the lease, so an old leader stops writing before anyone else may start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from autoscaler.metrics import ControllerMetrics

__all__ = ["Leadership", "candidate_identity"]

log = logging.getLogger("rscore.autoscaler")

Work = Callable[[Callable[[], bool]], Awaitable[None]]


def candidate_identity() -> str:
    """Hostname plus a random suffix: two controllers on one host are two candidates."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


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
        self._election: LeaderElection | None = None
        self._work: asyncio.Task[None] | None = None

    def leading(self) -> bool:
        election = self._election
        if election is None or election.observed_record is None:
            return False
        if election.observed_record.holder_identity != self.identity:
            return False
        age_ms = time.time() * 1000 - election.observed_time_milliseconds
        return age_ms < self.renew_deadline_s * 1000

    async def _stop_work(self) -> None:
        work, self._work = self._work, None
        if work is not None:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        self.metrics.is_leader.set(0)

    async def run(self, work: Work) -> None:
        """Stand for election forever; run `work(leading)` during each term."""

        async def started() -> None:
            log.info("%s leads (Lease %s/%s)", self.identity, self.lease_namespace, self.lease_name)
            self.metrics.is_leader.set(1)
            self._work = asyncio.create_task(work(self.leading))

        async def stopped() -> None:
            log.warning("%s lost the Lease", self.identity)

        while True:
            lock = LeaseLock(self.lease_name, self.lease_namespace, self.identity, self.api_client)
            self._election = LeaderElection(
                Config(
                    lock,
                    lease_duration=self.lease_duration_s,
                    renew_deadline=self.renew_deadline_s,
                    retry_period=self.retry_period_s,
                    onstarted_leading=started,
                    onstopped_leading=stopped,
                )
            )
            try:
                await self._election.run()
            except Exception as error:  # the library lets connection errors escape
                log.warning("leader election interrupted: %s", error)
            finally:
                await self._stop_work()
                self._election = None
            await asyncio.sleep(self.retry_period_s)
