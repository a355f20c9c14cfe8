"""Scenario files: TOML in, a validated `Scenario` out; unknown keys are errors.

Every table and key is listed in docs/simulator.md with its default. `[policy]` takes
the ScoringAutoscaler CRD's field names in camelCase (minReplicas, targetUtilization,
...), so that a tuned configuration reads the same in a scenario and in the YAML that
`rscore sim tune` writes; the node pool (nodePool) comes from `[nodes]`. Relative paths
(trace, measured service times) are resolved against the scenario file's folder.

Reads only the scenario file; never touches the clock or the random streams.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from rscore.autoscaler.policy import NodePoolSpec, ScalingSpec
from rscore.autoscaler.spec import INTEGER_POLICY_FIELDS, POLICY_FIELDS
from rscore.sim import POLICY_KINDS
from rscore.sim.cluster import ControllerSpec, NodeSpec, PodSpec, node_preset
from rscore.sim.distributions import parse_delay
from rscore.sim.service import ServiceSpec, load_measured_times
from rscore.sim.workload import WorkloadSpec, load_trace

__all__ = [
    "POLICY_FIELDS",
    "POLICY_KINDS",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_scenario",
    "scaling_spec",
]


# [policy] keys are the CRD's field names (camelCase), mapped as the controller maps them.
_INT_POLICY_FIELDS = INTEGER_POLICY_FIELDS

_TOP = {"seed", "duration_s", "name", "workload", "service", "pods", "nodes", "controller"}
_TOP |= {"policy", "slo"}
_WORKLOAD = {f.name for f in dataclasses.fields(WorkloadSpec)}
_SERVICE = {f.name for f in dataclasses.fields(ServiceSpec)}
_PODS = {f.name for f in dataclasses.fields(PodSpec)}
_NODES = {f.name for f in dataclasses.fields(NodeSpec)}
_CONTROLLER = {f.name for f in dataclasses.fields(ControllerSpec)}
_POLICY = {"kind", *POLICY_FIELDS}
_SLO = {"latency_p99_s"}
_DELAYS = {"schedule_s", "image_pull_s", "model_load_s", "provision_s"}
_PATHS = {"path"}


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the table and key."""


@dataclass(frozen=True)
class Scenario:
    seed: int = 1
    duration_s: float = 3600.0
    name: str = "scenario"
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    service: ServiceSpec = field(default_factory=ServiceSpec)
    pods: PodSpec = field(default_factory=PodSpec)
    nodes: NodeSpec = field(default_factory=NodeSpec)
    controller: ControllerSpec = field(default_factory=ControllerSpec)
    policy_kind: str = "rscore"
    policy: dict[str, float] = field(default_factory=dict)  # CRD fields as given
    slo_p99_s: float = 1.0

    def with_policy(self, kind: str, **fields: float) -> Scenario:
        if kind not in POLICY_KINDS:
            raise ScenarioError(f"policy kind must be one of {POLICY_KINDS}, got {kind!r}")
        return dataclasses.replace(self, policy_kind=kind, policy={**self.policy, **fields})

    @property
    def per_node(self) -> int:
        return self.nodes.per_node(self.pods.workers)


def scaling_spec(scenario: Scenario) -> ScalingSpec:
    """The ScoringAutoscaler spec of the scenario's `[policy]`, its pool from `[nodes]`."""
    kwargs: dict[str, Any] = {POLICY_FIELDS[k]: v for k, v in scenario.policy.items()}
    kwargs.setdefault("max_replicas", scenario.nodes.max_nodes * scenario.per_node)
    # The SLO the scenario is judged by is the one the operator would state.
    kwargs.setdefault("latency_objective_s", scenario.slo_p99_s)
    pool: dict[str, Any] = {"provision_s": scenario.nodes.provision_s.mean}
    if scenario.nodes.scale_down_delay_s is not None:
        pool["scale_down_delay_s"] = scenario.nodes.scale_down_delay_s
    kwargs["node_pool"] = NodePoolSpec(
        max_nodes=scenario.nodes.max_nodes,
        min_nodes=scenario.nodes.min_nodes,
        pods_per_node=scenario.per_node,
        **pool,
    )
    try:
        return ScalingSpec(**kwargs)
    except ValueError as exc:
        raise ScenarioError(f"[policy]: {exc}") from None


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScenarioError(
            f"unknown key(s) in {where}: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ScenarioError(f"[{name}] must be a table")
    return value


def _convert(table: dict[str, Any], where: str, base_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in _DELAYS:
            try:
                out[key] = parse_delay(value, f"{where}.{key}")
            except ValueError as exc:
                raise ScenarioError(str(exc)) from None
        elif key in _PATHS:
            if not isinstance(value, str):
                raise ScenarioError(f"{where}.{key} must be a string")
            path = Path(value).expanduser()
            out[key] = path if path.is_absolute() else (base_dir / path).resolve()
        elif key in ("rates", "mean_dwell_s"):
            if not isinstance(value, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value
            ):
                raise ScenarioError(f"{where}.{key} must be a list of numbers")
            out[key] = tuple(float(v) for v in value)
        else:
            out[key] = value
    return out


# msgspec's names for the types a scenario key may want, in the words of an error.
_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "null": "left out",
}
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]+)`, got `[^`]+` - at `\$\.(?P<key>[^`]+)`$")


def _build(cls: type, kwargs: dict[str, Any], where: str) -> Any:
    """The spec `cls` from a table's values, type-checked by msgspec against the spec's
    annotations (strictly: no string is read as a number, no true as 1, no 2.5 as an
    integer) and then by the spec's own checks; any failure names the table and key."""
    try:
        return msgspec.convert(kwargs, cls, strict=True)
    except msgspec.ValidationError as exc:
        found = _EXPECTED.match(str(exc))
        if found is None:  # the spec's own check (__post_init__) said what is wrong
            raise ScenarioError(f"{where}: {exc}") from None
        key = found["key"]
        wanted = " or ".join(
            _KINDS.get(name.strip(), name.strip()) for name in found["type"].split("|")
        )
        raise ScenarioError(f"{where} {key} must be {wanted}, got {kwargs.get(key)!r}") from None


def parse_scenario(data: dict[str, Any], base_dir: Path) -> Scenario:
    """A Scenario from parsed TOML; relative paths are taken from `base_dir`."""
    _check_keys(data, _TOP, "the top level")
    tables = {}
    for name, allowed in (
        ("workload", _WORKLOAD),
        ("service", _SERVICE),
        ("pods", _PODS),
        ("nodes", _NODES),
        ("controller", _CONTROLLER),
        ("policy", _POLICY),
        ("slo", _SLO),
    ):
        table = _table(data, name)
        _check_keys(table, allowed, f"[{name}]")
        tables[name] = _convert(table, f"[{name}]", base_dir)

    try:
        nodes_kwargs = {**node_preset(tables["nodes"].get("kind", "cpu")), **tables["nodes"]}
    except ValueError as exc:
        raise ScenarioError(f"[nodes]: {exc}") from None
    workload = _build(WorkloadSpec, tables["workload"], "[workload]")
    if workload.kind == "trace" and workload.path is not None:
        if not workload.path.exists():
            raise ScenarioError(f"[workload] path: no such file {workload.path}")
        try:  # read now (it is cached): a bad file is an error here, not mid-run
            load_trace(workload.path, workload.format)
        except (ValueError, OSError, IndexError) as exc:
            raise ScenarioError(f"[workload] path: {exc}") from None
    service = _build(ServiceSpec, tables["service"], "[service]")
    if service.path is not None:
        if not service.path.exists():
            raise ScenarioError(f"[service] path: no such file {service.path}")
        try:
            load_measured_times(service.path)
        except (ValueError, OSError) as exc:
            raise ScenarioError(f"[service] path: {exc}") from None
    policy = dict(tables["policy"])
    kind = policy.pop("kind", "rscore")
    if kind not in POLICY_KINDS:
        raise ScenarioError(f"[policy] kind must be one of {POLICY_KINDS}, got {kind!r}")
    for key, value in policy.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"[policy] {key} must be a number")
        if key in _INT_POLICY_FIELDS and value != int(value):
            raise ScenarioError(f"[policy] {key} must be an integer")
        policy[key] = int(value) if key in _INT_POLICY_FIELDS else float(value)
    slo = tables["slo"].get("latency_p99_s", 1.0)
    if not isinstance(slo, int | float) or not slo > 0:
        raise ScenarioError("[slo] latency_p99_s must be a number > 0")
    seed = data.get("seed", 1)
    duration = data.get("duration_s", 3600.0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ScenarioError("seed must be a non-negative integer")
    if not isinstance(duration, int | float) or not duration > 0:
        raise ScenarioError("duration_s must be a number > 0")
    scenario = Scenario(
        seed=seed,
        duration_s=float(duration),
        name=str(data.get("name", "scenario")),
        workload=workload,
        service=service,
        pods=_build(PodSpec, tables["pods"], "[pods]"),
        nodes=_build(NodeSpec, nodes_kwargs, "[nodes]"),
        controller=_build(ControllerSpec, tables["controller"], "[controller]"),
        policy_kind=kind,
        policy=policy,
        slo_p99_s=float(slo),
    )
    scaling_spec(scenario)  # fail now, naming the field, rather than mid-run
    _check_history(scenario)
    return scenario


def _check_history(scenario: Scenario) -> None:
    """`[controller] history_s` is learned from the trace before the run (rscore.sim.history):
    only a trace has a past, and only back to its first second."""
    history_s, workload = scenario.controller.history_s, scenario.workload
    if history_s <= 0:
        return
    if workload.kind != "trace":
        raise ScenarioError(
            f"[controller] history_s = {history_s:g} needs a trace workload (a "
            f"{workload.kind} workload has no past to learn from)"
        )
    if workload.start_s < history_s:
        raise ScenarioError(
            f"[controller] history_s = {history_s:g} reaches before the trace: [workload] "
            f"start_s is {workload.start_s:g}; start later or ask for less history"
        )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    scenario = parse_scenario(data, path.resolve().parent)
    if "name" not in data:
        scenario = dataclasses.replace(scenario, name=path.stem)
    return scenario
