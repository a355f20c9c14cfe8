"""`rscore sim run|compare|tune`: the files they write and what is in them."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rscore.sim import cli
from rscore.sim.cli import sim

SCENARIO = """
seed = 11
duration_s = 300

[workload]
kind = "mmpp"
rates = [10.0, 60.0]
mean_dwell_s = [60.0, 30.0]

[service]
kind = "exponential"
mean_s = 0.05

[pods]
workers = 2
initial = 1

[nodes]
max_nodes = 10

[policy]
kind = "rscore"

[slo]
latency_p99_s = 2.0
"""

CRD = Path(__file__).resolve().parent.parent / "manifests" / "crd" / "scoringautoscalers.yaml"
SUMMARY_KEYS = {
    "requests", "completed", "rejected", "timeouts", "wait_mean_s", "latency_mean_s",
    "latency_p50_s", "latency_p99_s", "node_hours", "cost_usd", "slo_met", "wall_s", "events",
}  # fmt: skip


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SCENARIO)
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(sim, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_run_writes_summary_timeseries_and_plots(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    output = invoke("run", str(scenario), "--out", str(out), "--quiet")
    assert output == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["policy"] == "rscore"
    assert summary["requests"] == summary["completed"] + summary["rejected"] + summary["timeouts"]
    with (out / "timeseries.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "t_s", "arrivals", "completions", "rejections", "timeouts", "p50_s", "p99_s",
        "desired_replicas", "ready_pods", "nodes_cpu", "cost_usd", "cost_cum_usd",
    ]  # fmt: skip
    # The cost column is per bucket; the cumulative one ends at the summary's cost.
    assert float(rows[-1]["cost_cum_usd"]) == pytest.approx(summary["cost_usd"], rel=1e-5)
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(summary["cost_usd"], rel=1e-4)
    # 10 s buckets up to the end of the run (300 s, and the last answers after it).
    assert len(rows) == math.ceil(summary["end_s"] / 10) >= 30
    assert sum(int(r["arrivals"]) for r in rows) == summary["requests"]
    for name in ("load.png", "latency.png", "cost.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_overrides_policy_seed_and_duration(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "static"
    output = invoke(
        "run", str(scenario), "--out", str(out), "--policy", "static", "--seed", "3",
        "--duration-s", "60", "--no-plots",
    )  # fmt: skip
    assert "static" in output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["policy"], summary["duration_s"]) == ("static", 60.0)
    assert not (out / "load.png").exists()


def test_compare_runs_policies_side_by_side(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    output = invoke(
        "compare", str(scenario), "--policies", "static,rscore,oracle", "--jobs", "2",
        "--out", str(out),
    )  # fmt: skip
    workload, *table = output.splitlines()
    assert workload.startswith("workload: ")  # what drove the runs, above the table
    assert table[0].split()[:2] == ["policy", "cost"]
    assert [line.split()[0] for line in table[1:4]] == ["static", "rscore", "oracle"]
    compared = json.loads((out / "compare.json").read_text())
    assert list(compared) == ["static", "rscore", "oracle"]
    requests = {s["requests"] for s in compared.values()}
    assert len(requests) == 1  # the same arrivals for every policy
    # A lower bound: below the cost of the run that follows the plan itself.
    assert 0 < compared["oracle"]["bound_cost_usd"] <= compared["oracle"]["cost_usd"]
    # The oracle's row is its replay, which meets the SLO; every row is priced against it.
    assert compared["oracle"]["slo_met"]
    assert compared["oracle"]["cost_vs_oracle"] == 1.0
    for summary in compared.values():
        ratio = summary["cost_usd"] / compared["oracle"]["cost_usd"]
        assert summary["cost_vs_oracle"] == pytest.approx(ratio)
    header = next(i for i, line in enumerate(table) if line.startswith("policy"))
    assert "vs oracle" in table[header]
    row = table[header + 3].split()  # policy, cost $, vs oracle, ...
    assert (row[0], row[2]) == ("oracle", "1.00")
    assert (out / "compare.png").exists()
    assert (out / "timeseries-rscore.csv").exists()


def test_tune_writes_a_scoring_autoscaler(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    output = invoke(
        "tune", str(scenario), "--trials", "4", "--jobs", "2", "--out", str(out),
        "--name", "credit-model", "--namespace", "models",
    )  # fmt: skip
    assert "best: trial" in output
    # The baseline's cost says whether it met the SLO (else a cheaper baseline misleads).
    assert re.search(r"\(baseline \$[0-9.]+, SLO (met|missed)\)", output), output
    manifest = yaml.safe_load((out / "scoringautoscaler.yaml").read_text())
    assert manifest["apiVersion"] == "rscore.dev/v1alpha1"
    assert manifest["kind"] == "ScoringAutoscaler"
    assert manifest["metadata"] == {"name": "credit-model", "namespace": "models"}
    spec = manifest["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "credit-model",
    }  # fmt: skip
    assert set(spec) >= {
        "minReplicas", "maxReplicas", "targetConcurrencyPerWorker", "targetUtilization",
        "stableWindowSeconds", "panicWindowPercentage", "panicThresholdPercentage",
        "maxScaleUpRate", "maxScaleDownRate", "scaleDownDelaySeconds", "nodePool",
    }  # fmt: skip
    assert set(spec["nodePool"]) == {
        "scaleTargetRef", "minNodes", "maxNodes", "podsPerNode", "scaleDownDelaySeconds",
    }  # fmt: skip
    assert_valid_against_the_crd(manifest)
    tuned = json.loads((out / "tune.json").read_text())
    assert len(tuned["trials"]) == 4
    best = tuned["trials"][tuned["best"]]["summary"]
    assert best["slo_met"] is True
    meeting = [t["summary"]["cost_usd"] for t in tuned["trials"] if t["summary"]["slo_met"]]
    assert best["cost_usd"] == min(meeting)
    assert (out / "pareto.png").exists()


def assert_valid_against_the_crd(manifest: dict) -> None:
    """The CRD's own schema accepts it, and it uses no field the CRD does not declare."""
    from jsonschema import Draft4Validator  # OpenAPI 3.0 schemas: boolean exclusiveMinimum

    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]
    Draft4Validator(schema).validate(manifest)
    spec_schema = schema["properties"]["spec"]
    assert set(manifest["spec"]) <= set(spec_schema["properties"])
    pool_schema = spec_schema["properties"]["nodePool"]["properties"]
    assert set(manifest["spec"]["nodePool"]) <= set(pool_schema)


def test_unknown_scenario_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[pods]\nworkers = 2\nreplicas = 3\n")
    result = CliRunner().invoke(sim, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "unknown key(s) in [pods]: replicas" in result.output


def test_compare_rejects_unknown_policies(scenario: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        sim, ["compare", str(scenario), "--policies", "static,magic", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "magic" in result.output


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[nodes]\nkind = "tpu"', "[nodes]: nodes kind must be one of ('cpu', 'gpu'), got 'tpu'"),
        ('[workload]\nrate = "fast"', "[workload] rate must be a number, got 'fast'"),
        ("[pods]\nworkers = 2.5", "[pods] workers must be an integer, got 2.5"),
        ('[workload]\nkind = "mmpp"\nrates = [1, "x"]', "[workload].rates must be a list"),
        ('[service]\nkind = "empirical"\npath = "bad.txt"', "bad.txt:1: not a number: 'fast'"),
        ('[workload]\nkind = "trace"\npath = "bad.txt"', "[workload] path:"),
        ('[workload]\nkind = "trace"\npath = "bad.csv"', "[workload] path:"),
    ],
)
def test_bad_scenarios_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text("fast\n")
    (tmp_path / "bad.csv").write_text("TIMESTAMP,x\nyesterday,1\n")
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    result = CliRunner().invoke(sim, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: ")
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_compare_in_parallel_processes_is_the_same_as_in_one(
    scenario: Path, tmp_path: Path
) -> None:
    """Same seed, same results, whichever process runs which policy."""

    def compared(jobs: str) -> dict:
        out = tmp_path / f"jobs{jobs}"
        invoke("compare", str(scenario), "--policies", "rscore,hpa,kpa", "--jobs", jobs,
               "--out", str(out))  # fmt: skip
        summaries = json.loads((out / "compare.json").read_text())
        for summary in summaries.values():
            del summary["wall_s"], summary["events_per_s"]
        series = (out / "timeseries-hpa.csv").read_text()
        return {"summaries": summaries, "series": series}

    one, two = compared("1"), compared("3")
    assert one == two
    assert all(s["cost_vs_oracle"] is None for s in one["summaries"].values())  # not asked
    assert one["summaries"]["rscore"] != one["summaries"]["hpa"]


def test_tune_ends_its_progress_bar_before_the_pareto_table(
    scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdout and stderr as one stream (CliRunner interleaves them, like `2>&1`): the
    bar is shown, then ended, and the table's title starts a line of its own."""
    monkeypatch.setattr(cli, "_TRIAL_BAR_DELAY_S", 0.0)  # the bar at once, whatever the speed
    output = invoke("tune", str(scenario), "--trials", "2", "--out", str(tmp_path / "tune"))
    assert "0/2" in output  # the bar was drawn on the same stream
    lines = output.split("\n")
    (title,) = [i for i, line in enumerate(lines) if "Pareto front" in line]
    assert lines[title].startswith("Pareto front only: the "), lines[title]
    assert re.match(r"Pareto front only: the \d of 2 trials", lines[title])
    assert lines[title + 1].split()[:2] == ["policy", "cost"]
    assert not any("\r" in line for line in lines[title:])  # nothing of the bar after it
