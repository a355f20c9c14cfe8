"""The cost of an R call as a function of its rows, learnt from the pods' counters, and
what a request will cost once the load lets batches form.

A batchable model's call costs about `a + c x rows` seconds in R: `a` per call (the
predict() overhead, building the frame), `c` per row. Today's seconds in R per request
are that cost at today's batch sizes; when pods are many and lightly loaded, batches stay
small and each request pays most of `a`. Sized by that, the pods stay many and the
batches small. With `a` and `c` known, the demand can be sized for the batches fewer
pods would form.

`BatchCostFit` fits `a` and `c` by least squares over every pod's intervals (seconds in
R against calls and rows), with older intervals fading out; it has no answer while the
rows per call never varied (one-row calls only: `a` and `c` cannot be told apart).
`request_cost` is the seconds in R per request at the largest batch that keeps a call
within twice the time of a call of one request: batching may double a call, never more,
whatever `max_batch_rows` allows. It has no answer either while the fit's standard error
at that batch is over MAX_RELATIVE_ERROR of the cost: an extrapolation from batches of
one or two requests to batches of twenty needs many intervals.

Pure: plain numbers in, plain numbers out; no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIT_TAU_S = 900.0  # intervals fade with this time constant
MIN_SPREAD = 1e-6  # below this normalized determinant, calls and rows are one variable
MAX_CALL_GROWTH = 2.0  # a batched call may take at most this many single-request calls
MAX_RELATIVE_ERROR = 0.1  # the fitted cost at the target batch must be this precise
MIN_INTERVALS = 30.0  # a standard error from fewer intervals is itself too uncertain


@dataclass(frozen=True)
class CallCounts:
    """One pod's R calls over one scrape interval (counter increases)."""

    calls: float  # R calls that answered (rscore_batch_rows_count)
    rows: float  # rows in them (rscore_batch_rows_sum)
    r_seconds: float  # seconds inside R (rscore_scoring_duration_seconds_sum)
    answered: float  # requests answered (2xx)
    max_batch_rows: int  # rows one call may merge (rscore_batch_max_rows; 0: not batchable)


@dataclass(frozen=True)
class CostCurve:
    per_call_s: float  # a
    per_row_s: float  # c
    # The estimates' (co)variances; zero for a curve given exactly.
    var_per_call: float = 0.0
    var_per_row: float = 0.0
    covariance: float = 0.0


@dataclass(frozen=True)
class BatchCostFit:
    """Decayed sums of the least-squares fit r_seconds = a x calls + c x rows."""

    at: float | None = None
    calls_calls: float = 0.0
    calls_rows: float = 0.0
    rows_rows: float = 0.0
    calls_seconds: float = 0.0
    rows_seconds: float = 0.0
    seconds_seconds: float = 0.0
    intervals: float = 0.0

    def observe(self, now: float, intervals: list[CallCounts]) -> BatchCostFit:
        """The fit with this tick's intervals added (and older ones faded)."""
        useful = [i for i in intervals if i.calls > 0 and i.rows >= i.calls]
        if not useful:
            return self
        fade = 1.0 if self.at is None else math.exp(-max(0.0, now - self.at) / FIT_TAU_S)
        sums = [
            fade * value
            for value in (
                self.calls_calls,
                self.calls_rows,
                self.rows_rows,
                self.calls_seconds,
                self.rows_seconds,
                self.seconds_seconds,
                self.intervals,
            )
        ]
        for i in useful:
            sums[0] += i.calls * i.calls
            sums[1] += i.calls * i.rows
            sums[2] += i.rows * i.rows
            sums[3] += i.calls * i.r_seconds
            sums[4] += i.rows * i.r_seconds
            sums[5] += i.r_seconds * i.r_seconds
            sums[6] += 1.0
        return BatchCostFit(now, *sums)

    def curve(self) -> CostCurve | None:
        """`a` and `c`, or None while rows per call have not varied enough to tell
        them apart. A negative estimate (noise) is clamped to zero and the other refit
        alone."""
        cc, cr, rr = self.calls_calls, self.calls_rows, self.rows_rows
        if cc <= 0 or rr <= 0 or self.intervals < MIN_INTERVALS:
            return None
        determinant = cc * rr - cr * cr
        if determinant <= MIN_SPREAD * cc * rr:
            return None
        a = (self.calls_seconds * rr - self.rows_seconds * cr) / determinant
        c = (self.rows_seconds * cc - self.calls_seconds * cr) / determinant
        if a < 0:
            return CostCurve(0.0, max(0.0, self.rows_seconds / rr))
        if c < 0:
            return CostCurve(max(0.0, self.calls_seconds / cc), 0.0)
        # OLS: residual variance RSS / (n - 2), covariance sigma^2 (X'X)^-1.
        residual = self.seconds_seconds - a * self.calls_seconds - c * self.rows_seconds
        sigma2 = max(0.0, residual) / max(1.0, self.intervals - 2.0)
        return CostCurve(
            a,
            c,
            var_per_call=sigma2 * rr / determinant,
            var_per_row=sigma2 * cc / determinant,
            covariance=-sigma2 * cr / determinant,
        )


def request_cost(curve: CostCurve, rows_per_request: float, max_batch_rows: int) -> float | None:
    """Seconds in R per request when calls merge as many requests as a call may take
    within MAX_CALL_GROWTH times one request's call (and within `max_batch_rows`); None
    when the fit is not precise enough there."""
    single = curve.per_call_s + curve.per_row_s * rows_per_request
    if curve.per_row_s > 0:
        allowed = (MAX_CALL_GROWTH * single - curve.per_call_s) / curve.per_row_s
    else:
        allowed = math.inf
    batch_rows = max(rows_per_request, min(float(max_batch_rows), allowed))
    requests_per_call = batch_rows / rows_per_request
    # cost = a x u + c x v at (u, v) = (1 / requests per call, rows per request)
    u, v = 1.0 / requests_per_call, rows_per_request
    cost = curve.per_call_s * u + curve.per_row_s * v
    variance = (
        curve.var_per_call * u * u + curve.var_per_row * v * v + 2.0 * curve.covariance * u * v
    )
    if cost <= 0 or math.sqrt(max(0.0, variance)) > MAX_RELATIVE_ERROR * cost:
        return None
    return cost
