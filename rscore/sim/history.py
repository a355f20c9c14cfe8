"""What a controller that has been running learned before the run: its demand profile.

A deployed `rscore autoscaler` keeps the demand profile it learns (`rscore.autoscaler.forecast`)
in the ScoringAutoscaler's status across restarts, so on any given day it has seen the
days before. A six-hour simulation that starts with an empty profile shows the first
day of a new deployment instead. `[controller] history_s` closes that gap: the profile is
learned from the trace's own `history_s` seconds before the run's start, tick by tick,
the demand of each tick being what the controller's signal measures (arrival rate x the
seconds in R a request costs), at the same wall times the run continues from.

Pure: reads the trace through `rscore.sim.workload`, runs no engine, writes nothing. It must
never invent history: only a trace has a past, and only as far back as it reaches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rscore.autoscaler import forecast
from rscore.autoscaler.forecast import DemandProfile
from rscore.sim.distributions import Streams
from rscore.sim.scenario import Scenario
from rscore.sim.workload import counts_per_bin

__all__ = ["learned_profile"]


def learned_profile(scenario: Scenario) -> DemandProfile | None:
    """The profile a controller running since `history_s` before the run has learned,
    or None without history."""
    history_s = scenario.controller.history_s
    if history_s <= 0:
        return None
    workload = scenario.workload  # load_scenario has checked it reaches back so far
    interval = scenario.controller.interval_s
    past = dataclasses.replace(workload, start_s=workload.start_s - history_s)
    # Its own stream: the run's arrivals stay exactly those of a run without history.
    counts = counts_per_bin(past, history_s, Streams(scenario.seed)["history"], interval)
    rows = workload.rows
    # Seconds in R per request: one request's call (batching only lowers it; the
    # controller's own fit is not known before the run, so this is the safe side).
    per_request_s = scenario.service.call_mean(rows)
    demand = counts / interval * per_request_s
    profile = DemandProfile.empty()
    start_wall = scenario.controller.wall_start_s - history_s
    for tick, busy in enumerate(np.asarray(demand, dtype=float)):
        profile = forecast.observe(profile, start_wall + (tick + 1) * interval, float(busy))
    return profile
