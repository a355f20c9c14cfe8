"""The policies as the engine drives them: what the rscore policy observes, and the
KPA, HPA and oracle emulations' rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from autoscaler.policy import ScalingSpec
from sim.engine import ClusterView, PodView
from sim.oracle import oracle_bound, oracle_plan, pod_capacity
from sim.policies import HpaController, KpaController, RscoreController
from sim.scenario import parse_scenario


def view(now: float, pods: list[tuple[int, float, float, float]], **kw: int) -> ClusterView:
    """pods: (id, concurrency seconds, cpu seconds, ready at); `inside` per pod: kw."""
    inside = kw.pop("inside", 0)
    defaults = {"replicas": len(pods), "pending": 0, "unrouted": 0, "nodes": 1, "workers": 2,
                "per_node": 2}  # fmt: skip
    defaults.update(kw)
    return ClusterView(
        now=now,
        pods=tuple(PodView(p, c, u, r, inside) for p, c, u, r in pods),
        **defaults,
    )


def test_rscore_observes_the_rate_of_the_concurrency_counter() -> None:
    controller = RscoreController(ScalingSpec(max_replicas=10), interval_s=2.0)
    # First scrape of each pod: the gauges (3 inside each), as autoscaler/scrape.py does;
    # plus 1 request held at the gateway.
    first = [(0, 10.0, 0.0, 0.0), (1, 2.0, 0.0, 3.0)]
    controller.tick(view(5.0, first, unrouted=1, inside=3))
    assert controller.state.samples[-1] == (5.0, pytest.approx(7.0))
    # Next scrape: the counters' increases over the 2 s interval: 4/2 + 1/2.
    controller.tick(view(7.0, [(0, 14.0, 0.0, 0.0), (1, 3.0, 0.0, 3.0)]))
    assert controller.state.samples[-1] == (7.0, pytest.approx(2.5))


def test_rscore_recommends_replicas_and_nodes() -> None:
    spec = ScalingSpec(max_replicas=10, target_utilization=0.5)
    controller = RscoreController(spec, interval_s=2.0)
    replicas, nodes = controller.tick(view(2.0, [(0, 12.0, 0.0, 0.0)], inside=6))
    # Concurrency 6 / (2 workers x 1 x 0.5) = 6 pods; no node pool in this spec.
    assert (replicas, nodes) == (6, None)


def test_kpa_scales_to_zero_only_after_the_grace_period() -> None:
    kpa = KpaController(workers=2, interval_s=2.0, min_replicas=0, max_replicas=10)
    idle = [(0, 0.0, 0.0, 0.0)]
    assert kpa.tick(view(2.0, idle))[0] == 1
    assert kpa.tick(view(20.0, idle))[0] == 1
    assert kpa.tick(view(40.0, idle))[0] == 0  # 38 s at zero desire > 30 s grace


def test_kpa_panics_and_never_scales_down_in_panic() -> None:
    kpa = KpaController(workers=1, interval_s=2.0, min_replicas=1, max_replicas=100)
    # A burst: concurrency 14 on one pod (target 0.7): 20 pods, and panic.
    assert kpa.tick(view(2.0, [(0, 28.0, 0.0, 0.0)], inside=14))[0] == 20
    # Load gone on the next tick: still 20 while panicking.
    pods = [(i, 28.0 if i == 0 else 0.0, 0.0, 0.0) for i in range(20)]
    assert kpa.tick(view(4.0, pods, replicas=20))[0] == 20


def hpa_view(now: float, busy_per_pod: float, pods: int, **kw: int) -> ClusterView:
    # cpu seconds accrued since t = 0 at `busy_per_pod` cores each (2 workers per pod).
    return view(now, [(i, 0.0, busy_per_pod * now, 0.0) for i in range(pods)], **kw)


@pytest.mark.parametrize(
    ("busy", "replicas", "expected"),
    [
        (1.4, 4, 4),  # 70 % of 2 cores: on target
        (1.5, 4, 4),  # ratio 1.07: within the 0.1 tolerance
        (2.0, 4, 6),  # ratio 1.43: ceil(4 x 1.43)
        (2.0, 1, 2),  # ceil(1 x 1.43)
        (0.35, 4, 1),  # ratio 0.25: ceil(4 x 0.25)
    ],
)
def test_hpa_follows_cpu_with_tolerance(busy: float, replicas: int, expected: int) -> None:
    hpa = HpaController(interval_s=2.0, target=0.7, min_replicas=1, max_replicas=50)
    desired, nodes = hpa.tick(hpa_view(15.0, busy, replicas))
    assert nodes is None
    assert desired == expected


def test_hpa_syncs_every_15_s_and_stabilizes_scale_down_for_300_s() -> None:
    hpa = HpaController(interval_s=2.0, target=0.7, min_replicas=1, max_replicas=50)
    assert hpa.tick(hpa_view(15.0, 1.4, 4))[0] == 4
    # Idle from now on: the recommendation is 1, but 4 was recommended within 300 s.
    assert hpa.tick(hpa_view(17.0, 0.0, 4))[0] == 4  # between syncs: unchanged
    assert hpa.tick(hpa_view(30.0, 0.0, 4))[0] == 4
    assert hpa.tick(hpa_view(316.0, 0.0, 4))[0] == 1


def test_hpa_scale_up_is_limited_per_sync() -> None:
    hpa = HpaController(interval_s=2.0, target=0.1, min_replicas=1, max_replicas=100)
    # Ratio 20: ceil(2 x 20) = 40, limited to max(2 x 2, 2 + 4) = 6.
    assert hpa.tick(hpa_view(15.0, 4.0, 2))[0] == 6


def test_oracle_plans_each_minute_and_bounds_cost() -> None:
    counts = np.array([0, 600, 6000, 601])  # 0, 10, 100, 10.02 req/s
    pods, nodes = oracle_plan(counts, capacity=10.0, per_node=2, min_nodes=0, max_replicas=8)
    assert pods.tolist() == [0, 1, 8, 2]  # 10 pods wanted in minute 2, at most 8
    assert nodes.tolist() == [0, 1, 4, 1]
    floor, _ = oracle_plan(counts, capacity=10.0, per_node=2, min_nodes=3, max_replicas=8)
    assert floor.tolist() == pods.tolist()
    # A node needed in minute i is billed from the minute it must be ordered (60 s lead).
    bound = oracle_bound(np.array([1, 0, 0, 3]), 60.0, price_per_hour=6.0)
    assert bound["bound_node_hours"] == pytest.approx((1 + 0 + 3 + 3) / 60)
    assert bound["bound_cost_usd"] == pytest.approx(7 / 60 * 6.0)


@pytest.mark.parametrize(
    ("servers", "slo", "expected"),
    [
        # One exponential worker (mu = 1): P(latency > x) = exp(-(1 - rate) x) <= 1 %.
        (1, 10.0, 1 - math.log(100) / 10),
        (1, 20.0, 1 - math.log(100) / 20),
    ],
)
def test_pod_capacity_is_the_rate_that_meets_the_slo(
    servers: int, slo: float, expected: float
) -> None:
    scenario = parse_scenario(
        {
            "service": {"kind": "exponential", "mean_s": 1.0},
            "pods": {"workers": servers, "max_queue": 10**6, "request_timeout_s": 1e9},
            "slo": {"latency_p99_s": slo},
        },
        Path("."),
    )
    # M/M/1 sojourn is exponential with rate mu - lambda.
    assert pod_capacity(scenario) == pytest.approx(expected, rel=0.05)


def test_pod_capacity_grows_with_batching() -> None:
    def capacity(max_batch_rows: int) -> float:
        return pod_capacity(
            parse_scenario(
                {
                    "service": {"kind": "exponential", "mean_s": 0.1, "per_row_s": 0.005},
                    "pods": {"workers": 2, "max_batch_rows": max_batch_rows},
                    "slo": {"latency_p99_s": 1.0},
                },
                Path("."),
            )
        )

    assert capacity(16) > 2 * capacity(1)


def test_hpa_holds_when_pending_pods_flip_a_scale_up() -> None:
    # 1 ready pod at ratio 1.2 and 3 pending: counted idle, the ratio is 0.3. The HPA
    # holds (a flip of direction); it never scales the starting pods away.
    hpa = HpaController(interval_s=2.0, target=0.7, min_replicas=1, max_replicas=50)
    assert hpa.tick(hpa_view(15.0, 1.2 * 0.7 * 2, 1, replicas=4, pending=3))[0] == 4


def test_hpa_stabilizes_on_the_raw_recommendation() -> None:
    # Ratio 20 on 2 pods: raw 40, limited to 6. Within 300 s a lower desire (10 on 20
    # replicas) is held at the max of the raw recommendations (40), so at 20.
    hpa = HpaController(interval_s=2.0, target=0.1, min_replicas=1, max_replicas=100)
    assert hpa.tick(hpa_view(15.0, 4.0, 2))[0] == 6
    assert hpa.tick(hpa_view(30.0, 0.05, 20))[0] == 20


def test_hpa_syncs_every_15_s_whatever_the_controller_interval() -> None:
    data = {
        "duration_s": 100.0,
        "workload": {"kind": "poisson", "rate": 5.0},
        "pods": {"workers": 2, "initial": 1},
        "controller": {"interval_s": 2.0},
        "policy": {"kind": "hpa"},
    }
    from sim.run import run_scenario

    times = [t for t, _, _ in run_scenario(parse_scenario(data, Path("."))).result.decisions]
    assert times[:4] == pytest.approx([15.0, 30.0, 45.0, 60.0])


def test_oracle_bound_bills_a_node_from_its_order_not_a_whole_minute_earlier() -> None:
    # 2 nodes needed from 180 s with a 90 s lead: ordered at 90 s, billed 90 -> 240 s.
    bound = oracle_bound(np.array([0, 0, 0, 2]), 90.0, price_per_hour=1.0)
    assert bound["bound_node_hours"] == pytest.approx(2 * 150 / 3600)
    # No lead: exactly the plan.
    assert oracle_bound(np.array([1, 3]), 0.0, 1.0)["bound_node_hours"] == pytest.approx(4 / 60)
