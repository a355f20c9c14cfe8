"""A controller that has been running: `[controller] history_s` teaches the forecast the
trace's past before the run, and the reactive oracle prices having no forecast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_sim_oracle import BURSTY as ORACLE_BURSTY

from rscore.autoscaler import forecast
from rscore.sim.history import learned_profile
from rscore.sim.metrics import summarize
from rscore.sim.oracle import MAX_REACTIVE_REPLAYS, oracle_run
from rscore.sim.run import run_scenario
from rscore.sim.scenario import Scenario, ScenarioError, parse_scenario

DAY = 86_400
SURGE_START, SURGE_END = 10 * 3600, 10 * 3600 + 600  # 10:00 to 10:10 every day
WALL_START = 1_700_438_400.0  # a Monday 00:00 UTC (the scenario default)


def _daily_surge_trace(path: Path, days: int, base: int = 2, surge: int = 120) -> Path:
    """Per-second counts: `base` requests a second, `surge` from 10:00 to 10:10 each day."""
    counts = np.full(days * DAY, base, dtype=np.int64)
    for day in range(days):
        counts[day * DAY + SURGE_START : day * DAY + SURGE_END] = surge
    np.savetxt(path, counts, fmt="%d")
    return path


def _scenario(trace: Path, **overrides: Any) -> Scenario:
    tables: dict[str, Any] = {
        "seed": 1,
        "duration_s": 3600.0,
        "workload": {"kind": "trace", "path": str(trace), "start_s": DAY},
        "service": {"kind": "exponential", "mean_s": 0.05},
        "pods": {"workers": 2, "initial": 1},
        "nodes": {"kind": "cpu", "max_nodes": 10},
        "controller": {"history_s": DAY},
        "policy": {"kind": "rscore"},
        "slo": {"latency_p99_s": 1.0},
    }
    for table, fields in overrides.items():
        tables[table] = {**tables[table], **fields} if isinstance(fields, dict) else fields
    return parse_scenario(tables, trace.parent)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _daily_surge_trace(tmp_path_factory.mktemp("trace") / "surge.txt", days=2)


def test_history_teaches_the_daily_surge_before_the_run(trace: Path) -> None:
    profile = learned_profile(_scenario(trace))
    assert profile is not None
    # The run starts at the trace's second midnight: that is wall_start_s.
    before_surge = forecast.forecast(profile, WALL_START + SURGE_START - 300, 600.0)
    at_night = forecast.forecast(profile, WALL_START + 3 * 3600, 600.0)
    assert before_surge is not None
    assert at_night is not None
    # 120 req/s x 50 ms = 6 busy workers in the surge (smoothed over 300 s: most of
    # it); 2 req/s x 50 ms = 0.1 at night.
    assert before_surge.demand > 3.0
    assert at_night.demand < 0.5
    assert before_surge.demand > 4 * at_night.demand


def test_without_history_there_is_no_profile(trace: Path) -> None:
    assert learned_profile(_scenario(trace, controller={"history_s": 0})) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workload": {"start_s": 3600}}, "reaches before the trace"),
        ({"controller": {"history_s": -1}}, "history_s >= 0"),
    ],
)
def test_history_the_trace_does_not_have_is_refused_at_load(
    trace: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScenarioError, match=message):
        _scenario(trace, **overrides)


def test_a_generated_workload_has_no_history() -> None:
    tables = {
        "duration_s": 60.0,
        "workload": {"kind": "poisson", "rate": 5.0},
        "controller": {"history_s": 3600},
    }
    with pytest.raises(ScenarioError, match="needs a trace workload"):
        parse_scenario(tables, Path("."))


def test_history_changes_what_the_controller_knows_not_the_arrivals(trace: Path) -> None:
    with_history = run_scenario(_scenario(trace, duration_s=11 * 3600.0))
    without = run_scenario(_scenario(trace, duration_s=11 * 3600.0, controller={"history_s": 0}))
    assert with_history.summary["requests"] == without.summary["requests"]
    assert with_history.summary["history_s"] == DAY
    assert "history_s" not in without.summary
    # Knowing yesterday's 10:00 surge, nodes are there before it: fewer requests late.
    late = [run.summary["rejected"] + run.summary["timeouts"] for run in (with_history, without)]
    assert late[0] < late[1]


# ---- the reactive oracle -------------------------------------------------------------------

# The oracle tests' bursty scenario, for 15 minutes under the reactive oracle.
BURSTY: dict[str, Any] = {
    **ORACLE_BURSTY,
    "duration_s": 900.0,
    "policy": {"kind": "reactive-oracle"},
}


def test_the_reactive_oracle_adds_spare_nodes_until_it_meets_the_slo() -> None:
    s = parse_scenario(BURSTY, Path("."))
    reactive = oracle_run(s, foresight=False)
    foreseeing = oracle_run(s)
    tries = reactive.extra["oracle_tries"]
    assert [t["spare_nodes"] for t in tries] == list(range(len(tries)))
    assert len(tries) <= MAX_REACTIVE_REPLAYS
    met = [t["slo_met"] for t in tries]
    assert not any(met[:-1])  # it stops at the first that meets
    assert reactive.extra["oracle_spare_nodes"] == tries[-1]["spare_nodes"]
    assert reactive.extra["oracle_node_lead_s"] == 0.0
    # It starts as the scenario does: no nodes bought before the run.
    assert reactive.result.node_seconds > 0
    summary = summarize(reactive.result, price_per_hour=s.nodes.price_per_hour, slo_p99_s=0.5)
    assert summary["slo_met"] == met[-1]
    # Foresight meets the SLO, and is never dearer where both do.
    oracle = summarize(foreseeing.result, price_per_hour=s.nodes.price_per_hour, slo_p99_s=0.5)
    assert oracle["slo_met"]
    assert not summary["slo_met"] or oracle["cost_usd"] <= summary["cost_usd"] * 1.0001


def test_the_reactive_oracle_is_a_row_of_its_own() -> None:
    run = run_scenario(parse_scenario({**BURSTY, "duration_s": 300.0}, Path(".")))
    assert run.summary["policy"] == "reactive-oracle"
    assert "oracle_spare_nodes" in run.summary
    assert "oracle_headroom" not in run.summary
