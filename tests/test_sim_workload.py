"""Arrival processes and service times: rates, shapes, trace replay."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from sim.service import ServiceSpec
from sim.workload import WorkloadSpec, arrival_blocks, load_trace

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


def arrivals(spec: WorkloadSpec, duration: float, seed: int = 1) -> np.ndarray:
    blocks = list(arrival_blocks(spec, duration, np.random.default_rng(seed)))
    return np.concatenate(blocks) if blocks else np.empty(0)


def within_poisson_ci(count: int, expected: float) -> bool:
    """|count - expected| within 4 standard deviations of a Poisson count."""
    return abs(count - expected) <= 4 * math.sqrt(expected)


@pytest.mark.parametrize(
    ("spec", "duration", "mean_rate"),
    [
        (WorkloadSpec("poisson", rate=25.0), 2000.0, 25.0),
        (WorkloadSpec("diurnal", rate=40.0, amplitude=0.8, period_s=1000.0, noise=0.0),
         2000.0, 40.0),
        (WorkloadSpec("mmpp", rates=(5.0, 100.0), mean_dwell_s=(90.0, 10.0)),
         20000.0, (5.0 * 90 + 100.0 * 10) / 100),
    ],
    ids=["poisson", "diurnal", "mmpp"],
)  # fmt: skip
def test_arrival_processes_have_their_mean_rate(
    spec: WorkloadSpec, duration: float, mean_rate: float
) -> None:
    times = arrivals(spec, duration)
    assert np.all(np.diff(times) >= 0)
    assert times.min() >= 0
    assert times.max() < duration
    if spec.kind == "mmpp":  # dwell times add variance: check within 10 %
        assert abs(times.size / duration - mean_rate) < 0.1 * mean_rate
    else:
        assert within_poisson_ci(times.size, mean_rate * duration)


def test_poisson_gaps_are_exponential() -> None:
    gaps = np.diff(arrivals(WorkloadSpec("poisson", rate=10.0), 5000.0))
    assert gaps.mean() == pytest.approx(0.1, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


def test_diurnal_follows_the_sinusoid() -> None:
    spec = WorkloadSpec("diurnal", rate=50.0, amplitude=0.5, period_s=4000.0, noise=0.0)
    times = arrivals(spec, 4000.0)
    first, second = np.sum(times < 2000.0), np.sum(times >= 2000.0)
    # Half a period above the mean, half below: (1 + 2A/pi) : (1 - 2A/pi).
    assert first / second == pytest.approx((1 + 1 / math.pi) / (1 - 1 / math.pi), rel=0.05)


def test_counts_file_is_spread_inside_each_second(tmp_path: Path) -> None:
    path = tmp_path / "counts.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("3\n0\n5\n2\n")
    times = arrivals(WorkloadSpec("trace", path=path), 10.0)
    assert np.bincount(times.astype(int)).tolist() == [3, 0, 5, 2]
    skipped = arrivals(WorkloadSpec("trace", path=path, start_s=2.0), 10.0)
    assert np.bincount(skipped.astype(int)).tolist() == [5, 2]
    doubled = arrivals(WorkloadSpec("trace", path=path, scale=2.0), 10.0)
    assert np.bincount(doubled.astype(int)).tolist() == [6, 0, 10, 4]
    cut = arrivals(WorkloadSpec("trace", path=path), 3.0)
    assert cut.size == 8


def test_azure_trace_replays_its_timestamps() -> None:
    path = TRACES / "AzureLLMInferenceTrace_conv.csv"
    shape, seconds = load_trace(path, "auto")
    assert shape == "times"
    assert seconds[0] == 0.0
    assert seconds.size / seconds[-1] == pytest.approx(5.5, rel=0.1)  # README: 5.5 req/s
    times = arrivals(WorkloadSpec("trace", path=path, start_s=600.0), 300.0)
    expected = seconds[(seconds >= 600.0) & (seconds < 900.0)] - 600.0
    assert np.array_equal(times, expected)
    half = arrivals(WorkloadSpec("trace", path=path, scale=0.5), 3600.0)
    assert within_poisson_ci(half.size, seconds[seconds < 3600.0].size * 0.5)
    triple = arrivals(WorkloadSpec("trace", path=path, scale=3.0), 600.0)
    # Each request thrice: itself and two copies jittered within the next second.
    within = int(np.sum(seconds < 600.0))
    assert within + 2 * int(np.sum(seconds < 599.0)) <= triple.size <= 3 * within


def test_nasa_counts_trace_matches_its_readme() -> None:
    shape, counts = load_trace(TRACES / "nasa-http-1995-per-second.txt.gz", "auto")
    assert shape == "counts"
    assert counts.size == 5_059_950
    assert counts.mean() == pytest.approx(0.68, abs=0.01)


@pytest.mark.parametrize(
    ("spec", "cv"),
    [
        (ServiceSpec("exponential", mean_s=0.2), 1.0),
        (ServiceSpec("lognormal", mean_s=0.2, cv=0.5), 0.5),
        (ServiceSpec("lognormal", mean_s=0.2, cv=0.0), 0.0),
    ],
    ids=["exponential", "lognormal", "constant"],
)
def test_service_draws_have_unit_mean_and_their_cv(spec: ServiceSpec, cv: float) -> None:
    draws = spec.unit_block(np.random.default_rng(1), 200_000)
    assert draws.mean() == pytest.approx(1.0, rel=0.01)
    assert draws.std() == pytest.approx(cv, abs=0.02)
    assert spec.call_mean(1) == pytest.approx(0.2)


def test_empirical_service_resamples_measured_times(tmp_path: Path) -> None:
    path = tmp_path / "times.txt"
    path.write_text("# seconds inside R\n0.010\n0.020\n\n0.060\n")
    spec = ServiceSpec("empirical", mean_s=None, path=path, per_row_s=0.001)
    assert spec.mean == pytest.approx(0.03)
    draws = spec.unit_block(np.random.default_rng(2), 30_000) * spec.call_mean(1)
    assert set(np.round(draws, 6).tolist()) == {0.01, 0.02, 0.06}
    # The batch cost curve a + c * rows: a = mean - c.
    assert spec.call_mean(10) == pytest.approx(0.029 + 0.010)


def test_empirical_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("0.1\nfast\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        ServiceSpec("empirical", mean_s=None, path=path).unit_block(np.random.default_rng(), 1)


def test_empirical_service_defaults_to_the_measured_mean(tmp_path: Path) -> None:
    """Without `mean_s`, an empirical service keeps the measured times (docs: "default
    the measured mean"); other kinds default to 0.05 s."""
    from sim.scenario import parse_scenario

    path = tmp_path / "times.txt"
    path.write_text("0.2\n0.4\n")
    scenario = parse_scenario({"service": {"kind": "empirical", "path": "times.txt"}}, tmp_path)
    assert scenario.service.mean == pytest.approx(0.3)
    assert scenario.service.call_mean(1) == pytest.approx(0.3)
    assert parse_scenario({}, tmp_path).service.mean == pytest.approx(0.05)
    assert ServiceSpec("lognormal").mean == pytest.approx(0.05)


def test_azure_rows_out_of_order_start_at_the_earliest(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:02.5000000,1,1\n"
        "2023-11-16 18:00:00.2500000,1,1\n"
        "2023-11-16 18:00:01.0000000,1,1\n"
    )
    times = arrivals(WorkloadSpec("trace", path=path), 10.0)
    assert times.tolist() == pytest.approx([0.0, 0.75, 2.25])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_diurnal_noise_is_one_factor_per_step_across_hours(seed: int) -> None:
    # A flat rate with a noise step of 7000 s: the first and the second hour lie in the
    # same step, so they share one factor (only Poisson noise, ~0.5 %, between them).
    spec = WorkloadSpec("diurnal", rate=20.0, amplitude=0.0, noise=0.5, noise_step_s=7000.0)
    times = arrivals(spec, 7000.0, seed)
    first, second = np.sum(times < 3500.0), np.sum(times >= 3500.0)
    assert first / second == pytest.approx(1.0, abs=0.02)


def test_counts_file_with_a_fractional_start(tmp_path: Path) -> None:
    path = tmp_path / "counts.txt"
    path.write_text("3\n0\n5\n2\n")
    # Skip 1.5 s: second 2's five requests land in [0.5, 1.5), second 3's two in [1.5, 2.5).
    times = arrivals(WorkloadSpec("trace", path=path, start_s=1.5), 10.0)
    assert np.histogram(times, [0.0, 0.5, 1.5, 2.5])[0].tolist() == [0, 5, 2]
