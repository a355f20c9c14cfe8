"""`rscore sim measure`: service times measured on a real R worker, fed to the simulator.

Real R, small samples (a few seconds each). Never asserts how fast anything is: only
that the files exist, parse and hold positive times, that the fit recovers the cost of
a worker made to cost a known a + c * rows, and that the `[service]` fragment runs in
the simulator.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from rscore.cli.main import cli
from rscore.sim.cli import sim
from rscore.sim.measure import fit_batch_cost
from rscore.sim.scenario import load_scenario
from rscore.sim.service import load_measured_times

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

SMALL = ("--requests", "50", "--batch-sizes", "1,4,16")

SCENARIO = """
seed = 3
duration_s = 120

[workload]
kind = "poisson"
rate = 20.0
rows = 2

[pods]
workers = 2
initial = 1
max_batch_rows = 8

[policy]
kind = "static"

"""


def measure(*args: str) -> Result:
    return CliRunner().invoke(cli, ["sim", "measure", *args])


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture(scope="module")
def measured(example_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("measure") / "mtcars"
    result = CliRunner().invoke(
        cli, ["sim", "measure", str(example_bundles / "mtcars-lm"), "--out", str(out), *SMALL]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_service_times_in_the_simulators_format(measured: tuple[Path, str]) -> None:
    out, _ = measured
    times = load_measured_times(out / "service_times.txt")  # the simulator's own reader
    assert times.size == 50
    assert (times > 0).all()


def test_batch_cost_holds_the_fit_and_the_per_size_medians(measured: tuple[Path, str]) -> None:
    out, _ = measured
    cost = json.loads((out / "batch_cost.json").read_text())
    assert cost["model"] == "mtcars-lm"
    assert cost["rows_source"] == "prototype"
    assert [size["rows"] for size in cost["batch_sizes"]] == [1, 4, 16]
    for size in cost["batch_sizes"]:
        assert size["calls"] == 10
        assert 0 < size["median_s"] <= size["p90_s"] <= size["p99_s"]
        assert size["median_inside_r_s"] > 0
    assert set(cost["fit"]) == {"model", "a_s", "c_s", "r2"}  # its accuracy: below
    assert cost["single_row"]["calls"] == 50
    assert cost["single_row"]["mean_s"] > 0
    simulator = cost["simulator"]
    assert 0 <= simulator["per_row_s"] <= simulator["mean_s"]


def test_prints_a_table_per_batch_size_and_the_fit(measured: tuple[Path, str]) -> None:
    _, output = measured
    for column in ("median ms", "p90 ms", "p99 ms"):
        assert column in output
    rows = {line.split()[0] for line in output.splitlines() if line.strip()}
    assert {"1", "4", "16"} <= rows
    assert "fit: call = a + c * rows" in output
    assert "R^2 =" in output


def test_the_fragment_runs_in_the_simulator(measured: tuple[Path, str]) -> None:
    out, _ = measured
    fragment = (out / "service.toml").read_text()
    service = tomllib.loads(fragment)["service"]
    assert service["kind"] == "empirical"
    assert service["path"] == "service_times.txt"
    scenario_path = out / "scenario.toml"  # beside the times: the relative path resolves
    scenario_path.write_text(SCENARIO + fragment)
    scenario = load_scenario(scenario_path)
    assert scenario.service.kind == "empirical"
    assert scenario.service.row_cost == pytest.approx(service["per_row_s"])
    run_dir = out / "run"
    result = CliRunner().invoke(
        sim, ["run", str(scenario_path), "--out", str(run_dir), "--no-plots", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"] > 0
    assert summary["completed"] == summary["requests"]
    assert summary["latency_p50_s"] > 0


def test_rows_from_a_request_body_for_a_model_without_prototype(tmp_path: Path) -> None:
    bundle = tmp_path / "doubler"
    bundle.mkdir()
    (bundle / "score.R").write_text(
        "init <- function(model_dir) list(b = 2)\nscore <- function(state, data) state$b * data$x\n"
    )
    rows = tmp_path / "rows.json"
    rows.write_text('{"dataframe_split": {"columns": ["x"], "data": [[1.0], [2.5]]}}')

    error = one_line_error(measure(str(bundle), "--out", str(tmp_path / "a"), *SMALL))
    assert "--rows-from" in error

    out = tmp_path / "b"
    result = measure(str(bundle), "--out", str(out), *SMALL, "--rows-from", str(rows))
    assert result.exit_code == 0, result.output
    cost = json.loads((out / "batch_cost.json").read_text())
    assert cost["rows_source"] == str(rows)
    assert (load_measured_times(out / "service_times.txt") > 0).all()


def test_not_a_bundle_is_a_one_line_error(tmp_path: Path) -> None:
    error = one_line_error(measure(str(tmp_path), "--out", str(tmp_path / "out")))
    assert "not a bundle" in error
    error = one_line_error(measure(str(tmp_path / "missing"), "--out", str(tmp_path / "out")))
    assert "not a bundle" in error


def test_bad_rows_are_one_line_errors(example_bundles: Path, tmp_path: Path) -> None:
    bundle = str(example_bundles / "mtcars-lm")
    out = str(tmp_path / "out")
    not_a_body = tmp_path / "not-a-body.json"
    not_a_body.write_text('{"rows": [1, 2]}')
    assert "--rows-from" in one_line_error(measure(bundle, "--out", out, "--rows-from",
                                                   str(not_a_body)))  # fmt: skip
    wrong_columns = tmp_path / "wrong.json"
    wrong_columns.write_text('{"data": [{"wool": "A"}]}')
    error = one_line_error(measure(bundle, "--out", out, *SMALL, "--rows-from", str(wrong_columns)))
    assert "do not fit the model" in error
    assert "'wt'" in error


def test_a_bundle_that_does_not_load_is_a_one_line_error(tmp_path: Path) -> None:
    bundle = tmp_path / "syntax"
    bundle.mkdir()
    (bundle / "score.R").write_text("score <- function(state, data) {\n  predict(state data)\n}\n")
    error = one_line_error(measure(str(bundle), "--out", str(tmp_path / "out"), *SMALL))
    assert "does not load" in error


def test_r_failing_on_the_rows_is_a_one_line_error(tmp_path: Path) -> None:
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "score.R").write_text(
        "init <- function(model_dir) 1\nscore <- function(state, data) stop('out of order')\n"
    )
    rows = tmp_path / "rows.json"
    rows.write_text('{"data": [{"x": 1}]}')
    error = one_line_error(
        measure(str(bundle), "--out", str(tmp_path / "out"), *SMALL, "--rows-from", str(rows))
    )
    assert "out of order" in error


def test_a_single_batch_size_is_a_usage_error(tmp_path: Path) -> None:
    result = measure(str(tmp_path), "--out", str(tmp_path / "out"), "--batch-sizes", "8")
    assert result.exit_code == 2


def test_the_fit_recovers_the_cost_of_a_worker_that_costs_a_known_line(tmp_path: Path) -> None:
    """R sleeps a + c * rows in every call: the measured fit finds c, and a plus the
    round trip's small overhead (a bound, not a speed: a loaded machine adds to every
    call alike, which moves a, not c)."""
    a_s, c_s = 0.010, 0.002
    bundle = tmp_path / "known-cost"
    bundle.mkdir()
    (bundle / "score.R").write_text(
        "init <- function(model_dir) list()\n"
        f"score <- function(state, data) {{ Sys.sleep({a_s} + {c_s} * nrow(data)); data$x }}\n"
    )
    rows = tmp_path / "rows.json"
    rows.write_text('{"data": [{"x": 1.0}]}')
    out = tmp_path / "out"
    result = measure(
        str(bundle), "--out", str(out), "--requests", "50", "--batch-sizes", "1,8,32",
        "--rows-from", str(rows),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    fit = json.loads((out / "batch_cost.json").read_text())["fit"]
    assert fit["c_s"] == pytest.approx(c_s, rel=0.2)
    assert a_s - 0.003 <= fit["a_s"] <= a_s + 0.015
    assert fit["r2"] > 0.95


def test_fit_recovers_a_line_and_its_r2() -> None:
    fit = fit_batch_cost([1, 2, 4, 8], [0.0011, 0.0012, 0.0014, 0.0018])
    assert fit.a_s == pytest.approx(0.001)
    assert fit.c_s == pytest.approx(0.0001)
    assert fit.r2 == pytest.approx(1.0)
    # Worked by hand (ms): mean x 3.75, mean y 2; Sxx = 28.75, Sxy = 2, Syy = 2; so
    # c = Sxy / Sxx, a = 2 - 3.75 c, R^2 = Sxy^2 / (Sxx Syy) = 2 / 28.75.
    noisy = fit_batch_cost([1, 2, 4, 8], [0.002, 0.001, 0.003, 0.002])
    assert noisy.c_s == pytest.approx(0.001 * 2 / 28.75)
    assert noisy.a_s == pytest.approx(0.001 * (2 - 3.75 * 2 / 28.75))
    assert noisy.r2 == pytest.approx(2 / 28.75)
    with pytest.raises(ValueError, match="two different"):
        fit_batch_cost([4, 4], [0.1, 0.2])
