"""The policies as the engine drives them: what the rscore policy observes, and the
KPA and HPA emulations' rules (the oracle's are in test_sim_oracle.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rscore.autoscaler.policy import ScalingSpec
from rscore.sim.engine import ClusterView, PodView, engine_for
from rscore.sim.policies import HpaController, KpaController, RscoreController
from rscore.sim.scenario import parse_scenario


def view(
    now: float,
    pods: list[tuple[int, float, float, float]],
    *,
    inside: int = 0,
    counters: tuple[int, int, int] = (0, 0, 0),
    **kw: int,
) -> ClusterView:
    """pods: (id, concurrency seconds, cpu seconds, ready at); every pod has `inside`
    requests in it and the same `counters` (arrivals, served, queued)."""
    defaults = {"replicas": len(pods), "pending": 0, "unrouted": 0, "nodes": 1, "workers": 2,
                "per_node": 2}  # fmt: skip
    defaults.update(kw)
    return ClusterView(
        now=now,
        pods=tuple(PodView(p, c, u, r, inside, *counters) for p, c, u, r in pods),
        **defaults,
    )


def test_rscore_reads_the_pods_counters_as_the_controller_reads_pages() -> None:
    """The pods' counters become PodScrapes and go through the controller's own
    DemandTracker: a first scrape has only the gauges (3 inside each: concurrency
    stands in, 6 busy workers); the next gives arrivals x service time."""
    controller = RscoreController(ScalingSpec(max_replicas=10), interval_s=2.0)
    first = view(5.0, [(0, 10.0, 0.0, 0.0), (1, 2.0, 0.0, 0.0)], inside=3, counters=(3, 1, 2),
                 unrouted=1)  # fmt: skip
    controller.tick(first)
    assert controller.state.samples[-1] == (5.0, pytest.approx(6.0))
    # 2 s later: pod 0 took 40 more requests (43 routed, 1 inside: 42 finished; the
    # one inside is in flight) and started 42 calls with 0.84 s in R (20 ms each):
    # 20/s x 0.02 = 0.4 busy workers; pod 1 the same.
    second = view(7.0, [(0, 11.0, 0.84, 0.0), (1, 3.0, 0.84, 0.0)], inside=1,
                  counters=(43, 43, 0))  # fmt: skip
    controller.tick(second)
    assert controller.state.samples[-1] == (7.0, pytest.approx(0.8))
    assert controller.state.service_s == pytest.approx(0.02)


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
    from rscore.sim.run import run_scenario

    times = [t for t, _, _ in run_scenario(parse_scenario(data, Path("."))).result.decisions]
    assert times[:4] == pytest.approx([15.0, 30.0, 45.0, 60.0])


def test_rscore_decides_on_the_readings_taken_ahead_of_its_tick() -> None:
    """As the controller's streams, the simulator reads the pods before the tick: the
    tick uses those readings, and reads now only a pod that was not there to read."""
    ahead = RscoreController(ScalingSpec(max_replicas=10), interval_s=2.0)
    ahead.read(view(4.0, [(0, 8.0, 0.0, 0.0), (1, 8.0, 0.0, 0.0)], inside=3))
    # At the tick the two pods are idle and a third, ready since, holds 1 request.
    at_tick = ClusterView(
        now=5.0,
        pods=(PodView(0, 8.0, 0.0, 0.0), PodView(1, 8.0, 0.0, 0.0), PodView(2, 0.0, 0.0, 4.5, 1)),
        replicas=3, pending=0, unrouted=0, nodes=2, workers=2, per_node=2,
    )  # fmt: skip
    ahead.tick(at_tick)
    assert ahead.state.samples[-1] == (5.0, pytest.approx(3 + 3 + 1))
    at_tick_only = RscoreController(ScalingSpec(max_replicas=10), interval_s=2.0)
    at_tick_only.tick(at_tick)  # nothing read ahead: every pod read at the tick
    assert at_tick_only.state.samples[-1] == (5.0, pytest.approx(1))


@pytest.mark.parametrize(
    ("lead_s", "reads"), [(None, [1.7, 3.7, 5.7]), (0.5, [1.5, 3.5, 5.5]), (0.0, [])]
)
def test_the_engine_reads_ahead_of_each_tick(lead_s: float | None, reads: list[float]) -> None:
    """The rscore policy's pods are read `reading_lead_s` before each tick (by default
    the streams' mean: 0.15 of the interval); 0 reads them at the tick."""
    controller_table: dict[str, float] = {"interval_s": 2.0}
    if lead_s is not None:
        controller_table["reading_lead_s"] = lead_s
    data = {
        "duration_s": 7.0,
        "workload": {"kind": "poisson", "rate": 5.0},
        "pods": {"workers": 2, "initial": 1},
        "controller": controller_table,
        "policy": {"kind": "rscore"},
    }
    scenario = parse_scenario(data, Path("."))
    seen: list[tuple[str, float]] = []

    class Recorder(RscoreController):
        def read(self, v: ClusterView) -> None:
            seen.append(("read", v.now))
            super().read(v)

        def tick(self, v: ClusterView) -> tuple[int, int | None]:
            seen.append(("tick", v.now))
            return super().tick(v)

    engine_for(scenario, Recorder(ScalingSpec(max_replicas=4), interval_s=2.0)).run()
    assert [t for kind, t in seen if kind == "read"][:3] == pytest.approx(reads)
    assert [t for kind, t in seen if kind == "tick"][:3] == pytest.approx([2.0, 4.0, 6.0])
