"""The demand forecaster behind predictive pre-warm: a bounded, seasonal demand profile.

A slow node pool (GPU nodes take minutes) has to be ordered `provision_s` before the
demand it is for arrives. This module learns, from the controller's own ticks, what the
demand was at each time of the week and of the day, and answers "how much demand should be
ready for over the next `horizon_s`?", or None when it has not seen enough to say (the
policy then stays purely reactive). It is pure: no I/O, no clock reads (time arrives as
`wall_s`, Unix seconds UTC), no logging; every function returns a new `DemandProfile` and
never mutates its input. It must never be the reason a tick fails on good input: bad input
(non-finite times, negative demand) raises `ValueError`, and `DemandProfile.from_dict`
rejects anything malformed with a `ValueError` naming the problem, so the controller can
start empty instead.

The method: seasonal slot profiles with exponential forgetting (the seasonal-naive family
of forecasts, per slot rather than per series).

- Time is cut into slots of `slot_s` (default 900 s, so 672 slots a week, 96 a day, UTC).
  Each tick's demand (busy R workers) is smoothed with a 300 s exponential moving
  average (a level that lasts minutes counts, a burst of seconds barely does: see
  `SMOOTHING_TAU_S`) and the slot *occurrence* in progress (today's 09:00-09:15) keeps
  the peak of that: O(1) a tick,
  and the large tables are shared, not copied, between ticks of one occurrence.
- When an occurrence ends, its peak is folded into two tables, the slot of the week and
  the slot of the day, each holding a count and an exponentially weighted mean and
  standard deviation of past occurrence peaks (West/Finch's incremental EW variance;
  the first occurrences are averaged equally, then the weight of the newest is
  `WEEK_ALPHA`/`DAY_ALPHA`, so the profile follows a demand that shifts). An occurrence
  observed for less than `FULL_COVERAGE` of its slot (the controller started late, or was
  down) is a lower bound of its peak: it may raise a slot that has history, never lower
  it, and it does not count as a day of history. Slots nobody observed (a gap) keep what
  they had: missing data is not zero demand.
- Before folding, the occurrence's peak is compared with what the profile would have
  forecast for it: the ratio actual / forecast (each plus one worker, so near-idle slots
  do not divide by ~0) goes into a ring of the last `ERROR_WINDOW` ratios. The forecast's
  headroom multiplier (`error_factor`) is the `ERROR_QUANTILE` quantile of that ring,
  between 1 and `MAX_ERROR_FACTOR`; with fewer than `MIN_ERRORS` ratios it is
  `DEFAULT_ERROR_FACTOR`.
- `forecast` takes every slot occurrence overlapping [wall_s, wall_s + horizon_s], each
  estimated as mean + Z x std (a ~90% upper quantile) from the day-of-week table where that
  slot has history, else from the time-of-day table, and returns the largest, times the
  error factor, times the recent level (below 1 only when each of the last hour's slots
  ran below its forecast: a holiday is followed within the hour). Slots with no history
  in either table are left to the reactive policy
  (the forecast only ever adds to it); if none has any, it returns None.

Why not a library: Holt-Winters (statsmodels' ExponentialSmoothing) or Prophet fit a
whole series at once; with a weekly season of 672 points they need the raw series of
several weeks in memory and in the persisted state (far above the status' size budget),
refit in tens of milliseconds to seconds, have no notion of a gap other than
interpolation, and their fitted state is not a small JSON document. Online libraries
(river's SNARIMAX/HoltWinters) pickle their state and would still need our own
occurrence peaks, coverage and error record around them. What is needed here is an
incremental mean and deviation per slot and one quantile: about a hundred lines, with a
bounded JSON form; numpy supplies the quantile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "DAY_S",
    "FORMAT_VERSION",
    "WEEK_S",
    "DemandProfile",
    "Forecast",
    "Occurrence",
    "SlotTable",
    "error_factor",
    "forecast",
    "observe",
    "recent_level",
]

FORMAT_VERSION = 1
DAY_S = 86_400
WEEK_S = 7 * DAY_S
MIN_SLOT_S = 900  # 672 week slots at most: the JSON form stays under 20 KiB
# Time constant of the per-tick moving average. A level is worth ordering nodes ahead
# of only if it lasts about as long as a node takes to come (minutes); bursts shorter
# than that are the reactive path's, and counting their peaks made the profile hold
# capacity for them all day (the 3-day GPU scenario: 30 s cost 1.37x the oracle, 300 s
# 1.21x, with no failure on the forecast's days either way).
SMOOTHING_TAU_S = 300.0
GAP_S = 60.0  # ticks further apart than this: the time between them was not observed
FULL_COVERAGE = 0.75  # share of a slot observed for its peak to count as a full occurrence
WEEK_ALPHA = 0.3  # weight of the newest occurrence in the day-of-week table
DAY_ALPHA = 0.25  # and in the time-of-day table
MAX_COUNT = 999  # counts saturate (they only say "how many days/weeks of history")
Z_UPPER = 1.2816  # mean + Z x std: the ~90% one-sided quantile of a normal
ERROR_WINDOW = 96  # actual/forecast ratios kept (a day of 15-minute slots)
ERROR_QUANTILE = 0.9
MIN_ERRORS = 8  # below this many ratios, the default factor
DEFAULT_ERROR_FACTOR = 1.25
MAX_ERROR_FACTOR = 4.0
ERROR_FLOOR = 1.0  # busy workers added to actual and forecast before dividing
MIN_DEMAND = 1.0  # occurrences where both actual and forecast are below: no ratio
# A day that runs below its profile (a holiday, a quiet week) is followed within the hour:
# when each of the last LEVEL_WINDOW recorded ratios (an hour of 15-minute slots) was
# below LEVEL_BAND (a day within 5 % of its profile is the profile: the peaks of a noisy
# load differ that much from day to day), the forecast is scaled by the largest of them,
# never below LEVEL_MIN. Only downwards: a day above its profile raises the error factor,
# and the reactive decision covers what comes now. Chosen on the 3-day GPU scenario, whose
# second day is the 4th of July (`rscore sim compare examples/scenarios/nasa-3days-gpu.toml
# --policies rscore`): without it the forecast held about a node more than HPA all that
# day ($229.6 against HPA's $224.3). An hour, band 0.95: $223.7; band 0.9: $224.3; half
# an hour: $222.3 (but a lull of half an hour would then cut the afternoon's forecast);
# 2 or 3 hours (no band): $226.2, $227.7; a floor of 0.3 instead of 0.5: the same.
LEVEL_WINDOW = 4
LEVEL_BAND = 0.95
LEVEL_MIN = 0.5
DECIMALS = 3  # every stored number is rounded so: the JSON form round-trips exactly


def _q(value: float) -> float:
    return round(float(value), DECIMALS)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class SlotTable:
    """Per slot: full occurrences seen (saturating), EW mean and EW std of their peaks."""

    count: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def empty(cls, slots: int) -> SlotTable:
        return cls((0,) * slots, (0.0,) * slots, (0.0,) * slots)

    def upper(self, index: int) -> float:
        return self.mean[index] + Z_UPPER * self.std[index]

    def fold(self, index: int, peak: float, *, full: bool, alpha: float) -> SlotTable:
        """This table with one occurrence's peak folded into slot `index`."""
        n, mean, std = self.count[index], self.mean[index], self.std[index]
        if full:
            n_new = min(n + 1, MAX_COUNT)
            weight = max(alpha, 1.0 / (n + 1))
        elif n > 0 and peak > mean:  # a partial occurrence is a lower bound: only raise
            n_new, weight = n, max(alpha, 1.0 / (n + 1))
        else:
            return self
        delta = peak - mean
        mean_new = mean + weight * delta
        var_new = (1.0 - weight) * (std * std + weight * delta * delta)
        return SlotTable(
            _put(self.count, index, n_new),
            _put(self.mean, index, _q(mean_new)),
            _put(self.std, index, _q(math.sqrt(max(var_new, 0.0)))),
        )


def _put(values: tuple[Any, ...], index: int, value: Any) -> tuple[Any, ...]:
    return (*values[:index], value, *values[index + 1 :])


@dataclass(frozen=True)
class Occurrence:
    """The slot occurrence in progress: when it started, what it has seen so far."""

    start: float  # Unix seconds, a multiple of slot_s
    last: float  # the last tick's wall_s
    peak: float  # peak of the smoothed demand within this occurrence
    smoothed: float  # the smoothed demand at `last`
    covered_s: float  # seconds of this occurrence observed by ticks at most GAP_S apart


@dataclass(frozen=True)
class DemandProfile:
    """What the controller learnt about its demand; bounded (a fixed number of slots),
    immutable, JSON-serialisable (`to_dict`/`from_dict`). Start with `DemandProfile.empty()`.
    """

    slot_s: float
    week: SlotTable
    day: SlotTable
    errors: tuple[float, ...] = ()  # actual/forecast ratios, oldest first
    current: Occurrence | None = None

    @classmethod
    def empty(cls, slot_s: float = 900.0) -> DemandProfile:
        _check_slot(slot_s, "slot_s")
        return cls(
            slot_s=float(slot_s),
            week=SlotTable.empty(int(WEEK_S // slot_s)),
            day=SlotTable.empty(int(DAY_S // slot_s)),
        )

    @property
    def week_slots(self) -> int:
        return len(self.week.count)

    @property
    def day_slots(self) -> int:
        return len(self.day.count)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (status.demandProfile): plain numbers and lists, rounded."""

        def table(t: SlotTable) -> dict[str, list[Any]]:
            return {
                "count": list(t.count),
                "mean": [_q(v) for v in t.mean],
                "std": [_q(v) for v in t.std],
            }

        out: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "slotSeconds": _q(self.slot_s),
            "week": table(self.week),
            "day": table(self.day),
            "errors": [_q(v) for v in self.errors],
        }
        if self.current is not None:
            c = self.current
            out["current"] = {
                "start": _q(c.start),
                "last": _q(c.last),
                "peak": _q(c.peak),
                "smoothed": _q(c.smoothed),
                "coveredSeconds": _q(c.covered_s),
            }
        return out

    @classmethod
    def from_dict(cls, d: Any) -> DemandProfile:
        """The profile `to_dict` wrote; ValueError naming the problem for anything else."""
        path = "demandProfile"
        _require(isinstance(d, Mapping), f"{path} must be an object, got {type(d).__name__}")
        version = d.get("version")
        _require(
            version == FORMAT_VERSION and not isinstance(version, bool),
            f"{path}.version is {version!r}, this controller reads version {FORMAT_VERSION}",
        )
        slot_s = _number(d.get("slotSeconds"), f"{path}.slotSeconds")
        _check_slot(slot_s, f"{path}.slotSeconds")
        week = _table(d.get("week"), int(WEEK_S // slot_s), f"{path}.week")
        day = _table(d.get("day"), int(DAY_S // slot_s), f"{path}.day")
        errors = _numbers(d.get("errors", []), f"{path}.errors", ERROR_WINDOW)
        for i, ratio in enumerate(errors):
            _require(ratio > 0, f"{path}.errors[{i}] must be > 0, got {ratio}")
        current = _occurrence(d.get("current"), slot_s, f"{path}.current")
        return cls(float(slot_s), week, day, errors, current)


def _check_slot(slot_s: Any, name: str) -> None:
    _require(
        isinstance(slot_s, int | float)
        and not isinstance(slot_s, bool)
        and math.isfinite(slot_s)
        and float(slot_s).is_integer()
        and slot_s >= MIN_SLOT_S
        and DAY_S % int(slot_s) == 0,
        f"{name} must be a whole number of seconds >= {MIN_SLOT_S} dividing a day, got {slot_s!r}",
    )


def _number(value: Any, path: str) -> float:
    _require(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        f"{path} must be a finite number, got {value!r}",
    )
    return float(value)


def _numbers(values: Any, path: str, max_items: int) -> tuple[float, ...]:
    _require(isinstance(values, Sequence) and not isinstance(values, str), f"{path} must be a list")
    _require(len(values) <= max_items, f"{path} has {len(values)} items, at most {max_items}")
    return tuple(_number(v, f"{path}[{i}]") for i, v in enumerate(values))


def _table(value: Any, slots: int, path: str) -> SlotTable:
    _require(isinstance(value, Mapping), f"{path} must be an object")
    columns = {}
    for key in ("count", "mean", "std"):
        column = value.get(key)
        _require(
            isinstance(column, Sequence) and not isinstance(column, str),
            f"{path}.{key} must be a list",
        )
        _require(len(column) == slots, f"{path}.{key} has {len(column)} entries, expected {slots}")
        numbers = _numbers(column, f"{path}.{key}", slots)
        for i, v in enumerate(numbers):
            _require(v >= 0, f"{path}.{key}[{i}] must be >= 0, got {v}")
        columns[key] = numbers
    counts = []
    for i, v in enumerate(columns["count"]):
        _require(
            v.is_integer() and v <= MAX_COUNT,
            f"{path}.count[{i}] must be an integer in [0, {MAX_COUNT}], got {v}",
        )
        counts.append(int(v))
    return SlotTable(tuple(counts), columns["mean"], columns["std"])


def _occurrence(value: Any, slot_s: float, path: str) -> Occurrence | None:
    if value is None:
        return None
    _require(isinstance(value, Mapping), f"{path} must be an object")
    start = _number(value.get("start"), f"{path}.start")
    last = _number(value.get("last"), f"{path}.last")
    peak = _number(value.get("peak"), f"{path}.peak")
    smoothed = _number(value.get("smoothed"), f"{path}.smoothed")
    covered = _number(value.get("coveredSeconds"), f"{path}.coveredSeconds")
    _require((start / slot_s).is_integer(), f"{path}.start {start} is not a slot boundary")
    # (<= the slot's end: a tick in its last half millisecond is rounded onto it)
    _require(start <= last <= start + slot_s, f"{path}.last {last} is outside its slot")
    _require(peak >= 0 and smoothed >= 0, f"{path}: demand must be >= 0")
    _require(0 <= covered <= slot_s, f"{path}.coveredSeconds must be in [0, {slot_s:g}]")
    return Occurrence(start, last, peak, smoothed, covered)


# --- learning ------------------------------------------------------------------------------


def observe(profile: DemandProfile, wall_s: float, demand: float) -> DemandProfile:
    """The profile after one tick that saw `demand` busy workers at `wall_s` (Unix s, UTC).

    O(1) within a slot occurrence (the tables are shared with the input); at the first tick
    of a new occurrence the previous one is folded in (a copy of one row of each table).
    A tick older than the occurrence in progress (the wall clock stepped back) is ignored.
    """
    _require(math.isfinite(wall_s), f"wall_s must be finite, got {wall_s}")
    _require(math.isfinite(demand) and demand >= 0, f"demand must be >= 0, got {demand}")
    slot = profile.slot_s
    start = math.floor(wall_s / slot) * slot
    current = profile.current
    if current is not None and start < current.start:
        return profile
    if current is not None and start == current.start:
        dt = max(0.0, wall_s - current.last)
        if dt <= GAP_S:
            smoothed = _smooth(current.smoothed, demand, dt)
            covered = min(slot, current.covered_s + dt)
        else:  # a gap: the time in between was not observed
            smoothed, covered = demand, current.covered_s
        occurrence = Occurrence(
            start=start,
            last=_q(max(wall_s, current.last)),
            peak=max(current.peak, _q(smoothed)),
            smoothed=_q(smoothed),
            covered_s=_q(covered),
        )
        # The tables are passed on, not copied: this is the O(1) path of every tick.
        return DemandProfile(profile.slot_s, profile.week, profile.day, profile.errors, occurrence)

    # A new occurrence: fold the one that ended, if any.
    smoothed, covered = demand, 0.0
    if current is not None:
        gap = wall_s - current.last
        if gap <= GAP_S:  # continuous: the old one was observed to its end, this from its start
            tail = current.start + slot - current.last
            current = replace(current, covered_s=min(slot, current.covered_s + tail))
            smoothed = _smooth(current.smoothed, demand, gap)
            covered = wall_s - start
        profile = _fold(profile, current)
    occurrence = Occurrence(
        start=_q(start),
        last=_q(wall_s),
        peak=_q(smoothed),
        smoothed=_q(smoothed),
        covered_s=_q(covered),
    )
    return replace(profile, current=occurrence)


def _smooth(previous: float, demand: float, dt: float) -> float:
    return previous + (1.0 - math.exp(-dt / SMOOTHING_TAU_S)) * (demand - previous)


def _fold(profile: DemandProfile, occurrence: Occurrence) -> DemandProfile:
    """The profile with a finished occurrence's peak recorded (and its forecast error)."""
    k = round(occurrence.start / profile.slot_s)
    w, d = k % profile.week_slots, k % profile.day_slots
    full = occurrence.covered_s >= FULL_COVERAGE * profile.slot_s
    peak = occurrence.peak
    errors = profile.errors
    estimate = _slot_estimate(profile, w, d)
    if full and estimate is not None and max(peak, estimate[0]) >= MIN_DEMAND:
        ratio = (peak + ERROR_FLOOR) / (estimate[0] + ERROR_FLOOR)
        errors = (*errors, _q(ratio))[-ERROR_WINDOW:]
    return replace(
        profile,
        week=profile.week.fold(w, peak, full=full, alpha=WEEK_ALPHA),
        day=profile.day.fold(d, peak, full=full, alpha=DAY_ALPHA),
        errors=errors,
    )


# --- forecasting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """The demand (busy workers) to be ready for, and how it was reached.

    `demand` = `base` x `error_factor` x `level`; `base` is the upper estimate of the
    busiest slot in the horizon, which starts at `slot_start` (Unix s); `basis` names the
    table and its history, e.g. "time-of-day, 3 days".
    """

    demand: float
    basis: str
    error_factor: float
    base: float
    slot_start: float
    level: float = 1.0  # `recent_level`: below 1 when the last hour ran below the profile


def _slot_estimate(profile: DemandProfile, w: int, d: int) -> tuple[float, str, int] | None:
    """(upper estimate, table, occurrences seen) for a slot, or None without history."""
    if profile.week.count[w] > 0:
        return profile.week.upper(w), "day-of-week", profile.week.count[w]
    if profile.day.count[d] > 0:
        return profile.day.upper(d), "time-of-day", profile.day.count[d]
    return None


def error_factor(profile: DemandProfile) -> float:
    """The headroom multiplier: a high quantile of the recorded actual/forecast ratios."""
    if len(profile.errors) < MIN_ERRORS:
        return DEFAULT_ERROR_FACTOR
    measured = float(np.quantile(np.asarray(profile.errors), ERROR_QUANTILE))
    return _q(min(max(measured, 1.0), MAX_ERROR_FACTOR))


def recent_level(profile: DemandProfile) -> float:
    """How far below its profile the demand has run lately: the largest of the last
    `LEVEL_WINDOW` actual/forecast ratios when all are below `LEVEL_BAND` (else 1), at
    least `LEVEL_MIN`; 1 until `MIN_ERRORS` ratios exist."""
    if len(profile.errors) < max(LEVEL_WINDOW, MIN_ERRORS):
        return 1.0
    highest = max(profile.errors[-LEVEL_WINDOW:])
    return 1.0 if highest >= LEVEL_BAND else _q(max(LEVEL_MIN, highest))


def forecast(profile: DemandProfile, wall_s: float, horizon_s: float) -> Forecast | None:
    """The demand to be ready for over [wall_s, wall_s + horizon_s], from the slots of that
    span that have history; None when none has (then the policy stays reactive)."""
    _require(math.isfinite(wall_s), f"wall_s must be finite, got {wall_s}")
    _require(
        math.isfinite(horizon_s) and horizon_s >= 0, f"horizon_s must be >= 0, got {horizon_s}"
    )
    slot = profile.slot_s
    first = math.floor(wall_s / slot)
    last = min(math.floor((wall_s + horizon_s) / slot), first + profile.week_slots - 1)
    best: tuple[float, str, int] | None = None
    best_k, unknown = first, 0
    for k in range(first, last + 1):
        estimate = _slot_estimate(profile, k % profile.week_slots, k % profile.day_slots)
        if estimate is None:
            unknown += 1
        elif best is None or estimate[0] > best[0]:
            best, best_k = estimate, k
    if best is None:
        return None
    base, table, seen = best
    unit = "week" if table == "day-of-week" else "day"
    basis = f"{table}, {seen} {unit}{'' if seen == 1 else 's'}"
    if unknown:
        basis += f"; {unknown} of {last - first + 1} slots without history"
    factor, level = error_factor(profile), recent_level(profile)
    return Forecast(
        demand=_q(base * factor * level),
        basis=basis,
        error_factor=factor,
        base=_q(base),
        slot_start=best_k * slot,
        level=level,
    )
