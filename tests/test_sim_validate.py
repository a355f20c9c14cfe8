"""`rscore sim validate`: the simulator against a real `rscore serve`.

The arithmetic (rscore.sim.validate) on tables of cases; the open-loop client against the echo
server; and one short real validation (two levels of a couple of seconds against a
real pod of the example lm) whose file is checked for its shape and for errors that
come from its own real and simulated numbers. No test asserts how large the error is:
that is `make bench-fidelity`'s job, on a quiet machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from rscore.cli import validate_cmd
from rscore.cli.main import cli
from rscore.cli.real_pod import answers, batch_counts, free_port, r_seconds
from rscore.cli.replay_client import Plan, parse_response_head, run_plan
from rscore.sim.scenario import load_scenario, parse_scenario
from rscore.sim.validate import (
    STAT_KEYS,
    LoopSample,
    Stats,
    competing_threads,
    cores_left,
    errors,
    fit_sidecar,
    http_seconds,
    real_stats,
    relative_error,
    scaled_workload,
    schedule,
)
from rscore.sim.workload import WorkloadSpec

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "examples" / "scenarios" / "validate" / "poisson.toml"

# --- the arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sim", "real", "error"),
    [(1.1, 1.0, 0.1), (0.9, 1.0, -0.1), (2.0, 2.0, 0.0), (None, 1.0, None), (1.0, 0.0, None)],
)
def test_relative_error(sim: float | None, real: float | None, error: float | None) -> None:
    assert relative_error(sim, real) == (None if error is None else pytest.approx(error))


def stats(p50: float, failures: tuple[float, float] = (0.0, 0.0)) -> Stats:
    return Stats(100, p50, 2 * p50, 3 * p50, 1.5 * p50, failures[0], failures[1], 10.0)


def test_errors_are_relative_for_latencies_and_in_points_for_failures() -> None:
    error = errors(stats(0.010, (0.01, 0.02)), stats(0.011, (0.02, 0.005)))
    for name in ("p50", "p90", "p99", "mean"):
        assert error[name] == pytest.approx(0.1)
    assert error["failure_rate_points"] == pytest.approx(100 * (0.025 - 0.03))


def test_real_stats_count_every_request_of_the_schedule() -> None:
    sent = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    done = np.array([0.01, 0.13, 0.2, 5.3, np.nan])
    status = np.array([200, 200, 429, 504, 0])  # 0: no answer at all
    s = real_stats(sent, done, status)
    assert s.requests == 5
    assert (s.p50_s, s.p99_s) == pytest.approx((0.01, 0.03))  # nearest rank of 2
    assert s.mean_s == pytest.approx(0.02)
    assert (s.reject_rate, s.timeout_rate) == (0.2, 0.2)
    assert s.throughput_rps == pytest.approx(2 / 5.3)


@pytest.mark.parametrize(
    ("spec", "field", "scaled"),
    [
        (WorkloadSpec(kind="poisson", rate=10.0), "rate", 25.0),
        (WorkloadSpec(kind="diurnal", rate=10.0), "rate", 25.0),
        (WorkloadSpec(kind="mmpp", rates=(4.0, 40.0)), "rates", (10.0, 100.0)),
        (WorkloadSpec(kind="trace", path=Path("t.csv"), scale=2.0), "scale", 5.0),
    ],
)
def test_a_workload_is_scaled_by_its_own_means(spec: WorkloadSpec, field: str, scaled: Any) -> None:
    assert getattr(scaled_workload(spec, 2.5), field) == pytest.approx(scaled)


@pytest.mark.parametrize(
    "spec",
    [
        WorkloadSpec(kind="poisson", rate=3.0),
        WorkloadSpec(kind="mmpp", rates=(1.0, 9.0), mean_dwell_s=(2.0, 1.0)),
        WorkloadSpec(kind="diurnal", rate=2.0, period_s=20.0, amplitude=0.9),
    ],
)
def test_a_schedule_arrives_at_the_rate_asked_and_is_the_same_for_a_seed(
    spec: WorkloadSpec,
) -> None:
    _, times = schedule(spec, 10.0, 2000.0, seed=4)
    assert times.size == pytest.approx(20_000, rel=0.03)
    assert np.all(np.diff(times) >= 0)
    assert times[-1] < 10.0
    assert np.array_equal(times, schedule(spec, 10.0, 2000.0, seed=4)[1])


@pytest.mark.parametrize(
    ("usable", "others", "elapsed", "left"),
    [
        (2.0, 0.0, 2.0, 2.0),  # nobody else: every usable core
        (2.0, 0.6, 2.0, 1.7),  # others used 0.3 of a core
        (2.0, 8.0, 2.0, 0.1),  # never below a tenth of a core
        (2.0, 1.0, 0.0, 2.0),  # nothing measured
    ],
)
def test_cores_left(usable: float, others: float, elapsed: float, left: float) -> None:
    assert cores_left(usable, others, elapsed) == pytest.approx(left)


@pytest.mark.parametrize(
    ("background", "client_cpu", "elapsed", "threads"),
    [
        (0.0, 0.0, 5.0, 0.0),  # a quiet machine, a client that costs nothing
        (0.0, 1.0, 5.0, 0.2),  # the client busy a fifth of the run
        (1.5, 1.0, 5.0, 1.7),  # and the machine's other work
        (0.5, 1.0, 0.0, 0.5),  # nothing measured of the run
    ],
)
def test_competing_threads(
    background: float, client_cpu: float, elapsed: float, threads: float
) -> None:
    assert competing_threads(background, client_cpu, elapsed) == pytest.approx(threads)


def loop_runs(request_s: float, call_s: float, shapes: list[tuple[int, int]]) -> list[LoopSample]:
    return [LoopSample(request_s * n + call_s * calls, n, calls) for n, calls in shapes]


@pytest.mark.parametrize(
    ("runs", "fit"),
    [
        # Calls of one request (low load) and of many (saturation) separate the costs.
        (loop_runs(1e-4, 2e-4, [(300, 300), (4000, 400), (8000, 200)]), (1e-4, 2e-4)),
        (loop_runs(1e-4, 0.0, [(300, 300), (4000, 400)]), (1e-4, 0.0)),
        (loop_runs(0.0, 3e-4, [(300, 300), (4000, 400)]), (0.0, 3e-4)),
        # Every run with one request per call: nothing separates them; per request.
        (loop_runs(1e-4, 2e-4, [(300, 300), (600, 600)]), (3e-4, 0.0)),
        # A cost the data would make negative is none; the other takes it all.
        ([LoopSample(0.02, 100, 100), LoopSample(0.3, 1000, 100)], (302 / 1_010_000, 0.0)),
        ([], (0.0, 0.0)),
        ([LoopSample(0.1, 0, 0)], (0.0, 0.0)),  # nothing answered: nothing to fit
    ],
)
def test_fit_sidecar(runs: list[LoopSample], fit: tuple[float, float]) -> None:
    request_s, call_s = fit_sidecar(runs)
    assert request_s == pytest.approx(fit[0], abs=1e-6)
    assert call_s == pytest.approx(fit[1], abs=1e-6)


@pytest.mark.parametrize(("real", "sim", "http"), [(1.5, 1.0, 0.5), (1.0, 1.2, 0.0)])
def test_http_seconds(real: float, sim: float, http: float) -> None:
    assert http_seconds(real, sim) == pytest.approx(http)


def test_batch_counts_read_the_pods_batch_histogram() -> None:
    exposition = (
        "# TYPE rscore_batch_rows histogram\n"
        'rscore_batch_rows_bucket{le="1.0"} 7.0\n'
        'rscore_batch_rows_bucket{le="+Inf"} 12.0\n'
        "rscore_batch_rows_count 12.0\n"
        "rscore_batch_rows_sum 40.0\n"
        "rscore_batch_rows_created 1.7e+09\n"
    )
    assert batch_counts(exposition) == (12, 40)
    assert batch_counts("rscore_requests_total 3.0\n") == (0, 0)


def test_r_seconds_read_the_pods_scoring_histogram() -> None:
    exposition = (
        "# TYPE rscore_scoring_duration_seconds histogram\n"
        'rscore_scoring_duration_seconds_bucket{le="+Inf"} 12.0\n'
        "rscore_scoring_duration_seconds_count 12.0\n"
        "rscore_scoring_duration_seconds_sum 0.0375\n"
        "rscore_request_duration_seconds_sum 9.0\n"
    )
    assert r_seconds(exposition) == pytest.approx(0.0375)
    assert r_seconds("rscore_requests_total 3.0\n") == 0.0


# --- the client ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12", (200, 12)),
        (b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nRetry-After: 1", (429, 0)),
    ],
)
def test_parse_response_head(head: bytes, parsed: tuple[int, int]) -> None:
    assert parse_response_head(head) == parsed


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"SSH-2.0-OpenSSH", b"HTTP/1.1 2xx"],
)
def test_a_response_the_client_cannot_read_is_refused(head: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - which message is the parser's business
        parse_response_head(head)


@pytest.fixture
def echo_port() -> Any:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rscore.cli.echo_server", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not answers(f"http://127.0.0.1:{port}/score", b"{}"):
            assert process.poll() is None, "the echo server exited"
            assert time.monotonic() < deadline, "the echo server did not answer"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_the_client_replays_the_schedule_open_loop(echo_port: int) -> None:
    offsets = np.cumsum(np.random.default_rng(2).exponential(1 / 500, 400)).tolist()
    plan = Plan("replay", echo_port, "/score", b'{"data": []}', 5.0, 4, offsets=tuple(offsets))
    result = run_plan(plan)
    assert result["status"] == [200] * 400
    sent, done = np.array(result["sent"]), np.array(result["done"])
    assert np.all(sent >= np.array(offsets) - 0.001)  # never early (timers tick in ms)
    assert np.all(done > sent)
    assert result["opened"] >= 4
    assert result["cpu_s"] > 0


def test_the_client_records_a_refused_connection_as_no_answer() -> None:
    plan = Plan("replay", free_port(), "/score", b"{}", 1.0, 0, offsets=(0.0, 0.01))
    assert run_plan(plan)["status"] == [0, 0]


# --- a real validation --------------------------------------------------------------

SHORT = ("--levels", "0.3,0.6", "--duration-s", "2", "--requests", "50")


@pytest.fixture(scope="module")
def validated(
    example_bundles: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, Path]:
    out = tmp_path_factory.mktemp("validate")
    bundle = example_bundles / "mtcars-lm"
    with pytest.MonkeyPatch.context() as patch:  # a short capacity sweep
        patch.setattr(validate_cmd, "CAPACITY_STEP_S", 0.5)
        patch.setattr(validate_cmd, "FLOOR_S", 1.0)
        result = CliRunner().invoke(
            cli, ["sim", "validate", str(bundle), str(SCENARIO), "--out", str(out), *SHORT]
        )
    assert result.exit_code == 0, result.output
    return out, result.stdout, bundle


def test_validate_json_has_the_issue_s_shape(validated: tuple[Path, str, Path]) -> None:
    out, _, bundle = validated
    document = json.loads((out / "validate.json").read_text())
    assert document["bundle"] == str(bundle)
    assert document["scenario"] == str(SCENARIO)
    assert [entry["level"] for entry in document["levels"]] == [0.3, 0.6]
    for entry in document["levels"]:
        assert {"level", "rate_rps", "real", "sim", "error"} <= set(entry)
        assert list(entry["real"]) == list(entry["sim"]) == list(STAT_KEYS)
        assert set(entry["error"]) == {"p50", "p90", "p99", "mean", "failure_rate_points"}
    assert (out / "validate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_numbers_come_from_every_request_of_the_schedule(
    validated: tuple[Path, str, Path],
) -> None:
    out, _, _ = validated
    document = json.loads((out / "validate.json").read_text())
    scenario = load_scenario(SCENARIO)
    capacity = document["calibration"]["capacity_rps"]
    assert capacity > 0
    for entry in document["levels"]:
        _, times = schedule(scenario.workload, 2.0, entry["level"] * capacity, scenario.seed)
        real, sim = entry["real"], entry["sim"]
        assert real["requests"] == entry["schedule_requests"] == times.size
        assert sim["requests"] == real["requests"]  # the same arrivals, simulated
        assert entry["rate_rps"] == pytest.approx(times.size / 2.0)
        answered = real["throughput_rps"] > 0 and real["p50_s"] is not None
        assert answered
        assert 0 < real["p50_s"] <= real["p90_s"] <= real["p99_s"]
        assert entry["client"]["echo_requests"] == int((times < 1.0).sum())
        # The pod's own record of the run: its R calls, and the CPU its processes used.
        batches = entry["batches"]
        assert 0 < batches["real_calls"] <= real["requests"]
        assert batches["real_requests_per_call"] >= 1
        assert batches["sim_calls"] > 0
        assert entry["pod_cpu"]["sidecar_cores"] > 0
        assert entry["pod_cpu"]["workers_cores"] > 0  # the R workers, below a zygote or not
        # The diagnostic: the pod's own time inside R over the level (its scoring
        # histogram) against the measurement's, at the rows per call the pod made.
        diagnostics = entry["diagnostics"]
        assert diagnostics["rows_per_call"] >= document["pod"]["rows_per_request"]
        for key in ("r_slowdown", "real_r_s_per_call", "measured_r_s_per_call"):
            assert 0 < diagnostics[key] < math.inf, key
        assert diagnostics["r_slowdown"] == pytest.approx(
            diagnostics["real_r_s_per_call"] / diagnostics["measured_r_s_per_call"]
        )


def test_errors_are_computed_from_the_file_s_own_numbers(
    validated: tuple[Path, str, Path],
) -> None:
    out, _, _ = validated
    document = json.loads((out / "validate.json").read_text())
    for entry in document["levels"]:
        real, sim, error = entry["real"], entry["sim"], entry["error"]
        for name in ("p50", "p90", "p99", "mean"):
            assert error[name] == pytest.approx(sim[f"{name}_s"] / real[f"{name}_s"] - 1)
        failures = (sim["reject_rate"] + sim["timeout_rate"]) - (
            real["reject_rate"] + real["timeout_rate"]
        )
        assert error["failure_rate_points"] == pytest.approx(100 * failures)


def test_the_table_is_printed_and_the_calibration_can_be_pasted(
    validated: tuple[Path, str, Path],
) -> None:
    out, stdout, _ = validated
    lines = stdout.splitlines()
    assert lines[0].startswith("workload: poisson")
    assert [line.split()[0] for line in lines[-2:]] == ["0.3", "0.6"]
    fragment = tomllib.loads((out / "calibrated.toml").read_text())
    calibration = json.loads((out / "validate.json").read_text())["calibration"]
    per_request = calibration["sidecar_s"] + calibration["sidecar_call_s"]
    assert fragment["pods"]["sidecar_s"] == pytest.approx(per_request)
    assert fragment["pods"]["http_s"] == calibration["http_s"]
    assert fragment["pods"]["cores"] == calibration["cores_left"]
    # A scenario with the fragment runs in the simulator.
    scenario = parse_scenario(
        {**fragment, "duration_s": 5, "workload": {"rate": 50.0}, "policy": {"kind": "static"}},
        out,
    )
    assert scenario.pods.models_sidecar
    assert not math.isnan(scenario.service.mean)


@pytest.mark.parametrize(
    ("levels", "message"),
    [("0.3,abc", "is not a comma-separated list of numbers"), ("0,0.5", "each in (0, 2]")],
)
def test_bad_levels_are_named(tmp_path: Path, levels: str, message: str) -> None:
    result = CliRunner().invoke(
        cli, ["sim", "validate", str(tmp_path), str(SCENARIO), "--out", str(tmp_path / "o"),
              "--levels", levels],
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.output


def test_a_folder_that_is_not_a_bundle_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["sim", "validate", str(tmp_path), str(SCENARIO), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: not a bundle")
