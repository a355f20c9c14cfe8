"""Cost tuning: a seeded random search over the rscore policy's parameters.

Trial 0 is the scenario's own `[policy]` (the baseline); the others draw each searched
parameter from its range below. Every trial runs the same scenario (same seed, so the
same arrivals and service times: differences are the policy's). The best trial is the
cheapest that meets the SLO; the Pareto front is over (cost, p99 over all arrivals).
The result is written as a ScoringAutoscaler (`rscore.dev/v1alpha1`) ready to apply.

Pure apart from `run_trials` (which runs simulations in worker processes); writes no
files (the CLI does).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from rscore.sim.distributions import Streams
from rscore.sim.run import run_scenario
from rscore.sim.scenario import POLICY_FIELDS, Scenario, scaling_spec
from rscore.sim.workload import counts_per_bin

__all__ = [
    "SEARCH_SPACE",
    "Trial",
    "best_trial",
    "pareto_front",
    "propose",
    "run_trials",
    "scoring_autoscaler",
]

# The activator of manifests/base (activator.yaml): its pods' name label and metrics port.
ACTIVATOR_LABELS = {"app.kubernetes.io/name": "rscore-activator"}
ACTIVATOR_METRICS_PORT = 9090

# name -> (low, high, scale): "log" draws log-uniformly, "int" uniformly among integers.
# minReplicas' upper end is the scenario's busiest minute at full utilization (`peak_pods`).
SEARCH_SPACE: dict[str, tuple[float, float, str]] = {
    "minReplicas": (0, 4, "int"),
    "targetUtilization": (0.3, 1.0, "linear"),
    "stableWindowSeconds": (10.0, 300.0, "log"),
    "panicWindowPercentage": (5.0, 50.0, "linear"),
    "panicThresholdPercentage": (120.0, 400.0, "linear"),
    "maxScaleDownRate": (1.25, 8.0, "log"),
    "scaleDownDelaySeconds": (0.0, 600.0, "linear"),
    "nodeScaleDownDelaySeconds": (0.0, 900.0, "linear"),  # nodePool.scaleDownDelaySeconds
}


@dataclass(frozen=True)
class Trial:
    index: int
    params: dict[str, float]
    summary: dict[str, Any]

    @property
    def cost(self) -> float:
        return float(self.summary["cost_usd"])

    @property
    def p99_all(self) -> float:
        value = self.summary["latency_p99_all_s"]
        return math.inf if value is None else float(value)


def _draw(rng: random.Random, low: float, high: float, scale: str) -> float:
    if scale == "int":
        return float(rng.randint(int(low), int(high)))
    if scale == "log":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def peak_pods(scenario: Scenario) -> int:
    """Pods the busiest minute of the scenario needs at 100 % utilization."""
    counts = counts_per_bin(
        scenario.workload, scenario.duration_s, Streams(scenario.seed)["arrivals"], 60.0
    )
    busy = counts.max(initial=0) / 60.0 * scenario.service.call_mean(scenario.workload.rows)
    return math.ceil(float(busy) / scenario.pods.workers)


def propose(scenario: Scenario, trials: int, seed: int) -> list[dict[str, float]]:
    """`trials` parameter sets: the scenario's own first, then seeded random draws."""
    base = {k: float(v) for k, v in scenario.policy.items()}
    pool = scaling_spec(scenario).node_pool
    assert pool is not None  # a scenario always has its node pool
    base["nodeScaleDownDelaySeconds"] = pool.scale_down_delay_s
    rng = random.Random(seed)
    space = dict(SEARCH_SPACE)
    most = min(scaling_spec(scenario).max_replicas, max(4, peak_pods(scenario)))
    # Zero only where the scenario's pods have a gateway to hold requests meanwhile (the
    # simulator's model of `rscore activator`): without one, nothing scales up from zero,
    # and the CRD refuses minReplicas 0 without spec.activator.
    least = 0 if scenario.pods.gateway_max_queue > 0 else 1
    space["minReplicas"] = (least, max(least, most), "int")
    out = [base]
    while len(out) < trials:
        params = dict(base)
        for name, (low, high, scale) in space.items():
            value = _draw(rng, low, high, scale)
            params[name] = round(value) if scale == "int" else round(value, 3)
        out.append(params)
    return out[:trials]


def apply_params(scenario: Scenario, params: dict[str, float]) -> Scenario:
    """The scenario with these policy parameters (and node scale-down delay)."""
    policy = {k: v for k, v in params.items() if k in POLICY_FIELDS}
    for key in ("minReplicas", "maxReplicas"):
        if key in policy:
            policy[key] = int(policy[key])
    nodes = scenario.nodes
    if "nodeScaleDownDelaySeconds" in params:
        nodes = dataclasses.replace(nodes, scale_down_delay_s=params["nodeScaleDownDelaySeconds"])
    return dataclasses.replace(scenario, policy_kind="rscore", policy=policy, nodes=nodes)


def _evaluate(job: tuple[int, Scenario, dict[str, float]]) -> Trial:
    index, scenario, params = job
    summary = run_scenario(apply_params(scenario, params)).summary
    return Trial(index, params, summary)


def run_trials(
    scenario: Scenario,
    proposals: Sequence[dict[str, float]],
    jobs: int,
    on_done: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """Simulate every proposal (in `jobs` processes when > 1), in proposal order."""
    work = [(i, scenario, params) for i, params in enumerate(proposals)]
    for _, _, params in work:  # reject an invalid combination before starting anything
        scaling_spec(apply_params(scenario, params))
    results: list[Trial] = []
    if jobs <= 1:
        for job in work:
            results.append(_evaluate(job))
            if on_done is not None:
                on_done(results[-1])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for trial in pool.map(_evaluate, work):
                results.append(trial)
                if on_done is not None:
                    on_done(trial)
    return sorted(results, key=lambda t: t.index)


def pareto_front(trials: Sequence[Trial]) -> list[int]:
    """Positions of the trials that no other trial beats on both cost and p99."""
    front = []
    for i, a in enumerate(trials):
        dominated = any(
            (b.cost <= a.cost and b.p99_all <= a.p99_all)
            and (b.cost < a.cost or b.p99_all < a.p99_all)
            for b in trials
        )
        if not dominated:
            front.append(i)
    return front


def best_trial(trials: Sequence[Trial]) -> int | None:
    """Position of the cheapest trial that meets the SLO (ties: lower p99), or None."""
    meeting = [i for i, t in enumerate(trials) if t.summary["slo_met"]]
    if not meeting:
        return None
    return min(meeting, key=lambda i: (trials[i].cost, trials[i].p99_all))


def scoring_autoscaler(
    scenario: Scenario,
    params: dict[str, float],
    *,
    name: str,
    namespace: str | None = None,
    deployment: str | None = None,
    node_pool_ref: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A `rscore.dev/v1alpha1` ScoringAutoscaler with the CRD's field names."""
    tuned = apply_params(scenario, params)
    spec = scaling_spec(tuned)
    pool = spec.node_pool
    assert pool is not None  # scaling_spec always sets the pool from [nodes]
    body: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment or name,
        },
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "targetConcurrencyPerWorker": spec.target_concurrency_per_worker,
        "targetUtilization": spec.target_utilization,
        "stableWindowSeconds": spec.stable_window_s,
        "panicWindowPercentage": spec.panic_window_percentage,
        "panicThresholdPercentage": spec.panic_threshold_percentage,
        "maxScaleUpRate": spec.max_scale_up_rate,
        "maxScaleDownRate": spec.max_scale_down_rate,
        "scaleDownDelaySeconds": spec.scale_down_delay_s,
    }
    if spec.cpu_target_utilization is not None:
        body["cpuTargetUtilization"] = spec.cpu_target_utilization
    if spec.memory_target_utilization is not None:
        body["memoryTargetUtilization"] = spec.memory_target_utilization
    if spec.min_replicas == 0:
        # Scale to zero needs the activator (the CRD refuses it without one): the base
        # manifests' activator pods, for the model whose instance label is `name`.
        body["activator"] = {
            "selector": {"matchLabels": {**ACTIVATOR_LABELS, "app.kubernetes.io/instance": name}},
            "metricsPort": ACTIVATOR_METRICS_PORT,
        }
    body["nodePool"] = {
        "scaleTargetRef": node_pool_ref
        or {
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "kind": "MachineDeployment",
            "name": f"{name}-{scenario.nodes.kind}",
        },
        "minNodes": pool.min_nodes,
        "maxNodes": pool.max_nodes,
        "podsPerNode": pool.pods_per_node,
        "scaleDownDelaySeconds": pool.scale_down_delay_s,
    }
    metadata: dict[str, str] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "rscore.dev/v1alpha1",
        "kind": "ScoringAutoscaler",
        "metadata": metadata,
        "spec": body,
    }
