"""The oracle's plan: with perfect foresight, the fewest pods and nodes each minute needs.

A pod's capacity is measured by the simulator itself: the highest Poisson rate one pod
(the scenario's workers, queue, timeout, batching and service times) carries with at most
1 % of requests slower than the SLO or failed, found by bisection on short runs with a
fixed seed. Under random routing the pods' arrivals are independent Poisson shares
(Poisson splitting), so this is exact for steady minutes; least-loaded routing does
better, so the plan is conservative there. A minute with `n` arrivals then needs
`ceil(n / 60 / capacity)` pods. Bursts inside a minute are invisible to the plan.

The cost lower bound bills, second by second, the nodes the plan needs within the node
provisioning time ahead (a node needed then must already have been ordered), and no
earlier: billing whole minutes ahead would overstate a bound.

Runs simulations (of one pod, static) but writes nothing and reads no clock.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sim.engine import engine_for
from sim.policies import ORACLE_BIN_S, StaticController
from sim.scenario import Scenario
from sim.workload import WorkloadSpec

__all__ = ["ORACLE_TAIL", "oracle_bound", "oracle_plan", "pod_capacity"]

ORACLE_TAIL = 0.01  # the SLO's share of requests that may be slower (p99)
_PROBE_REQUESTS = 30_000
_PROBE_STEPS = 14


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


def oracle_plan(
    counts: np.ndarray, *, capacity: float, per_node: int, min_nodes: int, max_replicas: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pods, nodes) needed in each minute for the arrivals counted per minute."""
    rates = counts / ORACLE_BIN_S
    if capacity > 0:
        pods = np.minimum(np.ceil(rates / capacity - 1e-9), max_replicas).astype(np.int64)
    else:  # not even one request fits the SLO: the most the policy may have
        pods = np.where(rates > 0, max_replicas, 0).astype(np.int64)
    nodes = np.maximum(np.ceil(pods / per_node).astype(np.int64), min_nodes)
    return pods, nodes


def oracle_bound(nodes: np.ndarray, node_lead_s: float, price_per_hour: float) -> dict[str, float]:
    """The cost lower bound: every node the plan needs is billed from the instant it must
    be ordered (`node_lead_s` before it is needed), second by second, never earlier: at
    time t the pool holds the most nodes any minute in [t, t + lead] needs."""
    bin_s = int(ORACLE_BIN_S)
    if nodes.size == 0:
        return {"bound_node_hours": 0.0, "bound_cost_usd": 0.0}
    seconds = np.arange(nodes.size * bin_s)
    first = seconds // bin_s
    last = np.minimum((seconds + node_lead_s) // ORACLE_BIN_S, nodes.size - 1).astype(np.int64)
    billed = nodes[first]
    for k in range(1, math.ceil(node_lead_s / ORACLE_BIN_S) + 1):
        ahead = first + k
        reach = nodes[np.minimum(ahead, nodes.size - 1)]
        billed = np.maximum(billed, np.where(ahead <= last, reach, 0))
    node_hours = float(billed.sum() / 3600.0)
    return {"bound_node_hours": node_hours, "bound_cost_usd": node_hours * price_per_hour}
