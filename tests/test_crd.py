"""The ScoringAutoscaler CRD (manifests/crd) against rscore.autoscaler.policy, offline.

The API server is the first line of validation and the policy the last: whatever one
accepts the other must accept too, and a field the user leaves out must mean the same
in both. So the defaults are compared with ScalingSpec's and NodePoolSpec's, and a table
of values on either side of every bound goes through both: the CRD's OpenAPI schema (with
the apiserver's defaulting, done here by `apply_defaults`) and the policy's constructors.

CEL rules (x-kubernetes-validations) cannot be evaluated offline without a CEL library;
each rule the CRD carries is mirrored by a Python predicate in CEL_RULES, and a rule
without one fails test_every_cel_rule_has_a_mirror.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from rscore.autoscaler.policy import NodePoolSpec, ScalingSpec

CRD_FILE = Path(__file__).resolve().parent.parent / "manifests" / "crd" / "scoringautoscalers.yaml"

# CRD field -> ScalingSpec / NodePoolSpec field. metricsPort and scaleTargetRef are the
# controller's business, not the policy's.
SPEC_FIELDS = {
    "minReplicas": "min_replicas",
    "maxReplicas": "max_replicas",
    "targetConcurrencyPerWorker": "target_concurrency_per_worker",
    "targetUtilization": "target_utilization",
    "stableWindowSeconds": "stable_window_s",
    "panicWindowPercentage": "panic_window_percentage",
    "panicThresholdPercentage": "panic_threshold_percentage",
    "maxScaleUpRate": "max_scale_up_rate",
    "maxScaleDownRate": "max_scale_down_rate",
    "scaleDownDelaySeconds": "scale_down_delay_s",
    "queueDrainSeconds": "queue_drain_s",
    "latencyObjectiveSeconds": "latency_objective_s",
    "cpuTargetUtilization": "cpu_target_utilization",
    "memoryTargetUtilization": "memory_target_utilization",
    "nodePool": "node_pool",
}
NODE_POOL_FIELDS = {
    "minNodes": "min_nodes",
    "maxNodes": "max_nodes",
    "podsPerNode": "pods_per_node",
    "scaleDownDelaySeconds": "scale_down_delay_s",
    "podMemoryBytes": "pod_memory_bytes",
    "provisionSeconds": "provision_s",
}
CONTROLLER_ONLY = {"scaleTargetRef", "metricsPort", "activator"}

# Each CEL rule of the CRD, keyed by the schema path it sits on, with the same predicate in
# Python (`self` is the object at that path, after defaulting).
CEL_RULES: dict[tuple[str, str], Callable[[dict[str, Any]], bool]] = {
    ("spec", "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas"): lambda s: (
        "minReplicas" not in s or s["minReplicas"] <= s["maxReplicas"]
    ),
    ("spec.nodePool", "!has(self.minNodes) || self.minNodes <= self.maxNodes"): lambda s: (
        "minNodes" not in s or s["minNodes"] <= s["maxNodes"]
    ),
    (
        "spec",
        "!has(self.minReplicas) || self.minReplicas > 0 || has(self.activator)",
    ): lambda s: "minReplicas" not in s or s["minReplicas"] > 0 or "activator" in s,
    (
        "spec.activator.selector",
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
        "(has(self.matchExpressions) && size(self.matchExpressions) > 0)",
    ): lambda s: bool(s.get("matchLabels")) or bool(s.get("matchExpressions")),
}
# The activator in front of a target scaled to zero (manifests/base/activator.yaml).
ACTIVATOR = {"selector": {"matchLabels": {"app.kubernetes.io/name": "rscore-activator"}}}


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def crd_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    """The openAPIV3Schema of the one version."""
    (version,) = (crd or load_crd())["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy where objects with declared properties refuse unknown ones, as `kubectl apply`
    does with its default strict field validation (the apiserver would otherwise prune
    them silently: a typo would vanish instead of failing)."""
    schema = copy.deepcopy(schema)

    def close(node: dict[str, Any]) -> None:
        if "properties" in node:
            node.setdefault("additionalProperties", False)
            for child in node["properties"].values():
                close(child)
        if "items" in node:
            close(node["items"])

    close(schema)
    return schema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The apiserver's defaulting: a missing property with a default gets it, in every
    object that is present (an absent optional object stays absent)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def _at(obj: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def validation_errors(obj: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Why the API server would refuse `obj` (after defaulting it); [] if it would not."""
    schema = crd_schema(crd)
    obj = apply_defaults(schema, obj)
    validator = OAS30Validator(_closed(schema), format_checker=OAS30Validator.FORMAT_CHECKER)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]
    if errors:  # CEL rules run only on objects that passed the schema
        return errors
    for (path, rule), predicate in CEL_RULES.items():
        target = _at(obj, path)
        if target is not None and not predicate(target):
            errors.append(f"{path}: {rule}")
    return errors


TARGET = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "m"}


def minimal(**spec: Any) -> dict[str, Any]:
    """The smallest valid ScoringAutoscaler, with `spec` merged in."""
    return {
        "apiVersion": "rscore.dev/v1alpha1",
        "kind": "ScoringAutoscaler",
        "metadata": {"name": "m"},
        "spec": {
            "scaleTargetRef": TARGET,
            "maxReplicas": 10,
            **spec,
        },
    }


def pool(**fields: Any) -> dict[str, Any]:
    """A valid nodePool, with `fields` merged in."""
    ref = {"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "MachineDeployment", "name": "p"}
    return {"scaleTargetRef": ref, "maxNodes": 4, **fields}


def policy_spec(spec: dict[str, Any]) -> ScalingSpec:
    """ScalingSpec from a defaulted CRD spec, as the controller builds it."""
    kwargs = {SPEC_FIELDS[k]: v for k, v in spec.items() if k not in CONTROLLER_ONLY}
    if "node_pool" in kwargs:
        pool = kwargs["node_pool"]
        kwargs["node_pool"] = NodePoolSpec(
            **{NODE_POOL_FIELDS[k]: v for k, v in pool.items() if k != "scaleTargetRef"}
        )
    return ScalingSpec(**kwargs)


def test_names_scope_and_version() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "scoringautoscalers.rscore.dev"
    spec = crd["spec"]
    assert spec["group"] == "rscore.dev"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ScoringAutoscaler",
        "scoringautoscalers",
        "scoringautoscaler",
    )
    assert "rsa" in names["shortNames"]
    assert "sa" not in names["shortNames"]  # ServiceAccount's
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    # Only status: the target's /scale is what gets scaled, the resource has no scale.
    assert version["subresources"] == {"status": {}}


def _schema_at(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for part in json_path.lstrip(".").split("."):
        node = node["properties"][part]
    return node


def test_printer_columns_point_at_fields_of_their_type() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "Target", "Min", "Max", "Desired", "Current", "Concurrency", "Mode", "Nodes", "Age",
    ]  # fmt: skip
    schema = crd_schema()
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        assert column["type"] == _schema_at(schema, column["jsonPath"])["type"], column


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


def test_schema_is_structural_and_defaults_are_valid() -> None:
    """Structural (what apiextensions/v1 requires): every node typed, no $ref or
    combinators; and each default passes its own schema, or the apiserver refuses the CRD."""
    for path, node in _walk(crd_schema()):
        assert "type" in node, f"{path or 'root'} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "not"} & node.keys(), path
        if "default" in node:
            assert OAS30Validator(node).is_valid(node["default"]), path


def test_every_spec_field_maps_onto_the_policy() -> None:
    schema = crd_schema()
    spec_props = set(schema["properties"]["spec"]["properties"])
    assert spec_props - CONTROLLER_ONLY == set(SPEC_FIELDS)
    assert set(SPEC_FIELDS.values()) == {f.name for f in dataclasses.fields(ScalingSpec)}
    pool_props = set(schema["properties"]["spec"]["properties"]["nodePool"]["properties"])
    assert pool_props - {"scaleTargetRef"} == set(NODE_POOL_FIELDS)
    assert set(NODE_POOL_FIELDS.values()) == {f.name for f in dataclasses.fields(NodePoolSpec)}


def test_minimal_object_gets_the_policy_defaults() -> None:
    obj = minimal(nodePool=pool())
    assert validation_errors(obj) == []
    spec = apply_defaults(crd_schema(), obj)["spec"]
    assert spec["metricsPort"] == 9090
    assert "cpuTargetUtilization" not in spec  # optional signals stay off
    assert "podsPerNode" not in spec["nodePool"]
    defaulted = policy_spec(spec)
    reference = ScalingSpec(max_replicas=10, node_pool=NodePoolSpec(max_nodes=4))
    assert defaulted == reference
    # And the values the documentation promises, spelled out.
    assert (spec["minReplicas"], spec["targetConcurrencyPerWorker"]) == (1, 1.0)
    assert (spec["targetUtilization"], spec["stableWindowSeconds"]) == (0.7, 60)
    assert (spec["panicWindowPercentage"], spec["panicThresholdPercentage"]) == (20, 200)
    assert (spec["maxScaleUpRate"], spec["maxScaleDownRate"]) == (1000, 2)
    assert spec["scaleDownDelaySeconds"] == 0
    assert (spec["nodePool"]["minNodes"], spec["nodePool"]["scaleDownDelaySeconds"]) == (
        0,
        NodePoolSpec(max_nodes=1).scale_down_delay_s,
    )


def test_no_node_pool_stays_no_node_pool() -> None:
    spec = apply_defaults(crd_schema(), minimal())["spec"]
    assert "nodePool" not in spec
    assert policy_spec(spec).node_pool is None


# (spec fields, accepted?) on either side of each bound of policy.py.
BOUNDS = [
    ({"minReplicas": -1}, False),
    ({"minReplicas": 0, "activator": ACTIVATOR}, True),
    ({"maxReplicas": 0, "minReplicas": 0}, False),
    ({"maxReplicas": 1}, True),
    ({"targetConcurrencyPerWorker": 0}, False),
    ({"targetConcurrencyPerWorker": 0.01}, True),
    ({"targetUtilization": 0}, False),
    ({"targetUtilization": 1}, True),
    ({"targetUtilization": 1.01}, False),
    ({"stableWindowSeconds": 0}, False),
    ({"stableWindowSeconds": 0.5}, True),
    ({"panicWindowPercentage": 0}, False),
    ({"panicWindowPercentage": 100}, True),
    ({"panicWindowPercentage": 100.1}, False),
    ({"panicThresholdPercentage": 100}, False),
    ({"panicThresholdPercentage": 100.5}, True),
    ({"maxScaleUpRate": 1}, False),
    ({"maxScaleUpRate": 1.1}, True),
    ({"maxScaleDownRate": 1}, False),
    ({"maxScaleDownRate": 1.1}, True),
    ({"scaleDownDelaySeconds": -1}, False),
    ({"scaleDownDelaySeconds": 0}, True),
    ({"cpuTargetUtilization": 0}, False),
    ({"cpuTargetUtilization": 0.8}, True),
    # HPA-style: usage may exceed the request when the limit is higher.
    ({"cpuTargetUtilization": 1.5}, True),
    ({"memoryTargetUtilization": 0}, False),
    ({"memoryTargetUtilization": 0.8}, True),
    ({"minReplicas": 5, "maxReplicas": 4}, False),
    ({"minReplicas": 4, "maxReplicas": 4}, True),
    ({"nodePool": pool(minNodes=-1)}, False),
    ({"nodePool": pool(minNodes=0)}, True),
    ({"nodePool": pool(maxNodes=0)}, False),
    ({"nodePool": pool(maxNodes=1)}, True),
    ({"nodePool": pool(podsPerNode=0)}, False),
    ({"nodePool": pool(podsPerNode=1)}, True),
    ({"nodePool": pool(scaleDownDelaySeconds=-1)}, False),
    ({"nodePool": pool(scaleDownDelaySeconds=0)}, True),
    ({"nodePool": pool(minNodes=5, maxNodes=4)}, False),
    ({"nodePool": pool(minNodes=4, maxNodes=4)}, True),
]


def _policy_accepts(spec: dict[str, Any]) -> bool:
    try:
        policy_spec(spec)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("fields", "accepted"), BOUNDS, ids=[str(f) for f, _ in BOUNDS])
def test_crd_and_policy_agree_on_bounds(fields: dict[str, Any], accepted: bool) -> None:
    obj = minimal(**fields)
    errors = validation_errors(obj)
    assert (errors == []) is accepted, errors
    assert _policy_accepts(apply_defaults(crd_schema(), obj)["spec"]) is accepted


def test_every_cel_rule_has_a_mirror() -> None:
    schema = crd_schema()
    found = {
        (path.lstrip("."), rule["rule"])
        for path, node in _walk(schema)
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert found == set(CEL_RULES)
    for path, node in _walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{path}: a rule needs a message users can act on"


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({**minimal(), "spec": {"maxReplicas": 3}}, id="no scaleTargetRef"),
        pytest.param(
            minimal(scaleTargetRef={"apiVersion": "apps/v1", "kind": "Deployment"}), id="no name"
        ),
        pytest.param({**minimal(), "spec": {"scaleTargetRef": TARGET}}, id="no maxReplicas"),
        pytest.param(minimal(nodePool={"maxNodes": 3}), id="pool without scaleTargetRef"),
        pytest.param(minimal(nodePool={"scaleTargetRef": TARGET}), id="pool without maxNodes"),
        pytest.param(minimal(maxReplicas=2.5), id="fractional replicas"),
        pytest.param(minimal(metricsPort=70000), id="port out of range"),
        pytest.param(minimal(targetConcurency=2.0), id="misspelt field"),
        pytest.param({k: v for k, v in minimal().items() if k != "spec"}, id="no spec"),
    ],
)
def test_refused(obj: dict[str, Any]) -> None:
    assert validation_errors(obj) != []


def _condition(**fields: Any) -> dict[str, Any]:
    """A metav1.Condition; a field given as None is left out."""
    condition = {
        "type": "ScalingActive",
        "status": "True",
        "reason": "ConcurrencyObserved",
        "message": "3 pods report",
        "lastTransitionTime": "2026-11-26T03:00:00Z",
        "observedGeneration": 2,
        **fields,
    }
    return {k: v for k, v in condition.items() if v is not None}


def _status(**fields: Any) -> dict[str, Any]:
    return {
        "desiredReplicas": 4,
        "currentReplicas": 3,
        "observedConcurrency": 7.25,
        "mode": "Panic",
        "desiredNodes": 2,
        "currentNodes": 1,
        "lastScaleTime": "2026-11-26T03:00:00Z",
        "observedGeneration": 2,
        "reason": "concurrency stable 7.25 ...",
        "conditions": [_condition()],
        **fields,
    }


def test_status_as_the_controller_writes_it() -> None:
    assert validation_errors({**minimal(), "status": _status()}) == []
    conditions = crd_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {
        "type", "status", "reason", "message", "lastTransitionTime",
    }  # fmt: skip


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(_status(mode="Calm"), id="unknown mode"),
        pytest.param(_status(lastScaleTime="yesterday"), id="not a date-time"),
        pytest.param(_status(desiredReplicas=-1), id="negative replicas"),
        pytest.param(_status(conditions=[_condition(status="Yes")]), id="condition status Yes"),
        pytest.param(_status(conditions=[_condition(reason=None)]), id="condition without reason"),
        pytest.param(_status(conditions=[_condition(type="not a type")]), id="bad condition type"),
    ],
)
def test_status_refused(status: dict[str, Any]) -> None:
    assert validation_errors({**minimal(), "status": status}) != []


# --- scale to zero needs the activator -------------------------------------------------------


def test_min_replicas_zero_without_an_activator_is_refused_by_both() -> None:
    """The API server (CEL rule) and the controller (rscore.autoscaler.spec) agree: at zero pods
    only an activator holds and reports the first request."""
    from rscore.autoscaler.spec import SpecError, settings_from_object

    refused = minimal(minReplicas=0)
    errors = validation_errors(refused)
    assert any("has(self.activator)" in e for e in errors), errors
    with pytest.raises(SpecError, match=r"spec\.activator"):
        settings_from_object(apply_defaults(crd_schema(), refused))
    accepted = minimal(minReplicas=0, activator=ACTIVATOR)
    assert validation_errors(accepted) == []
    settings = settings_from_object(apply_defaults(crd_schema(), accepted))
    assert settings.activator is not None
    assert settings.activator.metrics_port == 9090  # the CRD's default, the flag's default


@pytest.mark.parametrize(
    "activator",
    [
        pytest.param({}, id="no selector"),
        pytest.param({"selector": {}}, id="empty selector"),
        pytest.param({"selector": {"matchLabels": {}}}, id="no labels"),
        pytest.param(
            {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            id="unknown operator",
        ),
        pytest.param({"selector": {"matchLabels": {"a": 1}}}, id="label value not a string"),
        pytest.param({**ACTIVATOR, "metricsPort": 0}, id="port out of range"),
        pytest.param({**ACTIVATOR, "port": 9090}, id="misspelt field"),
    ],
)
def test_a_bad_activator_is_refused(activator: dict[str, Any]) -> None:
    assert validation_errors(minimal(activator=activator)) != []
