"""`rscore sim tune` and scale to zero: minReplicas 0 is proposed only for pods with a
gateway (the simulator's model of `rscore activator`), and a tuned ScoringAutoscaler at
zero names the activator, so the CRD and the controller accept what tune writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_crd import apply_defaults, crd_schema, validation_errors

from rscore.autoscaler.spec import settings_from_object
from rscore.sim.scenario import parse_scenario
from rscore.sim.tune import propose, scoring_autoscaler


def scenario(**pods: Any) -> Any:
    return parse_scenario({"name": "m", "duration_s": 600.0, "pods": pods}, Path("."))


@pytest.mark.parametrize(("gateway", "least"), [(10_000, 0), (30, 0), (0, 1)])
def test_minreplicas_zero_is_proposed_only_behind_a_gateway(gateway: int, least: int) -> None:
    proposals = propose(scenario(gateway_max_queue=gateway), trials=200, seed=7)
    drawn = {int(p["minReplicas"]) for p in proposals[1:]}
    assert min(drawn) == least  # 200 draws over a handful of values reach the bottom


def test_a_tuned_autoscaler_at_zero_names_the_activator_and_is_accepted() -> None:
    manifest = scoring_autoscaler(
        scenario(), {"minReplicas": 0.0, "targetUtilization": 0.6}, name="mtcars-lm"
    )
    activator = manifest["spec"]["activator"]
    assert activator["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "rscore-activator",
        "app.kubernetes.io/instance": "mtcars-lm",
    }
    assert validation_errors(manifest) == []
    settings = settings_from_object(apply_defaults(crd_schema(), manifest))
    assert settings.scaling.min_replicas == 0
    assert settings.activator is not None


def test_a_tuned_autoscaler_above_zero_needs_no_activator() -> None:
    manifest = scoring_autoscaler(scenario(), {"minReplicas": 2.0}, name="mtcars-lm")
    assert "activator" not in manifest["spec"]
    assert validation_errors(manifest) == []
