"""The simulator against queueing theory: Erlang C, Little's law, conservation, seeds."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rscore.sim.erlang import erlang_b, erlang_c, mmc_mean_wait, mmck_blocking
from rscore.sim.run import run_scenario
from rscore.sim.scenario import parse_scenario

# The first 600 s of ../shared/traces' code-completion trace (the runs here last 600 s),
# vendored so that a clone alone runs them: tests/fixtures/traces/README.md.
CODE_TRACE = (
    Path(__file__).resolve().parent
    / "fixtures"
    / "traces"
    / "AzureLLMInferenceTrace_code-first-600s.csv.gz"
)
# Two-sided 99 % Student t quantiles by degrees of freedom.
T_99 = {7: 3.499, 9: 3.250}


def scenario(**tables: Any) -> Any:
    data: dict[str, Any] = {"seed": 1, "duration_s": 600.0}
    data.update(tables)
    return parse_scenario(data, Path(__file__).parent)


def mmc(servers: int, rho: float, customers: int, seed: int) -> Any:
    rate = rho * servers
    return scenario(
        seed=seed,
        duration_s=customers / rate,
        workload={"kind": "poisson", "rate": rate},
        service={"kind": "exponential", "mean_s": 1.0},
        pods={"workers": servers, "initial": 1, "max_queue": 10**9, "request_timeout_s": 1e12},
        policy={"kind": "static"},
    )


def test_erlang_c_known_values() -> None:
    # M/M/4 at rho 0.8, mu 1 (the anchor) and M/M/1 (C = rho, W = rho/(mu-lambda)).
    assert mmc_mean_wait(4, 3.2, 1.0) == pytest.approx(0.7455, abs=5e-5)
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert mmc_mean_wait(1, 0.7, 1.0) == pytest.approx(0.7 / 0.3)
    assert mmc_mean_wait(2, 2.0, 1.0) == math.inf
    # M/M/c/c is Erlang B; M/M/1/K has the geometric form.
    assert mmck_blocking(3, 3, 2.0, 1.0) == pytest.approx(erlang_b(3, 2.0))
    assert mmck_blocking(1, 4, 0.5, 1.0) == pytest.approx(0.5**4 * 0.5 / (1 - 0.5**5))


@pytest.mark.parametrize(
    ("servers", "rho"),
    [(1, 0.7), (2, 0.8), (4, 0.8)],
)
def test_mean_wait_matches_erlang_c(servers: int, rho: float) -> None:
    """8 independent runs of 25k customers: Erlang C lies in the 99 % t-interval."""
    runs = [run_scenario(mmc(servers, rho, 25_000, seed)) for seed in range(1, 9)]
    waits = [r.summary["wait_mean_s"] for r in runs]
    mean = statistics.fmean(waits)
    half = T_99[len(waits) - 1] * statistics.stdev(waits) / math.sqrt(len(waits))
    theory = mmc_mean_wait(servers, rho * servers, 1.0)
    assert abs(mean - theory) <= half, (mean, half, theory)
    assert half < 0.1 * theory  # the interval is tight enough to mean something


@pytest.mark.parametrize(
    ("servers", "max_queue", "rho"),
    [(1, 3, 0.9), (2, 2, 1.0), (4, 0, 0.8)],
)
def test_full_queue_rejections_match_mmck_blocking(
    servers: int, max_queue: int, rho: float
) -> None:
    """429s: a pod is M/M/c/K with K = workers x (1 + max_queue)."""
    rate = rho * servers
    fractions = []
    for seed in range(1, 9):
        data = {
            "seed": seed,
            "duration_s": 25_000 / rate,
            "workload": {"kind": "poisson", "rate": rate},
            "service": {"kind": "exponential", "mean_s": 1.0},
            "pods": {"workers": servers, "initial": 1, "max_queue": max_queue,
                     "request_timeout_s": 1e12},
            "policy": {"kind": "static"},
        }  # fmt: skip
        s = run_scenario(parse_scenario(data, Path("."))).summary
        fractions.append(s["rejected"] / s["requests"])
    mean = statistics.fmean(fractions)
    half = T_99[len(fractions) - 1] * statistics.stdev(fractions) / math.sqrt(len(fractions))
    theory = mmck_blocking(servers, servers * (1 + max_queue), rate, 1.0)
    assert abs(mean - theory) <= half, (mean, half, theory)
    assert half < 0.1 * theory


def _run(**tables: Any) -> Any:
    return run_scenario(scenario(**tables))


NO_FAILURES = {"max_queue": 10**6, "request_timeout_s": 1e9}
CASES = {
    "static M/M/2": {
        "workload": {"kind": "poisson", "rate": 30.0},
        "service": {"kind": "exponential", "mean_s": 0.05},
        "pods": {"workers": 2, "initial": 1, **NO_FAILURES},
        "policy": {"kind": "static"},
    },
    "rscore from zero (gateway)": {
        "workload": {"kind": "mmpp", "rates": [5.0, 80.0], "mean_dwell_s": [60.0, 20.0]},
        "service": {"kind": "lognormal", "mean_s": 0.05, "cv": 1.5},
        "pods": {"workers": 2, "initial": 0, **NO_FAILURES},
        "policy": {"kind": "rscore", "minReplicas": 0},
    },
    "hpa with batching, least loaded": {
        "workload": {"kind": "diurnal", "rate": 60.0, "period_s": 600.0},
        "service": {"kind": "exponential", "mean_s": 0.04},
        "pods": {
            "workers": 1,
            "initial": 2,
            "max_batch_rows": 8,
            "routing": "least_loaded",
            **NO_FAILURES,
        },
        "policy": {"kind": "hpa"},
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_littles_law_holds_on_the_sample_path(case: str) -> None:
    """With no failures, the integral of requests inside equals the sum of latencies:
    L = lambda * W exactly over a run that starts and ends empty."""
    run = _run(**CASES[case])
    assert run.summary["completed"] == run.summary["requests"] > 1000
    latencies = float(np.sum(run.result.latencies))
    assert run.result.in_system_seconds == pytest.approx(latencies, rel=1e-9)
    summary = run.summary
    assert summary["mean_in_system"] == pytest.approx(
        summary["throughput_per_s"] * summary["latency_mean_s"], rel=1e-9
    )


FAILING = {
    "tiny queue, short timeout": {
        "workload": {"kind": "poisson", "rate": 80.0},
        "service": {"kind": "lognormal", "mean_s": 0.05, "cv": 2.0},
        "pods": {"workers": 2, "initial": 1, "max_queue": 2, "request_timeout_s": 0.2},
    },
    "no queue": {
        "workload": {"kind": "poisson", "rate": 50.0},
        "service": {"kind": "exponential", "mean_s": 0.05},
        "pods": {"workers": 2, "initial": 2, "max_queue": 0},
    },
    "batching under overload": {
        "workload": {"kind": "mmpp", "rates": [10.0, 400.0], "mean_dwell_s": [60.0, 30.0]},
        "service": {"kind": "exponential", "mean_s": 0.05, "per_row_s": 0.004},
        "pods": {
            "workers": 2,
            "initial": 1,
            "max_batch_rows": 16,
            "max_queue": 20,
            "request_timeout_s": 1.0,
        },
    },
    "scale from zero, gateway timeouts": {
        "workload": {"kind": "poisson", "rate": 20.0},
        "service": {"kind": "exponential", "mean_s": 0.05},
        "pods": {"workers": 2, "initial": 0, "request_timeout_s": 2.0, "gateway_max_queue": 30},
        "policy": {"minReplicas": 0},
    },
    "azure code trace, bursty": {
        "workload": {
            "kind": "trace",
            "path": str(CODE_TRACE),
            "scale": 4.0,
        },
        "service": {"kind": "exponential", "mean_s": 0.1},
        "pods": {"workers": 2, "initial": 1, "request_timeout_s": 2.0},
    },
}


@pytest.mark.parametrize("policy", ["static", "rscore", "kpa", "hpa", "oracle"])
@pytest.mark.parametrize("case", list(FAILING))
def test_every_arrival_ends_completed_rejected_or_timed_out(case: str, policy: str) -> None:
    tables = {k: dict(v) for k, v in FAILING[case].items()}
    tables["policy"] = {**tables.get("policy", {}), "kind": policy}
    if policy in ("static", "hpa") and tables["pods"]["initial"] == 0:
        tables["pods"]["initial"] = 1  # neither can scale from zero
    run = _run(**tables)
    s = run.summary
    assert s["requests"] == s["completed"] + s["rejected"] + s["timeouts"]
    assert s["requests"] == int(run.result.arrivals_per_sample.sum())
    assert s["end_s"] >= s["duration_s"]
    assert run.result.done_times.max(initial=0.0) <= s["end_s"]


def test_failures_happen_in_the_failing_cases() -> None:
    """The conservation table above really exercises 429s and 504s."""
    s = _run(**{**FAILING["tiny queue, short timeout"], "policy": {"kind": "static"}}).summary
    assert s["rejected"] > 0
    assert s["timeouts"] > 0
    assert s["slo_met"] is False
    assert s["latency_p99_all_s"] is None  # more than 1 % failed: infinite


def test_same_seed_same_result_other_seed_other_result() -> None:
    tables = {**FAILING["batching under overload"], "policy": {"kind": "rscore"}}
    first, again = _run(**tables), _run(**tables)
    other = run_scenario(scenario(seed=2, **tables))
    drop = {"wall_s", "events_per_s"}
    same = {k: v for k, v in first.summary.items() if k not in drop}
    assert same == {k: v for k, v in again.summary.items() if k not in drop}
    assert np.array_equal(first.result.latencies, again.result.latencies)
    assert first.result.decisions == again.result.decisions
    assert other.summary["requests"] != first.summary["requests"]


class _Sampler:
    """Keeps one pod and counts the requests inside it at every tick."""

    name = "sampler"
    interval_s: float | None = 0.25

    def __init__(self) -> None:
        self.inside: list[int] = []

    def tick(self, view: Any) -> tuple[int, int | None]:
        self.inside.append(sum(p.inside for p in view.pods) + view.unrouted)
        return 1, None


def test_littles_law_with_an_independent_count_of_requests_inside() -> None:
    """L sampled from the pod's head count (not from the sojourn bookkeeping) matches
    lambda x W from the answers' latencies."""
    from rscore.sim.engine import engine_for

    s = scenario(duration_s=2000.0, **CASES["static M/M/2"])
    sampler = _Sampler()
    result = engine_for(s, sampler).run()
    sampled = statistics.fmean(sampler.inside)
    little = result.latencies.size / result.end_s * float(result.latencies.mean())
    # M/M/2 at rho 0.75, mean call 50 ms: L = lambda (Wq + 1/mu) = 3.43.
    assert little == pytest.approx(30.0 * mmc_mean_wait(2, 30.0, 20.0) + 1.5, rel=0.08)
    assert sampled == pytest.approx(little, rel=0.05)
