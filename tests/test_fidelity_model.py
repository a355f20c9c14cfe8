"""The diagnostic `rscore sim validate` reports per level and the simulation does not
use: how R ran in the pod against the measurement (`r_diagnostics`, from rscore.sim.measure's
`fit_inside_r`). Hand-checkable cases; no test asserts how close the simulator comes to
a real pod (that is `make bench-fidelity`'s job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rscore.sim.measure import Fit, fit_inside_r
from rscore.sim.validate import r_diagnostics, table


@dataclass
class Timed:
    """What a measurement timed (rscore.sim.measure.Timings), as plain lists."""

    bundle: Path = Path("bundle")
    model: str = "m"
    batchable: bool = True
    rows_source: str = "prototype"
    single_s: list[float] = field(default_factory=list)
    single_r_s: list[float] = field(default_factory=list)
    batch_s: dict[int, list[float]] = field(default_factory=dict)
    batch_r_s: dict[int, list[float]] = field(default_factory=dict)


def test_fit_inside_r_is_the_line_through_the_mean_time_in_r_per_batch_size() -> None:
    # Means 1.0 ms (1 row: the one-row sample and the size-1 calls together), 1.5 ms
    # (2 rows) and 2.5 ms (4 rows): exactly 0.5 + 0.5 rows (ms).
    timed = Timed(
        single_r_s=[0.0009, 0.0011],
        batch_r_s={1: [0.001], 2: [0.001, 0.002], 4: [0.0025]},
    )
    fit = fit_inside_r(timed)
    assert fit.a_s == pytest.approx(0.0005)
    assert fit.c_s == pytest.approx(0.0005)
    assert fit.r2 == pytest.approx(1.0)


def test_fit_inside_r_with_one_size_is_its_mean() -> None:
    fit = fit_inside_r(Timed(single_r_s=[0.001, 0.003]))
    assert (fit.a_s, fit.c_s) == pytest.approx((0.002, 0.0))
    with pytest.raises(ValueError, match="inside R"):
        fit_inside_r(Timed())


INSIDE_R = Fit(a_s=0.0005, c_s=0.0005, r2=1.0)  # 1 ms for one row, 0.5 ms a row more


@pytest.mark.parametrize(
    ("inside_r", "r_s", "calls", "rows", "expected"),
    [
        # 2 ms a call where the measurement saw 1 ms (1 row a call).
        (INSIDE_R, 2.0, 1000, 1000, (2.0, 0.002, 0.001, 1.0)),
        # Faster than measured: the machine sped up.
        (INSIDE_R, 0.5, 1000, 1000, (0.5, 0.0005, 0.001, 1.0)),
        # 3 rows a call: 0.5 + 0.5 * 3 = 2 ms expected.
        (INSIDE_R, 3.0, 1000, 3000, (1.5, 0.003, 0.002, 3.0)),
        # No call, or no time inside R: nothing to go by.
        (INSIDE_R, 0.0, 0, 0, (None, None, None, None)),
        (INSIDE_R, 0.0, 10, 10, (None, None, 0.001, 1.0)),
        # A measurement without time inside R: the pod's own only.
        (None, 2.0, 1000, 1000, (None, 0.002, None, 1.0)),
    ],
)
def test_r_diagnostics(
    inside_r: Fit | None,
    r_s: float,
    calls: int,
    rows: int,
    expected: tuple[float | None, ...],
) -> None:
    got = r_diagnostics(inside_r, r_s, calls, rows)
    keys = ("r_slowdown", "real_r_s_per_call", "measured_r_s_per_call", "rows_per_call")
    assert list(got) == list(keys)
    for key, value in zip(keys, expected, strict=True):
        assert got[key] == (None if value is None else pytest.approx(value)), key


def test_the_table_prints_the_r_slowdown_where_there_is_one() -> None:
    stats = {
        "requests": 10, "p50_s": 0.01, "p90_s": 0.02, "p99_s": 0.03, "mean_s": 0.015,
        "reject_rate": 0.0, "timeout_rate": 0.0, "throughput_rps": 10.0,
    }  # fmt: skip
    error = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "failure_rate_points": 0.0}
    entry = {"level": 0.3, "rate_rps": 10.0, "real": stats, "sim": stats, "error": error}
    lines = table([
        {**entry, "diagnostics": {"r_slowdown": 1.234}},
        {**entry, "level": 0.6},  # a document without diagnostics
    ]).splitlines()  # fmt: skip
    assert lines[0].split()[-2:] == ["R", "slowdown"]
    assert lines[-2].split()[-1] == "1.23x"
    assert lines[-1].split()[-1] == "-"
