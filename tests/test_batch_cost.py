"""rscore.autoscaler.batch_cost: the cost of an R call against its rows, fitted from the pods'
intervals, and what a request costs once batches form.

Worked numbers: a call costs a = 80 ms plus c = 4 ms per row (the diurnal scenario's
model). One request alone: 84 ms. Batching may double a call, to 168 ms: (168 - 80) / 4
= 22 rows, so 80 / 22 + 4 = 7.64 ms per request.
"""

from __future__ import annotations

import math
import random

import pytest

from rscore.autoscaler.batch_cost import (
    MAX_RELATIVE_ERROR,
    MIN_INTERVALS,
    BatchCostFit,
    CallCounts,
    CostCurve,
    request_cost,
)

A, C = 0.08, 0.004


def exact(calls: float, rows: float, max_batch_rows: int = 32) -> CallCounts:
    return CallCounts(calls, rows, A * calls + C * rows, rows, max_batch_rows)


def fit_of(intervals: list[CallCounts]) -> BatchCostFit:
    """The intervals, each seen by MIN_INTERVALS pods in one tick (a fit needs that many)."""
    return BatchCostFit().observe(0.0, [i for i in intervals for _ in range(int(MIN_INTERVALS))])


@pytest.mark.parametrize(
    ("intervals", "curve"),
    [
        ([exact(100, 105), exact(80, 120), exact(50, 150)], (A, C)),
        ([exact(10, 10), exact(20, 40)], (A, C)),  # two intervals are enough when exact
        # a = 0: the cost is per row only
        ([CallCounts(10, 10, 0.04, 10, 8), CallCounts(10, 30, 0.12, 30, 8)], (0.0, 0.004)),
    ],
    ids=["spread", "two", "per-row-only"],
)
def test_the_fit_recovers_a_and_c(intervals: list[CallCounts], curve: tuple) -> None:
    got = fit_of(intervals).curve()
    assert got is not None
    assert (got.per_call_s, got.per_row_s) == pytest.approx(curve, abs=1e-9)


@pytest.mark.parametrize(
    "intervals",
    [
        [],
        [exact(100, 100), exact(50, 50), exact(7, 7)],  # one row per call: a, c inseparable
        [CallCounts(0, 0, 0.0, 0, 32)],  # no calls
    ],
    ids=["nothing", "one-row-calls-only", "no-calls"],
)
def test_no_curve_until_rows_per_call_vary(intervals: list[CallCounts]) -> None:
    assert fit_of(intervals).curve() is None


def test_a_negative_estimate_is_clamped_and_the_other_refit() -> None:
    """Seconds that fall as rows grow (noise): no negative per-row cost."""
    fit = fit_of([CallCounts(10, 10, 1.0, 10, 8), CallCounts(10, 40, 0.8, 40, 8)])
    curve = fit.curve()
    assert curve is not None
    assert curve.per_row_s == 0.0
    assert curve.per_call_s == pytest.approx(1.8 / 20)


def test_old_intervals_fade() -> None:
    """The model got cheaper (a new version): after an hour the fit follows the new cost."""
    fit = fit_of([exact(100, 100 + 20 * i) for i in range(3)])
    for i in range(1800):  # an hour of 2-s ticks at half the cost
        calls, rows = 100, 100 + 20 * (i % 3)
        fit = fit.observe(
            200 + 2.0 * i, [CallCounts(calls, rows, (A * calls + C * rows) / 2, rows, 32)]
        )
    curve = fit.curve()
    assert curve is not None
    assert (curve.per_call_s, curve.per_row_s) == pytest.approx((A / 2, C / 2), rel=0.02)


def test_a_noisy_fit_converges_with_many_intervals() -> None:
    """Lognormal call times (cv 0.7), batches of 1 to 2 requests on average: the
    extrapolation to batches of 22 is refused while the fit is young, and given once
    its standard error there is under MAX_RELATIVE_ERROR."""
    rng = random.Random(3)
    fit = BatchCostFit()
    answers = []
    for tick in range(1500):
        intervals = []
        for _pod in range(4):
            calls = rng.randint(50, 150)
            rows = calls * (1 + rng.random())
            mean_draw = math.exp(0.7**2 / 2)
            seconds = sum(rng.lognormvariate(0, 0.7) / mean_draw for _ in range(calls)) * A
            intervals.append(CallCounts(calls, rows, seconds + C * rows, rows, 32))
        fit = fit.observe(tick * 2.0, intervals)
        curve = fit.curve()
        answers.append(None if curve is None else request_cost(curve, 1.0, 32))
    assert answers[: int(MIN_INTERVALS) // 4] == [None] * (int(MIN_INTERVALS) // 4)
    assert answers[-1] == pytest.approx(A / 22 + C, rel=MAX_RELATIVE_ERROR * 2)


@pytest.mark.parametrize(
    ("curve", "rows_per_request", "max_batch_rows", "cost"),
    [
        (CostCurve(A, C), 1.0, 32, A / 22 + C),  # the call may double: 22 rows
        (CostCurve(A, C), 1.0, 10, A / 10 + C),  # max_batch_rows binds first
        (CostCurve(A, C), 1.0, 1, A + C),  # no batching: one request per call
        # 4-row requests: (2 x 96 ms - 80) / 4 = 28 rows, 7 requests a call
        (CostCurve(A, C), 4.0, 32, A / 7 + 4 * C),
        (CostCurve(A, 0.0), 1.0, 256, A / 256),  # no per-row cost: max_batch_rows binds
        (CostCurve(0.0, C), 1.0, 32, C),  # no per-call cost: batching gains nothing
        (CostCurve(A, C), 100.0, 32, A + 100 * C),  # a request bigger than a batch
    ],
    ids=["doubles", "max-rows", "unbatched", "multi-row", "no-c", "no-a", "big-request"],
)
def test_request_cost(
    curve: CostCurve, rows_per_request: float, max_batch_rows: int, cost: float
) -> None:
    assert request_cost(curve, rows_per_request, max_batch_rows) == pytest.approx(cost)


def test_an_imprecise_curve_gives_no_cost() -> None:
    vague = CostCurve(A, C, var_per_call=(0.5 * A) ** 2, var_per_row=(0.5 * C) ** 2)
    assert request_cost(vague, 1.0, 32) is None
