"""The scaling policy: a pure function from an observation to a recommendation.

`decide(observation, state, spec) -> (recommendation, new_state)` is shared by the
controller and the simulator. It reads no clock (time arrives in the observation), does
no I/O and no logging, and never mutates its inputs: every call returns a new state.

Replicas follow knative's KPA: a stable average of the total concurrency over
`stable_window_s` and a panic average over a fraction of it, divided by the capacity of
one pod; panic mode never scales down; rate limits and a scale-down delay window. CPU and
memory targets follow the HPA formula, and the final desire is the maximum over signals.
Nodes follow the Cluster Autoscaler: scale up at once, scale down after a delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "HPA_TOLERANCE",
    "MODE_PANIC",
    "MODE_STABLE",
    "NodePoolSpec",
    "Observation",
    "PodSample",
    "PolicyState",
    "Recommendation",
    "ScalingSpec",
    "decide",
]

MODE_STABLE = "Stable"
MODE_PANIC = "Panic"
HPA_TOLERANCE = 0.1


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class NodePoolSpec:
    """Bounds of the node pool that hosts the pods (e.g. a GPU MachineDeployment)."""

    max_nodes: int
    min_nodes: int = 0
    pods_per_node: int | None = None
    scale_down_delay_s: float = 600.0

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class ScalingSpec:
    """The `ScoringAutoscaler` spec, with the CRD's defaults."""

    max_replicas: int
    min_replicas: int = 1
    target_concurrency_per_worker: float = 1.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
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
    `rscore_concurrency_seconds_total`).
    """

    name: str
    concurrency: float | None
    cpu_usage_millicores: float | None = None
    cpu_request_millicores: float = 0.0
    memory_usage_bytes: float | None = None
    memory_request_bytes: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "concurrency",
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
    `pods_per_node` comes from the node pool spec, else from allocatable CPU divided by
    one pod's CPU request.
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

    - `samples`: (time, total concurrency) within the stable window (the panic window is
      its suffix).
    - `panic_until`: panic lasts while now < panic_until; None when not panicking.
    - `last_desired`: the previous recommendation's replicas.
    - `recommendations`: (time, desired before the delay) within `scale_down_delay_s`.
    - `node_scale_down_since`: since when the node desire has been below current nodes.
    """

    samples: tuple[tuple[float, float], ...] = ()
    panic_until: float | None = None
    last_desired: int | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    node_scale_down_since: float | None = None


@dataclass(frozen=True)
class Recommendation:
    desired_replicas: int
    desired_nodes: int | None
    mode: str
    reason: str
    observed_concurrency: float | None
    observed_panic_concurrency: float | None = None


@dataclass(frozen=True)
class _Concurrency:
    """The KPA signal for this tick."""

    desired: int | None  # None: no data yet
    stable_avg: float | None
    panic_avg: float | None
    panic_until: float | None
    mode: str
    reason: str


def _average(samples: tuple[tuple[float, float], ...], now: float, window: float) -> float | None:
    values = [v for t, v in samples if now - window < t <= now]
    return sum(values) / len(values) if values else None


def _total_concurrency(obs: Observation) -> float | None:
    """Total concurrency, or None when demand cannot be observed this tick.

    Pods whose scrape failed are extrapolated from the mean of the others (as the KPA
    scales its sampled average by the ready pod count); with every pod ready and
    reporting it is the plain sum.
    """
    known = [p.concurrency for p in obs.ready_pods if p.concurrency is not None]
    if known:
        per_pod = sum(known) / len(known)
        return per_pod * len(obs.ready_pods) + obs.unrouted_concurrency
    if obs.current_replicas == 0 or obs.unrouted_concurrency > 0:
        return obs.unrouted_concurrency
    return None


def _concurrency_signal(
    obs: Observation,
    state: PolicyState,
    spec: ScalingSpec,
    samples: tuple[tuple[float, float], ...],
) -> _Concurrency:
    now = obs.now
    panic_until = state.panic_until
    if panic_until is not None and now >= panic_until:
        panic_until = None
    stable_avg = _average(samples, now, spec.stable_window_s)
    panic_avg = _average(samples, now, spec.panic_window_s)
    if stable_avg is None:
        mode = MODE_PANIC if panic_until is not None else MODE_STABLE
        return _Concurrency(None, None, None, panic_until, mode, "no data yet")

    capacity = obs.workers_per_pod * spec.target_concurrency_per_worker * spec.target_utilization
    desired_stable = math.ceil(stable_avg / capacity)
    desired_panic = desired_stable if panic_avg is None else math.ceil(panic_avg / capacity)
    ready = len(obs.ready_pods)
    denominator = ready if ready > 0 else (obs.current_replicas or 1)
    if desired_panic / denominator >= spec.panic_threshold_percentage / 100.0:
        panic_until = now + spec.stable_window_s
    reason = (
        f"concurrency stable {stable_avg:.2f} panic {panic_avg or 0.0:.2f} / capacity "
        f"{capacity:.2f} per pod -> stable {desired_stable} panic {desired_panic}"
    )
    if panic_until is None:
        return _Concurrency(desired_stable, stable_avg, panic_avg, None, MODE_STABLE, reason)
    desired = max(desired_panic, state.last_desired or 0)
    reason += f"; panic until {panic_until:g}, never down -> {desired}"
    return _Concurrency(desired, stable_avg, panic_avg, panic_until, MODE_PANIC, reason)


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
    if pool.pods_per_node is not None:
        return pool.pods_per_node
    alloc, request = obs.node_allocatable_cpu_millicores, obs.pod_cpu_request_millicores
    if alloc is None or not request:
        return None
    return max(1, math.floor(alloc / request))


def _nodes(
    obs: Observation, state: PolicyState, pool: NodePoolSpec, replicas: int
) -> tuple[int | None, float | None, str]:
    """(desired nodes, scale-down-pending-since, reason)."""
    current = obs.current_nodes
    per_node = _pods_per_node(obs, pool)
    if per_node is None:
        return current, None, "nodes: pods per node unknown, hold"
    raw = min(max(math.ceil(replicas / per_node), pool.min_nodes), pool.max_nodes)
    reason = f"nodes: ceil({replicas}/{per_node}) clamped [{pool.min_nodes}, {pool.max_nodes}]"
    if current is None or raw >= current:
        return raw, None, f"{reason} -> {raw}"
    since = state.node_scale_down_since
    if since is None:
        since = obs.now
    if obs.now - since >= pool.scale_down_delay_s:
        return raw, since, f"{reason} -> {raw} (below {current} since {since:g})"
    held = min(max(current, pool.min_nodes), pool.max_nodes)
    return held, since, f"{reason} = {raw}, hold {held} until {since + pool.scale_down_delay_s:g}"


def decide(
    observation: Observation, state: PolicyState, spec: ScalingSpec
) -> tuple[Recommendation, PolicyState]:
    """One tick of the policy. Pure: returns the recommendation and a new state."""
    obs, now = observation, observation.now
    total = _total_concurrency(obs)
    samples = tuple((t, v) for t, v in state.samples if now - spec.stable_window_s < t <= now)
    if total is not None:
        samples = (*samples, (now, total))
    conc = _concurrency_signal(obs, state, spec, samples)
    reasons = [conc.reason]

    # The concurrency signal, then the max over the other signals.
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

    nodes: int | None = None
    since: float | None = None
    if spec.node_pool is not None:
        nodes, since, why = _nodes(obs, state, spec.node_pool, desired)
        reasons.append(why)

    recommendation = Recommendation(
        desired_replicas=desired,
        desired_nodes=nodes,
        mode=conc.mode,
        reason="; ".join(reasons),
        observed_concurrency=conc.stable_avg,
        observed_panic_concurrency=conc.panic_avg,
    )
    new_state = PolicyState(
        samples=samples,
        panic_until=conc.panic_until,
        last_desired=desired,
        recommendations=window,
        node_scale_down_since=since,
    )
    return recommendation, new_state
