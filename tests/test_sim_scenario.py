"""Scenario files: defaults, unknown keys named, paths relative to the file, examples."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rscore.autoscaler.policy import NodePoolSpec
from rscore.sim.distributions import Delay
from rscore.sim.run import run_scenario
from rscore.sim.scenario import ScenarioError, load_scenario, parse_scenario, scaling_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"


def test_an_empty_scenario_takes_the_documented_defaults() -> None:
    s = parse_scenario({}, Path("."))
    assert (s.seed, s.duration_s, s.policy_kind, s.slo_p99_s) == (1, 3600.0, "rscore", 1.0)
    assert (s.workload.kind, s.workload.rate, s.workload.rows) == ("poisson", 10.0, 1)
    assert (s.service.kind, s.service.mean_s) == ("exponential", 0.05)
    pods = s.pods
    assert (pods.workers, pods.initial, pods.max_queue) == (4, 1, 128)
    assert (pods.request_timeout_s, pods.max_batch_rows, pods.routing) == (5.0, 1, "random")
    assert (s.nodes.kind, s.nodes.price_per_hour, s.per_node) == ("cpu", 0.192, 1)
    assert (s.controller.interval_s, s.controller.scrape_delay_s) == (2.0, 0.05)
    spec = scaling_spec(s)
    assert spec.max_replicas == 100  # max_nodes x pods per node
    assert spec.node_pool is not None
    # no [nodes] scale_down_delay_s: rscore takes the CRD's nodePool default, and the
    # Cluster Autoscaler emulation (static, kpa, hpa) its own 600 s
    assert spec.node_pool.scale_down_delay_s == NodePoolSpec(max_nodes=1).scale_down_delay_s
    assert s.nodes.scale_down_delay_s is None
    assert spec.node_pool.provision_s == s.nodes.provision_s.mean


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"seeed": 1}, "seeed"),
        ({"pods": {"workers": 2, "queue": 3}}, "queue"),
        ({"workload": {"kind": "poisson", "rte": 3, "bursty": 1}}, "bursty, rte"),
        ({"policy": {"kind": "rscore", "target_utilization": 0.5}}, "target_utilization"),
        ({"pods": {"image_pull_s": {"kind": "lognormal", "mean": 3}}}, "mean"),
        ({"slo": {"p99": 1}}, "p99"),
    ],
)
def test_unknown_keys_are_errors_that_name_them(data: dict[str, Any], named: str) -> None:
    with pytest.raises(ScenarioError, match=f"unknown key\\(s\\) in .*{named}"):
        parse_scenario(data, Path("."))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"workload": {"kind": "zipf"}}, "workload kind"),
        ({"policy": {"kind": "magic"}}, "policy. kind"),
        ({"policy": {"targetUtilization": 1.5}}, "target_utilization"),
        ({"policy": {"minReplicas": 1.5}}, "minReplicas must be an integer"),
        ({"pods": {"routing": "round_robin"}}, "routing"),
        ({"service": {"kind": "empirical"}}, "path"),
        ({"workload": {"kind": "trace", "path": "missing.csv"}}, "no such file"),
        ({"duration_s": 0}, "duration_s"),
    ],
)
def test_invalid_values_are_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data, Path("."))


def test_policy_fields_are_the_crd_names() -> None:
    s = parse_scenario(
        {
            "policy": {
                "kind": "rscore",
                "minReplicas": 0,
                "maxReplicas": 7,
                "targetUtilization": 0.5,
                "stableWindowSeconds": 30,
                "scaleDownDelaySeconds": 120,
            },
            "nodes": {"min_nodes": 1, "max_nodes": 3, "pods_per_node": 2},
        },
        Path("."),
    )
    spec = scaling_spec(s)
    assert (spec.min_replicas, spec.max_replicas, spec.target_utilization) == (0, 7, 0.5)
    assert (spec.stable_window_s, spec.scale_down_delay_s) == (30.0, 120.0)
    assert spec.node_pool is not None
    assert (spec.node_pool.min_nodes, spec.node_pool.max_nodes) == (1, 3)
    assert spec.node_pool.pods_per_node == 2


def test_delays_take_numbers_or_tables() -> None:
    s = parse_scenario(
        {
            "pods": {"schedule_s": 2, "image_pull_s": {"kind": "uniform", "low_s": 1,
                                                        "high_s": 3}},
            "nodes": {"kind": "gpu", "provision_s": {"kind": "exponential", "mean_s": 100}},
        },
        Path("."),
    )  # fmt: skip
    assert s.pods.schedule_s == Delay("constant", 2.0)
    assert s.pods.image_pull_s.mean == 2.0
    assert s.nodes.provision_s == Delay("exponential", 100.0)
    assert (s.nodes.price_per_hour, s.per_node) == (1.006, 1)  # the gpu preset


def test_trace_paths_are_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "counts.txt").write_text("1\n2\n")
    (tmp_path / "s.toml").write_text('[workload]\nkind = "trace"\npath = "data/counts.txt"\n')
    s = load_scenario(tmp_path / "s.toml")
    assert s.workload.path == (tmp_path / "data" / "counts.txt").resolve()
    assert s.name == "s"


def test_bad_toml_is_a_scenario_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("seed = = 1\n")
    with pytest.raises(ScenarioError, match=r"bad\.toml"):
        load_scenario(tmp_path / "bad.toml")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_example_scenarios_load_and_run(path: Path) -> None:
    trace = tomllib.loads(path.read_text()).get("workload", {}).get("path")
    if trace is not None and not (path.parent / trace).exists():
        pytest.skip(f"{path.name} replays {trace}: a full trace beside the repo, absent here")
    scenario = dataclasses.replace(load_scenario(path), duration_s=120.0)
    summary = run_scenario(scenario).summary
    assert summary["requests"] > 0
    assert summary["requests"] == summary["completed"] + summary["rejected"] + summary["timeouts"]


def test_there_are_example_scenarios() -> None:
    names = {p.stem for p in EXAMPLES.glob("*.toml")}
    assert {"poisson", "diurnal", "azure-conv-trace"} <= names


def test_every_scenario_key_is_in_the_docs() -> None:
    """docs/simulator.md has a row for every key of every table (and no stale row)."""
    import dataclasses
    import re

    from rscore.sim.cluster import ControllerSpec, NodeSpec, PodSpec
    from rscore.sim.service import ServiceSpec
    from rscore.sim.workload import WorkloadSpec

    doc = (Path(__file__).resolve().parents[1] / "docs" / "simulator.md").read_text()
    for table, cls in [("workload", WorkloadSpec), ("service", ServiceSpec), ("pods", PodSpec),
                       ("nodes", NodeSpec), ("controller", ControllerSpec)]:  # fmt: skip
        section = doc.split(f"### `[{table}]`", 1)[1].split("\n### ", 1)[0].split("\n## ")[0]
        documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
        assert documented == {f.name for f in dataclasses.fields(cls)}, table


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # Checked against the specs' annotations, strictly: TOML has types, and a
        # string, a boolean or a fraction where a count belongs is a mistake to name.
        ({"pods": {"workers": "2"}}, "[pods] workers must be an integer, got '2'"),
        ({"pods": {"workers": True}}, "[pods] workers must be an integer, got True"),
        ({"pods": {"initial": 1.5}}, "[pods] initial must be an integer, got 1.5"),
        ({"pods": {"routing": 3}}, "[pods] routing must be a string, got 3"),
        ({"workload": {"rate": "fast"}}, "[workload] rate must be a number, got 'fast'"),
        ({"nodes": {"max_nodes": "3"}}, "[nodes] max_nodes must be an integer, got '3'"),
        ({"controller": {"history_s": "1d"}}, "[controller] history_s must be a number"),
        # The spec's own checks still speak for themselves.
        ({"pods": {"workers": 0}}, "[pods]: pods: workers >= 1"),
    ],
)
def test_values_of_the_wrong_type_name_the_table_the_key_and_the_type(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, Path("."))
    assert str(caught.value).startswith(message)
