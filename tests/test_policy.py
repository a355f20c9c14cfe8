"""rscore.autoscaler.policy: tables of single decisions, then scenarios that step `now`.

Unless a case says otherwise the spec is the CRD default with max_replicas=100 and pods
have 4 workers, so one pod's capacity is 4 workers * 1.0 * 0.7 = 2.8 concurrent requests.
"""

from __future__ import annotations

import dataclasses

import pytest

from rscore.autoscaler.policy import (
    MODE_PANIC,
    MODE_STABLE,
    NodePoolSpec,
    Observation,
    PodSample,
    PolicyState,
    Recommendation,
    ScalingSpec,
    decide,
)

S, P = MODE_STABLE, MODE_PANIC
# One worker per pod, 1.0 per worker, utilization 1.0: capacity 1 request per pod.
UNIT = {"target_utilization": 1.0}


def pods(*concurrency, cpu=None, cpu_req=1000.0, mem=None, mem_req=1000.0):
    """Ready pods with the given concurrency; cpu/mem usage lists default to no data."""
    cpu = cpu if cpu is not None else [None] * len(concurrency)
    mem = mem if mem is not None else [None] * len(concurrency)
    return tuple(
        PodSample(
            name=f"pod-{i}",
            concurrency=c,
            cpu_usage_millicores=cpu[i],
            cpu_request_millicores=cpu_req,
            memory_usage_bytes=mem[i],
            memory_request_bytes=mem_req,
        )
        for i, c in enumerate(concurrency)
    )


def observe(now=100.0, ready=(), current=None, workers=4, **kwargs):
    current = len(ready) if current is None else current
    return Observation(
        now=now, ready_pods=ready, current_replicas=current, workers_per_pod=workers, **kwargs
    )


def spec(**kwargs):
    return ScalingSpec(**{"max_replicas": 100, **kwargs})


def one(obs, spec_=None, state=None) -> Recommendation:
    rec, _ = decide(obs, state or PolicyState(), spec_ or spec())
    return rec


# --- capacity, stable and panic from one fresh sample --------------------------------

CAPACITY_CASES = [
    # (concurrency per pod, workers, spec kwargs, desired, mode)
    # 4 pods * 2.0 = 8.0; 8.0 / 2.8 = 2.86 -> 3; panic 3/4 = 0.75 < 2.
    ((2.0,) * 4, 4, {}, 3, S),
    # 4 * 3.0 = 12.0; 12 / 2.8 = 4.29 -> 5; 5/4 = 1.25 < 2.
    ((3.0,) * 4, 4, {}, 5, S),
    # 2 * 6.0 = 12.0 -> 5; 5/2 = 2.5 >= 2 -> Panic; max(5, no previous) = 5.
    ((6.0,) * 2, 4, {}, 5, P),
    # capacity 1 * 1.0 * 0.5 = 0.5; 3 * 1.0 / 0.5 = 6; 6/3 = 2.0, exactly the threshold.
    ((1.0,) * 3, 1, {"target_utilization": 0.5}, 6, P),
    # Same, threshold 300%: 2.0 < 3.0 -> Stable, 6.
    ((1.0,) * 3, 1, {"target_utilization": 0.5, "panic_threshold_percentage": 300}, 6, S),
    # capacity 2 workers * 3.0 * 0.5 = 3.0; 3 * 2.5 = 7.5 -> ceil(2.5) = 3.
    ((2.5,) * 3, 2, {"target_concurrency_per_worker": 3.0, "target_utilization": 0.5}, 3, S),
    # idle: 0 -> 0, but the scale-down rate floors it at floor(4/2) = 2.
    ((0.0,) * 4, 4, {}, 2, S),
]


@pytest.mark.parametrize(
    ("concurrency", "workers", "kwargs", "desired", "mode"),
    CAPACITY_CASES,
    ids=[
        "below-capacity",
        "above-capacity",
        "panic-2x",
        "panic-at-threshold",
        "threshold-300-stable",
        "capacity-from-spec",
        "idle-rate-limited",
    ],
)
def test_capacity_and_panic_entry(concurrency, workers, kwargs, desired, mode):
    rec = one(observe(ready=pods(*concurrency), workers=workers), spec(**kwargs))
    assert (rec.desired_replicas, rec.mode) == (desired, mode)
    assert rec.observed_concurrency == pytest.approx(sum(concurrency))


WINDOW_CASES = [
    # (previous samples, now, this tick's total, stable avg, panic avg, desired, mode, kept)
    # stable window (40, 100] keeps t=70 and t=100; t=40 is exactly on the edge and goes.
    # stable (4 + 16) / 2 = 10 -> ceil(10 / 2.8 = 3.57) = 4; panic window (94, 100] holds
    # only 16 -> ceil(5.71) = 6; 6/4 = 1.5 < 2 -> Stable, but up at once: max(4, 6) = 6.
    (((40.0, 4.0), (70.0, 4.0)), 100.0, 16.0, 10.0, 16.0, 6, S, (70.0, 100.0)),
    # panic window (94, 100] holds t=96 (20) and 100 (20) -> 20 / 2.8 = 7.14 -> 8; 8/4 = 2
    # -> Panic; stable (0 + 20 + 20) / 3 = 13.3 -> 5 is ignored in panic: max(8, -) = 8.
    (((50.0, 0.0), (96.0, 20.0)), 100.0, 20.0, 40.0 / 3, 20.0, 8, P, (50.0, 96.0, 100.0)),
]


@pytest.mark.parametrize(
    ("previous", "now", "total", "stable", "panic", "desired", "mode", "kept"),
    WINDOW_CASES,
    ids=["stable-window-prunes", "panic-window-average"],
)
def test_windows(previous, now, total, stable, panic, desired, mode, kept):
    state = PolicyState(samples=previous, last_desired=4)
    obs = observe(now=now, ready=pods(*([total / 4] * 4)))
    rec, new = decide(obs, state, spec())
    assert rec.observed_concurrency == pytest.approx(stable)
    assert rec.observed_panic_concurrency == pytest.approx(panic)
    assert (rec.desired_replicas, rec.mode) == (desired, mode)
    assert tuple(t for t, _ in new.samples) == kept
    assert state.samples == previous  # the input state is untouched


PANIC_STATE_CASES = [
    # (panic_until, last_desired, now, per-pod concurrency of 4 pods, desired, mode, until)
    # In panic (100 < 130), demand gone: 0 -> never down, max(0, 9) = 9.
    (130.0, 9, 100.0, 0.0, 9, P, 130.0),
    # In panic and still over: 4 * 6.0 = 24 -> ceil(8.57) = 9 over 4 pods = 2.25 -> the
    # panic is extended to now + 60 = 160; max(9, 7) = 9.
    (130.0, 7, 100.0, 6.0, 9, P, 160.0),
    # Panic ends at panic_until exactly: 0 -> 0, rate floor(4/2) = 2 -> Stable 2.
    (100.0, 9, 100.0, 0.0, 2, S, None),
]


@pytest.mark.parametrize(
    ("until", "last", "now", "conc", "desired", "mode", "new_until"),
    PANIC_STATE_CASES,
    ids=["panic-holds", "panic-extends", "panic-exits"],
)
def test_panic_state(until, last, now, conc, desired, mode, new_until):
    state = PolicyState(panic_until=until, last_desired=last)
    rec, new = decide(observe(now=now, ready=pods(*[conc] * 4)), state, spec())
    assert (rec.desired_replicas, rec.mode) == (desired, mode)
    assert new.panic_until == new_until


# --- rate limits ----------------------------------------------------------------------

RATE_CASES = [
    # (per-pod concurrency, ready count, current, unrouted, spec kwargs, desired)
    # 2 pods * 20 = 40 / 2.8 = 14.3 -> 15; up limit ceil(2 * 2) = 4.
    (20.0, 2, None, 0.0, {"max_scale_up_rate": 2}, 4),
    # 10 idle pods: 0, down limit floor(10 / 2) = 5.
    (0.0, 10, None, 0.0, {}, 5),
    # rate 4: floor(10 / 4) = 2.
    (0.0, 10, None, 0.0, {"max_scale_down_rate": 4}, 2),
    # no ready pods, none running: unrouted 10 / 2.8 -> 4; up limit ceil(2 * max(0, 1)) = 2.
    (0.0, 0, 0, 10.0, {"max_scale_up_rate": 2, "min_replicas": 0}, 2),
    # rate 1000 never binds here: 15.
    (20.0, 2, None, 0.0, {}, 15),
]


@pytest.mark.parametrize(
    ("conc", "ready", "current", "unrouted", "kwargs", "desired"),
    RATE_CASES,
    ids=["up-limit", "down-limit-2", "down-limit-4", "up-limit-from-zero", "no-limit"],
)
def test_rate_limits(conc, ready, current, unrouted, kwargs, desired):
    obs = observe(ready=pods(*[conc] * ready), current=current, unrouted_concurrency=unrouted)
    assert one(obs, spec(**kwargs)).desired_replicas == desired


# --- scale-down delay -----------------------------------------------------------------

DELAY_CASES = [
    # 4 pods * 2.0 -> 3 now (see CAPACITY_CASES); delay 30s at now=100: window (70, 100].
    # (previous recommendations, desired)
    (((70.0, 8), (85.0, 6)), 6),  # 70 falls out, 85 -> 6 stays: max(6, 3) = 6
    (((60.0, 8), (69.0, 6)), 3),  # both older than 30s: 3
    (((99.0, 2),), 3),  # lower earlier values never hold it down: max(2, 3) = 3
    ((), 3),
]


@pytest.mark.parametrize(
    ("previous", "desired"), DELAY_CASES, ids=["holds-max", "expired", "lower-past", "empty"]
)
def test_scale_down_delay(previous, desired):
    state = PolicyState(recommendations=previous)
    rec, new = decide(
        observe(now=100.0, ready=pods(2.0, 2.0, 2.0, 2.0)), state, spec(scale_down_delay_s=30)
    )
    assert rec.desired_replicas == desired
    assert new.recommendations[-1] == (100.0, 3)  # the undelayed value is what is recorded


# --- HPA signals ----------------------------------------------------------------------

HPA_CASES = [
    # (cpu usages of 4 pods (request 1000m), target, desired); concurrency 0 everywhere,
    # so the concurrency signal is 0 and the down limit is floor(4/2) = 2.
    # 800/1000 / 0.5 = 1.6 -> ceil(4 * 1.6 = 6.4) = 7.
    ([800.0] * 4, 0.5, 7),
    # 530/1000 / 0.5 = 1.06, within 0.1 -> keep 4.
    ([530.0] * 4, 0.5, 4),
    # 300/1000 / 0.5 = 0.6 -> ceil(2.4) = 3.
    ([300.0] * 4, 0.5, 3),
    # missing on a scale-up: known 900/1000/0.5 = 1.8; the missing pod counts 0%:
    # 2700 / 4000 / 0.5 = 1.35 -> ceil(5.4) = 6.
    ([900.0, 900.0, 900.0, None], 0.5, 6),
    # missing on a scale-down: known 100/1000/0.5 = 0.2; the missing pod counts 100%:
    # (300 + 1000) / 4000 / 0.5 = 0.65 -> ceil(2.6) = 3 (ignoring it would give 1 -> 2).
    ([100.0, 100.0, 100.0, None], 0.5, 3),
    # direction flips: known 600/1000/0.5 = 1.2 up; with 0% for the missing pod
    # 1800 / 4000 / 0.5 = 0.9 -> down: keep 4.
    ([600.0, 600.0, 600.0, None], 0.5, 4),
    # no usage at all: keep current 4 (never down on missing data).
    ([None] * 4, 0.5, 4),
]


@pytest.mark.parametrize(
    ("cpu", "target", "desired"),
    HPA_CASES,
    ids=[
        "cpu-up",
        "cpu-tolerance",
        "cpu-down",
        "missing-up-0pct",
        "missing-down-100pct",
        "missing-flips",
        "no-usage",
    ],
)
def test_cpu_hpa(cpu, target, desired):
    obs = observe(ready=pods(0.0, 0.0, 0.0, 0.0, cpu=cpu))
    assert one(obs, spec(cpu_target_utilization=target)).desired_replicas == desired


MAX_SIGNAL_CASES = [
    # (concurrency per pod, cpu, mem, desired)
    # cpu 1.6 -> 7; memory 900/1000 / 0.8 = 1.125 -> ceil(4.5) = 5; concurrency 0 -> max 7.
    (0.0, [800.0] * 4, [900.0] * 4, 7),
    # cpu 0.6 -> 3; memory 1.125 -> 5: max 5.
    (0.0, [300.0] * 4, [900.0] * 4, 5),
    # concurrency 4 * 6.0 = 24 / 2.8 -> 9 beats cpu 7 and memory 5.
    (6.0, [800.0] * 4, [900.0] * 4, 9),
]


@pytest.mark.parametrize(
    ("conc", "cpu", "mem", "desired"),
    MAX_SIGNAL_CASES,
    ids=["cpu-wins", "memory-wins", "concurrency-wins"],
)
def test_max_over_signals(conc, cpu, mem, desired):
    obs = observe(ready=pods(*[conc] * 4, cpu=cpu, mem=mem))
    s = spec(cpu_target_utilization=0.5, memory_target_utilization=0.8)
    assert one(obs, s).desired_replicas == desired


# --- clamps and missing data ----------------------------------------------------------

CLAMP_CASES = [
    # (per-pod concurrency, pods, spec kwargs, desired)
    (0.0, 4, {"min_replicas": 3, "max_replicas": 5}, 3),  # 0 -> rate 2 -> min 3
    (10.0, 4, {"min_replicas": 3, "max_replicas": 5}, 5),  # 40 / 2.8 -> 15 -> max 5
    (0.0, 1, {"min_replicas": 0}, 0),  # 0, rate floor(1/2) = 0, min 0 -> scale to zero
    (0.0, 1, {}, 1),  # default min 1
]


@pytest.mark.parametrize(
    ("conc", "count", "kwargs", "desired"),
    CLAMP_CASES,
    ids=["min", "max", "to-zero", "default-min"],
)
def test_clamps(conc, count, kwargs, desired):
    assert one(observe(ready=pods(*[conc] * count)), spec(**kwargs)).desired_replicas == desired


MISSING_CASES = [
    # (pod concurrency, current, desired, mode, reason fragment)
    # one scrape failed, the rest idle: 0 -> hold current 4.
    ((0.0, 0.0, 0.0, None), 4, 4, S, "missing concurrency data, hold 4"),
    # every scrape failed: nothing recorded -> no data yet, hold 4.
    ((None,) * 4, 4, 4, S, "no data yet"),
    # one failed, 3 at 6.0: extrapolated 6.0 * 4 = 24 -> 9; 9/4 = 2.25 -> Panic, up is fine.
    ((6.0, 6.0, 6.0, None), 4, 9, P, "-> 9"),
    # no ready pod while 3 are starting: hold 3.
    ((), 3, 3, S, "no data yet"),
]


@pytest.mark.parametrize(
    ("conc", "current", "desired", "mode", "reason"),
    MISSING_CASES,
    ids=["one-missing-holds", "all-missing", "missing-scales-up", "none-ready"],
)
def test_missing_data_never_scales_down(conc, current, desired, mode, reason):
    rec = one(observe(ready=pods(*conc), current=current))
    assert (rec.desired_replicas, rec.mode) == (desired, mode)
    assert reason in rec.reason


def test_no_data_yet_is_not_an_error():
    rec, state = decide(observe(ready=pods(None, None), current=2), PolicyState(), spec())
    assert rec == Recommendation(
        desired_replicas=2,
        desired_nodes=None,
        mode=S,
        reason="no data yet",
        observed_concurrency=None,
        observed_panic_concurrency=None,
    )
    assert state.samples == ()


# --- nodes ----------------------------------------------------------------------------

NODE_CASES = [
    # (replicas pinned by min=max, pool kwargs, obs kwargs, desired nodes)
    # ceil(10 / 4) = 3, up from 1 at once.
    (10, {"pods_per_node": 4}, {"current_nodes": 1}, 3),
    # floor(8000 / 1500) = 5 per node; ceil(10 / 5) = 2.
    (
        10,
        {},
        {
            "current_nodes": 2,
            "node_allocatable_cpu_millicores": 8000.0,
            "pod_cpu_request_millicores": 1500.0,
        },
        2,
    ),
    # a pod bigger than a node still gets 1 per node: 10 nodes, clamped to max 8; up from 2.
    (
        10,
        {"max_nodes": 8},
        {
            "current_nodes": 2,
            "node_allocatable_cpu_millicores": 1000.0,
            "pod_cpu_request_millicores": 1500.0,
        },
        8,
    ),
    # ceil(1 / 4) = 1, min_nodes 2 -> 2.
    (1, {"pods_per_node": 4, "min_nodes": 2}, {"current_nodes": 2}, 2),
    # unknown pods per node: hold current.
    (10, {}, {"current_nodes": 3}, 3),
    # current unknown: the computed value, ceil(10 / 4) = 3.
    (10, {"pods_per_node": 4}, {}, 3),
    # down from 5 to 3 waits for the delay: hold 5.
    (10, {"pods_per_node": 4}, {"current_nodes": 5}, 5),
    # memory is tighter: 8 CPUs fit 5 pods of 1.5, but 16 GiB fit 3 of 5 GiB; ceil(10/3) = 4.
    (
        10,
        {},
        {
            "current_nodes": 2,
            "node_allocatable_cpu_millicores": 8000.0,
            "pod_cpu_request_millicores": 1500.0,
            "node_allocatable_memory_bytes": 16 * 2**30,
            "pod_memory_request_bytes": 5 * 2**30,
        },
        4,
    ),
    # the pool's measured memory per pod (1 GiB) beats a generous request: CPU decides (5).
    (
        10,
        {"pod_memory_bytes": float(2**30)},
        {
            "current_nodes": 2,
            "node_allocatable_cpu_millicores": 8000.0,
            "pod_cpu_request_millicores": 1500.0,
            "node_allocatable_memory_bytes": 16 * 2**30,
            "pod_memory_request_bytes": 8 * 2**30,
        },
        2,
    ),
    # memory alone, no CPU request: floor(16 / 6) = 2 per node; ceil(10 / 2) = 5.
    (
        10,
        {"pod_memory_bytes": 6.0 * 2**30},
        {"current_nodes": 5, "node_allocatable_memory_bytes": 16 * 2**30},
        5,
    ),
]


@pytest.mark.parametrize(
    ("replicas", "pool", "obs_kwargs", "nodes"),
    NODE_CASES,
    ids=[
        "up-at-once",
        "from-allocatable",
        "at-least-one-per-node",
        "min-nodes",
        "unknown-per-node",
        "unknown-current",
        "down-waits",
        "memory-tighter",
        "measured-memory",
        "memory-alone",
    ],
)
def test_nodes(replicas, pool, obs_kwargs, nodes):
    s = spec(
        min_replicas=replicas,
        max_replicas=replicas,
        node_pool=NodePoolSpec(**{"max_nodes": 10, **pool}),
    )
    obs = observe(ready=pods(*[1.0] * replicas), **obs_kwargs)
    rec = one(obs, s)
    assert (rec.desired_replicas, rec.desired_nodes) == (replicas, nodes)


def test_zero_replicas_zero_nodes():
    # min_replicas 0, one idle pod: 0 replicas (floor(1/2) = 0) -> ceil(0 / 2) = 0 nodes.
    s = spec(
        min_replicas=0, node_pool=NodePoolSpec(max_nodes=4, pods_per_node=2, scale_down_delay_s=0)
    )
    rec = one(observe(ready=pods(0.0), current_nodes=1), s)
    assert (rec.desired_replicas, rec.desired_nodes) == (0, 0)


# --- validation -----------------------------------------------------------------------

INVALID_SPECS = [
    ({"max_replicas": 0}, "max_replicas"),
    ({"min_replicas": -1}, "min_replicas"),
    ({"min_replicas": 5, "max_replicas": 4}, "min_replicas"),
    ({"target_concurrency_per_worker": 0}, "target_concurrency_per_worker"),
    ({"target_utilization": 1.5}, "target_utilization"),
    ({"stable_window_s": 0}, "stable_window_s"),
    ({"panic_window_percentage": 0}, "panic_window_percentage"),
    ({"panic_threshold_percentage": 100}, "panic_threshold_percentage"),
    ({"max_scale_up_rate": 1}, "max_scale_up_rate"),
    ({"max_scale_down_rate": 0.5}, "max_scale_down_rate"),
    ({"scale_down_delay_s": -1}, "scale_down_delay_s"),
    ({"cpu_target_utilization": 0}, "cpu_target_utilization"),
    ({"memory_target_utilization": -0.1}, "memory_target_utilization"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    INVALID_SPECS,
    ids=[
        "max-zero",
        "min-negative",
        "min-above-max",
        "target-concurrency",
        "target-utilization",
        "stable-window",
        "panic-window",
        "panic-threshold",
        "up-rate",
        "down-rate",
        "delay",
        "cpu-target",
        "memory-target",
    ],
)
def test_invalid_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScalingSpec(**{"max_replicas": 10, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_nodes": -1, "max_nodes": 2}, "min_nodes"),
        ({"max_nodes": 0}, "max_nodes"),
        ({"min_nodes": 3, "max_nodes": 2}, "min_nodes"),
        ({"max_nodes": 2, "pods_per_node": 0}, "pods_per_node"),
        ({"max_nodes": 2, "scale_down_delay_s": -1}, "scale_down_delay_s"),
    ],
    ids=["min-negative", "max-zero", "min-above-max", "pods-per-node", "delay"],
)
def test_invalid_node_pool(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NodePoolSpec(**kwargs)


def test_defaults():
    s = ScalingSpec(max_replicas=10)
    assert (s.min_replicas, s.target_concurrency_per_worker, s.target_utilization) == (1, 1.0, 0.7)
    assert (s.stable_window_s, s.panic_window_s, s.panic_threshold_percentage) == (60, 12.0, 200)
    assert (s.max_scale_up_rate, s.max_scale_down_rate, s.scale_down_delay_s) == (1000, 2, 0)
    assert NodePoolSpec(max_nodes=3).scale_down_delay_s == 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_replicas = 3  # type: ignore[misc]


# --- scenarios that step time ---------------------------------------------------------


def run_burst(totals, spec_, start_replicas):
    """Every 5 s: pods become ready at the last desired count and share the total."""
    state, current, out = PolicyState(), start_replicas, []
    for i, total in enumerate(totals):
        ready = pods(*[total / current] * current)
        rec, state = decide(observe(now=5.0 * i, ready=ready, workers=1), state, spec_)
        out.append((rec.desired_replicas, rec.mode))
        current = rec.desired_replicas
    return out


# Capacity 1 per pod; stable window 20 s, panic window 50% = 10 s; ticks every 5 s.
BURST = [2, 2, 2, 2, 10, 10, 10, 1, 1, 1, 1, 1, 1]
BURST_CASES = [
    (
        {},
        [
            # t=0..15: 2 -> 2; panic 2/2 = 1.
            (2, S),
            (2, S),
            (2, S),
            (2, S),
            # t=20: stable (2+2+2+10)/4 = 4; panic (15, 20]: (2+10)/2 = 6; 6/2 = 3 -> Panic
            # until 40; max(6, 2) = 6.
            (6, P),
            # t=25: panic (15, 25]: 10 -> 10 (10/6 < 2, but still in panic): max(10, 6) = 10.
            (10, P),
            # t=30: panic 10 -> max(10, 10) = 10.
            (10, P),
            # t=35: the burst ends; panic (25, 35]: (10+1)/2 = 5.5 -> 6; never down: 10.
            (10, P),
            # t=40: panic over; stable (20, 40]: (10+10+1+1)/4 = 5.5 -> 6; floor(10/2) = 5.
            (6, S),
            # t=45: (10+1+1+1)/4 = 3.25 -> 4; floor(6/2) = 3.
            (4, S),
            # t=50: 1 -> 1, limited to floor(4/2) = 2.
            (2, S),
            # t=55: 1, floor(2/2) = 1.
            (1, S),
            (1, S),
        ],
    ),
    (
        {"scale_down_delay_s": 10},
        [
            (2, S),
            (2, S),
            (2, S),
            (2, S),
            (6, P),
            (10, P),
            (10, P),
            (10, P),
            # t=40: computed 6, window (30, 40] holds 35 -> 10: 10.
            (10, S),
            # t=45: 3.25 -> 4, floor(10/2) = 5; window (35, 45]: 40 -> 6, 45 -> 5: 6.
            (6, S),
            # t=50: 1 -> floor(6/2) = 3; window 45 -> 5, 50 -> 3: 5.
            (5, S),
            # t=55: 1 -> floor(5/2) = 2; window 50 -> 3: 3.
            (3, S),
            # t=60: 1 -> floor(3/2) = 1; window 55 -> 2: 2.
            (2, S),
        ],
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), BURST_CASES, ids=["no-delay", "scale-down-delay-10s"]
)
def test_burst_and_decay(kwargs, expected):
    s = spec(stable_window_s=20, panic_window_percentage=50, **UNIT, **kwargs)
    assert run_burst(BURST, s, start_replicas=2) == expected


def test_zero_to_n_with_nodes():
    """A GPU pool idling at zero: demand arrives at the gateway, pods and nodes follow."""
    pool = NodePoolSpec(max_nodes=4, pods_per_node=2, scale_down_delay_s=30)
    s = spec(min_replicas=0, stable_window_s=20, panic_window_percentage=50, node_pool=pool, **UNIT)
    state = PolicyState()
    steps = [
        # (now, ready concurrency, current replicas, current nodes, unrouted)
        (0.0, (), 0, 0, 0.0),  # nothing: 0 replicas, 0 nodes
        # 3 waiting at the gateway, no service time known yet: each counts as a busy
        # worker to drain -> 3 pods; 3 / max(current 0 -> 1) >= 2 -> Panic; nodes
        # ceil(3/2) = 2 at once, and pods fill the 2 nodes: 4.
        (5.0, (), 0, 0, 3.0),
        # pods starting (2 current, none ready), the 3 still held: the same -> 4 pods.
        (10.0, (), 2, 1, 3.0),
        # 3 ready pods at concurrency 1.0 (no arrivals reported: concurrency stands in):
        # 3 busy workers -> 3 pods, 2 nodes, filled to 4; still in panic.
        (15.0, (1.0, 1.0, 1.0), 3, 2, 0.0),
    ]
    got = []
    for now, conc, current, nodes, unrouted in steps:
        obs = observe(
            now=now,
            ready=pods(*conc),
            current=current,
            workers=1,
            current_nodes=nodes,
            unrouted_concurrency=unrouted,
        )
        rec, state = decide(obs, state, s)
        got.append((rec.desired_replicas, rec.desired_nodes, rec.mode))
    assert got == [(0, 0, S), (4, 2, P), (4, 2, P), (4, 2, P)]


def test_node_scale_down_delay():
    """Nodes drop only after the desire has stayed below current for 30 s."""
    pool = NodePoolSpec(max_nodes=10, pods_per_node=2, scale_down_delay_s=30)
    state = PolicyState()
    steps = [
        # (now, replicas pinned, current nodes, desired nodes, pending since)
        (0.0, 4, 2, 2, None),  # ceil(4/2) = 2 = current
        (10.0, 1, 2, 2, 10.0),  # ceil(1/2) = 1 < 2: wait from 10
        (30.0, 1, 2, 2, 10.0),  # 20 s < 30 s: hold 2
        (35.0, 4, 2, 2, None),  # back up: the wait resets
        (40.0, 1, 2, 2, 40.0),
        (69.0, 1, 2, 2, 40.0),  # 29 s: hold
        (70.0, 1, 2, 1, 40.0),  # 30 s: down to 1
        (75.0, 1, 2, 1, 40.0),  # not applied yet: still 1, no flapping back to 2
        (80.0, 1, 1, 1, None),  # applied: cleared
    ]
    got = []
    for now, replicas, current_nodes, _, _ in steps:
        s = spec(min_replicas=replicas, max_replicas=replicas, node_pool=pool)
        obs = observe(now=now, ready=pods(*[1.0] * replicas), current_nodes=current_nodes)
        rec, state = decide(obs, state, s)
        got.append((rec.desired_nodes, state.node_scale_down_since))
    assert got == [(nodes, since) for _, _, _, nodes, since in steps]


def test_decide_is_pure():
    state = PolicyState(samples=((99.0, 5.0),), panic_until=150.0, last_desired=3)
    obs = observe(now=100.0, ready=pods(1.0, 1.0))
    first = decide(obs, state, spec())
    assert decide(obs, state, spec()) == first
    assert state == PolicyState(samples=((99.0, 5.0),), panic_until=150.0, last_desired=3)
