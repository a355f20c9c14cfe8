"""`make bench-sim`: the simulator's speed against SimPy, its accuracy against Erlang C,
and one simulated day under the rscore policy. Results go to docs/benchmarks.md.

1. M/M/4 at rho = 0.8 (mu = 1): the same number of customers through rscore's engine and
   through idiomatic SimPy (a Resource of 4, a generator per customer), wall time and
   the ratio.
2. Accuracy: the mean wait of several independent M/M/4 runs (a few million customers in
   all) against Erlang C's 0.7455 s, with a 95 % confidence interval from the runs.
3. A day (86,400 simulated seconds) of diurnal traffic averaging 100 req/s under the
   rscore policy, with pod starts, node provisioning and controller ticks.
4. At scale: a day of the NASA trace multiplied to about 100 req/s (bursts of up to
   ~2,900 requests in a second), under kpa and rscore, which run to hundreds of pods;
   then ten times the load and the pods (x 1470, 2,000 nodes) under both, which must take
   at most ten times as long (the engine's costs follow the live pods, not history).

Measures wall time of simulations only; writes only its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from pathlib import Path

from bench.report import machine, write_section
from rscore.sim.erlang import mmc_mean_wait
from rscore.sim.metrics import summarize
from rscore.sim.run import run_scenario
from rscore.sim.scenario import Scenario, parse_scenario

SERVERS, RHO, MU = 4, 0.8, 1.0
LAMBDA = RHO * SERVERS * MU
T_95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 8: 2.365, 10: 2.262}


def mm4_scenario(customers: int, seed: int) -> Scenario:
    """One pod of 4 workers, a queue that never fills, a timeout that never fires."""
    return parse_scenario(
        {
            "seed": seed,
            "duration_s": customers / LAMBDA,
            "workload": {"kind": "poisson", "rate": LAMBDA},
            "service": {"kind": "exponential", "mean_s": 1.0 / MU},
            "pods": {
                "workers": SERVERS,
                "initial": 1,
                "max_queue": 10**9,
                "request_timeout_s": 1e12,
            },
            "policy": {"kind": "static"},
        },
        Path("."),
    )


def simpy_mm4(customers: int, seed: int) -> tuple[float, float]:
    """Idiomatic SimPy M/M/4: (mean wait, wall seconds)."""
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=SERVERS)
    waits: list[float] = []

    def customer(env: simpy.Environment) -> simpy.events.ProcessGenerator:
        arrived = env.now
        with servers.request() as request:
            yield request
            waits.append(env.now - arrived)
            yield env.timeout(rng.expovariate(MU))

    def source(env: simpy.Environment) -> simpy.events.ProcessGenerator:
        for _ in range(customers):
            yield env.timeout(rng.expovariate(LAMBDA))
            env.process(customer(env))

    start = time.perf_counter()
    env.process(source(env))
    env.run()
    return statistics.fmean(waits), time.perf_counter() - start


def rscore_mm4(customers: int, seed: int) -> tuple[float, float, int]:
    """(mean wait, wall seconds of the whole run incl. setup and summary, customers)."""
    start = time.perf_counter()
    summary = run_scenario(mm4_scenario(customers, seed)).summary
    return summary["wait_mean_s"], time.perf_counter() - start, summary["requests"]


def day_scenario() -> Scenario:
    return parse_scenario(
        {
            "seed": 7,
            "duration_s": 86400.0,
            "workload": {"kind": "diurnal", "rate": 100.0, "amplitude": 0.6},
            "service": {"kind": "lognormal", "mean_s": 0.05, "cv": 1.0},
            "pods": {"workers": 4, "initial": 2},
            "policy": {"kind": "rscore"},
        },
        Path("."),
    )


NASA = Path(__file__).resolve().parents[2] / "shared/traces/nasa-http-1995-per-second.txt.gz"


def nasa_scenario(scale: float, max_nodes: int, policy: str) -> Scenario:
    """A day of NASA's per-second counts x `scale` (multiply: each second's burst grows),
    20 ms lognormal calls, 2 workers per pod, a CPU pool."""
    return parse_scenario(
        {
            "name": f"nasa-x{scale:g}",
            "seed": 3,
            "duration_s": 86400.0,
            "workload": {"kind": "trace", "path": str(NASA), "scale": scale},
            "service": {"kind": "lognormal", "mean_s": 0.02, "cv": 1.0},
            "pods": {"workers": 2, "initial": 2},
            "nodes": {"kind": "cpu", "max_nodes": max_nodes},
            "policy": {"kind": policy},
        },
        Path("."),
    )


def scale_run(scale: float, max_nodes: int, policy: str) -> dict[str, float]:
    """One NASA day: wall and CPU seconds of the whole run (scenario to summary), with
    the events, the requests and the pods it made."""
    from rscore.sim.engine import engine_for
    from rscore.sim.run import make_controller

    scenario = nasa_scenario(scale, max_nodes, policy)
    start, cpu = time.perf_counter(), time.process_time()
    controller, _ = make_controller(scenario)
    engine = engine_for(scenario, controller)
    result = engine.run()
    summary = summarize(result, price_per_hour=scenario.nodes.price_per_hour,
                        slo_p99_s=scenario.slo_p99_s)  # fmt: skip
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "requests": summary["requests"],
        "events": summary["events"],
        "pods_created": len(engine.p_state),
        "max_ready_pods": summary["max_ready_pods"],
        "mean_ready_pods": summary["mean_ready_pods"],
    }


def scale_section(runs: dict[str, dict[str, float]]) -> str:
    """The at-scale rows of the table, and the 10x check."""
    rows = []
    for label, r in runs.items():
        rows.append(
            f"| {label}: {r['requests']:,} requests, {r['events']:,} events, "
            f"{r['pods_created']:,} pods created, up to {r['max_ready_pods']:,} ready "
            f"(mean {r['mean_ready_pods']:.0f}) | {r['wall_s']:.1f} s wall "
            f"({r['cpu_s']:.1f} s CPU) |"
        )
    return "\n".join(rows)


def runs_at_scale(with_10x: bool) -> tuple[dict[str, dict[str, float]], str]:
    """The NASA days (x 147 under kpa and rscore, and x 1470 under both with the 10x
    check), and the 10x line: each policy's wall and CPU time at x 1470 over x 147."""
    runs: dict[str, dict[str, float]] = {}
    if not NASA.exists():
        print(f"no {NASA}: skipping the runs at scale")
        return runs, ""
    policies = ("kpa", "rscore")
    scales = [(147.0, 200), (1470.0, 2000)] if with_10x else [(147.0, 200)]
    by_scale: dict[tuple[str, float], dict[str, float]] = {}
    for scale, max_nodes in scales:
        for policy in policies:
            label = f"NASA day x {scale:g} (~{0.75 * scale:,.0f} req/s), {policy}"
            print(f"{label} ...", flush=True)
            r = runs[label] = by_scale[(policy, scale)] = scale_run(scale, max_nodes, policy)
            print(f"  {r['requests']:,} requests, {r['events']:,} events, "
                  f"{r['pods_created']:,} pods created (up to {r['max_ready_pods']} ready): "
                  f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU")  # fmt: skip
    if not with_10x:
        return runs, ""
    ten_x = " ".join(
        f"Ten times the load ({policy}) took "
        f"{by_scale[(policy, 1470.0)]['wall_s'] / by_scale[(policy, 147.0)]['wall_s']:.1f}x "
        f"the wall time, "
        f"{by_scale[(policy, 1470.0)]['cpu_s'] / by_scale[(policy, 147.0)]['cpu_s']:.1f}x the "
        "CPU time (goal: at most 10x)."
        for policy in policies
    )
    print(f"  {ten_x}")
    return runs, ten_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5, help="M/M/4 runs for accuracy")
    parser.add_argument("--no-write", action="store_true", help="Keep docs/ as it is.")
    parser.add_argument("--no-10x", action="store_true",
                        help="Skip the NASA day at ten times the load (minutes).")  # fmt: skip
    args = parser.parse_args()
    n = args.customers
    theory = mmc_mean_wait(SERVERS, LAMBDA, MU)

    print(f"M/M/4 rho={RHO}: {n:,} customers, Erlang C mean wait {theory:.4f} s")
    # Warm both up (imports, first calls) so that the timed runs measure simulation only.
    simpy_mm4(10_000, 99)
    rscore_mm4(10_000, 99)
    simpy_wait, simpy_wall = simpy_mm4(n, 1)
    print(f"  SimPy:  {simpy_wall:6.2f} s wall, {n / simpy_wall:10,.0f} customers/s, "
          f"wait {simpy_wait:.4f}")  # fmt: skip
    waits, walls, counts = [], [], []
    for run in range(max(1, args.runs)):
        wait, wall, count = rscore_mm4(n, run + 1)
        waits.append(wait)
        walls.append(wall)
        counts.append(count)
        if run == 0:
            print(f"  rscore: {wall:6.2f} s wall, {count / wall:10,.0f} customers/s, "
                  f"wait {wait:.4f}")  # fmt: skip
    ratio = simpy_wall / walls[0]
    print(f"  rscore is {ratio:.1f}x SimPy")
    total = sum(counts)
    pooled = sum(w * c for w, c in zip(waits, counts, strict=True)) / total
    half = (
        T_95.get(len(waits), 1.96) * statistics.stdev(waits) / math.sqrt(len(waits))
        if len(waits) > 1
        else math.nan
    )
    error = (pooled - theory) / theory
    print(f"accuracy: {total:,} customers in {len(waits)} runs: wait {pooled:.4f} "
          f"+/- {half:.4f} s (95 %), {error:+.2%} from Erlang C")  # fmt: skip

    print("one simulated day, diurnal around 100 req/s, rscore policy ...", flush=True)
    start = time.perf_counter()
    day = run_scenario(day_scenario()).summary
    day_wall = time.perf_counter() - start
    print(f"  {day['requests']:,} requests, {day['events']:,} events, {day_wall:.1f} s wall "
          f"({day['events'] / day_wall:,.0f} events/s); cost ${day['cost_usd']:.2f}, "
          f"p99 {day['latency_p99_s']:.3f} s, "
          f"mean ready pods {day['mean_ready_pods']:.1f}")  # fmt: skip

    scale_runs, ten_x = runs_at_scale(with_10x=not args.no_10x)

    if args.no_write:
        return
    body = f"""## Simulator: speed and accuracy

`make bench-sim`, on {machine()}.

| measure | value |
|---|---:|
| M/M/4, rho 0.8, {n:,} customers: SimPy 4 (idiomatic: Resource, a process per customer) | {simpy_wall:.2f} s ({n / simpy_wall:,.0f} customers/s) |
| same in rscore's simulator (whole run: scenario, engine, summary) | {walls[0]:.2f} s ({counts[0] / walls[0]:,.0f} customers/s) |
| **ratio** | **{ratio:.1f}x SimPy** |
| mean wait over {total:,} customers ({len(waits)} seeds) | {pooled:.4f} s +/- {half:.4f} (95 %) |
| Erlang C | {theory:.4f} s ({error:+.2%}) |
| one simulated day, diurnal around 100 req/s, rscore policy: {day["requests"]:,} requests, {day["events"]:,} events | {day_wall:.1f} s wall |

The day: lognormal calls (mean 50 ms, cv 1), 4 workers per pod, pods start in
~36 s (scheduling, image pull, model load), CPU nodes provision in ~90 s; the policy
ran every 2 s: mean {day["mean_ready_pods"]:.1f} ready pods, {day["node_hours"]:.1f} node-hours
(${day["cost_usd"]:.2f}), p99 {day["latency_p99_s"]:.3f} s, SLO {"met" if day["slo_met"] else "missed"}.
"""  # noqa: E501 - a table row is one line
    if scale_runs:
        body += f"""
At scale: a day of the NASA trace (`scale_mode = "multiply"`: each second's count x the
scale, bursts of up to ~2,900 requests in a second at x 147), 20 ms lognormal calls
(cv 1), 2 workers per pod, CPU nodes; kpa flaps between a few pods and hundreds. Whole
run, scenario to summary; CPU seconds beside the wall (the machine may be shared).

| run | time |
|---|---:|
{scale_section(scale_runs)}

{ten_x}
"""
    write_section("simulator", body)
    print("wrote the simulator section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
