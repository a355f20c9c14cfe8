"""rscore.autoscaler.latency_target: how busy a pod may run within the latency objective, and
the policy using it. Checked against closed forms: Erlang C for one and two servers, and
the M/M/1 wait tail P(W > t) = rho * exp(-(mu - lambda) t)."""

from __future__ import annotations

import math

import pytest

from rscore.autoscaler.latency_target import (
    MAX_UTILIZATION,
    OBJECTIVE_SHARE,
    TAIL,
    objective_utilization,
    wait_tail,
)
from rscore.autoscaler.policy import (
    OVERLOAD_BUDGET,
    OVERLOAD_MEMORY_S,
    Observation,
    PodSample,
    PolicyState,
    ScalingSpec,
    decide,
    overload_share,
    track_overload,
)


@pytest.mark.parametrize(
    ("servers", "utilization", "wait_probability"),
    [
        (1, 0.5, 0.5),  # M/M/1: an arrival waits with probability rho
        (1, 0.9, 0.9),
        (2, 0.5, 1.0 / 3.0),  # M/M/2 at a = 1: (1/2 * 2) / (1 + 1 + 1)
        (2, 0.75, 0.642857142857),  # a = 1.5: 2.25 / (2.5 + 1.0 + ... ) = 9/14
    ],
)
def test_the_chance_to_wait_is_erlang_c(
    servers: int, utilization: float, wait_probability: float
) -> None:
    assert wait_tail(servers, utilization, 1.0, 0.0) == pytest.approx(wait_probability)


def test_the_wait_tail_of_one_server_is_the_closed_form() -> None:
    rho, service, t = 0.8, 0.1, 0.5
    expected = rho * math.exp(-(1.0 / service - rho / service) * t)
    assert wait_tail(1, rho, service, t) == pytest.approx(expected)


def test_one_worker_runs_exactly_as_busy_as_its_p99_allows() -> None:
    """Solve rho * exp(-(1 - rho) T / s) = 1 % for rho independently, by the closed form's
    fixed point, and compare."""
    service, objective = 0.2, 4.0
    budget = OBJECTIVE_SHARE * objective - service  # 3.8 s of waiting, 19 service times
    rho = 0.5
    for _ in range(200):  # rho = 1 - s/T * ln(rho / TAIL): a contraction near the root
        rho = 1.0 - service / budget * math.log(rho / TAIL)
    assert objective_utilization(1, service, objective) == pytest.approx(rho, abs=1e-6)


@pytest.mark.parametrize(
    ("servers", "service_s", "objective_s", "expected"),
    [
        (2, 0.02, 1.0, MAX_UTILIZATION),  # 24 calls of slack: as busy as allowed
        (2, 0.2, 0.2 / OBJECTIVE_SHARE, None),  # no wait fits beside a call: no say
        (2, None, 1.0, None),  # no service time yet
        (0, 0.02, 1.0, None),
        (2, 0.02, 0.0, None),
    ],
)
def test_the_edges(
    servers: int, service_s: float | None, objective_s: float, expected: float | None
) -> None:
    assert objective_utilization(servers, service_s, objective_s) == expected


def test_more_slack_or_more_workers_allow_a_busier_pod() -> None:
    base = objective_utilization(2, 0.2, 2.0)
    assert base is not None
    assert base < MAX_UTILIZATION
    longer = objective_utilization(2, 0.2, 3.0)
    slower = objective_utilization(2, 0.25, 2.0)
    wider = objective_utilization(4, 0.2, 2.0)
    assert longer is not None and slower is not None and wider is not None  # noqa: PT018
    assert longer > base > slower
    assert wider > base
    # And what it allows meets the tail it promises.
    assert wait_tail(2, base, 0.2, OBJECTIVE_SHARE * 2.0 - 0.2) == pytest.approx(TAIL, rel=1e-6)


def _decide(spec: ScalingSpec) -> int:
    """Four pods at 50 req/s each, 20 ms a request: 4 busy workers, 2 workers a pod."""
    pods = tuple(
        PodSample(
            name=f"pod-{i}", concurrency=1.0, arrival_rate=50.0, service_s=0.02, queue_depth=0.0
        )
        for i in range(4)
    )
    obs = Observation(now=100.0, ready_pods=pods, workers_per_pod=2, current_replicas=4)
    rec, _ = decide(obs, PolicyState(), spec)
    return rec.desired_replicas


@pytest.mark.parametrize(
    ("objective_s", "target_utilization", "desired"),
    [
        (None, 0.7, 3),  # 4 busy / (2 x 0.7) = 2.86 -> 3
        (1.0, 0.7, 3),  # 4 / (2 x 0.8) = 2.5 -> 3: the objective allows 0.8
        (0.1, 0.7, 3),  # 30 ms of slack allows less than 0.7: the floor stands
        (1.0, 0.5, 3),  # 4 / (2 x 0.8) -> 3, not 4 / 1.0 = 4
        (None, 0.5, 4),
    ],
)
def test_the_policy_packs_pods_as_the_objective_allows_never_looser_than_its_target(
    objective_s: float | None, target_utilization: float, desired: int
) -> None:
    spec = ScalingSpec(
        max_replicas=100,
        target_utilization=target_utilization,
        latency_objective_s=objective_s,
    )
    assert _decide(spec) == desired


def test_an_objective_that_allows_more_needs_fewer_pods() -> None:
    """4.5 busy workers: 0.7 asks for 4 pods, the 1-s objective's 0.8 for 3."""
    pods = tuple(
        PodSample(
            name=f"pod-{i}", concurrency=1.0, arrival_rate=75.0, service_s=0.02, queue_depth=0.0
        )
        for i in range(3)
    )
    obs = Observation(now=100.0, ready_pods=pods, workers_per_pod=2, current_replicas=3)
    plain, _ = decide(obs, PolicyState(), ScalingSpec(max_replicas=100))
    with_objective, _ = decide(
        obs, PolicyState(), ScalingSpec(max_replicas=100, latency_objective_s=1.0)
    )
    assert plain.desired_replicas == 4  # 4.5 / 1.4 = 3.2
    assert with_objective.desired_replicas == 3  # 4.5 / 1.6 = 2.8


def test_the_objective_must_be_positive() -> None:
    with pytest.raises(ValueError, match="latency_objective_s must be > 0"):
        ScalingSpec(max_replicas=1, latency_objective_s=0.0)


# --- the objective's boost is earned: withheld after overload ---------------------------

OVERLOAD_CASES = [
    # (previous record, now, busy, panic-window busy, ready workers, expected record)
    ((0.0, 0.0, 0.0), 10.0, 3.0, 3.0, 4, (10.0, 0.0, 0.0)),  # first tick: starts the clock
    ((10.0, 0.0, 0.0), 12.0, 3.0, 3.0, 4, (12.0, 0.0, 6.0)),  # 3 busy x 2 s, within 4 workers
    ((10.0, 0.0, 0.0), 12.0, 3.0, 5.0, 4, (12.0, 6.0, 6.0)),  # the panic window is over 4
    ((10.0, 0.0, 0.0), 12.0, 5.0, 4.0, 4, (12.0, 0.0, 10.0)),  # one tick's noise is not
    ((10.0, 6.0, 6.0), 12.0, 3.0, 3.0, 0, (10.0, 6.0, 6.0)),  # no ready worker: unchanged
    ((10.0, 6.0, 6.0), 12.0, None, 3.0, 4, (10.0, 6.0, 6.0)),  # no demand: unchanged
]


@pytest.mark.parametrize(
    ("previous", "now", "busy", "recent", "workers", "expected"), OVERLOAD_CASES
)
def test_the_overload_record_weighs_demand_by_the_time_it_lasted(
    previous: tuple[float, float, float],
    now: float,
    busy: float | None,
    recent: float,
    workers: int,
    expected: tuple[float, float, float],
) -> None:
    assert track_overload(previous, now, busy, recent, workers) == pytest.approx(expected)


def test_the_overload_record_forgets_over_its_memory() -> None:
    """An overloaded minute, then calm: its share halves about every 0.69 memories."""
    record = (0.0, 0.0, 0.0)
    t = 0.0
    for _ in range(30):  # a minute in overload
        t += 2.0
        record = track_overload(record, t, 3.0, 9.0, 4)
    assert overload_share(record) == pytest.approx(1.0)
    for _ in range(1800):  # an hour of calm at the same demand
        t += 2.0
        record = track_overload(record, t, 3.0, 3.0, 4)
    assert 0.005 < overload_share(record) < 0.05
    assert overload_share((0.0, 0.0, 0.0)) == 0.0


def _steady(now: float, busy_per_pod: float, pods: int = 3) -> Observation:
    """`pods` ready pods of 2 workers, each with `busy_per_pod` busy workers of 20 ms."""
    ready = tuple(
        PodSample(
            name=f"pod-{i}",
            concurrency=busy_per_pod,
            arrival_rate=busy_per_pod / 0.02,
            service_s=0.02,
            queue_depth=0.0,
        )
        for i in range(pods)
    )
    return Observation(now=now, ready_pods=ready, workers_per_pod=2, current_replicas=pods)


def test_after_an_overload_the_objective_lifts_no_pod_above_the_floor_for_a_while() -> None:
    """4.5 busy workers want 3 pods at the 1-s objective's 0.8 and 4 at the 0.7 floor.
    A minute in which the pods were overloaded (7.5 busy on 6 workers: 14 % of the
    demand so far) withholds the objective's share until that minute has faded below
    OVERLOAD_BUDGET (1 %) of the recent demand: 450 e^-x <= 0.01 x (3150 e^-x + 16200
    (1 - e^-x)) busy-worker seconds, x ~ 1.3 memories at this load."""
    spec = ScalingSpec(max_replicas=100, latency_objective_s=1.0)
    state, t = PolicyState(), 0.0
    for _ in range(300):  # ten calm minutes: the objective holds
        t += 2.0
        rec, state = decide(_steady(t, 1.5), state, spec)
    assert rec.desired_replicas == 3
    for _ in range(30):  # a minute at 2.5 busy per pod on 2 workers each
        t += 2.0
        _, state = decide(_steady(t, 2.5), state, spec)
    assert overload_share(state.overload) > OVERLOAD_BUDGET
    calm = []
    for _ in range(int(3 * OVERLOAD_MEMORY_S / 2.0)):  # hours back at 1.5 per pod
        t += 2.0
        rec, state = decide(_steady(t, 1.5), state, spec)
        calm.append(rec)
    assert calm[60].desired_replicas == 4  # two minutes on: the floor, one pod more
    assert "withheld" in calm[60].reason
    back = next(i for i, r in enumerate(calm) if r.desired_replicas == 3) * 2.0
    assert 1.0 * OVERLOAD_MEMORY_S < back < 1.6 * OVERLOAD_MEMORY_S
    assert calm[-1].desired_replicas == 3  # faded: the objective is back
    assert "withheld" not in calm[-1].reason


def test_without_an_objective_overload_changes_nothing() -> None:
    spec = ScalingSpec(max_replicas=100)
    state, t = PolicyState(), 0.0
    for busy in [1.5] * 100 + [2.5] * 30 + [1.5] * 100:
        t += 2.0
        rec, state = decide(_steady(t, busy), state, spec)
    assert "withheld" not in rec.reason
    assert rec.desired_replicas == 4  # 4.5 / 1.4 = 3.2 -> 4, as ever
