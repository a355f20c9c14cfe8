"""Memory as well as CPU limits the pods a node holds (rscore.sim.cluster), by cases.

A node fits min(pods by CPU, pods by memory), at least one; `pods_per_node`, when a
scenario gives it, is taken as is. A scenario's [nodes] names the pod's memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rscore.sim.cluster import NodeSpec, pods_that_fit
from rscore.sim.scenario import ScenarioError, parse_scenario


@pytest.mark.parametrize(
    ("cpus", "workers", "memory_gib", "pod_memory_mib", "expected"),
    [
        (4, 1, 16.0, None, 4),  # memory not stated: CPU alone, as before
        (4, 4, 16.0, None, 1),
        (4, 8, 16.0, None, 1),  # a pod bigger than the node: still one
        (16, 1, 16.0, 300.0, 16),  # forked workers: CPU is the limit
        (16, 1, 4.0, 1200.0, 3),  # spawned heavy workers: memory is (4096 / 1200)
        (16, 2, 8.0, 1024.0, 8),  # both allow 8
        (4, 1, 0.5, 1024.0, 1),  # too little memory for one: still one
    ],
)
def test_a_node_fits_the_pods_both_cpu_and_memory_allow(
    cpus: int, workers: int, memory_gib: float, pod_memory_mib: float | None, expected: int
) -> None:
    assert pods_that_fit(cpus, workers, memory_gib, pod_memory_mib) == expected


def test_a_stated_pods_per_node_wins() -> None:
    spec = NodeSpec(cpus=16, memory_gib=4.0, pod_memory_mib=2048.0, pods_per_node=5)
    assert spec.per_node(1) == 5


@pytest.mark.parametrize("field", [{"memory_gib": 0.0}, {"pod_memory_mib": -1.0}])
def test_memory_must_be_positive(field: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="memory"):
        NodeSpec(**field)  # type: ignore[arg-type]


def test_a_scenario_states_the_memory_per_pod(tmp_path: Path) -> None:
    scenario = parse_scenario(
        {"pods": {"workers": 1}, "nodes": {"cpus": 16, "memory_gib": 8, "pod_memory_mib": 1000}},
        tmp_path,
    )
    assert scenario.per_node == 8  # 8192 MiB / 1000 MiB, fewer than the 16 cores allow
    assert scenario.nodes.memory_gib == 8.0
    with pytest.raises(ScenarioError, match="pod_memory_mib"):
        parse_scenario({"nodes": {"pod_memory_mib": "lots"}}, tmp_path)
