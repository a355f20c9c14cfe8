"""From a run's raw outcome to the summary and the 10-second time series.

The SLO counts every arrival: a rejected (429) or timed-out (504) request is a failure
slower than any bound, so the p99 over all arrivals is infinite as soon as more than 1 %
of them fail. Percentiles are nearest-rank.

Pure numpy over the RunResult; never writes files (see `rscore.sim.output`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rscore.sim.engine import SAMPLE_S, RunResult

__all__ = [
    "SLO_QUANTILE",
    "SLO_TAIL",
    "TIMESERIES_COLUMNS",
    "add_cost_vs_oracle",
    "cold_start_note",
    "nearest_rank",
    "rank_or_none",
    "slo_misses_allowed",
    "summarize",
    "timeseries",
]

SLO_TAIL = 0.01  # the share of arrivals the SLO lets fail or answer slower (a p99)
SLO_QUANTILE = 1.0 - SLO_TAIL  # the SLO bounds this quantile over every arrival (0.99)


def nearest_rank(sorted_values: np.ndarray, fraction: float, total: int | None = None) -> float:
    """The nearest-rank percentile of `total` values of which `sorted_values` are the
    smallest (the rest are +inf); NaN when there are none."""
    total = sorted_values.size if total is None else total
    if total == 0:
        return math.nan
    index = max(0, math.ceil(fraction * total) - 1)
    return float(sorted_values[index]) if index < sorted_values.size else math.inf


def slo_misses_allowed(total: int) -> int:
    """How many of `total` requests may fail or answer slower than the objective with
    the p99 over all of them still within it (the nearest rank, as `summarize` takes it)."""
    return total - math.ceil(SLO_QUANTILE * total)


def rank_or_none(sorted_values: np.ndarray, fraction: float) -> float | None:
    """The nearest-rank percentile of `sorted_values`; None when there are none."""
    return _finite(nearest_rank(sorted_values, fraction))


def _finite(value: float) -> float | None:
    """JSON has no infinity or NaN: they become null."""
    return value if math.isfinite(value) else None


def summarize(result: RunResult, *, price_per_hour: float, slo_p99_s: float) -> dict[str, Any]:
    latencies = np.sort(result.latencies)
    completed = int(latencies.size)
    rejected = int(result.reject_times.size)
    timeouts = int(result.timeout_times.size)
    p99_all = nearest_rank(latencies, SLO_QUANTILE, result.requests)
    span = max(result.end_s, 1e-12)
    node_hours = result.node_seconds / 3600.0
    ready = result.samples[:, 1] if result.samples.size else np.zeros(1)
    nodes = result.samples[:, 2] if result.samples.size else np.zeros(1)
    return {
        "requests": result.requests,
        "completed": completed,
        "rejected": rejected,
        "timeouts": timeouts,
        "served": result.served,
        "wait_mean_s": result.wait_sum / result.served if result.served else 0.0,
        "latency_mean_s": float(latencies.mean()) if completed else None,
        "latency_p50_s": rank_or_none(latencies, 0.50),
        "latency_p90_s": rank_or_none(latencies, 0.90),
        "latency_p99_s": rank_or_none(latencies, 0.99),
        "latency_max_s": float(latencies[-1]) if completed else None,
        "latency_p99_all_s": _finite(p99_all),
        "slo_latency_p99_s": slo_p99_s,
        "slo_met": bool(result.requests == 0 or p99_all <= slo_p99_s),
        "node_hours": node_hours,
        "cost_usd": node_hours * price_per_hour,
        "worker_restarts": result.worker_restarts,
        "mean_ready_pods": float(ready.mean()),
        "max_ready_pods": int(ready.max()),
        "max_nodes": int(nodes.max()),
        "mean_in_system": result.in_system_seconds / span,
        "throughput_per_s": completed / span,
        "duration_s": result.duration_s,
        "end_s": result.end_s,
        "wall_s": result.wall_s,
        "events": result.events,
        "events_per_s": result.events / result.wall_s if result.wall_s > 0 else None,
    }


def add_cost_vs_oracle(summaries: dict[str, dict[str, Any]]) -> None:
    """Set every summary's `cost_vs_oracle`, its cost over the oracle's (None when the
    oracle was not compared or cost nothing). The oracle is not run unless asked: it
    replays its plan up to MAX_REPLAYS times, often the longest job of a comparison."""
    oracle = summaries.get("oracle")
    base = oracle["cost_usd"] if oracle else None
    for summary in summaries.values():
        summary["cost_vs_oracle"] = summary["cost_usd"] / base if base else None


def cold_start_note(summaries: dict[str, dict[str, Any]], initial_pods: int) -> str | None:
    """A warning when the oracle started with more pods than every other policy.

    The oracle's foresight reaches back before t = 0: it starts with the pods its plan
    holds then, ordered ahead. Every other policy starts with `[pods] initial` and can
    order nothing before the run; demand in the first provisioning time that so many
    pods cannot carry fails them all but the oracle, whatever their policy."""
    oracle = summaries.get("oracle")
    if oracle is None:
        return None
    started = int(oracle.get("oracle_initial_pods") or 0)
    if started <= initial_pods:
        return None
    return (
        f"note: the oracle started with {started} pods ready (its plan's nodes, ordered "
        f"before t = 0); the other policies with [pods] initial = {initial_pods}. If the "
        f"pool serves this traffic before the trace begins, set initial = {started} so "
        "that every policy starts where the oracle does."
    )


TIMESERIES_COLUMNS = (
    "t_s",
    "arrivals",
    "completions",
    "rejections",
    "timeouts",
    "p50_s",
    "p99_s",
    "desired_replicas",
    "ready_pods",
    "nodes",
    "cost_usd",
    "cost_cum_usd",
)


def _bucket_counts(times: np.ndarray, buckets: int) -> np.ndarray:
    index = np.minimum((times // SAMPLE_S).astype(np.int64), buckets - 1)
    return np.bincount(index, minlength=buckets)[:buckets]


def _desired(decisions: list[tuple[float, int, int | None]], buckets: int) -> np.ndarray:
    """The replicas the policy last asked for at each bucket's end (NaN before its
    first decision, and throughout for a policy that never decides: static)."""
    desired = np.full(buckets, np.nan)
    if not decisions:
        return desired
    times = np.array([d[0] for d in decisions], dtype=np.float64)
    replicas = np.array([d[1] for d in decisions], dtype=np.float64)
    last = np.searchsorted(times, (np.arange(buckets) + 1) * SAMPLE_S, side="right") - 1
    known = last >= 0
    desired[known] = replicas[last[known]]
    return desired


def timeseries(result: RunResult, *, price_per_hour: float) -> dict[str, np.ndarray]:
    """Per SAMPLE_S bucket: counts, completion percentiles, the desired replicas, ready
    pods, nodes, the bucket's cost and the cost so far."""
    buckets = max(1, math.ceil(result.end_s / SAMPLE_S))
    arrivals = np.zeros(buckets, dtype=np.int64)
    upto = min(buckets, result.arrivals_per_sample.size)
    arrivals[:upto] = result.arrivals_per_sample[:upto]
    which = np.minimum((result.done_times // SAMPLE_S).astype(np.int64), buckets - 1)
    order = np.argsort(which, kind="stable")
    grouped, lat = which[order], result.latencies[order]
    bounds = np.searchsorted(grouped, np.arange(buckets + 1))
    p50 = np.full(buckets, np.nan)
    p99 = np.full(buckets, np.nan)
    for b in range(buckets):
        lo, hi = bounds[b], bounds[b + 1]
        if hi > lo:
            p50[b], p99[b] = np.percentile(lat[lo:hi], [50, 99], method="inverted_cdf")
    # Samples are taken at the end of each bucket; the last bucket may end after them,
    # and keeps the last sampled state.
    ready = np.zeros(buckets)
    nodes = np.zeros(buckets)
    node_s = np.full(buckets + 1, np.nan)
    node_s[0] = 0.0
    seen = np.zeros(buckets, dtype=bool)
    for row in result.samples:
        b = round(row[0] / SAMPLE_S)
        if 1 <= b <= buckets:
            ready[b - 1], nodes[b - 1], node_s[b], seen[b - 1] = row[1], row[2], row[3], True
    node_s[buckets] = result.node_seconds
    for b in range(buckets):
        if not seen[b] and b:
            ready[b], nodes[b] = ready[b - 1], nodes[b - 1]
        if math.isnan(node_s[b + 1]):
            node_s[b + 1] = node_s[b]
    return {
        "t_s": np.arange(buckets) * SAMPLE_S,
        "arrivals": arrivals,
        "completions": np.bincount(which, minlength=buckets)[:buckets],
        "rejections": _bucket_counts(result.reject_times, buckets),
        "timeouts": _bucket_counts(result.timeout_times, buckets),
        "p50_s": p50,
        "p99_s": p99,
        "desired_replicas": _desired(result.decisions, buckets),
        "ready_pods": ready,
        "nodes": nodes,
        "cost_usd": np.diff(node_s) / 3600.0 * price_per_hour,
        # Cumulative to the bucket's end; the last row is the summary's cost_usd.
        "cost_cum_usd": node_s[1:] / 3600.0 * price_per_hour,
    }
