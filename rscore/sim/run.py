"""One run of a scenario under one policy: wires the workload, the service, the cluster
and the controller into an Engine, and summarizes the outcome.

Never writes files (see `rscore.sim.output`) and never prints; the progress callback is the
caller's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rscore.sim import ORACLES
from rscore.sim.engine import Controller, RunResult, engine_for
from rscore.sim.history import learned_profile
from rscore.sim.metrics import summarize
from rscore.sim.oracle import oracle_run
from rscore.sim.policies import (
    HpaController,
    KpaController,
    RscoreController,
    StaticController,
)
from rscore.sim.scenario import Scenario, scaling_spec
from rscore.sim.workload import scale_fields

__all__ = ["Run", "make_controller", "run_scenario"]


@dataclass
class Run:
    scenario: Scenario
    result: RunResult
    summary: dict[str, Any]


def make_controller(scenario: Scenario) -> tuple[Controller, dict[str, Any]]:
    """The scenario's policy as a controller, and extra summary fields it contributes."""
    kind = scenario.policy_kind
    interval = scenario.controller.interval_s
    spec = scaling_spec(scenario)
    if kind == "static":
        return StaticController(scenario.pods.initial), {}
    if kind == "rscore":
        controller = RscoreController(spec, interval, scenario.controller.wall_start_s)
        profile = learned_profile(scenario)
        if profile is None:
            return controller, {}
        controller.state = dataclasses.replace(controller.state, profile=profile)
        return controller, {"history_s": scenario.controller.history_s}
    if kind == "kpa":
        return KpaController(
            scenario.pods.workers, interval, spec.min_replicas, spec.max_replicas
        ), {}
    if kind == "hpa":
        target = spec.cpu_target_utilization or 0.7
        return HpaController(interval, target, spec.min_replicas, spec.max_replicas), {}
    # The oracle plans and replays its plan until it meets the SLO (rscore.sim.oracle): this is a
    # fresh controller of the plan chosen; run_scenario keeps the replay itself instead.
    oracle = oracle_run(scenario, foresight=kind == "oracle")
    return oracle.controller(), oracle.extra


def run_scenario(scenario: Scenario, progress: Callable[[float], None] | None = None) -> Run:
    """Simulate the scenario under its policy; deterministic from its seed."""
    if scenario.policy_kind in ORACLES:  # its run is the replay that met the SLO
        oracle = oracle_run(scenario, progress, foresight=scenario.policy_kind == "oracle")
        result, extra = oracle.result, oracle.extra
    else:
        controller, extra = make_controller(scenario)
        result = engine_for(scenario, controller, progress=progress).run()
    summary = summarize(
        result, price_per_hour=scenario.nodes.price_per_hour, slo_p99_s=scenario.slo_p99_s
    )
    summary = {
        "scenario": scenario.name,
        "policy": scenario.policy_kind,
        **scale_fields(scenario.workload),  # how the trace was scaled: say so in results
        **summary,
        **extra,
    }
    return Run(scenario, result, summary)
