"""The simulator's wall time as the load grows: one scenario at x1 and x10 its traffic.

Issue 12's goal: a policy that runs to hundreds of pods must not make the simulator
crawl; ten times the load (and the pods it brings) within ten times the time. The
scenario's workload rate (`sim.validate.scaled_workload`: a trace's `scale`, any other
kind's rate) and its `max_nodes` are multiplied by each factor; the
policy is the scenario's. Prints one line per factor and the ratios; writes nothing.

    python -m bench.sim_scale [SCENARIO.toml] [--factors 1,10]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from bench.report import machine
from sim.run import run_scenario
from sim.scenario import Scenario, load_scenario
from sim.validate import scaled_workload

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "nasa-day-rate.toml"


def scaled(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with `factor` times its traffic and room for `factor` times the nodes."""
    workload = scaled_workload(scenario.workload, factor)
    nodes = dataclasses.replace(
        scenario.nodes, max_nodes=max(1, round(scenario.nodes.max_nodes * factor))
    )
    return dataclasses.replace(scenario, workload=workload, nodes=nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--factors", default="1,10", help="comma-separated load factors")
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    print(f"{args.scenario.name} under {base.policy_kind}, on {machine()}")
    walls: dict[float, float] = {}
    for factor in (float(f) for f in args.factors.split(",")):
        start = time.perf_counter()
        summary = run_scenario(scaled(base, factor)).summary
        walls[factor] = time.perf_counter() - start
        print(
            f"x{factor:g}: {walls[factor]:.1f} s wall, {summary['requests']:,} requests, "
            f"{summary['mean_ready_pods']:.1f} pods on average (max "
            f"{summary['max_ready_pods']}), SLO {'met' if summary['slo_met'] else 'missed'}",
            flush=True,
        )
    first = min(walls)
    for factor, wall in walls.items():
        if factor != first:
            print(f"x{factor:g} / x{first:g}: {wall / walls[first]:.1f}x the time "
                  f"for {factor / first:g}x the load")  # fmt: skip


if __name__ == "__main__":
    main()
