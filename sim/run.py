"""One run of a scenario under one policy: wires the workload, the service, the cluster
and the controller into an Engine, and summarizes the outcome.

Never writes files (see `sim.output`) and never prints; the progress callback is the
caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim.distributions import Streams
from sim.engine import Controller, RunResult, engine_for
from sim.metrics import summarize
from sim.oracle import oracle_bound, oracle_plan, pod_capacity
from sim.policies import (
    HpaController,
    KpaController,
    OracleController,
    RscoreController,
    StaticController,
)
from sim.scenario import Scenario, scaling_spec
from sim.workload import counts_per_bin

__all__ = ["Run", "make_controller", "run_scenario"]


@dataclass
class Run:
    scenario: Scenario
    result: RunResult
    summary: dict[str, Any]


def _oracle(scenario: Scenario) -> tuple[OracleController, dict[str, float]]:
    # A fresh stream from the same seed: exactly the arrivals the run will see.
    counts = counts_per_bin(
        scenario.workload, scenario.duration_s, Streams(scenario.seed)["arrivals"], 60.0
    )
    capacity = pod_capacity(scenario)
    pods, nodes = oracle_plan(
        counts,
        capacity=capacity,
        per_node=scenario.per_node,
        min_nodes=scenario.nodes.min_nodes,
        max_replicas=scaling_spec(scenario).max_replicas,
    )
    # Start early enough for a slow start: 1.25 x the mean, plus one tick and the delay.
    control = scenario.controller.interval_s + scenario.controller.scrape_delay_s
    pod_lead = 1.25 * scenario.pods.start_mean_s + control
    node_lead = 1.25 * scenario.nodes.provision_s.mean
    controller = OracleController(
        pods,
        interval_s=scenario.controller.interval_s,
        pod_lead_s=pod_lead,
        node_lead_s=node_lead,
        per_node=scenario.per_node,
        min_nodes=scenario.nodes.min_nodes,
    )
    bound = oracle_bound(nodes, scenario.nodes.provision_s.mean, scenario.nodes.price_per_hour)
    return controller, {"pod_capacity_per_s": capacity, **bound}


def make_controller(scenario: Scenario) -> tuple[Controller, dict[str, Any]]:
    """The scenario's policy as a controller, and extra summary fields it contributes."""
    kind = scenario.policy_kind
    interval = scenario.controller.interval_s
    spec = scaling_spec(scenario)
    if kind == "static":
        return StaticController(scenario.pods.initial), {}
    if kind == "rscore":
        return RscoreController(spec, interval), {}
    if kind == "kpa":
        return KpaController(
            scenario.pods.workers, interval, spec.min_replicas, spec.max_replicas
        ), {}
    if kind == "hpa":
        target = spec.cpu_target_utilization or 0.7
        return HpaController(interval, target, spec.min_replicas, spec.max_replicas), {}
    controller, bound = _oracle(scenario)
    return controller, bound


def run_scenario(scenario: Scenario, progress: Callable[[float], None] | None = None) -> Run:
    """Simulate the scenario under its policy; deterministic from its seed."""
    controller, extra = make_controller(scenario)
    engine = engine_for(scenario, controller, progress=progress)
    result = engine.run()
    summary = summarize(
        result, price_per_hour=scenario.nodes.price_per_hour, slo_p99_s=scenario.slo_p99_s
    )
    summary = {"scenario": scenario.name, "policy": scenario.policy_kind, **summary, **extra}
    return Run(scenario, result, summary)
