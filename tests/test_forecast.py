"""rscore.autoscaler.forecast: the demand profile behind predictive pre-warm, offline.

Simulated days of ticks go through `observe`; `forecast` must then cover the peaks that
come, widen its headroom when it was wrong, fall back from the day-of-week to the
time-of-day table, say None without history, and the profile must round-trip its JSON
form, refuse malformed ones by name, and stay small however long it runs.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from test_crd import minimal, validation_errors

from rscore.autoscaler import forecast as fc
from rscore.autoscaler.forecast import DemandProfile, Forecast, error_factor, forecast, observe
from rscore.autoscaler.status import profile_from_status

MONDAY = datetime(2026, 11, 30, tzinfo=UTC).timestamp()  # 00:00 UTC
HOUR = 3600.0
DAY = 86400.0
Load = Callable[[float], float]


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> float:
    """Unix seconds of day `day` (0 = that Monday) at hh:mm:ss UTC."""
    return MONDAY + day * DAY + hh * HOUR + mm * 60 + ss


def office(peak: float = 40.0, noise: float = 0.0, seed: int = 7) -> Load:
    """2 busy workers at night, 20 from 08:30, `peak` from 09:00 to 10:00, 20 until 17:00;
    each tick off by up to +-`noise` (a share), from a seeded stream."""
    rng = random.Random(seed)

    def load(wall_s: float) -> float:
        hour = (wall_s % DAY) / HOUR
        base = peak if 9 <= hour < 10 else 20.0 if 8.5 <= hour < 17 else 2.0
        return base * (1 + noise * (2 * rng.random() - 1))

    return load


def run(
    profile: DemandProfile, start: float, end: float, load: Load, step: float = 5.0
) -> DemandProfile:
    """The profile after ticks every `step` s in [start, end)."""
    t = start
    while t < end:
        profile = observe(profile, t, load(t))
        t += step
    return profile


def days_of(load: Load, days: int, step: float = 5.0) -> DemandProfile:
    return run(DemandProfile.empty(), at(0, 0), at(days, 0), load, step)


def slot(wall_s: float, table: int) -> int:
    return int(wall_s // 900) % table


# --- no history -> None --------------------------------------------------------------------


def test_without_history_there_is_no_forecast() -> None:
    empty = DemandProfile.empty()
    assert forecast(empty, at(0, 8, 55), 300) is None
    # Today's slots so far, but not the one ahead: still None (never seen on a past day).
    today = run(empty, at(0, 0), at(0, 8, 55), office())
    assert forecast(today, at(0, 8, 55), 300) is None
    # The slot in progress today does not count either: it is not over.
    assert forecast(today, at(0, 8, 50), 60) is None
    # A slot seen only in its last minutes (the controller started late) is no history.
    late = run(empty, at(0, 9, 12), at(0, 9, 20), office())
    assert late.day.count[slot(at(0, 9), 96)] == 0
    assert forecast(late, at(1, 8, 55), 300) is None


def test_slots_without_history_are_left_to_the_reactive_policy() -> None:
    profile = run(DemandProfile.empty(), at(0, 9), at(0, 9, 15, 5), office())
    assert forecast(profile, at(1, 9, 16), 300) is None  # 09:15 never seen (not over)
    assert forecast(profile, at(1, 8, 50), 240) is None  # nor 08:45
    # 08:45 unknown, 09:00 seen yesterday: what is known is forecast, and said to be partial.
    partial = forecast(profile, at(1, 8, 56), 300)
    assert partial is not None
    assert partial.slot_start == at(1, 9)
    assert partial.base == pytest.approx(40, rel=0.01)
    assert partial.basis == "time-of-day, 1 day; 1 of 2 slots without history"


# --- periodic load -> the forecast orders ahead and covers the peak ------------------------


@pytest.mark.parametrize("days", [2, 3, 5])
@pytest.mark.slow
def test_a_periodic_load_is_forecast_a_provisioning_time_ahead(days: int) -> None:
    load = office(peak=40.0, noise=0.1, seed=days)
    profile = days_of(load, days)
    provision_s = 300.0
    # At 08:50 the horizon ends at 08:55: the peak's slot is not in it yet.
    early = forecast(profile, at(days, 8, 50), provision_s)
    assert early is not None
    assert early.slot_start == at(days, 8, 45)
    assert early.demand < 30
    # At 08:55 the horizon reaches 09:00: the peak is ordered now, a provisioning time ahead.
    profile = run(profile, at(days, 0), at(days, 8, 55), load)
    ahead = forecast(profile, at(days, 8, 55), provision_s)
    assert ahead is not None
    assert ahead.slot_start == at(days, 9)
    assert ahead.basis == f"time-of-day, {days} days"
    # ... and covers the peak that day really has (the 09:00 occurrence's peak).
    profile = run(profile, at(days, 8, 55), at(days, 9, 14, 58), load)
    actual = profile.current.peak
    assert 40 * 0.95 < actual < 40 * 1.1
    assert actual <= ahead.demand <= actual * 1.3
    assert ahead.demand == pytest.approx(ahead.base * ahead.error_factor, abs=0.002)


def test_a_ramp_is_covered_slot_by_slot() -> None:
    """Demand rising through the day: every slot's forecast covers what the day brings."""

    def ramp(wall_s: float) -> float:
        return 2.0 + 4.0 * ((wall_s % DAY) / HOUR)  # 2 at midnight to 98 at 24:00

    profile = days_of(ramp, 3, step=10.0)
    for hh in range(0, 24, 3):
        expected = forecast(profile, at(3, hh), 900)
        assert expected is not None
        # what the second slot's end brings, less the lag of the 30-s smoothing
        assert expected.demand >= ramp(at(3, hh, 29, 59) - 2 * fc.SMOOTHING_TAU_S)


# --- headroom from the forecast's own error ------------------------------------------------


@pytest.mark.slow
def test_error_headroom_grows_when_actual_exceeded_the_forecasts() -> None:
    assert error_factor(DemandProfile.empty()) == fc.DEFAULT_ERROR_FACTOR  # nothing measured
    steady = days_of(office(), 3)
    assert len(steady.errors) >= fc.MIN_ERRORS
    assert error_factor(steady) == pytest.approx(1.0, abs=0.01)  # it was right

    surprise = days_of(office(), 2)
    surprise = run(surprise, at(2, 0), at(3, 0), lambda t: 1.5 * office()(t))
    factor = error_factor(surprise)
    assert factor > error_factor(steady)
    assert factor == pytest.approx(1.5, abs=0.05)  # the day ran 1.5x what was forecast
    steady_ahead = forecast(steady, at(3, 8, 55), 300)
    surprised_ahead = forecast(surprise, at(3, 8, 55), 300)
    assert steady_ahead is not None
    assert surprised_ahead is not None
    assert surprised_ahead.error_factor == factor
    assert surprised_ahead.demand > steady_ahead.demand * 1.4


def test_forecasts_that_overshot_leave_the_error_factor_at_one() -> None:
    quiet = days_of(office(), 2)
    quiet = run(quiet, at(2, 0), at(3, 0), lambda t: 0.5 * office()(t))
    assert error_factor(quiet) == 1.0  # headroom is never below the profile
    ahead = forecast(quiet, at(3, 8, 55), 300)
    assert ahead is not None
    # The last hour (Wednesday 23:00-24:00) ran 1 busy worker against 2 forecast: the
    # level is (1 + 1) / (2 + 1) and the forecast follows it.
    assert ahead.level == pytest.approx(2 / 3, abs=0.005)
    assert ahead.demand == pytest.approx(ahead.base * ahead.level, abs=0.002)


@pytest.mark.parametrize(
    ("share", "level"),
    [
        (0.5, 11 / 21),  # a holiday at half: (10 + 1) / (20 + 1) for each of the last 4 slots
        (0.8, 17 / 21),  # (16 + 1) / (20 + 1)
        (0.9, 19 / 21),  # (18 + 1) / (20 + 1) = 0.905
        (0.97, 1.0),  # (19.4 + 1) / (20 + 1) = 0.971: within the band, the profile holds
        (0.2, fc.LEVEL_MIN),  # (4 + 1) / (20 + 1) = 0.24: the floor
        (1.0, 1.0),  # as forecast
        (1.5, 1.0),  # above: the error factor's job, the level stays 1
    ],
)
def test_a_day_below_its_profile_is_followed_within_the_hour(share: float, level: float) -> None:
    """Two office days, then a third at `share` of them until 12:05: the forecast for
    12:05 (20 busy workers by the profile) is scaled by the last hour's ratios."""
    profile = days_of(office(), 2)
    profile = run(profile, at(2, 0), at(2, 12, 5), lambda t: share * office()(t))
    assert fc.recent_level(profile) == pytest.approx(level, abs=0.005)
    ahead = forecast(profile, at(2, 12, 5), 300)
    assert ahead is not None
    assert ahead.base == pytest.approx(20.0, abs=0.05)
    assert ahead.level == fc.recent_level(profile)
    assert ahead.demand == pytest.approx(ahead.base * ahead.error_factor * level, abs=0.01)


def test_one_quiet_slot_in_the_last_hour_is_not_a_level() -> None:
    """A slot far below its forecast among the last four leaves the level at 1 (the
    others ran as forecast): a dip from 11:15 to 11:45, whose 11:30 slot peaked at half."""
    profile = days_of(office(), 2)

    def dip(t: float) -> float:
        quiet = at(2, 11, 15) <= t < at(2, 11, 45)
        return (0.5 if quiet else 1.0) * office()(t)

    profile = run(profile, at(2, 0), at(2, 12, 5), dip)
    assert min(profile.errors[-fc.LEVEL_WINDOW :]) < 0.7
    assert fc.recent_level(profile) == 1.0


def test_the_error_record_is_a_bounded_ring() -> None:
    profile = days_of(office(), 4)
    assert len(profile.errors) == fc.ERROR_WINDOW


# --- day-of-week, else time-of-day ---------------------------------------------------------


@pytest.mark.slow
def test_a_slot_seen_on_another_weekday_falls_back_to_time_of_day() -> None:
    profile = run(DemandProfile.empty(), at(0, 0), at(1, 0), office(peak=40.0))  # Monday
    profile = run(profile, at(1, 0), at(2, 0), office(peak=10.0))  # Tuesday
    wednesday = forecast(profile, at(2, 8, 55), 300)
    assert wednesday is not None
    assert wednesday.basis == "time-of-day, 2 days"
    assert wednesday.base > 25  # an upper quantile of the two days, above their mean

    profile = run(profile, at(2, 0), at(7, 0), office(peak=10.0))  # Wednesday to Sunday
    monday = forecast(profile, at(7, 9, 15), 600)
    tuesday = forecast(profile, at(8, 9, 15), 600)
    assert monday is not None
    assert tuesday is not None
    assert monday.basis == tuesday.basis == "day-of-week, 1 week"
    # Monday's own peak, not the week's (within the lag of the 300-s smoothing)
    assert monday.base == pytest.approx(40, rel=0.05)
    assert tuesday.base == pytest.approx(10, rel=0.06)


# --- gaps and partial slots ----------------------------------------------------------------


def test_a_gap_keeps_the_history_and_a_partial_slot_only_raises_it() -> None:
    two_days = days_of(office(), 2)
    nine = slot(at(0, 9), 96)
    before = (two_days.day.count[nine], two_days.day.mean[nine])

    # Down from 08:00 to 12:00 on day 3: nothing seen is not zero demand.
    gap = run(two_days, at(2, 0), at(2, 8), office())
    gap = run(gap, at(2, 12), at(3, 0), office())
    assert (gap.day.count[nine], gap.day.mean[nine]) == before
    assert forecast(gap, at(3, 8, 55), 300).base == pytest.approx(40, rel=0.03)

    # Back at 09:10: a third of the slot seen. Lower demand does not lower it ...
    low = run(gap, at(3, 0), at(3, 8), office())
    low = run(low, at(3, 9, 10), at(3, 9, 20), lambda t: 10.0)
    assert (low.day.count[nine], low.day.mean[nine]) == before
    # ... higher demand raises it (it is a lower bound of that slot's peak) but is no day.
    high = run(gap, at(3, 0), at(3, 8), office())
    high = run(high, at(3, 9, 10), at(3, 9, 20), lambda t: 60.0)
    assert high.day.count[nine] == before[0]
    assert high.day.mean[nine] > before[1]


def test_a_wall_clock_stepping_back_into_a_past_slot_is_ignored() -> None:
    profile = run(DemandProfile.empty(), at(0, 9), at(0, 9, 20), office())
    assert observe(profile, at(0, 9, 5), 1000.0) is profile


def test_a_burst_of_seconds_does_not_set_the_slot_a_level_of_minutes_does() -> None:
    """Smoothed over 300 s: a level must last about as long as a node takes to come to
    be worth ordering ahead of; a burst of seconds is the reactive path's."""
    spike = run(DemandProfile.empty(), at(0, 9), at(0, 9, 1), lambda t: 5.0, step=2.0)
    spike = observe(spike, at(0, 9, 1), 100.0)  # one 2-s tick
    assert spike.current.peak < 6
    burst = run(spike, at(0, 9, 1, 2), at(0, 9, 1, 30), lambda t: 100.0, step=2.0)
    assert burst.current.peak < 15  # half a minute at 20x barely counts
    sustained = run(burst, at(0, 9, 1, 30), at(0, 9, 14), lambda t: 100.0, step=2.0)
    assert sustained.current.peak > 80  # twelve minutes do


# --- invalid input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: observe(p, at(0, 9), -1.0), "demand must be >= 0"),
        (lambda p: observe(p, at(0, 9), math.nan), "demand must be >= 0"),
        (lambda p: observe(p, math.inf, 1.0), "wall_s must be finite"),
        (lambda p: forecast(p, at(0, 9), -1.0), "horizon_s must be >= 0"),
        (lambda p: DemandProfile.empty(300), "slot_s must be"),
        (lambda p: DemandProfile.empty(1000), "dividing a day"),
    ],
)
def test_invalid_input_is_refused_by_name(call: Callable, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(DemandProfile.empty())


# --- JSON form -----------------------------------------------------------------------------


def _sample_profile() -> DemandProfile:
    profile = days_of(office(noise=0.2), 2)
    return run(profile, at(2, 0), at(2, 9, 7, 30), office(noise=0.2))  # mid-slot


def _whole_floats_as_ints(value: Any) -> Any:
    """What a Go API server may hand back: 40.0 as 40."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_ints(v) for v in value]
    return value


def test_the_json_form_round_trips() -> None:
    profile = _sample_profile()
    assert profile.current is not None
    assert profile.errors
    saved = profile.to_dict()
    wire = json.loads(json.dumps(saved))
    assert DemandProfile.from_dict(wire) == profile
    assert DemandProfile.from_dict(_whole_floats_as_ints(wire)) == profile
    assert DemandProfile.from_dict(wire).to_dict() == saved
    restored = DemandProfile.from_dict(wire)
    assert forecast(restored, at(2, 9, 10), 600) == forecast(profile, at(2, 9, 10), 600)
    empty = DemandProfile.empty()
    assert DemandProfile.from_dict(empty.to_dict()) == empty
    # A tick in the last half millisecond of a slot is stored on the slot's end.
    edge = observe(DemandProfile.empty(), at(0, 9, 14, 59) + 0.9996, 3.0)
    assert DemandProfile.from_dict(edge.to_dict()) == edge


def _broken(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    saved = _sample_profile().to_dict()
    change(saved)
    return saved


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        (None, "demandProfile must be an object"),
        ([1, 2], "demandProfile must be an object"),
        (_broken(lambda d: d.update(version=2)), r"version is 2, this controller reads version 1"),
        (_broken(lambda d: d.pop("version")), "version is None"),
        (_broken(lambda d: d.update(version=True)), "version is True"),
        (_broken(lambda d: d.update(slotSeconds=1000)), "slotSeconds must be a whole number"),
        (_broken(lambda d: d.update(slotSeconds="900")), "slotSeconds must be a finite number"),
        (_broken(lambda d: d.pop("week")), r"demandProfile\.week must be an object"),
        (_broken(lambda d: d["week"]["mean"].pop()), r"week\.mean has 671 entries, expected 672"),
        (_broken(lambda d: d["day"].pop("std")), r"day\.std must be a list"),
        (_broken(lambda d: d["day"]["std"].__setitem__(3, -1)), r"day\.std\[3\] must be >= 0"),
        (
            _broken(lambda d: d["week"]["mean"].__setitem__(5, "NaN")),
            r"week\.mean\[5\] must be a finite number",
        ),
        (
            _broken(lambda d: d["week"]["mean"].__setitem__(5, math.inf)),
            r"week\.mean\[5\] must be a finite number",
        ),
        (
            _broken(lambda d: d["day"]["count"].__setitem__(0, 1.5)),
            r"day\.count\[0\] must be an integer",
        ),
        (
            _broken(lambda d: d["day"]["count"].__setitem__(0, True)),
            r"day\.count\[0\] must be a finite number",
        ),
        (_broken(lambda d: d.update(errors=[1.0] * 97)), r"errors has 97 items, at most 96"),
        (_broken(lambda d: d.update(errors=[0.0])), r"errors\[0\] must be > 0"),
        (_broken(lambda d: d.update(errors="1,2")), r"errors must be a list"),
        (_broken(lambda d: d["current"].update(start=123.0)), "not a slot boundary"),
        (
            _broken(lambda d: d["current"].update(last=d["current"]["start"] + 901)),
            "outside its slot",
        ),
        (_broken(lambda d: d["current"].pop("peak")), r"current\.peak must be a finite number"),
        (_broken(lambda d: d.update(current=[])), r"current must be an object"),
    ],
)
def test_a_malformed_json_form_is_refused_by_name(saved: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemandProfile.from_dict(saved)


def test_the_status_reader_never_raises() -> None:
    assert profile_from_status(None) == (None, None)
    assert profile_from_status({"desiredReplicas": 3}) == (None, None)
    good = _sample_profile()
    assert profile_from_status({"demandProfile": good.to_dict()}) == (good, None)
    profile, problem = profile_from_status({"demandProfile": {"version": 9}})
    assert profile is None
    assert problem is not None
    assert "version is 9" in problem


@pytest.mark.slow
def test_the_crd_accepts_the_json_form_and_bounds_it() -> None:
    status = {"demandProfile": _sample_profile().to_dict()}
    assert validation_errors({**minimal(), "status": status}) == []
    too_long = _sample_profile().to_dict()
    too_long["week"]["mean"].append(1.0)
    assert validation_errors({**minimal(), "status": {"demandProfile": too_long}}) != []


# --- bounded size, O(1) per tick -----------------------------------------------------------


def _compact_size(profile: DemandProfile) -> int:
    return len(json.dumps(profile.to_dict(), separators=(",", ":")))


@pytest.mark.slow
def test_the_size_stays_bounded_after_a_year_of_ticks() -> None:
    rng = random.Random(1)
    levels = [rng.uniform(0, 5000) for _ in range(672)]

    def busy_year(wall_s: float) -> float:
        return levels[slot(wall_s, 672)] * rng.uniform(0.5, 1.5)

    start = at(0, 0)
    year = run(DemandProfile.empty(), start, start + 365 * DAY, busy_year, step=60.0)
    assert len(year.week.count) == 672
    assert len(year.day.count) == 96
    assert len(year.errors) == fc.ERROR_WINDOW
    assert 52 <= max(year.week.count) <= 53  # a week slot a week
    assert max(year.day.count) == 365
    assert _compact_size(year) < 20 * 1024
    # The worst case: every number as long as it gets below 100 000 busy workers.
    big = 99_999.999
    worst = DemandProfile(
        slot_s=900.0,
        week=fc.SlotTable((fc.MAX_COUNT,) * 672, (big,) * 672, (big,) * 672),
        day=fc.SlotTable((fc.MAX_COUNT,) * 96, (big,) * 96, (big,) * 96),
        errors=(fc.MAX_ERROR_FACTOR - 0.001,) * fc.ERROR_WINDOW,
        current=fc.Occurrence(at(0, 0), at(0, 0, 14, 59), big, big, 899.999),
    )
    assert _compact_size(worst) < 20 * 1024  # 19.2 KiB; the budget is 32


def test_a_tick_within_a_slot_shares_the_tables_and_a_new_slot_changes_one_row() -> None:
    profile = days_of(office(), 2)
    within = observe(profile, at(2, 0, 0, 2), 3.0)
    after = observe(within, at(2, 0, 0, 4), 4.0)
    # The O(1) path: no table is copied, whatever the history.
    assert after.week is within.week
    assert after.day is within.day
    assert after.errors is within.errors
    assert after.current.peak >= within.current.peak
    # A new occurrence folds the last one into one row of each table.
    folded = run(after, at(2, 0, 0, 6), at(2, 0, 15, 2), office())
    changed_week = [i for i in range(672) if folded.week.count[i] != after.week.count[i]]
    changed_day = [i for i in range(96) if folded.day.count[i] != after.day.count[i]]
    assert changed_week == [slot(at(2, 0), 672)]
    assert changed_day == [slot(at(2, 0), 96)]


def test_the_forecast_is_a_small_value() -> None:
    ahead = forecast(days_of(office(), 2), at(2, 8, 55), 300)
    assert isinstance(ahead, Forecast)
    with pytest.raises(AttributeError):
        ahead.demand = 0  # type: ignore[misc]


def test_the_documented_worked_example() -> None:
    """docs/autoscaler.md, "Forecast and pre-warm": 4 busy workers at night, 20 from 08:30
    to 18:00, the peak from 09:00 to 10:00 (36 on Monday, 40 on Tuesday), +-5 % a tick
    from a seeded stream, a tick every 2 s; the table and the forecasts on Wednesday."""
    rng = random.Random(1)

    def load(wall_s: float) -> float:
        day, hour = int((wall_s - MONDAY) // DAY), ((wall_s - MONDAY) % DAY) / HOUR
        peak = 36.0 if day == 0 else 40.0
        base = peak if 9 <= hour < 10 else 20.0 if 8.5 <= hour < 18 else 4.0
        return base * (1 + 0.05 * (2 * rng.random() - 1))

    profile = run(DemandProfile.empty(), at(0, 0), at(2, 8, 50), load, step=2.0)
    table = {
        hh_mm: (profile.day.count[i], profile.day.mean[i], profile.day.std[i])
        for hh_mm, i in (("08:45", 35), ("09:00", 36), ("09:15", 37))
    }
    assert table["08:45"] == (2, pytest.approx(19.97, abs=0.005), pytest.approx(0.02))
    assert table["09:00"] == (2, pytest.approx(37.12, abs=0.005), pytest.approx(1.89, abs=0.005))
    assert table["09:15"] == (2, pytest.approx(38.05, abs=0.005), pytest.approx(1.94, abs=0.005))
    assert len(profile.errors) == 96
    assert error_factor(profile) == pytest.approx(1.002)
    at_0850, at_0855 = forecast(profile, at(2, 8, 50), 300), forecast(profile, at(2, 8, 55), 300)
    assert at_0850 is not None
    assert at_0855 is not None
    assert at_0850.demand == pytest.approx(20.04, abs=0.005)
    assert at_0855.demand == pytest.approx(39.63, abs=0.005)
    assert at_0855.basis == "time-of-day, 2 days"
    assert (math.ceil(at_0850.demand / 2.8), math.ceil(at_0855.demand / 2.8)) == (8, 15)
