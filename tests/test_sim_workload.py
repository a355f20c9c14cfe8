"""Arrival processes and service times: rates, shapes, trace replay."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from rscore.sim.service import ServiceSpec
from rscore.sim.workload import WorkloadSpec, arrival_blocks, load_trace

# The full traces live beside the repository (../shared/traces); a clone alone has the
# samples cut from them in tests/fixtures/traces (their README says how).
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "traces"
CONV_SAMPLE = SAMPLES / "AzureLLMInferenceTrace_conv-first-120s.csv.gz"
NASA_SAMPLE = SAMPLES / "nasa-http-1995-per-second-first-3600s.txt.gz"
full_traces = pytest.mark.skipif(
    not TRACES.is_dir(),
    reason=f"the full traces ({TRACES}) are absent: the samples in {SAMPLES} stand in",
)


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


def test_azure_sample_replays_its_timestamps() -> None:
    shape, seconds = load_trace(CONV_SAMPLE, "auto")
    assert shape == "times"
    assert seconds.size == 456  # rows in the first 120 s, counted when it was cut
    assert seconds[0] == 0.0
    assert seconds[-1] < 120.0
    times = arrivals(WorkloadSpec("trace", path=CONV_SAMPLE, start_s=30.0), 60.0)
    assert np.array_equal(times, seconds[(seconds >= 30.0) & (seconds < 90.0)] - 30.0)
    triple = arrivals(WorkloadSpec("trace", path=CONV_SAMPLE, scale=3.0), 60.0)
    within = int(np.sum(seconds < 60.0))
    assert within + 2 * int(np.sum(seconds < 59.0)) <= triple.size <= 3 * within


def test_nasa_sample_is_its_first_hour_of_counts() -> None:
    shape, counts = load_trace(NASA_SAMPLE, "auto")
    assert shape == "counts"
    assert (counts.size, int(counts.sum())) == (3600, 3568)  # counted when it was cut


@full_traces
@pytest.mark.parametrize(
    ("sample", "full"),
    [
        (CONV_SAMPLE.name, "AzureLLMInferenceTrace_conv.csv"),
        ("AzureLLMInferenceTrace_code-first-600s.csv.gz", "AzureLLMInferenceTrace_code.csv"),
        (NASA_SAMPLE.name, "nasa-http-1995-per-second.txt.gz"),
    ],
)
def test_the_samples_are_the_start_of_the_full_traces(sample: str, full: str) -> None:
    shape, cut = load_trace(SAMPLES / sample, "auto")
    full_shape, whole = load_trace(TRACES / full, "auto")
    assert shape == full_shape
    assert np.array_equal(cut, whole[: cut.size])
    if shape == "times":  # every row of the span, none after
        assert whole[cut.size] > cut[-1]


@full_traces
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


@full_traces
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
    from rscore.sim.scenario import parse_scenario

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


# ---- scale_mode = "rate": scale x the users, not scale x each burst ----------------------


def counts_file(folder: Path, counts: list[int]) -> Path:
    path = folder / "counts.txt"
    path.write_text("\n".join(str(c) for c in counts) + "\n")
    return path


def dispersion(times: np.ndarray, duration: int, window: int = 60) -> float:
    """Index of dispersion (variance / mean) of the per-second counts inside each
    `window`, averaged over the windows (1 for a Poisson process of a rate that is
    constant within a window)."""
    per_second = np.bincount(times.astype(np.int64), minlength=duration)[:duration]
    windows = per_second.reshape(-1, window).astype(np.float64)
    means = windows.mean(axis=1)
    busy = means > 0
    return float(np.mean(windows[busy].var(axis=1, ddof=1) / means[busy]))


@pytest.mark.parametrize(
    ("counts", "scale", "window"),
    [
        ([0, 2] * 300, 100.0, 60.0),  # bursty: every other second
        ([1] * 600, 50.0, 60.0),  # flat
        ([5, 0, 0, 0, 0] * 120, 20.0, 10.0),  # one burst in five seconds
        ([3, 1] * 300, 7.5, 1.0),  # a one-second window: per-second Poisson
        ([0, 2] * 300, 100.0, 1000.0),  # a window longer than the trace
    ],
    ids=["alternating", "flat", "bursts", "window-1s", "window-past-the-end"],
)
def test_rate_mode_keeps_the_mean_rate(
    tmp_path: Path, counts: list[int], scale: float, window: float
) -> None:
    path = counts_file(tmp_path, counts)
    spec = WorkloadSpec("trace", path=path, scale=scale, scale_mode="rate", rate_window_s=window)
    times = arrivals(spec, float(len(counts)))
    assert np.all(np.diff(times) >= 0)
    assert times.min() >= 0
    assert times.max() < len(counts)
    assert within_poisson_ci(times.size, scale * sum(counts))


@pytest.mark.parametrize("scale", [20.0, 100.0, 500.0])
def test_rate_mode_is_poisson_within_a_window_where_multiply_is_bursty(
    tmp_path: Path, scale: float
) -> None:
    # Two requests every other second: the same mean (1 req/s) in every 60 s window.
    path = counts_file(tmp_path, [0, 2] * 1800)
    spec = WorkloadSpec("trace", path=path, scale=scale, scale_mode="rate")
    rate = dispersion(arrivals(spec, 3600.0), 3600)
    multiply = dispersion(arrivals(WorkloadSpec("trace", path=path, scale=scale), 3600.0), 3600)
    assert rate == pytest.approx(1.0, abs=0.1)  # Poisson: variance = mean
    assert multiply > 0.9 * scale  # counts 0 and 2 x scale: var / mean = scale (x 60/59)
    # The same real trace: 147 x NASA's users are far smoother than 147 x each second
    # (its first hour, all that 3600 s of arrivals read).
    nasa = NASA_SAMPLE
    real = {
        mode: dispersion(arrivals(WorkloadSpec("trace", path=nasa, scale=scale,
                                               scale_mode=mode), 3600.0), 3600)
        for mode in ("multiply", "rate")
    }  # fmt: skip
    assert real["rate"] == pytest.approx(1.0, abs=0.1)
    assert real["multiply"] > 10.0


def test_rate_mode_is_deterministic_per_seed(tmp_path: Path) -> None:
    path = counts_file(tmp_path, [0, 3, 1, 7] * 100)
    spec = WorkloadSpec("trace", path=path, scale=40.0, scale_mode="rate", rate_window_s=20.0)
    assert np.array_equal(arrivals(spec, 400.0, seed=5), arrivals(spec, 400.0, seed=5))
    assert not np.array_equal(arrivals(spec, 400.0, seed=5), arrivals(spec, 400.0, seed=6))


def test_rate_mode_follows_the_trace_window_by_window(tmp_path: Path) -> None:
    # Windows of 60 s from the run's start: 0/s, then 4/s, then a last window cut short
    # by the end of the trace (30 s at 2/s), averaged over the part that exists.
    path = counts_file(tmp_path, [0] * 60 + [4] * 60 + [2, 2, 2] * 10)
    spec = WorkloadSpec("trace", path=path, scale=100.0, scale_mode="rate")
    times = arrivals(spec, 1000.0)
    per_window = np.histogram(times, [0.0, 60.0, 120.0, 150.0, 1000.0])[0].tolist()
    assert per_window[0] == 0
    assert per_window[3] == 0  # nothing after the trace
    assert within_poisson_ci(per_window[1], 100.0 * 4 * 60)
    assert within_poisson_ci(per_window[2], 100.0 * 2 * 30)
    # A run shorter than a window averages over the part of the trace it covers.
    short = arrivals(spec, 90.0)
    assert np.sum(short < 60.0) == 0
    assert within_poisson_ci(short.size, 100.0 * 4 * 30)
    # Windows start at start_s: the 4/s minute first, then the last 30 s.
    late = arrivals(WorkloadSpec("trace", path=path, scale=100.0, scale_mode="rate",
                                 start_s=60.0), 100.0)  # fmt: skip
    assert within_poisson_ci(int(np.sum(late < 60.0)), 100.0 * 4 * 60)
    assert within_poisson_ci(int(np.sum(late >= 60.0)), 100.0 * 2 * 30)
    assert late.max() < 90.0


def test_rate_mode_of_timestamps_counts_requests_per_window(tmp_path: Path) -> None:
    # 30 requests in the first 10 s, none in the next 10 s, one at 25.2 s: the trace
    # ends with the second of its last request (26 s).
    stamps = [i / 3 for i in range(30)] + [25.2]
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 00:00:{t:010.7f},1,1" for t in stamps]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    assert load_trace(path, "auto")[1][-1] == pytest.approx(25.2)
    spec = WorkloadSpec("trace", path=path, scale=200.0, scale_mode="rate", rate_window_s=10.0)
    times = arrivals(spec, 100.0)
    per_window = np.histogram(times, [0.0, 10.0, 20.0, 26.0, 100.0])[0].tolist()
    assert within_poisson_ci(per_window[0], 200.0 * 30)
    assert per_window[1] == 0
    assert per_window[3] == 0
    assert within_poisson_ci(per_window[2], 200.0 * 1)


def test_counts_per_bin_sees_the_arrivals_of_the_run_in_rate_mode(tmp_path: Path) -> None:
    from rscore.sim.workload import counts_per_bin

    path = counts_file(tmp_path, [0, 5, 1, 9, 2] * 1000)
    spec = WorkloadSpec("trace", path=path, scale=30.0, scale_mode="rate", rate_window_s=7.0)
    times = arrivals(spec, 4321.0, seed=9)
    counts = counts_per_bin(spec, 4321.0, np.random.default_rng(9), 60.0)
    assert counts.tolist() == np.bincount((times // 60).astype(int), minlength=73).tolist()


@pytest.mark.parametrize(
    ("workload", "key"),
    [
        ({"scale_mode": "burst"}, "scale_mode"),
        ({"scale_mode": 2}, "scale_mode"),
        ({"scale_mode": "rate", "rate_window_s": 0}, "rate_window_s"),
        ({"scale_mode": "rate", "rate_window_s": -60}, "rate_window_s"),
        ({"scale_mode": "rate", "rate_window_s": "60"}, "rate_window_s"),
        ({"scale_mode": "rate", "rate_window_s": 1.5}, "rate_window_s"),  # counts: whole s
        ({"scale_mode": "rate", "scale": 0}, "scale"),
    ],
)
def test_bad_scale_settings_are_one_line_errors_naming_the_key(
    tmp_path: Path, workload: dict[str, object], key: str
) -> None:
    from rscore.sim.scenario import ScenarioError, parse_scenario

    counts_file(tmp_path, [1, 2, 3])
    data = {"workload": {"kind": "trace", "path": "counts.txt", **workload}}
    with pytest.raises(ScenarioError, match=key) as caught:
        parse_scenario(data, tmp_path)
    assert "\n" not in str(caught.value)


def test_scale_mode_defaults_to_multiply_and_is_recorded(tmp_path: Path) -> None:
    from rscore.sim.run import run_scenario
    from rscore.sim.scenario import parse_scenario
    from rscore.sim.workload import describe

    counts_file(tmp_path, [2, 0, 4] * 20)
    workload = {"kind": "trace", "path": "counts.txt", "scale": 3}
    plain = parse_scenario({"workload": workload}, tmp_path)
    assert plain.workload.scale_mode == "multiply"
    assert "scale 3, scale_mode multiply" in describe(plain.workload)
    data = {
        "duration_s": 60.0,
        "policy": {"kind": "static"},
        "workload": {**workload, "scale_mode": "rate", "rate_window_s": 30},
    }
    scenario = parse_scenario(data, tmp_path)
    summary = run_scenario(scenario).summary
    assert (summary["scale"], summary["scale_mode"], summary["rate_window_s"]) == (3, "rate", 30)
    assert "scale_mode rate" in describe(scenario.workload)
    # Azure timestamps accept any window (they are not whole seconds).
    WorkloadSpec("trace", path=tmp_path / "t.csv", scale_mode="rate", rate_window_s=0.5)
    thinned = WorkloadSpec("trace", path=tmp_path / "t.csv", scale=0.5)
    assert "each request kept with probability 0.5" in describe(thinned)
