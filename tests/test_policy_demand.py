"""rscore.autoscaler.policy's demand signal: arrival rate x service time, not queue length.

Pods report what `rscore.autoscaler.scrape.pod_demand` reads from their pages: arrivals per
second, seconds in R per request, the queue now. Unless a case says otherwise, pods have
2 workers and the spec is the CRD default (utilization 0.7): one pod carries 1.4 busy
workers.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from rscore.autoscaler.batch_cost import BatchCostFit, CallCounts
from rscore.autoscaler.policy import (
    MODE_PANIC,
    MODE_STABLE,
    NodePoolSpec,
    Observation,
    PodSample,
    PolicyState,
    ScalingSpec,
    decide,
)


def pod(i: int, rate: float | None, service: float | None, queue: float = 0.0) -> PodSample:
    inflight = min(2.0, (rate or 0.0) * (service or 0.0))
    return PodSample(
        name=f"pod-{i}",
        concurrency=queue + inflight,
        arrival_rate=rate,
        service_s=service,
        queue_depth=queue,
    )


def observe(now: float, ready: tuple[PodSample, ...], **kwargs) -> Observation:
    kwargs.setdefault("current_replicas", len(ready))
    return Observation(now=now, ready_pods=ready, workers_per_pod=2, **kwargs)


def spec(**kwargs) -> ScalingSpec:
    return ScalingSpec(**{"max_replicas": 500, **kwargs})


def steady(state: PolicyState, s: ScalingSpec, pods: tuple[PodSample, ...], until: float):
    """Ticks every 2 s from 0 to `until` with the same pods; the last recommendation."""
    rec = None
    for now in range(0, int(until) + 1, 2):
        rec, state = decide(observe(float(now), pods), state, s)
    return rec, state


@pytest.mark.parametrize(
    ("queue_per_pod", "desired"),
    [
        (0.0, 3),  # 4 pods x 50/s x 20 ms = 4 busy workers / 1.4 -> 3
        (10.0, 3),  # 40 waiting x 20 ms / 30 s = 0.03 more: still 3
        (256.0, 4),  # every queue full: 1,024 x 20 ms / 30 s = 0.68 more -> 4.68 / 1.4 -> 4
        (100_000.0, 6),  # absurd queues add at most the demand itself: 8 / 1.4 -> 6
    ],
    ids=["empty", "short", "full", "capped"],
)
def test_a_full_queue_does_not_multiply_pods(queue_per_pod: float, desired: int) -> None:
    """The KPA would want (queue + in flight) / 1.4 pods: 733 for full queues."""
    pods = tuple(pod(i, rate=50.0, service=0.02, queue=queue_per_pod) for i in range(4))
    rec, _ = decide(observe(100.0, pods), PolicyState(), spec())
    assert rec.desired_replicas == desired
    kpa = math.ceil(sum(p.concurrency for p in pods) / 1.4)
    assert rec.desired_replicas <= max(desired, 6) < kpa or queue_per_pod < 1


def test_a_real_rate_increase_scales_at_once() -> None:
    """A steady 2 pods at 1 busy worker each, then arrivals quadruple: the next ticks
    ask for more at once (the 60-s average alone would take most of a minute), and once
    the 12-s panic window is full of the new load, for all of its pods (panic)."""
    s = spec()
    calm = tuple(pod(i, rate=50.0, service=0.02) for i in range(2))
    rec, state = steady(PolicyState(), s, calm, until=120)
    assert (rec.desired_replicas, rec.mode) == (2, MODE_STABLE)
    surge = tuple(pod(i, rate=200.0, service=0.02) for i in range(2))  # 8 busy workers
    rec, state = decide(observe(122.0, surge), state, s)
    rec, state = decide(observe(124.0, surge), state, s)
    # the panic window (112, 124] holds 4 x 2 and 2 x 8 busy workers: 4 / 1.4 -> 3 pods,
    # where the stable window still says 2
    assert (rec.desired_replicas, rec.mode) == (3, MODE_STABLE)
    for now in (126.0, 128.0, 130.0, 132.0):
        rec, state = decide(observe(now, surge), state, s)
    assert rec.mode == MODE_PANIC
    assert rec.desired_replicas == math.ceil(8 / 1.4)  # the new load's estimate, no more


def test_a_slower_model_is_more_demand_at_the_same_rate() -> None:
    """Demand is rate x service time: the same arrivals at 5x the service time want 5x
    the workers."""
    fast = tuple(pod(i, rate=70.0, service=0.02) for i in range(2))  # 2.8 busy workers
    slow = tuple(pod(i, rate=70.0, service=0.1) for i in range(2))  # 14 busy workers
    assert decide(observe(0.0, fast), PolicyState(), spec())[0].desired_replicas == 2
    assert decide(observe(0.0, slow), PolicyState(), spec())[0].desired_replicas == 10


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        # the pod without a service time yet uses the fleet's (weighted by arrivals): 0.02
        ((pod(0, 100.0, 0.02), pod(1, 40.0, None)), math.ceil((2.0 + 0.8) / 1.4)),
        # no pod knows it (first scrapes): each pod's concurrency stands in
        ((pod(0, None, None, queue=3.0), pod(1, None, None, queue=1.0)), math.ceil(4 / 1.4)),
        # a pod whose scrape failed is extrapolated from the others: 3 x 1 busy worker
        (
            (pod(0, 50.0, 0.02), pod(1, 50.0, 0.02), PodSample("pod-2", None)),
            math.ceil(3.0 / 1.4),
        ),
    ],
    ids=["fleet-service-time", "concurrency-fallback", "missing-extrapolated"],
)
def test_partial_data(pods: tuple[PodSample, ...], expected: int) -> None:
    rec, _ = decide(observe(0.0, pods), PolicyState(), spec())
    assert rec.desired_replicas == expected


def test_the_last_service_time_is_kept_for_a_tick_without_answers() -> None:
    s = spec()
    _, state = decide(observe(0.0, (pod(0, 50.0, 0.04),)), PolicyState(), s)
    assert state.service_s == pytest.approx(0.04)
    # nothing answered in this interval, 300 requests waiting: drained at the last 40 ms
    quiet = (PodSample("pod-0", 300.0, arrival_rate=0.0, service_s=None, queue_depth=300.0),)
    rec, state = decide(observe(2.0, quiet), state, s)
    assert state.service_s == pytest.approx(0.04)
    assert "drain 0.40 of 300 waiting" in rec.reason


def test_missing_data_never_scales_down() -> None:
    """Demand fell, but one pod's scrape failed: hold the current replicas."""
    s = spec()
    busy = tuple(pod(i, rate=14.0, service=0.1) for i in range(10))  # 14: 10 pods
    _, state = steady(PolicyState(), s, busy, until=60)
    quiet = (*(pod(i, rate=1.0, service=0.1) for i in range(9)), PodSample("pod-9", None))
    for now in range(62, 400, 2):
        rec, state = decide(observe(float(now), quiet, current_replicas=10), state, s)
        assert rec.desired_replicas == 10
    # once every pod reports again, it scales down
    quiet = tuple(pod(i, rate=1.0, service=0.1) for i in range(10))
    rec, state = decide(observe(402.0, quiet, current_replicas=10), state, s)
    assert rec.desired_replicas < 10


def test_pods_fill_the_nodes_that_are_paid_for() -> None:
    """Demand for 3 pods on nodes of 4: ceil(3/4) = 1 node, filled to 4 pods; nodes
    cost money, pods on them do not."""
    pool = NodePoolSpec(max_nodes=10, pods_per_node=4)
    pods = tuple(pod(i, rate=50.0, service=0.04) for i in range(2))  # 4 busy workers
    rec, _ = decide(observe(0.0, pods, current_nodes=1), PolicyState(), spec(node_pool=pool))
    assert (rec.desired_replicas, rec.desired_nodes) == (4, 1)
    assert "fill 1 nodes x 4 -> 4 pods" in rec.reason


def test_held_requests_at_zero_scale_ask_for_a_pod() -> None:
    """No pod, two requests held by the activator: scale 0 -> at least 1."""
    s = spec(min_replicas=0)
    rec, _ = decide(
        observe(0.0, (), current_replicas=0, unrouted_concurrency=2.0), PolicyState(), s
    )
    assert rec.desired_replicas >= 1
    rec, _ = decide(observe(0.0, (), current_replicas=0), PolicyState(), s)
    assert rec.desired_replicas == 0


DAY = 86_400.0
MONDAY = 1_700_438_400.0  # 2023-11-20 00:00 UTC


def periodic_demand(t: float) -> float:
    """Busy workers: 1 all day, 20 from 09:00 to 10:00."""
    return 20.0 if 9 * 3600 <= t % DAY < 10 * 3600 else 1.0


@pytest.mark.slow
def test_the_forecast_orders_nodes_ahead_of_a_daily_peak() -> None:
    """A GPU-like pool (1 pod of 2 workers per node, 600 s to provision) under a daily
    peak: on day 1 it reacts; from day 2 on, it has nodes for the peak ordered before
    09:00 while the load is still low."""
    pool = NodePoolSpec(max_nodes=40, pods_per_node=1, provision_s=600.0, scale_down_delay_s=60)
    s = spec(node_pool=pool, max_replicas=40)
    state = PolicyState()
    nodes_before_peak = {}
    ready = 1
    for day in range(3):
        for now in range(int(day * DAY), int((day + 1) * DAY), 10):
            demand = periodic_demand(now)
            rate = demand / 0.1
            pods = tuple(pod(i, rate=rate / ready, service=0.1) for i in range(ready))
            obs = observe(float(now), pods, current_nodes=ready, wall_s=MONDAY + now)
            rec, state = decide(obs, state, s)
            assert rec.desired_nodes is not None
            ready = max(1, rec.desired_replicas)  # the pods appear at once here
            if now % DAY == 9 * 3600 - 300:  # 08:55, five minutes before the peak
                nodes_before_peak[day] = rec.desired_nodes
                assert periodic_demand(now) == 1.0
    assert nodes_before_peak[0] == 1  # no history: reactive
    # the peak's nodes, ordered ahead (the profile smooths over 300 s: 95 % of the level
    # an hour-long peak reaches within its first slot)
    assert nodes_before_peak[1] >= math.ceil(0.9 * 20 / 1.4)
    assert nodes_before_peak[2] >= math.ceil(0.9 * 20 / 1.4)
    assert "forecast" in rec.reason


def test_without_wall_time_there_is_no_forecast() -> None:
    pool = NodePoolSpec(max_nodes=10, pods_per_node=1)
    rec, state = decide(
        observe(0.0, (pod(0, 10.0, 0.1),), current_nodes=1), PolicyState(), spec(node_pool=pool)
    )
    assert rec.forecast_demand is None
    assert state.profile == PolicyState().profile  # nothing learnt without a clock


def test_a_rise_only_the_panic_window_shows_gets_pods_but_no_node() -> None:
    """Noise or the first seconds of a rise: pods at once on the nodes there, but a node
    (minutes to provision, billed until its delay ends) only once the stable window
    sees it too, or the load doubles (panic)."""
    pool = NodePoolSpec(max_nodes=10, pods_per_node=2)
    s = spec(node_pool=pool, stable_window_s=60, panic_window_percentage=10)
    calm = tuple(pod(i, rate=50.0, service=0.02) for i in range(2))  # 2 busy: 2 pods
    state = PolicyState()
    for now in range(0, 62, 2):
        rec, state = decide(observe(float(now), calm, current_nodes=1), state, s)
    assert (rec.desired_replicas, rec.desired_nodes) == (2, 1)
    bump = tuple(pod(i, rate=100.0, service=0.02) for i in range(2))  # 4 busy: 3 pods
    rec, state = decide(observe(62.0, bump, current_nodes=1), state, s)
    rec, state = decide(observe(64.0, bump, current_nodes=1), state, s)
    assert rec.mode == MODE_STABLE
    assert rec.desired_replicas == 3  # up at once...
    assert rec.desired_nodes == 1  # ...but no node for a rise of seconds
    for now in range(66, 130, 2):  # it lasts: the stable window follows, a node is ordered
        rec, state = decide(observe(float(now), bump, current_nodes=1), state, s)
    assert rec.desired_nodes == 2


def test_an_unread_activator_holds_pods_and_nodes_in_decide() -> None:
    """Held requests that could not be counted are unknown demand: decide itself scales
    neither pods nor nodes down (the controller and the simulator alike)."""
    pool = NodePoolSpec(max_nodes=10, pods_per_node=1, scale_down_delay_s=0)
    s = spec(min_replicas=0, node_pool=pool)
    idle = (pod(0, 0.0, 0.02), pod(1, 0.0, 0.02), pod(2, 0.0, 0.02))
    known, _ = decide(observe(0.0, idle, current_nodes=3), PolicyState(), s)
    assert known.desired_replicas == 1  # the rate limit: 3 -> floor(3 / 2)
    assert known.desired_nodes is not None
    assert known.desired_nodes < 3
    unknown, _ = decide(
        observe(0.0, idle, current_nodes=3, unrouted_unknown="activator x: timed out"),
        PolicyState(),
        s,
    )
    assert (unknown.desired_replicas, unknown.desired_nodes) == (3, 3)
    assert "held requests unknown (activator x: timed out)" in unknown.reason


def test_nodes_are_never_released_under_pods_the_policy_keeps() -> None:
    """Load falls from 5 pods' worth (on 3 nodes, filled to 6 pods) to 1: the scale-down
    delay keeps the 5 pods for its 300 s, so their 3 nodes stay (with no node delay of
    their own, releasing one would only evict kept pods); once the pods go, so do the
    nodes."""
    pool = NodePoolSpec(max_nodes=10, pods_per_node=2, scale_down_delay_s=0)
    s = spec(node_pool=pool, stable_window_s=60, scale_down_delay_s=300)
    busy = tuple(pod(i, rate=50.0, service=0.02) for i in range(6))  # 6 busy: 5 pods
    state = PolicyState()
    for now in range(0, 62, 2):
        rec, state = decide(observe(float(now), busy, current_nodes=3), state, s)
    assert (rec.desired_replicas, rec.desired_nodes) == (6, 3)
    quiet = tuple(pod(i, rate=1.0, service=0.02) for i in range(6))  # 0.12 busy: 1 pod
    for now in range(62, 360, 2):
        rec, state = decide(observe(float(now), quiet, current_nodes=3), state, s)
        assert (rec.desired_replicas, rec.desired_nodes) == (6, 3), rec.reason
    assert "3 hosting the 5 pods kept" in rec.reason
    for now in range(360, 430, 2):  # the stable average took a few ticks to fall
        rec, state = decide(observe(float(now), quiet, current_nodes=3), state, s)
    # the delay is over: the rate limit keeps 3 pods (6 / 2), on 2 nodes filled to 4
    assert (rec.desired_replicas, rec.desired_nodes) == (4, 2), rec.reason


def test_a_batchable_model_is_sized_for_the_batches_fewer_pods_form() -> None:
    """Calls cost 80 ms + 4 ms a row (the fit knows it). Four pods take 50 requests/s
    each, alone in their calls: 84 ms each, 16.8 busy workers -> 12 pods. Batchable up to
    32 rows, a call may double to 22 rows: 7.64 ms a request, 1.53 busy workers -> 2
    pods. The same pods of a model that is not batchable still ask for 12."""
    known = BatchCostFit().observe(
        0.0,
        [CallCounts(c, r, 0.08 * c + 0.004 * r, r, 32) for c, r in [(100, 100), (50, 150)] * 20],
    )
    assert known.curve() is not None

    def pods(max_batch_rows: int) -> tuple[PodSample, ...]:
        return tuple(
            replace(
                pod(i, rate=50.0, service=0.084),
                calls=CallCounts(100, 100, 8.4, 100, max_batch_rows),
            )
            for i in range(4)
        )

    s = spec(max_scale_down_rate=100.0)
    batched, _ = decide(observe(10.0, pods(32)), PolicyState(batch_fit=known), s)
    assert batched.desired_replicas == math.ceil(200 * (0.08 / 22 + 0.004) / 1.4)  # 2
    assert "R call 80.00 ms + 4.000 ms per row" in batched.reason
    unbatched, _ = decide(observe(10.0, pods(0)), PolicyState(batch_fit=known), s)
    assert unbatched.desired_replicas == 12  # 16.8 / 1.4
    unknown, _ = decide(observe(10.0, pods(32)), PolicyState(), s)
    assert unknown.desired_replicas == 12  # no curve yet: today's cost
