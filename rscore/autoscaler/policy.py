"""The scaling policy: a pure function from an observation to a recommendation.

`decide(observation, state, spec) -> (recommendation, new_state)` is shared by the
controller and the simulator. It reads no clock (time arrives in the observation), does
no I/O and no logging, and never mutates its inputs: every call returns a new state.

Replicas follow the load offered, not the queue it leaves: the demand is the arrival rate
times the service time (busy R workers wanted, `rscore.autoscaler.scrape.pod_demand`), averaged
over `stable_window_s` and over a panic window (a fraction of it), divided by the work one
pod should carry (workers x `target_concurrency_per_worker` x `target_utilization`), plus
what drains the present queue within `queue_drain_s`, capped at the demand itself: a
full queue adds a bounded amount, never pods in proportion to its length. Panic mode (the
panic desire at twice the ready pods) scales up at once and never down; rate limits and a
scale-down delay window as in Knative's KPA. CPU and memory targets follow the HPA
formula, and the final desire is the maximum over signals. A latency objective lets pods
run busier than `target_utilization` (`rscore.autoscaler.latency_target`) only while the
traffic behaves as its queue model assumes: once more than `OVERLOAD_BUDGET` of the
last hour's demand arrived while the pods were overloaded, the floor stands again.

Nodes cost money, pods do not: nodes are sized for the demand's pods (scale up at once,
down after the pool's delay, as the Cluster Autoscaler), ordered ahead of the demand
the forecast (`rscore.autoscaler.forecast`, learned in the state from every tick) expects
within the pool's provisioning time, and the pods fill the nodes that are paid for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from rscore.autoscaler import forecast
from rscore.autoscaler.batch_cost import BatchCostFit, CallCounts, CostCurve, request_cost
from rscore.autoscaler.forecast import DemandProfile
from rscore.autoscaler.latency_target import objective_utilization

__all__ = [
    "HPA_TOLERANCE",
    "MODE_PANIC",
    "MODE_STABLE",
    "OVERLOAD_BUDGET",
    "OVERLOAD_MEMORY_S",
    "NodePoolSpec",
    "Observation",
    "PodSample",
    "PolicyState",
    "Recommendation",
    "ScalingSpec",
    "decide",
    "hold_when_unknown",
    "overload_share",
    "track_overload",
]

MODE_STABLE = "Stable"
MODE_PANIC = "Panic"
HPA_TOLERANCE = 0.1
# The latency objective's boost rests on a queue model of steady (Poisson) arrivals. A
# load that overloads the pods it sized (minutes at many times the minute before, which
# no node can follow) breaks that model, and the requests that arrive then are the ones
# the SLO counts as slow or failed. So the boost is earned: withheld while more than the
# p99's whole 1 % tail of the recent demand (busy-worker seconds, decayed over
# OVERLOAD_MEMORY_S) arrived in overload, i.e. with the panic window's demand above the
# ready workers. Chosen with `make bench-autoscale` (every scenario of
# examples/scenarios/): without it, the STS-70 launch day (nasa-launch-day-rate.toml)
# missed its SLO at the 0.8 cap where the HPA met it, and a 0.7 cap for everyone put
# the July 3 NASA day at 1.31x the oracle. With it both meet (1.20x, 1.22x), the 3-day
# GPU run is a little cheaper, the bursty Azure code trace fails 1.6 % instead of 2.7 %
# and twitter-counts 2.6 % instead of 3.6 % (both still miss, twitter-counts at 1.49x
# instead of 1.27x); nothing else moves. A budget of 0.2 % also met both NASA days but
# cost 4 % more on azure-conv; a memory of 30 minutes instead of an hour, the same.
OVERLOAD_BUDGET = 0.01
OVERLOAD_MEMORY_S = 3600.0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class NodePoolSpec:
    """Bounds of the node pool that hosts the pods (e.g. a GPU MachineDeployment)."""

    max_nodes: int
    min_nodes: int = 0
    pods_per_node: int | None = None
    scale_down_delay_s: float = 300.0
    provision_s: float = 300.0  # order to usable: how far ahead the forecast must look
    # What one pod needs of a node's memory (its workers' PSS plus the sidecar); None:
    # the pods' memory requests, and memory never limits without them.
    pod_memory_bytes: float | None = None

    def __post_init__(self) -> None:
        _require(self.provision_s >= 0, f"provision_s must be >= 0, got {self.provision_s}")
        _require(self.min_nodes >= 0, f"min_nodes must be >= 0, got {self.min_nodes}")
        _require(self.max_nodes >= 1, f"max_nodes must be >= 1, got {self.max_nodes}")
        _require(
            self.min_nodes <= self.max_nodes,
            f"min_nodes ({self.min_nodes}) must be <= max_nodes ({self.max_nodes})",
        )
        _require(
            self.pods_per_node is None or self.pods_per_node >= 1,
            f"pods_per_node must be >= 1 when set, got {self.pods_per_node}",
        )
        _require(
            self.scale_down_delay_s >= 0,
            f"node scale_down_delay_s must be >= 0, got {self.scale_down_delay_s}",
        )
        _require(
            self.pod_memory_bytes is None or self.pod_memory_bytes > 0,
            f"pod_memory_bytes must be > 0 when set, got {self.pod_memory_bytes}",
        )


@dataclass(frozen=True)
class ScalingSpec:
    """The `ScoringAutoscaler` spec, with the CRD's defaults."""

    max_replicas: int
    min_replicas: int = 1
    target_concurrency_per_worker: float = 1.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 20.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    queue_drain_s: float = 30.0
    # The p99 latency clients should see; when set, a pod may run busier than
    # target_utilization as far as that objective allows (rscore.autoscaler.latency_target).
    latency_objective_s: float | None = None
    cpu_target_utilization: float | None = None
    memory_target_utilization: float | None = None
    node_pool: NodePoolSpec | None = None

    def __post_init__(self) -> None:
        _require(self.min_replicas >= 0, f"min_replicas must be >= 0, got {self.min_replicas}")
        _require(self.max_replicas >= 1, f"max_replicas must be >= 1, got {self.max_replicas}")
        _require(
            self.min_replicas <= self.max_replicas,
            f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})",
        )
        _require(
            self.target_concurrency_per_worker > 0,
            f"target_concurrency_per_worker must be > 0, got {self.target_concurrency_per_worker}",
        )
        _require(
            0 < self.target_utilization <= 1,
            f"target_utilization must be in (0, 1], got {self.target_utilization}",
        )
        _require(
            self.stable_window_s > 0, f"stable_window_s must be > 0, got {self.stable_window_s}"
        )
        _require(
            0 < self.panic_window_percentage <= 100,
            f"panic_window_percentage must be in (0, 100], got {self.panic_window_percentage}",
        )
        _require(
            self.panic_threshold_percentage > 100,
            f"panic_threshold_percentage must be > 100, got {self.panic_threshold_percentage}",
        )
        _require(
            self.max_scale_up_rate > 1,
            f"max_scale_up_rate must be > 1, got {self.max_scale_up_rate}",
        )
        _require(
            self.max_scale_down_rate > 1,
            f"max_scale_down_rate must be > 1, got {self.max_scale_down_rate}",
        )
        _require(
            self.scale_down_delay_s >= 0,
            f"scale_down_delay_s must be >= 0, got {self.scale_down_delay_s}",
        )
        _require(self.queue_drain_s > 0, f"queue_drain_s must be > 0, got {self.queue_drain_s}")
        _require(
            self.latency_objective_s is None or self.latency_objective_s > 0,
            f"latency_objective_s must be > 0 when set, got {self.latency_objective_s}",
        )
        for name in ("cpu_target_utilization", "memory_target_utilization"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"{name} must be > 0 when set, got {value}")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0


@dataclass(frozen=True)
class PodSample:
    """One ready pod's metrics over the last scrape interval; None where the scrape failed.

    `concurrency` is the average of queued + in-flight requests (the rate of
    `rscore_concurrency_seconds_total`); None means the pod's scrape failed. The demand
    signal (`rscore.autoscaler.scrape.PodDemand`): `arrival_rate` (requests/s that wanted a
    worker), `service_s` (seconds in R per answered request) and `queue_depth` now;
    None where the pod's counters say nothing yet (its first scrape).
    """

    name: str
    concurrency: float | None
    cpu_usage_millicores: float | None = None
    cpu_request_millicores: float = 0.0
    memory_usage_bytes: float | None = None
    memory_request_bytes: float = 0.0
    arrival_rate: float | None = None
    service_s: float | None = None
    queue_depth: float | None = None
    calls: CallCounts | None = None  # its R calls over the interval (the batch cost fit)

    def __post_init__(self) -> None:
        for name in (
            "concurrency",
            "arrival_rate",
            "service_s",
            "queue_depth",
            "cpu_usage_millicores",
            "cpu_request_millicores",
            "memory_usage_bytes",
            "memory_request_bytes",
        ):
            value = getattr(self, name)
            _require(value is None or value >= 0, f"pod {self.name}: {name} must be >= 0")


@dataclass(frozen=True)
class Observation:
    """What the controller (or the simulator) saw at time `now` (seconds, any epoch).

    `unrouted_concurrency` counts requests waiting outside every pod (e.g. held at the
    gateway while no pod is ready); it is what lets a deployment at zero scale up.
    `pods_per_node` comes from the node pool spec, else from what a node can allocate
    divided by what one pod requests, CPU and memory both (the tighter wins). `wall_s`
    is the Unix time (the forecast learns time of day and week from it); None leaves
    the forecast out. `unrouted_unknown` says why the held
    requests could not be counted (an activator unread): unknown demand never scales
    pods or nodes down.
    """

    now: float
    ready_pods: tuple[PodSample, ...]
    current_replicas: int
    workers_per_pod: int
    pending_pods: int = 0
    unrouted_concurrency: float = 0.0
    current_nodes: int | None = None
    node_allocatable_cpu_millicores: float | None = None
    pod_cpu_request_millicores: float | None = None
    node_allocatable_memory_bytes: float | None = None
    pod_memory_request_bytes: float | None = None
    wall_s: float | None = None
    unrouted_unknown: str | None = None

    def __post_init__(self) -> None:
        _require(math.isfinite(self.now), f"now must be finite, got {self.now}")
        _require(self.current_replicas >= 0, "current_replicas must be >= 0")
        _require(self.workers_per_pod >= 1, "workers_per_pod must be >= 1")
        _require(self.pending_pods >= 0, "pending_pods must be >= 0")
        _require(self.unrouted_concurrency >= 0, "unrouted_concurrency must be >= 0")
        _require(self.current_nodes is None or self.current_nodes >= 0, "current_nodes < 0")


@dataclass(frozen=True)
class PolicyState:
    """Everything `decide` remembers between ticks. Start with `PolicyState()`.

    - `samples`: (time, demand in busy workers) within the stable window (the panic
      window is its suffix).
    - `panic_until`: panic lasts while now < panic_until; None when not panicking.
    - `last_desired`: the previous recommendation's replicas.
    - `recommendations`: (time, desired before the delay) within `scale_down_delay_s`.
    - `node_scale_down_since`: since when the node desire has been below current nodes.
    - `service_s`: the last known service time (seconds in R per request), for ticks
      when no pod answered anything.
    - `profile`: the demand profile the forecast learns (kept across restarts in the
      ScoringAutoscaler's status).
    - `batch_fit`: the cost of an R call against its rows, fitted over the pods'
      intervals (`rscore.autoscaler.batch_cost`).
    - `overload`: (time, busy-worker seconds that arrived in overload, all of them),
      both decayed over `OVERLOAD_MEMORY_S` (`track_overload`).
    """

    samples: tuple[tuple[float, float], ...] = ()
    panic_until: float | None = None
    last_desired: int | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    node_scale_down_since: float | None = None
    service_s: float | None = None
    profile: DemandProfile = field(default_factory=DemandProfile.empty)
    batch_fit: BatchCostFit = field(default_factory=BatchCostFit)
    overload: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Recommendation:
    desired_replicas: int
    desired_nodes: int | None
    mode: str
    reason: str
    # The stable and panic averages of the demand, in busy workers (a pod that reports
    # no arrivals yet counts its concurrency: then these are the KPA's concurrency).
    observed_concurrency: float | None
    observed_panic_concurrency: float | None = None
    forecast_demand: float | None = None  # busy workers the forecast expects ahead


@dataclass(frozen=True)
class _Demand:
    """This tick's load, summed over the pods (missing pods extrapolated)."""

    busy: float  # busy R workers wanted: arrival rate x service time
    backlog: float  # requests waiting now: queues + unrouted
    unrouted: float  # of which held outside every pod (the activator)
    service_s: float | None  # the fleet's seconds in R per request


@dataclass(frozen=True)
class _Concurrency:
    """The demand signal's desire for this tick."""

    desired: int | None  # None: no data yet
    stable_avg: float | None
    panic_avg: float | None
    panic_until: float | None
    mode: str
    reason: str
    # The pods nodes are ordered for: the stable desire, unless in panic. A rise seen
    # only in the panic window gets pods at once (on nodes already there, free), but
    # orders no node until it lasts or doubles the load: a node costs its provisioning
    # and its scale-down delay, which a few seconds of noise would waste.
    sustained: int | None = None


def _average(samples: tuple[tuple[float, float], ...], now: float, window: float) -> float | None:
    values = [v for t, v in samples if now - window < t <= now]
    return sum(values) / len(values) if values else None


def _fleet_service_s(pods: list[PodSample], last: float | None) -> float | None:
    """Seconds in R per request over the pods that know it, weighted by their arrivals
    (a plain mean when none had any); else the last known value."""
    known = [(p.service_s, p.arrival_rate or 0.0) for p in pods if p.service_s is not None]
    if not known:
        return last
    weight = sum(w for _, w in known)
    if weight > 0:
        return sum(s * w for s, w in known) / weight
    return sum(s for s, _ in known) / len(known)


def _batched_service_s(pod: PodSample, curve: CostCurve | None) -> float | None:
    """Seconds in R per request of a batchable pod once fewer pods let its calls merge
    requests (`batch_cost.request_cost`); None when unknown or not batchable."""
    counts = pod.calls
    if curve is None or counts is None or counts.max_batch_rows < 2 or counts.answered <= 0:
        return None
    return request_cost(curve, counts.rows / counts.answered, counts.max_batch_rows)


def _demand(
    obs: Observation, last_service_s: float | None, curve: CostCurve | None = None
) -> _Demand | None:
    """The load this tick, or None when it cannot be observed.

    A pod's busy workers are its arrival rate times the service time (its own, else the
    fleet's; for a batchable model, no more than a request costs in the batches fewer
    pods would form, once the call cost curve is known); a pod whose counters say
    nothing yet (a first scrape) counts its average concurrency instead. Pods whose
    scrape failed are extrapolated from the mean of the others (as the KPA scales its
    sample by the ready pod count); with every pod ready and reporting it is the plain
    sum.
    """
    scraped = [p for p in obs.ready_pods if p.concurrency is not None]
    unrouted = obs.unrouted_concurrency
    if not scraped:
        if obs.current_replicas == 0 or unrouted > 0:
            return _Demand(0.0, unrouted, unrouted, last_service_s)
        return None
    service = _fleet_service_s(scraped, last_service_s)
    busy = backlog = 0.0
    for pod in scraped:
        assert pod.concurrency is not None
        own = pod.service_s if pod.service_s is not None else service
        batched = _batched_service_s(pod, curve)
        if own is not None and batched is not None:
            own = min(own, batched)
        if pod.arrival_rate is not None and own is not None:
            busy += pod.arrival_rate * own
            backlog += pod.queue_depth or 0.0
        else:  # its concurrency, queue included, stands in
            busy += pod.concurrency
    scale = len(obs.ready_pods) / len(scraped)
    return _Demand(busy * scale, backlog * scale + unrouted, unrouted, service)


def _drain(demand: _Demand, spec: ScalingSpec, busy: float, capacity: float) -> float:
    """Busy workers that empty the backlog within `queue_drain_s`, at most the demand
    itself (or one pod's worth): a long queue adds a bounded amount, never pods in
    proportion to its length. Without a known service time (no pod has answered yet,
    e.g. at zero scale), each request held outside the pods counts as one busy worker
    (those inside already count in their pod's concurrency)."""
    if demand.backlog <= 0:
        return 0.0
    if demand.service_s is None:
        return demand.unrouted
    return min(demand.backlog * demand.service_s / spec.queue_drain_s, max(busy, capacity))


def _pods_for(busy: float, capacity: float) -> int:
    return max(0, math.ceil(busy / capacity - 1e-9))


def _utilization(obs: Observation, spec: ScalingSpec, service_s: float | None) -> float:
    """The share of its workers a pod should keep busy: `target_utilization`, or more
    where the latency objective allows it for this service time (never less)."""
    if spec.latency_objective_s is None:
        return spec.target_utilization
    allowed = objective_utilization(obs.workers_per_pod, service_s, spec.latency_objective_s)
    return spec.target_utilization if allowed is None else max(spec.target_utilization, allowed)


def track_overload(
    previous: tuple[float, float, float],
    now: float,
    busy: float | None,
    recent_busy: float | None,
    ready_workers: int,
) -> tuple[float, float, float]:
    """The overload record with this tick added: (now, overloaded, all), each the
    busy-worker seconds since the last tick (`busy` x the time between) added to the
    decayed sums; overloaded when `recent_busy` (the panic window's average, steadier
    than one tick's) exceeds the `ready_workers`. Unchanged without demand or workers
    (nothing to weigh, or nothing that could be overloaded)."""
    at, overloaded, total = previous
    if busy is None or recent_busy is None or ready_workers <= 0:
        return previous
    if previous == (0.0, 0.0, 0.0):  # the first tick: from here on
        return now, 0.0, 0.0
    elapsed = max(0.0, now - at)
    decay = math.exp(-elapsed / OVERLOAD_MEMORY_S)
    weight = busy * elapsed
    hot = weight if recent_busy > ready_workers else 0.0
    return now, overloaded * decay + hot, total * decay + weight


def overload_share(record: tuple[float, float, float]) -> float:
    """The share of the recent demand that arrived in overload (0 with no record)."""
    _, overloaded, total = record
    return overloaded / total if total > 0 else 0.0


def _capacity(
    obs: Observation, spec: ScalingSpec, service_s: float | None, *, boost: bool = True
) -> float:
    """Busy workers one pod should carry (at the floor when the boost is withheld)."""
    utilization = _utilization(obs, spec, service_s) if boost else spec.target_utilization
    return obs.workers_per_pod * spec.target_concurrency_per_worker * utilization


def _concurrency_signal(
    obs: Observation,
    state: PolicyState,
    spec: ScalingSpec,
    samples: tuple[tuple[float, float], ...],
    demand: _Demand | None,
    *,
    capacity: float,
    panic_avg: float | None,
) -> _Concurrency:
    now = obs.now
    panic_until = state.panic_until
    if panic_until is not None and now >= panic_until:
        panic_until = None
    stable_avg = _average(samples, now, spec.stable_window_s)
    if stable_avg is None or demand is None:
        mode = MODE_PANIC if panic_until is not None else MODE_STABLE
        return _Concurrency(None, None, None, panic_until, mode, "no data yet")

    panic_avg = stable_avg if panic_avg is None else panic_avg
    drain = _drain(demand, spec, max(stable_avg, panic_avg), capacity)
    desired_stable = _pods_for(stable_avg + drain, capacity)
    desired_panic = _pods_for(panic_avg + drain, capacity)
    if obs.unrouted_concurrency > 0:  # requests held with no pod to take them
        desired_stable, desired_panic = max(desired_stable, 1), max(desired_panic, 1)
    ready = len(obs.ready_pods)
    denominator = ready if ready > 0 else (obs.current_replicas or 1)
    if desired_panic / denominator >= spec.panic_threshold_percentage / 100.0:
        panic_until = now + spec.stable_window_s
    service = "unknown" if demand.service_s is None else f"{demand.service_s * 1000:.1f} ms"
    reason = (
        f"demand stable {stable_avg:.2f} panic {panic_avg:.2f} busy workers (service "
        f"{service}) + drain {drain:.2f} of {demand.backlog:g} waiting / capacity "
        f"{capacity:.2f} per pod -> stable {desired_stable} panic {desired_panic}"
    )
    if panic_until is None:
        # Up fast, down slow: a rise the panic window already shows is acted on now
        # (the stable average would take most of a window to follow it); only a fall
        # waits for the stable window.
        desired = max(desired_stable, desired_panic)
        return _Concurrency(
            desired, stable_avg, panic_avg, None, MODE_STABLE, reason, desired_stable
        )
    desired = max(desired_panic, state.last_desired or 0)
    reason += f"; panic until {panic_until:g}, never down -> {desired}"
    return _Concurrency(desired, stable_avg, panic_avg, panic_until, MODE_PANIC, reason, desired)


def _hpa_signal(
    obs: Observation, target: float, usage_of: str, request_of: str
) -> tuple[int | None, str]:
    """HPA's replica count for one resource, or None when it cannot be computed.

    ratio = sum(usage) / sum(request) / target; within HPA_TOLERANCE of 1 keep current.
    Pods without a usage sample count as 0% on a scale-up and as 100% of their request
    (or the target, if higher) on a scale-down; if that flips the direction, keep current.
    """
    current = obs.current_replicas
    known = [
        (getattr(p, usage_of), getattr(p, request_of))
        for p in obs.ready_pods
        if getattr(p, usage_of) is not None
    ]
    missing = [getattr(p, request_of) for p in obs.ready_pods if getattr(p, usage_of) is None]
    request_known = sum(r for _, r in known)
    if current == 0 or not known or request_known <= 0:
        return current, "no usage data, hold"
    usage_known = sum(u for u, _ in known)
    ratio = usage_known / request_known / target
    if missing:
        fill = 0.0 if ratio > 1 else max(1.0, target)
        new_ratio = (usage_known + fill * sum(missing)) / (request_known + sum(missing)) / target
        if (ratio > 1) != (new_ratio > 1):
            return current, f"ratio {ratio:.2f} flips to {new_ratio:.2f} with missing pods, hold"
        ratio = new_ratio
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current, f"ratio {ratio:.2f} within tolerance, hold"
    desired = math.ceil(current * ratio)
    return desired, f"ratio {ratio:.2f} -> {desired}"


def _pods_per_node(obs: Observation, pool: NodePoolSpec) -> int | None:
    """The pool's `pods_per_node`, else the fewest pods a node fits by CPU or by memory
    (memory: the pool's measured `pod_memory_bytes`, else the pods' request); at least
    one. None when neither is known."""
    if pool.pods_per_node is not None:
        return pool.pods_per_node
    pod_memory = pool.pod_memory_bytes or obs.pod_memory_request_bytes
    fits = [
        math.floor(allocatable / need)
        for allocatable, need in (
            (obs.node_allocatable_cpu_millicores, obs.pod_cpu_request_millicores),
            (obs.node_allocatable_memory_bytes, pod_memory),
        )
        if allocatable is not None and need
    ]
    return max(1, min(fits)) if fits else None


def _nodes(
    obs: Observation,
    state: PolicyState,
    pool: NodePoolSpec,
    replicas: int,
    *,
    ahead_replicas: int,
    kept_replicas: int,
    per_node: int | None,
) -> tuple[int | None, float | None, str]:
    """(desired nodes, scale-down-pending-since, reason).

    The nodes for `replicas` now, or for `ahead_replicas` (the forecast's pods within
    the provisioning time) if more: those must be ordered now to be usable in time.
    Nodes the `kept_replicas` (the pods the policy keeps, delays included) run on are
    never released, though no new node is ordered for them: a node released under a
    kept pod would only evict it, and the pool would order the node back.
    """
    current = obs.current_nodes
    if per_node is None:
        return current, None, "nodes: pods per node unknown, hold"
    wanted = max(replicas, ahead_replicas)
    raw = min(max(math.ceil(wanted / per_node), pool.min_nodes), pool.max_nodes)
    reason = f"nodes: ceil({wanted}/{per_node}) clamped [{pool.min_nodes}, {pool.max_nodes}]"
    if ahead_replicas > replicas:
        reason += f" (forecast {ahead_replicas} pods within {pool.provision_s:g}s)"
    if current is not None:
        hosting = min(math.ceil(kept_replicas / per_node), current, pool.max_nodes)
        if hosting > raw:
            raw = hosting
            reason += f", {hosting} hosting the {kept_replicas} pods kept"
    if current is None or raw >= current:
        return raw, None, f"{reason} -> {raw}"
    since = state.node_scale_down_since
    if since is None:
        since = obs.now
    if obs.now - since >= pool.scale_down_delay_s:
        return raw, since, f"{reason} -> {raw} (below {current} since {since:g})"
    held = min(max(current, pool.min_nodes), pool.max_nodes)
    return held, since, f"{reason} = {raw}, hold {held} until {since + pool.scale_down_delay_s:g}"


def _forecast(
    obs: Observation, state: PolicyState, spec: ScalingSpec, demand: _Demand | None
) -> tuple[DemandProfile, float | None, str | None]:
    """(the profile with this tick learnt, the demand expected within the pool's
    provisioning time plus a stable window, and why), when the wall time is known."""
    profile = state.profile
    if obs.wall_s is None:
        return profile, None, None
    if demand is not None:
        profile = forecast.observe(profile, obs.wall_s, demand.busy)
    if spec.node_pool is None:
        return profile, None, None
    horizon = spec.node_pool.provision_s + spec.stable_window_s
    expected = forecast.forecast(profile, obs.wall_s, horizon)
    if expected is None:
        return profile, None, "forecast: no history yet, reactive"
    return (
        profile,
        expected.demand,
        f"forecast {expected.demand:.2f} busy workers within {horizon:g}s "
        f"({expected.basis}, x{expected.error_factor:.2f} for its error"
        + (f", x{expected.level:.2f} as the last hour ran" if expected.level < 1 else "")
        + ")",
    )


def _size_nodes(
    obs: Observation,
    state: PolicyState,
    spec: ScalingSpec,
    desired: int,
    *,
    for_nodes: int,
    expected: float | None,
    capacity: float,
    reasons: list[str],
) -> tuple[int, int | None, float | None]:
    """(replicas, desired nodes, node scale-down pending since) for the pool, if any."""
    if spec.node_pool is None:
        return desired, None, None
    ahead = 0 if expected is None else _pods_for(expected, capacity)
    per_node = _pods_per_node(obs, spec.node_pool)
    nodes, since, why = _nodes(
        obs,
        state,
        spec.node_pool,
        for_nodes,
        ahead_replicas=min(ahead, spec.max_replicas),
        kept_replicas=desired,
        per_node=per_node,
    )
    reasons.append(why)
    replicas = desired
    if nodes is not None and per_node is not None:
        # Pods are free on nodes already paid for: fill them (headroom at no cost).
        filled = min(nodes * per_node, spec.max_replicas)
        if filled > replicas:
            replicas = filled
            reasons.append(f"fill {nodes} nodes x {per_node} -> {replicas} pods")
    return replicas, nodes, since


def _objective_capacity(
    obs: Observation,
    state: PolicyState,
    spec: ScalingSpec,
    demand: _Demand | None,
    panic_avg: float | None,
) -> tuple[tuple[float, float, float], float, list[str]]:
    """(the overload record with this tick, the busy workers one pod should carry, the
    reason when the latency objective's share above the floor is withheld). Without an
    objective there is nothing to withhold, and no record is kept."""
    service_s = state.service_s if demand is None else demand.service_s
    if spec.latency_objective_s is None:
        return state.overload, _capacity(obs, spec, service_s), []
    overload = track_overload(
        state.overload,
        obs.now,
        None if demand is None else demand.busy,
        panic_avg,
        len(obs.ready_pods) * obs.workers_per_pod,
    )
    share = overload_share(overload)
    if share <= OVERLOAD_BUDGET:
        return overload, _capacity(obs, spec, service_s), []
    why = (
        f"objective's utilization withheld: {share:.2%} of the last hour's demand "
        f"arrived overloaded (> {OVERLOAD_BUDGET:.1%})"
    )
    return overload, _capacity(obs, spec, service_s, boost=False), [why]


def hold_when_unknown(
    recommendation: Recommendation, current_replicas: int, current_nodes: int | None, why: str
) -> Recommendation:
    """The decision, never below what runs now: with the activator unread, the held
    demand is unknown, and unknown demand never scales down (as a pod's missing scrape)."""
    replicas = max(recommendation.desired_replicas, current_replicas)
    nodes = recommendation.desired_nodes
    if nodes is not None and current_nodes is not None:
        nodes = max(nodes, current_nodes)
    if (replicas, nodes) == (recommendation.desired_replicas, recommendation.desired_nodes):
        return recommendation
    return replace(
        recommendation,
        desired_replicas=replicas,
        desired_nodes=nodes,
        reason=f"{recommendation.reason}; held requests unknown ({why}), hold {replicas}",
    )


def decide(
    observation: Observation, state: PolicyState, spec: ScalingSpec
) -> tuple[Recommendation, PolicyState]:
    """One tick of the policy. Pure: returns the recommendation and a new state."""
    obs, now = observation, observation.now
    batch_fit = state.batch_fit.observe(
        now, [p.calls for p in obs.ready_pods if p.calls is not None]
    )
    curve = batch_fit.curve()
    demand = _demand(obs, state.service_s, curve)
    samples = tuple((t, v) for t, v in state.samples if now - spec.stable_window_s < t <= now)
    if demand is not None:
        samples = (*samples, (now, demand.busy))
    # Busy workers a pod should carry: once a tick (the latency objective's bisection is
    # the policy's costliest arithmetic), for the demand signal and the nodes alike.
    panic_avg = _average(samples, now, spec.panic_window_s)  # for the overload record too
    overload, capacity, withheld = _objective_capacity(obs, state, spec, demand, panic_avg)
    conc = _concurrency_signal(
        obs, state, spec, samples, demand, capacity=capacity, panic_avg=panic_avg
    )
    reasons = [conc.reason, *withheld]
    if curve is not None:
        reasons.append(
            f"R call {curve.per_call_s * 1e3:.2f} ms + {curve.per_row_s * 1e3:.3f} ms per row"
        )

    # The demand signal, then the max over the other signals.
    desired = obs.current_replicas if conc.desired is None else conc.desired
    for target, usage_of, request_of, label in (
        (spec.cpu_target_utilization, "cpu_usage_millicores", "cpu_request_millicores", "cpu"),
        (spec.memory_target_utilization, "memory_usage_bytes", "memory_request_bytes", "memory"),
    ):
        if target is not None:
            hpa, why = _hpa_signal(obs, target, usage_of, request_of)
            reasons.append(f"{label} {why}")
            if hpa is not None:
                desired = max(desired, hpa)

    # Rate limits relative to the ready pods.
    ready = max(len(obs.ready_pods), 1)
    up_limit = math.ceil(spec.max_scale_up_rate * ready)
    down_limit = math.floor(ready / spec.max_scale_down_rate)
    if not down_limit <= desired <= up_limit:
        desired = min(max(desired, down_limit), up_limit)
        reasons.append(f"rate limit [{down_limit}, {up_limit}] -> {desired}")

    # Scale-down delay: the max over the recommendations of the last delay.
    window = tuple(
        (t, v) for t, v in state.recommendations if now - spec.scale_down_delay_s < t <= now
    )
    window = (*window, (now, desired))
    delayed = max(v for _, v in window)
    if delayed > desired:
        reasons.append(f"scale-down delay {spec.scale_down_delay_s:g}s -> {delayed}")
    desired = delayed

    # Never scale down on missing data.
    missing = any(p.concurrency is None for p in obs.ready_pods) or (
        not obs.ready_pods and obs.current_replicas > 0
    )
    if missing and desired < obs.current_replicas:
        desired = obs.current_replicas
        reasons.append(f"missing concurrency data, hold {desired}")

    clamped = min(max(desired, spec.min_replicas), spec.max_replicas)
    if clamped != desired:
        reasons.append(f"clamp [{spec.min_replicas}, {spec.max_replicas}] -> {clamped}")
    desired = clamped

    profile, expected, forecast_note = _forecast(obs, state, spec, demand)
    if forecast_note is not None:
        reasons.append(forecast_note)
    for_nodes = desired if conc.sustained is None else min(desired, conc.sustained)
    for_nodes = max(for_nodes, spec.min_replicas)
    replicas, nodes, since = _size_nodes(
        obs,
        state,
        spec,
        desired,
        for_nodes=for_nodes,
        expected=expected,
        capacity=capacity,
        reasons=reasons,
    )

    recommendation = Recommendation(
        desired_replicas=replicas,
        desired_nodes=nodes,
        mode=conc.mode,
        reason="; ".join(reasons),
        observed_concurrency=conc.stable_avg,
        observed_panic_concurrency=conc.panic_avg,
        forecast_demand=expected,
    )
    if obs.unrouted_unknown is not None:
        recommendation = hold_when_unknown(
            recommendation, obs.current_replicas, obs.current_nodes, obs.unrouted_unknown
        )
    new_state = PolicyState(
        samples=samples,
        panic_until=conc.panic_until,
        last_desired=desired,
        recommendations=window,
        node_scale_down_since=since,
        service_s=state.service_s if demand is None else demand.service_s,
        profile=profile,
        batch_fit=batch_fit,
        overload=overload,
    )
    return recommendation, new_state
