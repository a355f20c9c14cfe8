"""A `ScoringAutoscaler` object (a plain dict from the API) as typed, validated settings.

Field names and defaults are the CRD's (manifests/crd/); the API server applies the
defaults too, but objects written by older CRDs or by hand may lack them. Pure: a bad
object raises `SpecError` naming the field, which the controller reports as a condition;
nothing here talks to the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rscore.autoscaler.policy import NodePoolSpec, ScalingSpec

__all__ = [
    "INTEGER_POLICY_FIELDS",
    "POLICY_FIELDS",
    "ActivatorRef",
    "AutoscalerSettings",
    "SpecError",
    "TargetRef",
    "settings_from_object",
]

DEFAULT_METRICS_PORT = 9090


class SpecError(ValueError):
    """The object's spec cannot drive the policy; the message names the field."""


@dataclass(frozen=True)
class TargetRef:
    """A resource with a `/scale` subresource, as `scaleTargetRef` names it."""

    api_version: str
    kind: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.api_version})"


@dataclass(frozen=True)
class ActivatorRef:
    """`spec.activator`: the pods of the `rscore activator` in front of the target, whose
    `rscore_activator_held_requests` the controller reads as unrouted demand."""

    selector: str  # a label selector, as the API's `labelSelector` parameter takes it
    metrics_port: int


@dataclass(frozen=True)
class AutoscalerSettings:
    namespace: str
    name: str
    uid: str
    generation: int
    target: TargetRef
    metrics_port: int
    scaling: ScalingSpec
    node_pool_target: TargetRef | None
    activator: ActivatorRef | None = None


# CRD field -> (ScalingSpec field, type)
_SCALAR_FIELDS: dict[str, tuple[str, type]] = {
    "minReplicas": ("min_replicas", int),
    "maxReplicas": ("max_replicas", int),
    "targetConcurrencyPerWorker": ("target_concurrency_per_worker", float),
    "targetUtilization": ("target_utilization", float),
    "stableWindowSeconds": ("stable_window_s", float),
    "panicWindowPercentage": ("panic_window_percentage", float),
    "panicThresholdPercentage": ("panic_threshold_percentage", float),
    "maxScaleUpRate": ("max_scale_up_rate", float),
    "maxScaleDownRate": ("max_scale_down_rate", float),
    "scaleDownDelaySeconds": ("scale_down_delay_s", float),
    "queueDrainSeconds": ("queue_drain_s", float),
    "latencyObjectiveSeconds": ("latency_objective_s", float),
    "cpuTargetUtilization": ("cpu_target_utilization", float),
    "memoryTargetUtilization": ("memory_target_utilization", float),
}
# The CRD's names of the policy's settings, for whoever else speaks the CRD (the
# simulator's scenarios, `rscore sim tune`'s YAML).
POLICY_FIELDS: dict[str, str] = {crd: py for crd, (py, _) in _SCALAR_FIELDS.items()}
INTEGER_POLICY_FIELDS = frozenset(crd for crd, (_, kind) in _SCALAR_FIELDS.items() if kind is int)
_NODE_POOL_FIELDS: dict[str, tuple[str, type]] = {
    "minNodes": ("min_nodes", int),
    "maxNodes": ("max_nodes", int),
    "podsPerNode": ("pods_per_node", int),
    "scaleDownDelaySeconds": ("scale_down_delay_s", float),
    "podMemoryBytes": ("pod_memory_bytes", float),
    "provisionSeconds": ("provision_s", float),
}


def _number(value: Any, kind: type, field: str) -> int | float:
    # bool is an int in Python, never a number in a spec.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"spec.{field} must be a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SpecError(f"spec.{field} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _fields(
    section: dict[str, Any], table: dict[str, tuple[str, type]], prefix: str
) -> dict[str, Any]:  # by name: each field's type is its table entry's
    out: dict[str, int | float] = {}
    for crd_name, (py_name, kind) in table.items():
        if section.get(crd_name) is not None:
            out[py_name] = _number(section[crd_name], kind, f"{prefix}{crd_name}")
    return out


def _in_crd_terms(message: str, table: dict[str, tuple[str, type]], prefix: str) -> str:
    """The policy's message with its attribute names replaced by the CRD's field paths."""
    for crd_name, (py_name, _) in table.items():
        message = re.sub(rf"\b{py_name}\b", f"spec.{prefix}{crd_name}", message)
    return message.removeprefix("node ")


def _target(section: Any, field: str) -> TargetRef:
    if not isinstance(section, dict):
        raise SpecError(f"spec.{field} is required")
    values = {}
    for key in ("apiVersion", "kind", "name"):
        value = section.get(key)
        if not isinstance(value, str) or not value:
            raise SpecError(f"spec.{field}.{key} is required")
        values[key] = value
    return TargetRef(values["apiVersion"], values["kind"], values["name"])


def _label_selector(section: Any, field: str) -> str:
    """A metav1.LabelSelector as the string form list calls take."""
    if not isinstance(section, dict):
        raise SpecError(f"spec.{field} must be a label selector (matchLabels, matchExpressions)")
    parts = []
    for key, value in sorted((section.get("matchLabels") or {}).items()):
        parts.append(f"{key}={value}")
    for expression in section.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(str(v) for v in expression.get("values") or [])
        spelled = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": f"{key}",
            "DoesNotExist": f"!{key}",
        }.get(str(operator))
        if not key or spelled is None:
            raise SpecError(f"spec.{field}.matchExpressions has an invalid entry: {expression}")
        parts.append(spelled)
    if not parts:  # an empty selector selects every pod of the namespace
        raise SpecError(f"spec.{field} must select something (matchLabels or matchExpressions)")
    return ",".join(parts)


def _activator(section: Any) -> ActivatorRef | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise SpecError("spec.activator must be an object")
    selector = _label_selector(section.get("selector"), "activator.selector")
    port = _number(section.get("metricsPort", DEFAULT_METRICS_PORT), int, "activator.metricsPort")
    if not 1 <= port <= 65535:
        raise SpecError(f"spec.activator.metricsPort must be in [1, 65535], got {port}")
    return ActivatorRef(selector, int(port))


def settings_from_object(obj: dict[str, Any]) -> AutoscalerSettings:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec is required")
    target = _target(spec.get("scaleTargetRef"), "scaleTargetRef")
    if spec.get("maxReplicas") is None:
        raise SpecError("spec.maxReplicas is required")
    scaling = _fields(spec, _SCALAR_FIELDS, "")
    node_pool: NodePoolSpec | None = None
    node_pool_target: TargetRef | None = None
    pool = spec.get("nodePool")
    if pool is not None:
        if not isinstance(pool, dict):
            raise SpecError("spec.nodePool must be an object")
        node_pool_target = _target(pool.get("scaleTargetRef"), "nodePool.scaleTargetRef")
        if pool.get("maxNodes") is None:
            raise SpecError("spec.nodePool.maxNodes is required")
        try:
            node_pool = NodePoolSpec(**_fields(pool, _NODE_POOL_FIELDS, "nodePool."))
        except ValueError as error:
            raise SpecError(_in_crd_terms(str(error), _NODE_POOL_FIELDS, "nodePool.")) from error
    port = _number(spec.get("metricsPort", DEFAULT_METRICS_PORT), int, "metricsPort")
    if not 1 <= port <= 65535:
        raise SpecError(f"spec.metricsPort must be in [1, 65535], got {port}")
    try:
        scaling_spec = ScalingSpec(**scaling, node_pool=node_pool)
    except ValueError as error:
        raise SpecError(_in_crd_terms(str(error), _SCALAR_FIELDS, "")) from error
    activator = _activator(spec.get("activator"))
    if scaling_spec.min_replicas == 0 and activator is None:
        # At zero pods nobody would answer, count or report the first request.
        raise SpecError(
            "spec.minReplicas 0 needs spec.activator: at zero pods only the activator "
            "holds requests and reports them, which is what scales the target back up"
        )
    return AutoscalerSettings(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        uid=str(metadata.get("uid", "")),
        generation=int(metadata.get("generation") or 0),
        target=target,
        metrics_port=int(port),
        scaling=scaling_spec,
        node_pool_target=node_pool_target,
        activator=activator,
    )
