"""The oracle: a clairvoyant plan of nodes (and the pods that fill them), replayed.

The oracle knows every arrival time in advance (not the service times, nor the random
pod start and node provisioning delays). It plans in four steps:

1. **Pod capacity** (`pod_capacity`): the highest Poisson rate one pod (the scenario's
   workers, queue, timeout, batching and service times) carries with at most 1 % of
   requests slower than the SLO or failed, measured by bisection on short one-pod runs
   of the simulator itself with a fixed seed. Under random routing each pod receives an
   independent share of the arrivals, so `n` pods carry `n x capacity`.
2. **Pods needed** (`pods_needed`), on a grid of `grid_s` (at most 1 s, half the burst
   allowance): the larger of the *rate* term, arrivals in the centred minute / 60 s /
   capacity, and the *burst* term: a queue that drains within the SLO absorbs a short
   burst, so the work arriving in any window `W` (up to a minute long) must be done
   within `|W| + D`, where `D` (`burst_delay_s`) is what a request can wait in a queue
   (the SLO less a call, within the timeout and the queue's room). That window needs
   `A(W) / (capacity x (|W| + D))` pods from its start until `D` after its end.
3. **Nodes** (`nodes_needed`, `order_ahead`): `ceil(pods / pods_per_node)`, held from
   `lead` before they are needed, where `lead` is a high quantile (`LEAD_QUANTILE`) of
   node provisioning + the start of a node's pods (schedule, image pull, model load),
   measured by sampling the scenario's own delay distributions (`start_leads`). The
   controller (`rscore.sim.policies.OracleController`) keeps every held node full of pods: pods
   are free, nodes cost, so the spare slots are headroom at no cost.
4. **Replay** (`oracle_run`): the plan is run through the same engine as every policy. If
   the replay misses the SLO, the plan's headroom (the fraction of the measured capacity
   it counts on) is lowered and the plan replayed again, at most `MAX_REPLAYS` times; the
   first plan that meets the SLO (refined once between the last miss and it) is the
   oracle's run, so the oracle's row is a real, feasible schedule. Foresight reaches
   back before the run: the replay starts with the nodes the plan holds at t = 0 up and
   full (never fewer pods than `pods.initial`).

`oracle_bound` is the lower bound on cost: the nodes the headroom-1 plan needs, each
billed second by second from the *mean* node + pod start time before it is needed. It is
a bound under the plan's model (every window within the SLO, the measured pod capacity):
a policy that spends the whole run's 1 % failure budget on a few bursts can go below it.

Runs simulations (one-pod probes, and replays of the plan) but writes nothing, prints
nothing, and never reads the wall clock except through the engine's own `wall_s`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rscore.sim.distributions import Streams
from rscore.sim.engine import RunResult, engine_for
from rscore.sim.metrics import SLO_TAIL, slo_misses_allowed, summarize
from rscore.sim.policies import OracleController, StaticController
from rscore.sim.scenario import Scenario, scaling_spec
from rscore.sim.workload import WorkloadSpec, counts_per_bin

__all__ = [
    "LEAD_QUANTILE",
    "MAX_REPLAYS",
    "ORACLE_TAIL",
    "OracleRun",
    "burst_delay_s",
    "nodes_needed",
    "oracle_bound",
    "oracle_run",
    "order_ahead",
    "plan_grid_s",
    "pod_capacity",
    "pods_needed",
    "start_leads",
]

ORACLE_TAIL = SLO_TAIL  # the SLO's share of requests that may be slower (p99)
LEAD_QUANTILE = 0.99  # nodes are ordered this quantile of their start time ahead
RATE_WINDOW_S = 60.0  # the rate term's centred window; the longest burst window
MAX_REPLAYS = 5  # replays of the plan at most (the common case: 1 to 3)
MAX_REACTIVE_REPLAYS = 8  # the reactive oracle's: 0 to 7 spare nodes
HEADROOM_STEP = 0.8  # a missed replay multiplies the capacity fraction by this
_LEAD_DRAWS = 20_000
_PROBE_REQUESTS = 30_000
_PROBE_STEPS = 14
_TRY_FIELDS = ("cost_usd", "latency_p99_all_s", "slo_met")  # each replay's, in the summary


# ---- pod capacity -----------------------------------------------------------------------


def _late_share(scenario: Scenario, rate: float) -> float:
    """Share of a one-pod run's requests at `rate` that fail or exceed the SLO."""
    probe = dataclasses.replace(
        scenario,
        seed=12345,  # one fixed stream for every probe: comparable, nearly monotone
        duration_s=_PROBE_REQUESTS / rate,
        workload=WorkloadSpec("poisson", rate=rate, rows=scenario.workload.rows),
        pods=dataclasses.replace(scenario.pods, initial=1),
    )
    result = engine_for(
        probe,
        StaticController(1),
        nodes=dataclasses.replace(probe.nodes, min_nodes=0, max_nodes=1, pods_per_node=1),
        sample_s=max(10.0, probe.duration_s / 100.0),  # no time series wanted
    ).run()
    if result.requests == 0:
        return 0.0
    late = int(np.count_nonzero(result.latencies > probe.slo_p99_s))
    failed = result.reject_times.size + result.timeout_times.size
    return (late + failed) / result.requests


def pod_capacity(scenario: Scenario) -> float:
    """The highest request rate (req/s) one pod carries within the SLO (0: none)."""
    service = scenario.service
    rows = scenario.workload.rows
    batch = max(1, scenario.pods.max_batch_rows // rows)
    # No pod goes faster than its workers all busy with the largest batches.
    high = scenario.pods.workers * batch / service.call_mean(batch * rows)
    # Below a thousandth of that, call the SLO out of reach (the service time alone, or
    # the timeout, breaks it) rather than simulate ever longer probes.
    low = high / 1024.0
    if _late_share(scenario, low) > ORACLE_TAIL:
        return 0.0
    for _ in range(_PROBE_STEPS):
        middle = (low + high) / 2.0
        if _late_share(scenario, middle) <= ORACLE_TAIL:
            low = middle
        else:
            high = middle
    return low


# ---- the plan: pure functions of the arrival counts ---------------------------------------


def burst_delay_s(scenario: Scenario, capacity: float) -> float:
    """How long a request of a burst may wait in a queue and still meet the SLO: the SLO
    (and the timeout) less one call, and no longer than the queue's room lasts at the
    capacity (a fuller queue rejects)."""
    call = scenario.service.call_mean(scenario.workload.rows)
    pods = scenario.pods
    wait = min(scenario.slo_p99_s, pods.request_timeout_s) - call
    if capacity > 0:
        wait = min(wait, pods.max_queue * pods.workers / capacity)
    return max(0.0, wait)


def plan_grid_s(delay_s: float) -> float:
    """The plan's resolution: half the burst allowance, between 0.1 s and 1 s."""
    return float(min(1.0, max(0.1, delay_s / 2.0)))


def _sliding_max(values: np.ndarray, width: int) -> np.ndarray:
    """out[i] = max(values[i : i + width]) for every full window (len - width + 1)."""
    out, span = values, 1
    while span * 2 <= width:
        out = np.maximum(out[:-span], out[span:])  # now the max over 2 * span
        span *= 2
    rest = width - span
    if rest:
        out = np.maximum(out[:-rest], out[rest:])  # two overlapping spans cover width
    return out


def _cover(values: np.ndarray, width: int, after: int) -> np.ndarray:
    """Each value at i, held over [i, i + width + after): out[t] = the largest value of
    a window that starts at most width + after - 1 grid steps before t (len: n)."""
    reach = width + after
    padded = np.concatenate((np.zeros(reach - 1), values, np.zeros(reach - 1)))
    return _sliding_max(padded, reach)[: values.size + width - 1]


def pods_needed(
    counts: np.ndarray, *, grid_s: float, capacity: float, delay_s: float
) -> np.ndarray:
    """Pods (fractional, at the full measured capacity) needed in each grid step.

    `counts` are the arrivals per grid step. The rate term is the centred minute's
    arrivals / 60 s / capacity; the burst term, for windows W of 1 step up to a minute,
    `A(W) / (capacity (|W| + delay_s))`, held from W's start until `delay_s` after its
    end (the work it brings must be done by then). The need is the larger of the two.
    """
    n = counts.size
    if n == 0:
        return np.zeros(0)
    cum = np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).astype(np.float64)
    if capacity <= 0:  # not even one request fits the SLO: all the pods there may be
        return np.where(counts > 0, np.inf, 0.0)
    # Rate: the centred minute (shorter at the edges of the run, never empty).
    half = max(1, round(RATE_WINDOW_S / grid_s / 2))
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half, 0, n)
    need = (cum[hi] - cum[lo]) / ((hi - lo) * grid_s * capacity)
    # Bursts: windows from one step to a minute, lengths a factor sqrt(2) apart.
    after = math.ceil(delay_s / grid_s)
    longest = max(1, min(n, round(RATE_WINDOW_S / grid_s)))
    widths = sorted(
        {max(1, round(math.sqrt(2) ** k)) for k in range(64)} & set(range(1, longest + 1))
    )
    for width in widths:
        sums = cum[width:] - cum[:-width]  # windows starting at 0 .. n - width
        burst = sums / (capacity * (width * grid_s + delay_s))
        held = _cover(burst, width, after)[:n]
        need = np.maximum(need, held)
    return need


def nodes_needed(
    need: np.ndarray,
    *,
    headroom: float,
    per_node: int,
    min_nodes: int,
    max_nodes: int,
    max_replicas: int,
) -> np.ndarray:
    """Nodes for the pods needed in each step when each pod is counted on for
    `headroom` x its measured capacity (integer pods, at most `max_replicas`)."""
    with np.errstate(invalid="ignore"):
        pods = np.ceil(np.minimum(need / headroom, max_replicas) - 1e-9)
    pods = np.nan_to_num(pods, nan=0.0, posinf=max_replicas)
    nodes = np.ceil(pods / per_node - 1e-9)
    return np.clip(nodes, min_nodes, max_nodes).astype(np.int64)


def order_ahead(nodes: np.ndarray, lead_s: float, grid_s: float, floor: int = 0) -> np.ndarray:
    """Nodes held in each step: the most any step from it to `lead_s` later needs (a node
    needed then must already be ordered; one not needed within the lead may go). After
    the plan's end `floor` nodes are needed."""
    if nodes.size == 0:
        return nodes
    ahead = max(0, math.ceil(lead_s / grid_s - 1e-9))
    padded = np.concatenate((nodes, np.full(ahead, floor, dtype=nodes.dtype)))
    return _sliding_max(padded, ahead + 1)


def oracle_bound(
    held: np.ndarray, grid_s: float, price_per_hour: float, duration_s: float | None = None
) -> dict[str, float]:
    """The cost of holding `held` nodes in each grid step, billed per second (the last
    step only up to `duration_s`, when given)."""
    node_seconds = float(held.sum() * grid_s)
    if duration_s is not None and held.size:
        node_seconds -= float(held[-1]) * max(0.0, held.size * grid_s - duration_s)
    node_hours = node_seconds / 3600.0
    return {"bound_node_hours": node_hours, "bound_cost_usd": node_hours * price_per_hour}


def start_leads(scenario: Scenario, quantile: float = LEAD_QUANTILE) -> tuple[float, float]:
    """(mean, quantile) of the time from ordering a node to its pods all being ready:
    provisioning, then each pod's schedule, the node's one image pull (after the first
    pod is scheduled) and the model load; sampled from the scenario's distributions with
    a fixed generator (the run's own streams are untouched)."""
    rng = np.random.default_rng(20240611)
    pods, per_node = scenario.pods, scenario.per_node
    draws = np.empty(_LEAD_DRAWS)
    for i in range(_LEAD_DRAWS):
        provision = scenario.nodes.provision_s.sample(rng)
        scheduled = [pods.schedule_s.sample(rng) for _ in range(per_node)]
        image_at = scheduled[0] + pods.image_pull_s.sample(rng)
        ready = max(max(s, image_at) + pods.model_load_s.sample(rng) for s in scheduled)
        draws[i] = provision + ready
    return float(draws.mean()), float(np.quantile(draws, quantile))


# ---- the replay ---------------------------------------------------------------------------


@dataclass
class OracleRun:
    """The oracle's replayed run, the summary fields it adds, and its controller."""

    result: RunResult
    extra: dict[str, Any]
    controller: Callable[[], OracleController]  # a fresh controller of the chosen plan


def oracle_run(
    scenario: Scenario,
    progress: Callable[[float], None] | None = None,
    *,
    foresight: bool = True,
) -> OracleRun:
    """Plan with foresight, replay the plan until it meets the SLO, return the replay.

    Headroom (the fraction of the measured capacity the plan counts on) starts at 1;
    after a miss it is multiplied by HEADROOM_STEP until a replay meets the SLO, then the
    midpoint between the last miss and it is tried once (kept if it meets too). At most
    MAX_REPLAYS replays; if none meets, the replay with the most headroom is returned.

    Without `foresight` this is the reactive oracle, a reference rather than a bound:
    the same need, but every node ordered only when it is needed (it arrives its start
    time later), from the scenario's own start. It still knows each step's need exactly
    and at once (the need's windows reach up to a minute ahead). What it cannot foresee
    it absorbs with whole nodes held spare (as placeholder pods hold them): after a miss
    it holds one more spare node than the need, up to MAX_REACTIVE_REPLAYS replays or
    `max_nodes`. Its cost against the oracle's is what ordering ahead is worth on the
    trace; a policy whose headroom is finer than a node can be cheaper than it.
    """
    spec = scaling_spec(scenario)
    capacity = pod_capacity(scenario)
    delay = burst_delay_s(scenario, capacity)
    grid = plan_grid_s(delay)
    # A fresh stream from the same seed: exactly the arrivals the run will see.
    counts = counts_per_bin(
        scenario.workload, scenario.duration_s, Streams(scenario.seed)["arrivals"], grid
    )
    need = pods_needed(counts, grid_s=grid, capacity=capacity, delay_s=delay)
    lead_mean, lead_high = start_leads(scenario)
    lead = lead_high if foresight else 0.0
    nodes = scenario.nodes
    sizing = {
        "per_node": scenario.per_node,
        "min_nodes": nodes.min_nodes,
        "max_nodes": nodes.max_nodes,
        "max_replicas": spec.max_replicas,
    }

    plans: dict[float, np.ndarray] = {}

    def plan(knob: float) -> np.ndarray:
        """The nodes held per step at a headroom (with foresight) or a number of spare
        nodes (without); each is asked for several times."""
        if knob not in plans:
            if foresight:
                needed = nodes_needed(need, headroom=knob, **sizing)
            else:
                needed = nodes_needed(need, headroom=1.0, **sizing) + int(knob)
                needed = np.minimum(needed, nodes.max_nodes)
            plans[knob] = order_ahead(needed, lead, grid, nodes.min_nodes)
        return plans[knob]

    bound_held = order_ahead(
        nodes_needed(need, headroom=1.0, **sizing), lead_mean, grid, nodes.min_nodes
    )
    tries: list[dict[str, Any]] = []
    runs: dict[float, RunResult] = {}

    def controller(headroom: float) -> OracleController:
        return OracleController(
            plan(headroom),
            grid_s=grid,
            interval_s=scenario.controller.interval_s,
            apply_delay_s=scenario.controller.scrape_delay_s,
            per_node=scenario.per_node,
            min_nodes=nodes.min_nodes,
            max_replicas=spec.max_replicas,
        )

    def start(headroom: float) -> Scenario:
        """The scenario with the nodes the plan holds at t = 0 up and full: foresight
        before the run began (never fewer pods than the scenario's own start); without
        foresight, the scenario's own start."""
        if not foresight:
            return scenario
        pods = min(spec.max_replicas, int(plan(headroom)[0]) * scenario.per_node)
        initial = max(scenario.pods.initial, pods)
        return dataclasses.replace(
            scenario, pods=dataclasses.replace(scenario.pods, initial=initial)
        )

    # Exactly the requests the replays will see (the same stream): how many of them may
    # miss the objective before a replay is known to miss the SLO.
    allowed = slo_misses_allowed(int(counts.sum()))

    def replay(knob: float) -> bool:  # a headroom, or spare nodes without foresight
        engine = engine_for(start(knob), controller(knob))  # its progress: _replayed's
        result, outcome = _replayed(
            engine, allowed, scenario.slo_p99_s, nodes.price_per_hour, progress
        )
        if result is not None:
            runs[knob] = result
        named = {"headroom": knob} if foresight else {"spare_nodes": int(knob)}
        tries.append({**named, **outcome})
        return bool(outcome["slo_met"])

    def finished(knob: float) -> RunResult:
        """The replay of `knob` run to its end (again, if it was stopped: no plan met
        the SLO, and this one is reported)."""
        if knob not in runs:
            runs[knob] = engine_for(start(knob), controller(knob), progress=progress).run()
        return runs[knob]

    if not foresight:
        return _reactive_search(
            replay,
            plan=plan,
            finished=finished,
            tries=tries,
            controller=controller,
            grid=grid,
            lead=lead,
            capacity=capacity,
        )
    headroom = _headroom_search(replay, plan=plan, tries=tries, capacity=capacity)
    result = finished(headroom)
    extra = {
        "pod_capacity_per_s": capacity,
        "oracle_headroom": headroom,
        "oracle_replays": len(tries),
        "oracle_tries": tries,
        "oracle_grid_s": grid,
        "oracle_burst_delay_s": delay,
        "oracle_node_lead_s": lead,
        "oracle_initial_pods": start(headroom).pods.initial,
        "bound_node_lead_s": lead_mean,
        **oracle_bound(bound_held, grid, nodes.price_per_hour, scenario.duration_s),
    }
    return OracleRun(result, extra, lambda: controller(headroom))


def _headroom_search(
    replay: Callable[[float], bool],
    *,
    plan: Callable[[float], np.ndarray],
    tries: list[dict[str, Any]],
    capacity: float,
) -> float:
    """The oracle's search: less headroom after each miss, then the midpoint between
    the last miss and the first that met, kept if it meets too. The headroom chosen."""
    headroom, missed = 1.0, None
    met = replay(headroom)
    while not met and len(tries) < MAX_REPLAYS - 1 and capacity > 0:
        lower = headroom * HEADROOM_STEP
        if np.array_equal(plan(lower), plan(headroom)):
            break  # at max_nodes or max_replicas everywhere: more headroom adds nothing
        missed, headroom = headroom, lower
        met = replay(headroom)
    if met and missed is not None and len(tries) < MAX_REPLAYS:
        middle = (headroom + missed) / 2.0
        if not np.array_equal(plan(middle), plan(headroom)) and replay(middle):
            headroom = middle
    return headroom


class _Hopeless(Exception):
    """A replay stopped once it could no longer meet the SLO."""

    def __init__(self, at_s: float) -> None:
        super().__init__(f"SLO out of reach at t = {at_s:g} s")
        self.at_s = at_s


class _Verdict:
    """The engine's progress callback during a replay: counts the requests that already
    failed or answered slower than the objective, and stops the replay (`_Hopeless`) once
    more of them than the p99 over all arrivals allows. A search only needs to know that
    a plan misses, and a miss is usually plain early in the day; the replay that meets
    runs to the end. Reads the engine's outcome arrays, never changes them."""

    def __init__(
        self,
        engine: Any,
        *,
        allowed: int,
        slo_p99_s: float,
        progress: Callable[[float], None] | None,
    ) -> None:
        self.engine = engine
        self.allowed = allowed
        self.slo_p99_s = slo_p99_s
        self.progress = progress
        self.seen = 0  # answers already looked at
        self.slow = 0  # of which slower than the objective

    def __call__(self, t: float) -> None:
        answered = self.engine.latencies
        n = len(answered)
        if n > self.seen:
            view = np.frombuffer(answered, dtype=np.float64)
            self.slow += int(np.count_nonzero(view[self.seen : n] > self.slo_p99_s))
            del view  # the array grows again once the engine resumes: let its buffer go
            self.seen = n
        failed = len(self.engine.timeout_times) + len(self.engine.reject_times)
        if self.slow + failed > self.allowed:
            raise _Hopeless(t)
        if self.progress is not None:
            self.progress(t)


def _replayed(
    engine: Any,
    allowed: int,
    slo_p99_s: float,
    price_per_hour: float,
    progress: Callable[[float], None] | None,
) -> tuple[RunResult | None, dict[str, Any]]:
    """Run one replay, stopped once it cannot meet the SLO: its result (None when
    stopped) and what the summary lists of it (`_TRY_FIELDS`; a stopped one says when)."""
    engine.progress = _Verdict(engine, allowed=allowed, slo_p99_s=slo_p99_s, progress=progress)
    try:
        result = engine.run()
    except _Hopeless as stop:
        return None, {**dict.fromkeys(_TRY_FIELDS), "slo_met": False, "stopped_at_s": stop.at_s}
    summary = summarize(result, price_per_hour=price_per_hour, slo_p99_s=slo_p99_s)
    return result, {k: summary[k] for k in _TRY_FIELDS}


def _reactive_search(
    replay: Callable[[float], bool],
    *,
    plan: Callable[[float], np.ndarray],
    finished: Callable[[float], RunResult],
    tries: list[dict[str, Any]],
    controller: Callable[[float], OracleController],
    grid: float,
    lead: float,
    capacity: float,
) -> OracleRun:
    """The reactive oracle's search: one more spare node after each miss."""
    spare = 0.0
    met = replay(spare)
    while not met and len(tries) < MAX_REACTIVE_REPLAYS and capacity > 0:
        if np.array_equal(plan(spare + 1), plan(spare)):
            break  # at max_nodes everywhere
        spare += 1
        met = replay(spare)
    extra = {
        "pod_capacity_per_s": capacity,
        "oracle_spare_nodes": int(spare),
        "oracle_replays": len(tries),
        "oracle_tries": tries,
        "oracle_grid_s": grid,
        "oracle_node_lead_s": lead,
    }
    return OracleRun(finished(spare), extra, lambda: controller(spare))
