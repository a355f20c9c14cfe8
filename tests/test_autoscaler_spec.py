"""rscore.autoscaler.spec: a ScoringAutoscaler object as AutoscalerSettings, or a SpecError.

Defaults and field names are the CRD's (manifests/crd/scoringautoscalers.yaml).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rscore.autoscaler.policy import NodePoolSpec, ScalingSpec
from rscore.autoscaler.spec import (
    DEFAULT_METRICS_PORT,
    ActivatorRef,
    AutoscalerSettings,
    SpecError,
    TargetRef,
    settings_from_object,
)

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris"}
MACHINES = {"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment", "name": "gpu"}


def obj(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """A minimal valid ScoringAutoscaler, with `spec` merged over its spec."""
    base_metadata = {"namespace": "models", "name": "iris", "uid": "u-1", "generation": 3}
    return {
        "apiVersion": "rscore.dev/v1alpha1",
        "kind": "ScoringAutoscaler",
        "metadata": base_metadata | metadata,
        "spec": {"scaleTargetRef": dict(DEPLOYMENT), "maxReplicas": 10} | (spec or {}),
    }


def pool(**fields: Any) -> dict[str, Any]:
    return {"scaleTargetRef": dict(MACHINES), "maxNodes": 4} | fields


# --- defaults and mapping ----------------------------------------------------------------


def test_minimal_object() -> None:
    settings = settings_from_object(obj())
    assert settings == AutoscalerSettings(
        namespace="models",
        name="iris",
        uid="u-1",
        generation=3,
        target=TargetRef("apps/v1", "Deployment", "iris"),
        metrics_port=9090,
        scaling=ScalingSpec(max_replicas=10),
        node_pool_target=None,
    )


@pytest.mark.parametrize(
    ("attribute", "crd_default"),
    [
        ("min_replicas", 1),
        ("target_concurrency_per_worker", 1.0),
        ("target_utilization", 0.7),
        ("stable_window_s", 60.0),
        ("panic_window_percentage", 20.0),
        ("panic_threshold_percentage", 200.0),
        ("max_scale_up_rate", 1000.0),
        ("max_scale_down_rate", 2.0),
        ("scale_down_delay_s", 0.0),
        ("cpu_target_utilization", None),
        ("memory_target_utilization", None),
        ("node_pool", None),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_minimal_object_gets_the_crd_defaults(attribute: str, crd_default: Any) -> None:
    assert getattr(settings_from_object(obj()).scaling, attribute) == crd_default


def test_metrics_port_defaults_to_9090() -> None:
    assert DEFAULT_METRICS_PORT == 9090
    assert settings_from_object(obj()).metrics_port == 9090


@pytest.mark.parametrize(
    ("crd_field", "value", "attribute", "expected"),
    [
        ("minReplicas", 4, "min_replicas", 4),
        ("minReplicas", 4.0, "min_replicas", 4),  # JSON numbers may arrive as floats
        ("maxReplicas", 50, "max_replicas", 50),
        ("targetConcurrencyPerWorker", 3, "target_concurrency_per_worker", 3.0),
        ("targetConcurrencyPerWorker", 0.5, "target_concurrency_per_worker", 0.5),
        ("targetUtilization", 0.9, "target_utilization", 0.9),
        ("targetUtilization", 1, "target_utilization", 1.0),
        ("stableWindowSeconds", 120, "stable_window_s", 120.0),
        ("panicWindowPercentage", 25.5, "panic_window_percentage", 25.5),
        ("panicThresholdPercentage", 150, "panic_threshold_percentage", 150.0),
        ("maxScaleUpRate", 3, "max_scale_up_rate", 3.0),
        ("maxScaleDownRate", 1.5, "max_scale_down_rate", 1.5),
        ("scaleDownDelaySeconds", 300, "scale_down_delay_s", 300.0),
        ("cpuTargetUtilization", 0.8, "cpu_target_utilization", 0.8),
        ("memoryTargetUtilization", 0.75, "memory_target_utilization", 0.75),
        ("minReplicas", None, "min_replicas", 1),  # null: the default
        ("cpuTargetUtilization", None, "cpu_target_utilization", None),
    ],
    ids=lambda v: v if isinstance(v, str) and v[0].islower() and "_" not in v else None,
)
def test_every_field_maps_to_the_scaling_spec(
    crd_field: str, value: Any, attribute: str, expected: Any
) -> None:
    scaling = settings_from_object(obj({crd_field: value})).scaling
    got = getattr(scaling, attribute)
    assert got == expected
    assert type(got) is type(expected)


def test_a_full_spec() -> None:
    spec = {
        "minReplicas": 2,
        "maxReplicas": 20,
        "metricsPort": 9100,
        "targetConcurrencyPerWorker": 2.0,
        "targetUtilization": 0.5,
        "stableWindowSeconds": 30,
        "panicWindowPercentage": 20,
        "panicThresholdPercentage": 300,
        "maxScaleUpRate": 10,
        "maxScaleDownRate": 4,
        "scaleDownDelaySeconds": 60,
        "cpuTargetUtilization": 0.6,
        "memoryTargetUtilization": 0.9,
        "nodePool": pool(minNodes=1, maxNodes=8, podsPerNode=2, scaleDownDelaySeconds=900),
        "someFutureField": "ignored",
    }
    settings = settings_from_object(obj(spec))
    assert settings.metrics_port == 9100
    assert settings.scaling == ScalingSpec(
        max_replicas=20,
        min_replicas=2,
        target_concurrency_per_worker=2.0,
        target_utilization=0.5,
        stable_window_s=30.0,
        panic_window_percentage=20.0,
        panic_threshold_percentage=300.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=4.0,
        scale_down_delay_s=60.0,
        cpu_target_utilization=0.6,
        memory_target_utilization=0.9,
        node_pool=NodePoolSpec(max_nodes=8, min_nodes=1, pods_per_node=2, scale_down_delay_s=900),
    )
    assert settings.node_pool_target == TargetRef(
        "cluster.x-k8s.io/v1beta1", "MachineDeployment", "gpu"
    )


def test_the_object_is_not_modified() -> None:
    original = obj({"nodePool": pool(), "minReplicas": 2})
    snapshot = copy.deepcopy(original)
    settings_from_object(original)
    assert original == snapshot


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, ("", "", "", 0)),
        ({"namespace": "a", "name": "b", "uid": "c", "generation": 7}, ("a", "b", "c", 7)),
        ({"generation": None}, ("", "", "", 0)),
    ],
    ids=["no-metadata", "full", "null-generation"],
)
def test_metadata(metadata: dict[str, Any], expected: tuple[str, str, str, int]) -> None:
    o = obj()
    o["metadata"] = metadata
    s = settings_from_object(o)
    assert (s.namespace, s.name, s.uid, s.generation) == expected


def test_missing_metadata_section() -> None:
    o = obj()
    del o["metadata"]
    assert settings_from_object(o).name == ""


# --- nodePool ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, NodePoolSpec(max_nodes=4)),
        ({"minNodes": 2}, NodePoolSpec(max_nodes=4, min_nodes=2)),
        ({"podsPerNode": 3}, NodePoolSpec(max_nodes=4, pods_per_node=3)),
        ({"podsPerNode": None}, NodePoolSpec(max_nodes=4, pods_per_node=None)),
        ({"scaleDownDelaySeconds": 30}, NodePoolSpec(max_nodes=4, scale_down_delay_s=30.0)),
        ({"maxNodes": 1, "minNodes": 1}, NodePoolSpec(max_nodes=1, min_nodes=1)),
        ({"maxNodes": 6.0}, NodePoolSpec(max_nodes=6)),
    ],
    ids=[
        "defaults",
        "minNodes",
        "podsPerNode",
        "podsPerNode-null",
        "scaleDownDelay",
        "min-equals-max",
        "integral-float",
    ],
)
def test_node_pool(fields: dict[str, Any], expected: NodePoolSpec) -> None:
    settings = settings_from_object(obj({"nodePool": pool(**fields)}))
    assert settings.scaling.node_pool == expected
    assert settings.node_pool_target == TargetRef(
        MACHINES["apiVersion"], MACHINES["kind"], MACHINES["name"]
    )


def test_node_pool_defaults_are_the_crd_defaults() -> None:
    node_pool = settings_from_object(obj({"nodePool": pool()})).scaling.node_pool
    assert node_pool is not None
    # the CRD's defaults are the dataclass's (test_crd checks the two agree)
    assert (node_pool.min_nodes, node_pool.pods_per_node, node_pool.scale_down_delay_s) == (
        0,
        None,
        NodePoolSpec(max_nodes=1).scale_down_delay_s,
    )


def test_the_node_pool_delay_is_not_the_replica_delay() -> None:
    settings = settings_from_object(
        obj({"scaleDownDelaySeconds": 5, "nodePool": pool(scaleDownDelaySeconds=50)})
    )
    assert settings.scaling.scale_down_delay_s == 5.0
    assert settings.scaling.node_pool is not None
    assert settings.scaling.node_pool.scale_down_delay_s == 50.0


def test_a_null_node_pool_is_no_node_pool() -> None:
    settings = settings_from_object(obj({"nodePool": None}))
    assert settings.scaling.node_pool is None
    assert settings.node_pool_target is None


# --- TargetRef ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_version", "group", "version"),
    [
        ("apps/v1", "apps", "v1"),
        ("v1", "", "v1"),
        ("cluster.x-k8s.io/v1beta1", "cluster.x-k8s.io", "v1beta1"),
    ],
    ids=["apps", "core", "cluster-api"],
)
def test_target_ref_group_and_version(api_version: str, group: str, version: str) -> None:
    ref = TargetRef(api_version, "Thing", "x")
    assert (ref.group, ref.version) == (group, version)


def test_target_ref_str() -> None:
    assert str(TargetRef("apps/v1", "Deployment", "iris")) == "Deployment/iris (apps/v1)"


# --- errors ------------------------------------------------------------------------------


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        # the target
        ({"scaleTargetRef": None}, "spec.scaleTargetRef is required"),
        ({"scaleTargetRef": "iris"}, "spec.scaleTargetRef is required"),
        ({"scaleTargetRef": without(DEPLOYMENT, "apiVersion")}, "spec.scaleTargetRef.apiVersion"),
        ({"scaleTargetRef": without(DEPLOYMENT, "kind")}, "spec.scaleTargetRef.kind"),
        ({"scaleTargetRef": without(DEPLOYMENT, "name")}, "spec.scaleTargetRef.name"),
        ({"scaleTargetRef": DEPLOYMENT | {"name": ""}}, "spec.scaleTargetRef.name"),
        ({"scaleTargetRef": DEPLOYMENT | {"kind": 3}}, "spec.scaleTargetRef.kind"),
        # bad types
        ({"minReplicas": True}, "spec.minReplicas must be a number"),
        ({"maxReplicas": False}, "spec.maxReplicas must be a number"),
        ({"maxReplicas": "10"}, "spec.maxReplicas must be a number"),
        ({"minReplicas": "1"}, "spec.minReplicas must be a number"),
        ({"minReplicas": 1.5}, "spec.minReplicas must be an integer"),
        ({"maxReplicas": 10.1}, "spec.maxReplicas must be an integer"),
        ({"maxReplicas": float("inf")}, "spec.maxReplicas must be an integer"),
        ({"maxReplicas": float("nan")}, "spec.maxReplicas must be an integer"),
        ({"targetUtilization": "70%"}, "spec.targetUtilization must be a number"),
        ({"targetUtilization": True}, "spec.targetUtilization must be a number"),
        ({"stableWindowSeconds": "60s"}, "spec.stableWindowSeconds must be a number"),
        ({"scaleDownDelaySeconds": [5]}, "spec.scaleDownDelaySeconds must be a number"),
        ({"cpuTargetUtilization": {"value": 1}}, "spec.cpuTargetUtilization must be a number"),
        ({"memoryTargetUtilization": "high"}, "spec.memoryTargetUtilization must be a number"),
        ({"panicWindowPercentage": "10"}, "spec.panicWindowPercentage must be a number"),
        ({"panicThresholdPercentage": "x"}, "spec.panicThresholdPercentage must be a number"),
        ({"maxScaleUpRate": "x"}, "spec.maxScaleUpRate must be a number"),
        ({"maxScaleDownRate": "x"}, "spec.maxScaleDownRate must be a number"),
        ({"targetConcurrencyPerWorker": "x"}, "spec.targetConcurrencyPerWorker must be a number"),
        # metricsPort
        ({"metricsPort": 0}, r"spec.metricsPort must be in \[1, 65535\], got 0"),
        ({"metricsPort": 65536}, r"spec.metricsPort must be in \[1, 65535\], got 65536"),
        ({"metricsPort": -1}, "spec.metricsPort must be in"),
        ({"metricsPort": "9090"}, "spec.metricsPort must be a number"),
        ({"metricsPort": True}, "spec.metricsPort must be a number"),
        ({"metricsPort": 9090.5}, "spec.metricsPort must be an integer"),
        # values the policy refuses
        ({"minReplicas": 11}, r"spec.minReplicas \(11\) must be <= spec.maxReplicas"),
        ({"minReplicas": -1}, "spec.minReplicas must be >= 0"),
        ({"maxReplicas": 0}, "spec.maxReplicas must be >= 1"),
        ({"targetUtilization": 0}, "spec.targetUtilization"),
        ({"targetUtilization": 1.5}, "spec.targetUtilization"),
        ({"targetConcurrencyPerWorker": 0}, "spec.targetConcurrencyPerWorker"),
        ({"stableWindowSeconds": 0}, "spec.stableWindowSeconds"),
        ({"panicWindowPercentage": 101}, "spec.panicWindowPercentage"),
        ({"panicThresholdPercentage": 100}, "spec.panicThresholdPercentage"),
        ({"maxScaleUpRate": 1}, "spec.maxScaleUpRate"),
        ({"maxScaleDownRate": 1}, "spec.maxScaleDownRate"),
        ({"scaleDownDelaySeconds": -1}, "spec.scaleDownDelaySeconds"),
        ({"cpuTargetUtilization": 0}, "spec.cpuTargetUtilization"),
        ({"memoryTargetUtilization": -0.5}, "spec.memoryTargetUtilization"),
        # nodePool
        ({"nodePool": "gpu"}, "spec.nodePool must be an object"),
        ({"nodePool": without(pool(), "scaleTargetRef")}, "spec.nodePool.scaleTargetRef is req"),
        ({"nodePool": pool(scaleTargetRef={"kind": "M", "name": "g"})}, "nodePool.scaleTarg"),
        ({"nodePool": without(pool(), "maxNodes")}, "spec.nodePool.maxNodes is required"),
        ({"nodePool": pool(maxNodes=0)}, "spec.nodePool.maxNodes must be >= 1"),
        (
            {"nodePool": pool(minNodes=5)},
            r"spec.nodePool.minNodes \(5\) must be <= spec.nodePool.maxNodes",
        ),
        ({"nodePool": pool(minNodes=-1)}, "spec.nodePool.minNodes must be >= 0"),
        ({"nodePool": pool(podsPerNode=0)}, "spec.nodePool.podsPerNode"),
        (
            {"nodePool": pool(scaleDownDelaySeconds=-1)},
            "^spec.nodePool.scaleDownDelaySeconds must be >= 0",
        ),
        ({"nodePool": pool(maxNodes="4")}, "spec.nodePool.maxNodes must be a number"),
        ({"nodePool": pool(minNodes=0.5)}, "spec.nodePool.minNodes must be an integer"),
        ({"nodePool": pool(podsPerNode=True)}, "spec.nodePool.podsPerNode must be a number"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v[:40],
)
def test_bad_specs_raise_spec_error_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        settings_from_object(obj(spec))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("spec"), "spec is required"),
        (lambda o: o.__setitem__("spec", None), "spec is required"),
        (lambda o: o.__setitem__("spec", []), "spec is required"),
        (lambda o: o["spec"].pop("scaleTargetRef"), "spec.scaleTargetRef is required"),
        (lambda o: o["spec"].pop("maxReplicas"), "spec.maxReplicas is required"),
    ],
    ids=["no-spec", "null-spec", "list-spec", "no-scaleTargetRef", "no-maxReplicas"],
)
def test_missing_sections(mutate: Any, message: str) -> None:
    o = obj()
    mutate(o)
    with pytest.raises(SpecError, match=message):
        settings_from_object(o)


def test_min_above_max_names_both_values() -> None:
    with pytest.raises(SpecError, match=r"\(11\).*\(10\)"):
        settings_from_object(obj({"minReplicas": 11}))


def test_min_equal_to_max_is_fine() -> None:
    scaling = settings_from_object(obj({"minReplicas": 10})).scaling
    assert scaling.min_replicas == scaling.max_replicas == 10


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


@pytest.mark.parametrize(
    ("spec", "crd_field"),
    [
        ({"minReplicas": 11}, "minReplicas"),
        ({"targetUtilization": 1.5}, "spec.targetUtilization"),
        ({"stableWindowSeconds": 0}, "spec.stableWindowSeconds"),
        ({"nodePool": pool(minNodes=5)}, "spec.nodePool.minNodes"),
    ],
    ids=["minReplicas", "targetUtilization", "stableWindowSeconds", "nodePool.minNodes"],
)
def test_range_errors_name_the_crd_field(spec: dict[str, Any], crd_field: str) -> None:
    with pytest.raises(SpecError, match=crd_field):
        settings_from_object(obj(spec))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"maxReplicas": None}, "spec.maxReplicas"),
        ({"nodePool": pool(maxNodes=None)}, "spec.nodePool.maxNodes"),
    ],
    ids=["maxReplicas-null", "nodePool.maxNodes-null"],
)
def test_a_null_required_field_is_a_spec_error(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field):
        settings_from_object(obj(spec))


# --- spec.activator and scale to zero ------------------------------------------------------

ACTIVATOR = {
    "selector": {
        "matchLabels": {
            "app.kubernetes.io/name": "rscore-activator",
            "app.kubernetes.io/instance": "iris",
        }
    },
    "metricsPort": 9091,
}


def test_min_replicas_zero_needs_an_activator() -> None:
    """Without an activator nothing holds (or reports) a request at zero pods: the
    Deployment would stay at zero for good."""
    with pytest.raises(SpecError, match=r"spec.minReplicas 0 needs spec.activator"):
        settings_from_object(obj({"minReplicas": 0}))


def test_an_activator_allows_min_replicas_zero() -> None:
    settings = settings_from_object(obj({"minReplicas": 0, "activator": ACTIVATOR}))
    assert settings.scaling.min_replicas == 0
    assert settings.activator == ActivatorRef(
        "app.kubernetes.io/instance=iris,app.kubernetes.io/name=rscore-activator", 9091
    )


def test_an_activator_without_scale_to_zero_is_read_too() -> None:
    """Held requests count as demand at any scale (a burst while every pod is busy
    starting); the port defaults to the activator's default metrics port."""
    activator = {"selector": {"matchLabels": {"app": "act"}}}
    settings = settings_from_object(obj({"activator": activator}))
    assert settings.activator == ActivatorRef("app=act", DEFAULT_METRICS_PORT)
    assert settings_from_object(obj()).activator is None


def test_selector_expressions_become_the_api_s_selector_syntax() -> None:
    selector = {
        "matchLabels": {"app": "act"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
            {"key": "owner", "operator": "Exists"},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    settings = settings_from_object(obj({"activator": {"selector": selector}}))
    assert settings.activator is not None
    assert settings.activator.selector == "app=act,tier in (a,b),env notin (dev),owner,!canary"


@pytest.mark.parametrize(
    ("activator", "message"),
    [
        ("act", "spec.activator must be an object"),
        ({}, "spec.activator.selector must be a label selector"),
        ({"selector": {}}, "spec.activator.selector must select something"),
        ({"selector": {"matchLabels": {}}}, "spec.activator.selector must select something"),
        (
            {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            "spec.activator.selector.matchExpressions has an invalid entry",
        ),
        (
            {"selector": {"matchLabels": {"a": "b"}}, "metricsPort": 0},
            r"spec.activator.metricsPort must be in \[1, 65535\]",
        ),
        (
            {"selector": {"matchLabels": {"a": "b"}}, "metricsPort": "9090"},
            "spec.activator.metricsPort must be a number",
        ),
    ],
)
def test_a_bad_activator_is_named(activator: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        settings_from_object(obj({"activator": activator}))
