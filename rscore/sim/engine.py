"""The discrete-event loop: arrivals, pods with worker slots and queues, nodes, ticks.

One heap of tuple events `(time, kind, sequence, a, b)`; arrivals are not pushed on it but
merged in from sorted numpy blocks, which halves the heap traffic. Per-pod state lives in
flat lists indexed by pod id, random numbers are drawn in numpy blocks, and the hot path
(arrival, completion) is inline in `Engine.run`; everything rare (ticks, pod and node
life cycle, the gateway) is a method. What runs per tick or per pod change walks the
live pods and nodes only (`live`, `ready`, `pending`, `n_alive`, `n_room`, `n_by_pods`):
a policy that creates and removes thousands of pods over a run costs what its pods alive
at once cost, not its history.

Admission follows the sidecar (rscore/sidecar/admission.py): a request goes to an idle worker at
once, else waits in the pod's FIFO queue of `max_queue * workers`, else is rejected
(429). A request not answered within `request_timeout_s` of its arrival is a 504: if
still queued it leaves the queue then (applied lazily, exactly: the queue is FIFO and
every deadline is arrival + timeout); if in flight the worker goes on with the call, but
as the real worker's watchdog does (rscore/r_scorer/worker.py), a call still in R
WATCHDOG_GRACE_S after its earliest member's deadline ends the worker process, which
restarts (`model_load_s`) before it takes the next request.
With batching, a worker that takes the head of the queue takes the waiting requests
behind it too, up to `max_batch_rows` rows; the call costs `a + c * rows`.

When the pods' spec asks (`PodSpec.models_sidecar`), or the caller hands a
`rscore.sim.sidecar.SidecarModel` (`rscore sim validate` measures one), requests also pass the
sidecar's event loop: admission waits for the loop's first turn (an ADMIT event), a
call's reply waits for the loop to read it before its worker takes the next call (a
REPLY event), an answer leaves after its second turn and the HTTP path, and calls and
turns share the pod's cores. Those requests take the methods below (`through_loop`,
`loop_admit`, `answer_calls`, `next_call`), never the inline hot path.

Concurrency per pod is kept as the exact integral of (queued + in flight), which is what
`rscore_concurrency_seconds_total` exports: sum of finished sojourns plus, for requests
still inside, `now - arrival`.

Never reads the wall clock inside the simulation (only to report how long it took),
never writes files, and never scans every pod or node the run ever created while it
runs (once, at the end, to total the concurrency seconds).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from rscore.sim.cluster import ControllerSpec, NodeAutoscaler, NodeSpec, PodSpec
from rscore.sim.distributions import BLOCK, Streams
from rscore.sim.service import ServiceSpec
from rscore.sim.sidecar import SidecarModel, core_share, loop_turn

if TYPE_CHECKING:
    from rscore.sim.scenario import Scenario

__all__ = ["ClusterView", "Controller", "Engine", "PodView", "RunResult"]

# Event kinds. Ties at one instant are resolved by kind, then by a sequence number (the
# order they were pushed in; the hot loop's calls take minus their count instead): the
# order is total and deterministic, and never compares payloads. Kinds after END concern
# one pod's requests (`pod_event`); those from TICK to SAMPLE, the cluster
# (`cluster_event`).
(
    DONE1, DONEB, TICK, READ, APPLY, POD_READY, NODE_READY, SAMPLE, END, KILLED, BACK, ADMIT,
    REPLY,
) = range(13)  # fmt: skip
# Pod states.
PENDING, STARTING, READY, DRAINING, GONE = range(5)
# Node states.
PROVISIONING, UP, REMOVED = range(3)

SAMPLE_S = 10.0  # the time series' resolution
# A call still in R this long after its deadline ends the worker (rscore.r_scorer.protocol's
# WATCHDOG_GRACE_S; not imported, to keep the simulator free of the scorer's imports).
WATCHDOG_GRACE_S = 0.5


@dataclass(frozen=True)
class PodView:
    """One ready pod as the controller scrapes it: cumulative counters since it started."""

    pod: int
    concurrency_seconds: float  # rscore_concurrency_seconds_total
    cpu_seconds: float  # busy worker-seconds (a call counts when it starts)
    ready_at: float
    inside: int = 0  # rscore_queue_depth + rscore_inflight_requests now
    arrivals: int = 0  # requests routed to it, 429s included
    served: int = 0  # requests whose call started (the answered ones, rscore_requests 2xx)
    queued: int = 0  # rscore_queue_depth now
    merged: int = 0  # of the served, those that joined another's call (R calls = the rest)


@dataclass(frozen=True)
class ClusterView:
    now: float
    pods: tuple[PodView, ...]
    replicas: int  # pods that exist and are not being removed (the Deployment's replicas)
    pending: int  # of which not ready yet
    unrouted: int  # requests held at the gateway while no pod is ready
    nodes: int  # nodes billed (provisioning or up)
    workers: int
    per_node: int
    rows_per_request: int = 1
    max_batch_rows: int = 0  # rows one call may merge; 0: no batching


class Controller(Protocol):
    """A scaling policy as the engine drives it."""

    name: str
    interval_s: float | None  # None: never ticks (static)

    def tick(self, view: ClusterView) -> tuple[int, int | None]:
        """(desired replicas, desired nodes or None: the cluster-autoscaler emulation)."""
        ...


@runtime_checkable
class ReadsAhead(Protocol):
    """A policy whose pods are read before its tick (the rscore controller's streams):
    the engine calls `read` `ControllerSpec.lead_s` before each tick."""

    def read(self, view: ClusterView) -> None: ...


@dataclass
class RunResult:
    """Raw outcome of one run; `rscore.sim.metrics` turns it into a summary and a time series."""

    duration_s: float
    end_s: float
    requests: int
    done_times: np.ndarray  # completion time of each completed request
    latencies: np.ndarray  # its arrival-to-answer time
    reject_times: np.ndarray
    timeout_times: np.ndarray  # when the 504 was answered (arrival + timeout)
    served: int  # requests that reached a worker (completed or timed out in flight)
    wait_sum: float  # their total queue wait
    node_seconds: float
    in_system_seconds: float  # integral of requests inside pods and the gateway
    events: int
    wall_s: float
    samples: np.ndarray  # rows: time, ready pods, nodes, node-seconds so far, in system
    arrivals_per_sample: np.ndarray  # arrivals in each SAMPLE_S bucket
    decisions: list[tuple[float, int, int | None]] = field(default_factory=list)
    worker_restarts: int = 0  # worker processes ended by the watchdog
    calls: int = 0  # R calls started (requests served less those that joined another's)


class Engine:
    """One simulation run. `run()` returns a RunResult; an engine runs once."""

    def __init__(  # noqa: PLR0915 - the state is flat lists, one statement each
        self,
        *,
        arrivals: Iterator[np.ndarray],
        duration_s: float,
        service: ServiceSpec,
        pods: PodSpec,
        nodes: NodeSpec,
        controller: Controller,
        controller_spec: ControllerSpec,
        streams: Streams,
        rows: int = 1,
        progress: Callable[[float], None] | None = None,
        sample_s: float = SAMPLE_S,
        sidecar: SidecarModel | None = None,
    ) -> None:
        self.arrivals = arrivals
        self.duration_s = duration_s
        self.service = service
        self.pods = pods
        self.nodes = nodes
        self.controller = controller
        self.cspec = controller_spec
        # The policy that reads its pods ahead of its tick, and how far ahead (0: none).
        self.reads_ahead = controller if isinstance(controller, ReadsAhead) else None
        self.read_lead_s = controller_spec.lead_s if self.reads_ahead is not None else 0.0
        self.streams = streams
        self.rows = rows
        self.progress = progress
        self.sample_s = sample_s  # SAMPLE_S for the time series; longer when none is wanted
        self.per_node = nodes.per_node(pods.workers)
        self.node_scaler = NodeAutoscaler(nodes, self.per_node)
        self.heap: list[tuple[Any, ...]] = []  # (time, event kind, sequence, payload...)
        self.seq = itertools.count()  # ties of time and kind: first pushed, first out
        # Per-pod state, indexed by pod id.
        self.p_state: list[int] = []
        self.p_node: list[int] = []
        self.p_busy: list[int] = []
        self.p_q: list[deque[float]] = []
        self.p_n: list[int] = []  # requests inside (queued + in flight)
        self.p_asum: list[float] = []  # sum of their arrival times
        self.p_sdone: list[float] = []  # sum of the sojourns of those that left
        self.p_cpu: list[float] = []
        self.p_arr: list[int] = []  # requests routed to the pod (its metrics' arrivals)
        self.p_srv: list[int] = []  # requests whose call started on it
        self.p_merged: list[int] = []  # of those, requests that joined another's call
        self.p_ready_at: list[float] = []
        # The sidecar model (rscore.sim.sidecar; the pods' keys unless given): when each pod's
        # event loop is next free, and the latest answer it gave (answers leave the loops
        # out of time order across pods).
        self.loop_model = SidecarModel.of_pods(pods) if sidecar is None else sidecar
        self.sidecar = self.loop_model.on
        self.p_loop: list[float] = []
        self.latest_answer = 0.0
        self.ready: list[int] = []  # ready pods, in the order they became ready
        self.pending: deque[int] = deque()  # pods waiting for a node slot
        # Pods not gone (pending, starting, ready, draining), in creation order: whatever
        # scans pods scans these, never every pod the run ever created.
        self.live: dict[int, None] = {}
        # Per-node state.
        self.n_state: list[int] = []
        self.n_pods: list[int] = []
        self.n_image_at: list[float | None] = []  # when the image is on it; None: no pull yet
        self.n_alive: dict[int, None] = {}  # nodes not removed, in creation order
        self.n_room: set[int] = set()  # nodes up with room for a pod
        # Nodes with room by the pods on them (heaps of node ids; entries whose node has
        # since changed are dropped when they come to the top): the fullest node with
        # room, lowest id first, is found without scanning the nodes.
        self.n_by_pods: list[list[int]] = [[] for _ in range(self.per_node)]
        self.nodes_alive = 0
        self.node_seconds = 0.0
        self.node_since = 0.0
        self.gateway: deque[float] = deque()
        self.reject_times = array("d")
        self.timeout_times = array("d")
        self.done_times = array("d")
        self.latencies = array("d")
        self.extra_served = 0
        self.extra_wait = 0.0
        self.gone_sojourn = 0.0  # concurrency seconds of pods that are gone
        self.samples: list[tuple[float, int, int, float, int]] = []
        self.decisions: list[tuple[float, int, int | None]] = []
        self.call_mean_1 = service.call_mean(rows)
        self.batch_k = max(1, pods.max_batch_rows // rows)  # requests per call at most
        self._sbuf: list[float] = []
        self._si = 0
        self.restarts = 0  # worker processes ended by the watchdog
        self.ending = False  # past duration_s: the run stops once nothing is inside
        # Arrivals per SAMPLE_S bucket (the last bucket also takes any arrival beyond).
        buckets = math.ceil(duration_s / max(SAMPLE_S, sample_s)) + 1
        self.arrivals_hist = np.zeros(buckets, dtype=np.int64)

    # ---- small helpers used off the hot path -------------------------------------------

    def push(self, t: float, kind: int, a: object = None, b: object = None) -> None:
        heapq.heappush(self.heap, (t, kind, next(self.seq), a, b))

    def draw_service(self) -> float:
        """One one-call service time (rare paths; the hot loop has its own buffer)."""
        if self._si == len(self._sbuf):
            self._sbuf = (self.service.unit_block(self.streams["service"], 4096)).tolist()
            self._si = 0
        self._si += 1
        return self._sbuf[self._si - 1] * self.call_mean_1

    def call_time(self, unit: float, k: int) -> float:
        """A call of k requests, from a one-request draw: scaled along a + c * rows."""
        if k == 1:
            return unit
        return unit * self.service.call_mean(k * self.rows) / self.call_mean_1

    def expire(self, p: int, now: float) -> None:
        """Queued requests of pod p whose deadline passed leave (504) at their deadline."""
        q = self.p_q[p]
        timeout = self.pods.request_timeout_s
        cut = now - timeout
        while q and q[0] <= cut:
            a = q.popleft()
            self.p_n[p] -= 1
            self.p_asum[p] -= a
            self.p_sdone[p] += timeout
            self.timeout_times.append(a + timeout)

    def expire_gateway(self, now: float) -> None:
        timeout = self.pods.request_timeout_s
        while self.gateway and self.gateway[0] <= now - timeout:
            a = self.gateway.popleft()
            self.gone_sojourn += timeout
            self.timeout_times.append(a + timeout)

    def start_calls(self, p: int, t: float) -> None:
        """Pod p has a free worker and a non-empty queue: start one call (rare path)."""
        q = self.p_q[p]
        members = [q.popleft()]
        cut = t - self.pods.request_timeout_s
        while q and len(members) < self.batch_k:
            if q[0] <= cut:
                self.expire(p, t)
                continue
            members.append(q.popleft())
        self.extra_served += len(members)
        self.p_srv[p] += len(members)
        self.p_merged[p] += len(members) - 1
        self.extra_wait += sum(t - a for a in members)
        s = self.call_time(self.draw_service(), len(members))
        if self.sidecar:  # R shares the pod's cores with the other calls and the loop
            model = self.loop_model
            s /= core_share(model.cores, self.p_busy[p] + (self.p_loop[p] > t), model.others)
        if t + s > members[0] + self.pods.request_timeout_s + WATCHDOG_GRACE_S:
            self.doom(p, t, members)
        elif len(members) == 1:
            self.p_cpu[p] += s
            self.push(t + s, DONE1, p, members[0])
        else:
            self.p_cpu[p] += s
            self.push(t + s, DONEB, p, members)

    def doom(self, p: int, t: float, members: list[float]) -> None:
        """A call started at t that R will not finish before the watchdog fires (its
        earliest member's deadline + grace): the worker process ends then (KILLED)."""
        end = members[0] + self.pods.request_timeout_s + WATCHDOG_GRACE_S
        self.p_cpu[p] += end - t
        self.push(end, KILLED, p, members)

    def killed(self, p: int, t: float, members: list[float]) -> None:
        """The watchdog ended a worker: its requests were 504s at their deadlines; the
        worker restarts (R start + model load) before it takes the next request."""
        timeout = self.pods.request_timeout_s
        for a in members:
            self.timeout_times.append(a + timeout)
            self.p_n[p] -= 1
            self.p_asum[p] -= a
            self.p_sdone[p] += t - a
        self.restarts += 1
        if self.p_state[p] == DRAINING and self.p_n[p] == 0:
            self.release(p, t)  # removed meanwhile, and now empty: gone
            return
        back = t + self.pods.model_load_s.sample(self.streams["pods"])
        self.push(back, BACK, p, self.restarts)

    def worker_back(self, p: int, t: float) -> None:
        """A restarted worker is ready: it takes the oldest live request, if any."""
        if self.p_state[p] == GONE:
            return
        self.expire(p, t)
        if self.p_q[p]:
            self.start_calls(p, t)
            return
        self.p_busy[p] -= 1
        if self.p_state[p] == DRAINING and self.p_n[p] == 0:
            self.release(p, t)

    def admit(self, t: float, a: float) -> None:
        """Route one request that arrived at `a` (held at the gateway until `t`)."""
        ready = self.ready
        if not ready:
            self.expire_gateway(t)  # requests past their deadline have left: room
            if len(self.gateway) < self.pods.gateway_max_queue:
                self.gateway.append(a)
            else:
                self.reject_times.append(t)
            return
        if self.pods.routing == "least_loaded":
            p = self.least_loaded(t)
        else:
            p = ready[int(self.streams["routing"].random() * len(ready))]
        self.p_arr[p] += 1
        if self.sidecar:
            self.through_loop(p, t, a)
            return
        self.expire(p, t)
        q = self.p_q[p]
        held = t - a  # time spent at the gateway: the pod's own counter starts at t
        if self.p_busy[p] < self.pods.workers and not q:
            self.p_busy[p] += 1
            self._enter(p, a, held)
            q.append(a)
            self.start_calls(p, t)
        elif len(q) < self.pods.max_queue * self.pods.workers:
            self._enter(p, a, held)
            q.append(a)
        else:
            self.gone_sojourn += held
            self.reject_times.append(t)

    def least_loaded(self, t: float) -> int:
        """The ready pod with the fewest requests inside, once those whose deadline has
        passed in a queue have left (the sidecar drops them at their deadline)."""
        cut = t - self.pods.request_timeout_s
        p_q = self.p_q
        for p in self.ready:
            q = p_q[p]
            if q and q[0] <= cut:
                self.expire(p, t)
        return min(self.ready, key=self.p_n.__getitem__)

    def _enter(self, p: int, a: float, held: float) -> None:
        self.p_n[p] += 1
        self.p_asum[p] += a
        self.p_sdone[p] -= held
        self.gone_sojourn += held

    # ---- the sidecar (PodSpec.models_sidecar; see rscore.sim.sidecar) -------------------------

    def through_loop(self, p: int, t: float, a: float) -> None:
        """A request (arrived at `a`) reaches pod p at t: it is inside the pod from now
        on, and its admission waits for the pod's event loop to parse it (ADMIT)."""
        self._enter(p, a, t - a)
        model = self.loop_model
        share = core_share(model.cores, self.p_busy[p] + 1, model.others)
        self.p_loop[p] = loop_turn(t, self.p_loop[p], model.request_s / 2, share, model.wake_s)
        self.push(self.p_loop[p], ADMIT, p, a)

    def loop_admit(self, p: int, t: float, a: float) -> None:
        """The loop has parsed the request: the sidecar's admission (rscore/sidecar/admission.py):
        an idle worker, else the bounded queue, else 429."""
        self.expire(p, t)
        q = self.p_q[p]
        timeout = self.pods.request_timeout_s
        if a <= t - timeout:  # its deadline passed while the loop was busy: 504
            self._leave(p, t, a)
            self.timeout_times.append(a + timeout)
        elif self.p_busy[p] < self.pods.workers and not q:
            self.p_busy[p] += 1
            q.append(a)
            self.start_calls(p, t)
        elif len(q) < self.pods.max_queue * self.pods.workers:
            q.append(a)
        else:
            self._leave(p, t, a)
            self.reject_times.append(t)

    def _leave(self, p: int, t: float, a: float) -> None:
        """A request leaves pod p at t unanswered by R (429, or 504 before a worker)."""
        self.p_n[p] -= 1
        self.p_asum[p] -= a
        self.p_sdone[p] += t - a
        if self.p_state[p] == DRAINING and self.p_n[p] == 0:
            self.release(p, t)

    def answer_calls(self, p: int, t: float, members: tuple[float, ...] | list[float]) -> None:
        """A call on pod p ended at t: the loop reads its reply (`call_s`), then writes
        each member's answer, which travels the HTTP path (`http_s`); the worker takes
        its next call once the reply is read (at once, or at a REPLY event)."""
        timeout = self.pods.request_timeout_s
        model = self.loop_model
        half, http = model.request_s / 2, model.http_s
        share = core_share(model.cores, self.p_busy[p] + 1, model.others)
        loop = read = loop_turn(t, self.p_loop[p], model.call_s, share, model.wake_s)
        for a in members:
            if t - a <= timeout:
                loop = loop_turn(read, loop, half, share)  # the reply's turn woke the loop
                done = loop + http
                self.done_times.append(done)
                self.latencies.append(done - a)
                self.latest_answer = max(self.latest_answer, done)
            else:
                self.timeout_times.append(a + timeout)
            self.p_n[p] -= 1
            self.p_asum[p] -= a
            self.p_sdone[p] += t - a
        self.p_loop[p] = loop
        if read > t:
            self.push(read, REPLY, p)
        else:
            self.next_call(p, t)

    def next_call(self, p: int, t: float) -> None:
        """The loop has read a worker's reply on pod p: the worker takes the next call
        (the oldest live request and its joiners), or idles."""
        self.expire(p, t)
        if self.p_q[p]:
            self.start_calls(p, t)
        else:
            self.p_busy[p] -= 1
            if self.p_state[p] == DRAINING and self.p_n[p] == 0:
                self.release(p, t)

    # ---- nodes --------------------------------------------------------------------------

    def _bill(self, t: float, delta: int) -> None:
        self.node_seconds += self.nodes_alive * (t - self.node_since)
        self.node_since = t
        self.nodes_alive += delta

    def add_node(self, t: float, ready: bool) -> int:
        n = len(self.n_state)
        self.n_state.append(UP if ready else PROVISIONING)
        self.n_pods.append(0)
        self.n_image_at.append(t if ready else None)  # initial nodes have the image
        self.n_alive[n] = None
        if ready:
            self._has_room(n)
        self._bill(t, +1)
        if not ready:
            self.push(t + self.nodes.provision_s.sample(self.streams["nodes"]), NODE_READY, n)
        return n

    def set_nodes(self, t: float, desired: int) -> None:
        desired = min(max(desired, self.nodes.min_nodes), self.nodes.max_nodes)
        alive = list(self.n_alive)
        for _ in range(desired - len(alive)):
            self.add_node(t, ready=False)
        excess = len(alive) - desired
        if excess <= 0:
            return
        # Cancel provisioning nodes first (newest first), then empty nodes that are up;
        # a node with pods stays until its pods are gone.
        order = [n for n in reversed(alive) if self.n_state[n] == PROVISIONING]
        order += [n for n in reversed(alive) if self.n_state[n] == UP and self.n_pods[n] == 0]
        for n in order[:excess]:
            self.n_state[n] = REMOVED
            del self.n_alive[n]
            self.n_room.discard(n)
            self._bill(t, -1)

    def node_ready(self, n: int, t: float) -> None:
        if self.n_state[n] == PROVISIONING:
            self.n_state[n] = UP
            self._has_room(n)
            self.bind_pending(t)

    def _has_room(self, n: int) -> None:
        """Node n is up and its pod count changed (or it just came up): file it."""
        k = self.n_pods[n]
        if k >= self.per_node:
            self.n_room.discard(n)
            return
        self.n_room.add(n)
        nodes = self.n_by_pods[k]
        heapq.heappush(nodes, n)
        if len(nodes) > 2 * len(self.n_room) + 64:  # mostly stale: keep it to live nodes
            n_pods, room = self.n_pods, self.n_room
            nodes[:] = sorted({m for m in nodes if n_pods[m] == k and m in room})

    def _fullest_with_room(self) -> int:
        """The node with room holding the most pods (ties: the oldest), for bin packing;
        there is one (n_room is not empty)."""
        n_pods, room = self.n_pods, self.n_room
        for k in range(self.per_node - 1, -1, -1):
            nodes = self.n_by_pods[k]
            while nodes:
                n = nodes[0]
                if n_pods[n] == k and n in room:
                    return n
                heapq.heappop(nodes)  # the node has filled, emptied or gone since
        raise AssertionError("no node with room")

    # ---- pods ---------------------------------------------------------------------------

    def new_pod(self) -> int:
        p = len(self.p_state)
        self.p_state.append(PENDING)
        self.live[p] = None
        self.p_node.append(-1)
        self.p_busy.append(0)
        self.p_q.append(deque())
        self.p_n.append(0)
        self.p_asum.append(0.0)
        self.p_sdone.append(0.0)
        self.p_cpu.append(0.0)
        self.p_arr.append(0)
        self.p_srv.append(0)
        self.p_merged.append(0)
        self.p_ready_at.append(math.inf)
        self.p_loop.append(0.0)
        return p

    def bind_pending(self, t: float) -> None:
        """Place pending pods on the fullest node with room (bin packing, so that nodes
        empty out and can go), and start them."""
        while self.pending and self.n_room:
            n = self._fullest_with_room()
            p = self.pending.popleft()
            self.p_node[p] = n
            self.n_pods[n] += 1
            self._has_room(n)
            self.p_state[p] = STARTING
            rng = self.streams["pods"]
            scheduled = t + self.pods.schedule_s.sample(rng)
            image_at = self.n_image_at[n]
            if image_at is None:
                # The first pod on a node pulls the image; pods placed there meanwhile
                # wait for the same pull (kubelet pulls an image once per node).
                image_at = scheduled + self.pods.image_pull_s.sample(rng)
                self.n_image_at[n] = image_at
            ready_at = max(scheduled, image_at) + self.pods.model_load_s.sample(rng)
            self.push(ready_at, POD_READY, p)

    def pod_ready(self, p: int, t: float) -> None:
        if self.p_state[p] != STARTING:
            return  # removed while starting
        self.p_state[p] = READY
        self.p_ready_at[p] = t
        self.ready.append(p)
        if self.gateway:
            self.expire_gateway(t)
            held, self.gateway = self.gateway, deque()
            for a in held:
                self.admit(t, a)

    def release(self, p: int, t: float) -> None:
        """Pod p is gone: free its node slot, keep its concurrency seconds."""
        self.p_state[p] = GONE
        del self.live[p]
        n = self.p_node[p]
        if n >= 0:
            self.n_pods[n] -= 1
            self._has_room(n)  # a node with pods is up: it is never removed before them
        self.gone_sojourn += self.p_sdone[p]
        self.p_sdone[p] = 0.0

    def active_pods(self) -> list[int]:
        """Pending, starting and ready pods (not draining), in creation order."""
        p_state = self.p_state
        return [p for p in self.live if p_state[p] != DRAINING]

    def set_replicas(self, t: float, desired: int) -> None:
        active = self.active_pods()
        for _ in range(desired - len(active)):
            self.pending.append(self.new_pod())
        excess = len(active) - desired
        if excess > 0:
            # Remove pods that serve nothing yet first (pending, then starting, newest
            # first), then ready pods on the emptiest nodes, so whole nodes free up.
            pend = [p for p in reversed(active) if self.p_state[p] == PENDING]
            starting = [p for p in reversed(active) if self.p_state[p] == STARTING]
            ready = self._ready_to_remove(max(0, excess - len(pend) - len(starting)))
            unpend: set[int] = set()
            unready: set[int] = set()
            for p in (pend + starting + ready)[:excess]:
                state = self.p_state[p]
                if state == PENDING:
                    unpend.add(p)
                    self.p_state[p] = GONE
                    del self.live[p]
                elif state == STARTING:
                    self.release(p, t)
                else:
                    unready.add(p)
                    self.p_state[p] = DRAINING
                    if self.p_n[p] == 0:
                        self.release(p, t)
            # One pass each, order kept (removing pods one at a time costs the square).
            if unpend:
                self.pending = deque(p for p in self.pending if p not in unpend)
            if unready:
                self.ready[:] = [p for p in self.ready if p not in unready]
        self.bind_pending(t)

    def _ready_to_remove(self, count: int) -> list[int]:
        """`count` ready pods, one at a time from the node left with the fewest serving
        pods (ties: the newest pod), so that whole nodes empty out."""
        count = min(count, len(self.ready))
        if count <= 0:
            return []
        staying: dict[int, list[int]] = {}
        for p in self.ready:
            staying.setdefault(self.p_node[p], []).append(p)
        # A heap of (serving pods, -newest pod, node): each node is in it once.
        heap = []
        for node, pods in staying.items():
            pods.sort()
            heap.append((len(pods), -pods[-1], node))
        heapq.heapify(heap)
        chosen = []
        for _ in range(count):
            _, _, node = heapq.heappop(heap)
            pods = staying[node]
            chosen.append(pods.pop())
            if pods:
                heapq.heappush(heap, (len(pods), -pods[-1], node))
        return chosen

    def last_answer(self) -> float:
        """When the last request was answered (completed, or 504 at its deadline)."""
        done = self.done_times[-1] if self.done_times else 0.0  # appended in time order
        # ... except the sidecar's answers, which leave each pod's loop later
        return max(done, self.latest_answer, max(self.timeout_times, default=0.0))

    def in_system(self) -> int:
        """Requests inside pods and at the gateway (a gone pod holds none)."""
        return sum(map(self.p_n.__getitem__, self.live)) + len(self.gateway)

    def in_system_seconds(self, t: float) -> float:
        inside = sum(
            self.p_sdone[p] + self.p_n[p] * t - self.p_asum[p] for p in range(len(self.p_n))
        )
        return self.gone_sojourn + inside + sum(t - a for a in self.gateway)

    # ---- controller ---------------------------------------------------------------------

    def view(self, t: float) -> ClusterView:
        pods = []
        for p in self.ready:
            self.expire(p, t)
            conc = self.p_sdone[p] + self.p_n[p] * t - self.p_asum[p]
            pods.append(
                PodView(
                    p,
                    max(0.0, conc),
                    self.p_cpu[p],
                    self.p_ready_at[p],
                    self.p_n[p],
                    self.p_arr[p],
                    self.p_srv[p],
                    len(self.p_q[p]),
                    self.p_merged[p],
                )
            )
        self.expire_gateway(t)
        active = self.active_pods()
        return ClusterView(
            now=t,
            pods=tuple(pods),
            replicas=len(active),
            pending=sum(1 for p in active if self.p_state[p] != READY),
            unrouted=len(self.gateway),
            nodes=self.nodes_alive,
            workers=self.pods.workers,
            per_node=self.per_node,
            rows_per_request=self.rows,
            max_batch_rows=self.pods.max_batch_rows if self.batch_k > 1 else 0,
        )

    def tick(self, t: float) -> None:
        if self.read_lead_s > 0:
            # The next tick's readings, taken ahead of it as the controller's streams are.
            interval = self.controller.interval_s or 1.0
            self.push(t + interval - self.read_lead_s, READ)
        replicas, nodes = self.controller.tick(self.view(t))
        self.decisions.append((t, replicas, nodes))
        self.push(t + self.cspec.scrape_delay_s, APPLY, replicas, nodes)

    def apply(self, t: float, replicas: int, nodes: int | None) -> None:
        self.set_replicas(t, replicas)
        if nodes is None:
            pods_on_nodes = len(self.live)  # pending, starting, ready and draining
            nodes = self.node_scaler.desired(t, pods_on_nodes, self.nodes_alive)
        self.set_nodes(t, nodes)
        self.bind_pending(t)

    def cluster_event(self, kind: int, a: Any, t: float, b: Any) -> None:
        """TICK, READ, APPLY, POD_READY or NODE_READY, popped at t with payload (a, b)."""
        if kind == TICK:
            if not self.ending or self.in_system():
                self.tick(t)
                self.push(t + (self.controller.interval_s or 1.0), TICK)
        elif kind == READ:
            assert self.reads_ahead is not None
            self.reads_ahead.read(self.view(t))
        elif kind == APPLY:
            self.apply(t, a, b)
        elif kind == POD_READY:
            self.pod_ready(a, t)
        else:
            self.node_ready(a, t)

    def pod_event(self, kind: int, p: int, t: float, a: Any) -> None:
        """KILLED, BACK, ADMIT or REPLY on pod p, popped at t with payload a."""
        if kind == ADMIT:
            self.loop_admit(p, t, a)
        elif kind == REPLY:
            self.next_call(p, t)
        elif kind == KILLED:
            self.killed(p, t, a)
        else:
            self.worker_back(p, t)

    def sample(self, t: float) -> None:
        """A point of the time series, and the next one due."""
        self._bill(t, 0)
        self.samples.append((t, len(self.ready), self.nodes_alive, self.node_seconds,
                             self.in_system()))  # fmt: skip
        if self.progress is not None:
            self.progress(t)
        self.push(t + self.sample_s, SAMPLE)

    # ---- the loop -----------------------------------------------------------------------

    def _next_block(self) -> list[float]:
        """The next non-empty block of arrival times (counted per sample), or []."""
        for block in self.arrivals:
            if block.size:
                index = np.minimum(
                    (block // max(SAMPLE_S, self.sample_s)).astype(np.int64),
                    self.arrivals_hist.size - 1,
                )
                self.arrivals_hist += np.bincount(index, minlength=self.arrivals_hist.size)
                times: list[float] = block.tolist()
                return times
        return []

    def setup(self) -> None:
        initial = self.pods.initial
        n_nodes = min(
            max(self.nodes.min_nodes, math.ceil(initial / self.per_node)), self.nodes.max_nodes
        )
        for _ in range(n_nodes):
            self.add_node(0.0, ready=True)
        for _ in range(min(initial, n_nodes * self.per_node)):
            self.pending.append(self.new_pod())
        # Initial pods are ready at t = 0: bind them without a start delay.
        while self.pending:
            p = self.pending.popleft()
            n = self._fullest_with_room()
            self.p_node[p], self.p_state[p], self.p_ready_at[p] = n, READY, 0.0
            self.n_pods[n] += 1
            self._has_room(n)
            self.ready.append(p)
        if self.controller.interval_s is not None:
            self.push(self.controller.interval_s, TICK)
            if self.read_lead_s > 0:
                self.push(self.controller.interval_s - self.read_lead_s, READ)
        self.push(self.sample_s, SAMPLE)
        self.push(self.duration_s, END)

    def run(self) -> RunResult:
        """Simulate to the end, with Python's cyclic garbage collector paused: the loop
        makes no reference cycles, and a full collection walks every object alive (the
        state of every pod the run created), a cost that grows with the run's history."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if paused:
                gc.enable()

    def _run(self) -> RunResult:  # noqa: PLR0915 - the hot loop is inline on purpose
        wall0 = time.perf_counter()
        self.setup()
        heap = self.heap
        heappush, heappop = heapq.heappush, heapq.heappop
        ready, p_q, p_busy = self.ready, self.p_q, self.p_busy
        p_arr, p_srv = self.p_arr, self.p_srv
        p_n, p_asum, p_sdone, p_cpu, p_state = (
            self.p_n,
            self.p_asum,
            self.p_sdone,
            self.p_cpu,
            self.p_state,
        )
        done_append = self.done_times.append
        lat_append = self.latencies.append
        to_append = self.timeout_times.append
        rej_append = self.reject_times.append
        timeout = self.pods.request_timeout_s
        kill_after = timeout + WATCHDOG_GRACE_S
        workers = self.pods.workers
        qcap = self.pods.max_queue * workers
        least_loaded = self.pods.routing == "least_loaded"
        batching = self.batch_k > 1
        sidecar = self.sidecar
        svc_rng, route_rng = self.streams["service"], self.streams["routing"]
        unit_block, c1 = self.service.unit_block, self.call_mean_1
        sbuf: list[float] = []
        si = sn = 0
        rbuf: list[float] = []
        ri = rn = 0
        served = doomed = 0
        wait_sum = 0.0
        loaded = 0  # arrivals taken from the blocks (the run's requests, once consumed)
        inf = math.inf
        next_block = self._next_block
        abuf = next_block()
        ai, an = 0, len(abuf)
        loaded += an
        next_a = abuf[0] if abuf else inf
        ending = False  # past duration_s: stop once nothing is inside
        end_t = self.duration_s
        nready = len(ready)
        kind = END
        start = -1.0  # >= 0: the arrival time of a request whose call starts now
        while True:
            if next_a < heap[0][0]:
                t = next_a
                ai += 1
                if ai < an:
                    next_a = abuf[ai]
                else:
                    abuf = next_block()
                    ai, an = 0, len(abuf)
                    loaded += an
                    next_a = abuf[0] if abuf else inf
                if not nready:
                    self.admit(t, t)
                    continue
                if nready == 1:
                    p = ready[0]
                elif least_loaded:
                    p = self.least_loaded(t)
                else:
                    if ri == rn:
                        rbuf, ri, rn = route_rng.random(BLOCK).tolist(), 0, BLOCK
                    p = ready[int(rbuf[ri] * nready)]
                    ri += 1
                p_arr[p] += 1
                if sidecar:
                    self.through_loop(p, t, t)
                    continue
                q = p_q[p]
                if q:
                    if q[0] <= t - timeout:
                        self.expire(p, t)
                    if len(q) < qcap:
                        q.append(t)
                        p_n[p] += 1
                        p_asum[p] += t
                    else:
                        rej_append(t)
                    continue
                if p_busy[p] < workers:
                    p_busy[p] += 1
                    p_n[p] += 1
                    p_asum[p] += t
                    start = t
                elif qcap:
                    q.append(t)
                    p_n[p] += 1
                    p_asum[p] += t
                    continue
                else:
                    rej_append(t)
                    continue
            else:
                t, kind, _, p, a = heappop(heap)
                if sidecar and kind <= DONEB:  # DONE1 (one arrival time) or DONEB (a list)
                    self.answer_calls(p, t, (a,) if kind == DONE1 else a)
                elif kind == DONE1:
                    lat = t - a
                    if lat <= timeout:
                        done_append(t)
                        lat_append(lat)
                    else:
                        to_append(a + timeout)
                    p_n[p] -= 1
                    p_asum[p] -= a
                    p_sdone[p] += lat
                    q = p_q[p]
                    if q and q[0] <= t - timeout:
                        self.expire(p, t)
                    if not q:
                        p_busy[p] -= 1
                        if p_state[p] == DRAINING and p_n[p] == 0:
                            self.release(p, t)
                    elif batching:
                        self.start_calls(p, t)
                    else:
                        start = q.popleft()
                        wait_sum += t - start
                elif kind == DONEB:
                    for member in a:
                        lat = t - member
                        if lat <= timeout:
                            done_append(t)
                            lat_append(lat)
                        else:
                            to_append(member + timeout)
                        p_n[p] -= 1
                        p_asum[p] -= member
                        p_sdone[p] += lat
                    self.next_call(p, t)  # the worker takes the next call, or idles
                elif kind > END:
                    self.pod_event(kind, p, t, a)  # KILLED, BACK, ADMIT, REPLY
                elif kind == SAMPLE:
                    # Requests held at the gateway expire here too: a policy that never
                    # ticks (static) must not keep them, and the run forever.
                    self.expire_gateway(t)
                    if ending and next_a == inf and self.in_system() == 0:
                        end_t = max(end_t, self.last_answer())
                        break
                    self.sample(t)
                    continue  # the end was checked just above
                else:
                    if kind == END:
                        ending = self.ending = True
                        self.expire_gateway(t)
                        if next_a == inf and self.in_system() == 0:
                            break
                    else:
                        self.cluster_event(kind, p, t, a)  # TICK, READ, APPLY, POD/NODE_READY
                    nready = len(ready)
                    continue
            if start >= 0.0:
                # One request's call starts on pod p (the only place one is drawn on the
                # hot path): an arrival at an idle worker, or the head of the queue.
                served += 1
                p_srv[p] += 1
                if si == sn:
                    sbuf = (unit_block(svc_rng, BLOCK) * c1).tolist()
                    si, sn = 0, BLOCK
                s = sbuf[si]
                si += 1
                if t + s <= start + kill_after:
                    p_cpu[p] += s
                    # Its sequence number: minus its place among the calls served here,
                    # unique and apart from the pushed events' (>= 0), for free.
                    heappush(heap, (t + s, DONE1, -served, p, start))
                else:
                    doomed += 1  # no call pushed: the watchdog's KILLED instead
                    self.doom(p, t, [start])
                start = -1.0
            elif ending and next_a == inf and p_n[p] == 0 and self.in_system() == 0:
                end_t = max(end_t, t)  # the last request inside has left
                break
        # Counted once here rather than per event: the arrivals consumed, and the events
        # popped (every push took a sequence number, or is a call served on the hot path;
        # what is left was never popped).
        requests = loaded - (an - ai)
        events = next(self.seq) + served - doomed - len(heap)
        if kind != SAMPLE:
            end_t = max(end_t, t)
        end_t = max(end_t, self.latest_answer)  # the sidecar's last answer left after it
        # A decision may have landed after the last answer: never bill backwards.
        self._bill(max(end_t, self.node_since), 0)
        return RunResult(
            duration_s=self.duration_s,
            end_s=end_t,
            requests=requests,
            done_times=np.frombuffer(self.done_times, dtype=np.float64),
            latencies=np.frombuffer(self.latencies, dtype=np.float64),
            reject_times=np.frombuffer(self.reject_times, dtype=np.float64),
            timeout_times=np.frombuffer(self.timeout_times, dtype=np.float64),
            served=served + self.extra_served,
            wait_sum=wait_sum + self.extra_wait,
            node_seconds=self.node_seconds,
            in_system_seconds=self.in_system_seconds(end_t),
            events=events + requests,
            wall_s=time.perf_counter() - wall0,
            samples=np.array(self.samples, dtype=np.float64).reshape(-1, 5),
            arrivals_per_sample=self.arrivals_hist,
            decisions=self.decisions,
            worker_restarts=self.restarts,
            calls=sum(self.p_srv) - sum(self.p_merged),
        )


def engine_for(scenario: Scenario, controller: Controller, **overrides: Any) -> Engine:
    """The engine that runs `scenario` under `controller`: the scenario's arrivals,
    service, pods, nodes and random streams (from its seed); `overrides` replace any of
    the engine's arguments."""
    from rscore.sim.workload import arrival_blocks

    streams = Streams(scenario.seed)
    settings: dict[str, Any] = {
        "arrivals": arrival_blocks(scenario.workload, scenario.duration_s, streams["arrivals"]),
        "duration_s": scenario.duration_s,
        "service": scenario.service,
        "pods": scenario.pods,
        "nodes": scenario.nodes,
        "controller": controller,
        "controller_spec": scenario.controller,
        "streams": streams,
        "rows": scenario.workload.rows,
    }
    return Engine(**(settings | overrides))
