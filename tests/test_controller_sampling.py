"""Which pods a tick scrapes (rscore.autoscaler.sampling), and that the pods left out stand in
for exactly what the policy's own extrapolation of missing pods would give, without
holding scale-downs."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from rscore.autoscaler.policy import Observation, PodSample, PolicyState, ScalingSpec, decide
from rscore.autoscaler.sampling import (
    Choice,
    Rotation,
    SamplingPolicy,
    coefficient_of_variation,
    rotation_bound,
    sample_size,
    sampled_demand,
    select,
    stand_ins,
)
from rscore.autoscaler.scrape import DemandTracker, PodDemand, PodScrape

DEFAULT = SamplingPolicy()


@pytest.mark.parametrize(
    ("population", "cv", "policy", "expected"),
    [
        (0, None, DEFAULT, 0),
        (50, None, DEFAULT, 50),  # at the threshold: every pod
        (1000, 0.5, SamplingPolicy(enabled=False), 1000),  # sampling off
        # prior CV 1: n0 = (1.96 / 0.1)^2 = 384.1, corrected for the population
        (100, None, DEFAULT, 80),
        (1000, None, DEFAULT, 278),
        (10_000, None, DEFAULT, 370),
        # an even load (CV 0.3): n0 = 34.6
        (1000, 0.3, DEFAULT, 34),
        (10_000, 0.3, DEFAULT, 35),
        (1000, 0.05, DEFAULT, 10),  # never below min_sample
        (1000, 50.0, DEFAULT, 776),  # a CV beyond max_cv counts as max_cv (3): n0 = 3457
        # a looser error: 20 % at 90 %, prior CV: n0 = (1.645 / 0.2)^2 = 67.6
        (1000, None, SamplingPolicy(confidence=0.9, relative_error=0.2), 64),
        (60, None, SamplingPolicy(scrape_all_up_to=100), 60),
    ],
)
def test_sample_size(
    population: int, cv: float | None, policy: SamplingPolicy, expected: int
) -> None:
    assert sample_size(population, cv, policy) == expected


def test_the_sample_is_the_stated_finite_population_size() -> None:
    z = 1.959963984540054
    for population in (51, 200, 5000):
        for cv in (0.2, 0.7, 1.5):
            n0 = (z * cv / 0.1) ** 2
            want = min(population, max(10, math.ceil(n0 / (1 + (n0 - 1) / population))))
            assert sample_size(population, cv, DEFAULT) == want


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([3.0], None), ([0.0, 0.0], None), ([2.0, 2.0], 0.0), ([1.0, 3.0], 0.5)],
)
def test_coefficient_of_variation(values: list[float], expected: float | None) -> None:
    assert coefficient_of_variation(values) == expected


@pytest.mark.parametrize(("population", "size"), [(51, 10), (100, 80), (1000, 278), (97, 13)])
def test_every_pod_is_scraped_within_the_rotation_bound(population: int, size: int) -> None:
    pods = [f"pod-{i}" for i in range(population)]
    last_seen: dict[str, int] = {}
    rng = random.Random(7)
    bound = rotation_bound(population, size)
    for tick in range(1, 5 * bound + 1):
        chosen = select(pods, last_seen, size, rng)
        assert len(chosen) == len(set(chosen)) == size
        last_seen.update(dict.fromkeys(chosen, tick))
        if tick >= bound:  # every pod seen in the last `bound` ticks
            assert min(last_seen.get(p, -1) for p in pods) > tick - bound


def _run(rotation: Rotation, pods: list[str], ticks: int, policy: SamplingPolicy) -> list[Choice]:
    return [rotation.choose(pods, policy) for _ in range(ticks)]


@pytest.mark.parametrize(("population", "cv"), [(100, 0.3), (1000, 0.3), (1000, None), (97, 0.05)])
def test_the_sample_is_sticky_fresh_and_covers_every_pod(population: int, cv: float | None) -> None:
    pods = [f"pod-{i}" for i in range(population)]
    rotation = Rotation(random.Random(3), cv=cv)
    size = sample_size(population, cv, DEFAULT)
    joiners = math.ceil(size / (Rotation.STAY - 1))
    bound = math.ceil(population / joiners) + Rotation.STAY
    choices = _run(rotation, pods, 3 * bound, DEFAULT)
    for before, now in itertools.pairwise(choices):
        assert len(now.scrape) == min(population, size + joiners)
        # the estimate: `size` pods read this tick and the one before
        assert len(now.fresh) == size
        assert now.fresh <= set(now.scrape) & set(before.scrape)
    reads = {p: [t for t, c in enumerate(choices) if p in c.scrape] for p in pods}
    for pod, ticks in reads.items():
        gaps = [b - a for a, b in itertools.pairwise([-1, *ticks, len(choices)])]
        assert max(gaps) <= bound, (pod, gaps)


def test_below_the_threshold_every_pod_speaks_for_itself() -> None:
    rotation = Rotation(random.Random(1))
    pods = [f"pod-{i}" for i in range(50)]
    for choice in _run(rotation, pods, 3, DEFAULT):
        assert choice.scrape == tuple(pods)
        assert choice.fresh == set(pods)
        assert choice.stand_ins_for(pods) == []
    off = _run(Rotation(), [f"p{i}" for i in range(500)], 2, SamplingPolicy(enabled=False))
    assert all(len(c.fresh) == 500 for c in off)


def test_new_pods_join_first_and_gone_ones_are_forgotten() -> None:
    rotation = Rotation(random.Random(1), cv=0.01)  # a sample of min_sample (10)
    pods = [f"pod-{i}" for i in range(100)]
    _run(rotation, pods, 30, DEFAULT)  # every pod read once: 4 join a tick
    assert set(rotation.last_seen) == set(pods)
    new = ["new-a", "new-b", "new-c"]
    choice = rotation.choose([*pods[1:], *new], DEFAULT)  # pod-0 left, three came
    assert set(new) <= set(choice.scrape)
    assert not set(new) & choice.fresh  # their counters say nothing of this tick yet
    assert "pod-0" not in rotation.last_seen
    assert "pod-0" not in rotation.members


def test_a_rotation_sizes_its_next_sample_by_the_spread_it_observed() -> None:
    rotation = Rotation(random.Random(1))
    pods = [f"pod-{i}" for i in range(1000)]
    _run(rotation, pods, 2, DEFAULT)
    assert len(rotation.choose(pods, DEFAULT).fresh) == 278  # the prior CV
    even = {p: PodDemand(2.0 + (i % 2) * 0.4, None, None, 0.0) for i, p in enumerate(pods)}
    rotation.observed(even)  # CV 0.09: the floor of 10 pods
    _run(rotation, pods, Rotation.STAY, DEFAULT)
    assert len(rotation.choose(pods, DEFAULT).fresh) == 10
    rotation.observed({p: PodDemand(0.0, None, None, 0.0) for p in pods})  # idle: no news
    assert len(rotation.choose(pods, DEFAULT).fresh) == 10


def test_sampled_demand_is_the_fresh_pods_own_and_their_mean_for_the_rest() -> None:
    ready = ["a", "b", "c", "d"]
    choice = Choice(scrape=("a", "b", "c"), fresh=frozenset({"a", "b"}))
    demand = {"a": _demand(1.0, 1.0, 0.1), "b": _demand(3.0, 3.0, 0.1), "c": _demand(9, 9, 0.1)}
    out = sampled_demand(choice, ready, demand)
    assert out["a"] == demand["a"]
    assert out["b"] == demand["b"]
    assert out["c"] == out["d"]  # c joined this tick: a stand-in, not its long average
    assert out["c"] is not None
    assert out["c"].concurrency == pytest.approx(2.0)
    failed = sampled_demand(choice, ready, {"a": None, "b": None, "c": demand["c"]})
    assert failed == {"a": None, "b": None}  # nothing fresh answered: the rest is missing


# --- stand-ins against the policy's own extrapolation ------------------------------------


def _demand(concurrency: float, rate: float | None, service: float | None) -> PodDemand:
    return PodDemand(concurrency, rate, service, queue_depth=concurrency / 4)


def _sample(name: str, d: PodDemand | None) -> PodSample:
    if d is None:
        return PodSample(name, None)
    return PodSample(name, d.concurrency, arrival_rate=d.arrival_rate, service_s=d.service_s,
                     queue_depth=d.queue_depth)  # fmt: skip


SPEC = ScalingSpec(max_replicas=1000, max_scale_down_rate=1000.0)


def _decide(pods: dict[str, PodDemand | None], current: int) -> tuple[float | None, int]:
    obs = Observation(
        now=100.0,
        ready_pods=tuple(_sample(n, d) for n, d in pods.items()),
        current_replicas=current,
        workers_per_pod=2,
    )
    rec, _ = decide(obs, PolicyState(), SPEC)
    return rec.observed_concurrency, rec.desired_replicas


@pytest.mark.parametrize(
    "scraped",
    [
        # arrivals and service times known (service times differ: the fleet's is weighted)
        {f"s{i}": _demand(1.0 + i, 2.0 + i, 0.1 * (1 + i % 3)) for i in range(6)},
        # a first scrape: no arrivals yet, concurrency stands in
        {f"s{i}": _demand(0.5 * i, None, None) for i in range(6)},
    ],
    ids=["arrivals", "first-scrape"],
)
def test_stand_ins_give_the_policys_extrapolation_without_its_hold(
    scraped: dict[str, PodDemand | None],
) -> None:
    left_out = [f"u{i}" for i in range(14)]
    current = 20  # more pods than the load needs: the policy wants fewer
    missing = {**scraped, **dict.fromkeys(left_out)}
    standing = {**scraped, **stand_ins(scraped, left_out)}
    held_at, held = _decide(missing, current)
    seen, desired = _decide(standing, current)
    assert seen == pytest.approx(held_at)  # the same demand estimate
    assert held == current  # missing data never scales down...
    assert desired < current  # ...a pod left out on purpose is not missing data


def test_no_stand_ins_when_no_scrape_answered() -> None:
    assert stand_ins({"a": None, "b": None}, ["c"]) == {}
    assert stand_ins({"a": _demand(1.0, 1.0, 0.1)}, []) == {}


def test_a_pod_left_out_keeps_its_last_scrape_for_when_it_is_read_again() -> None:
    tracker = DemandTracker()
    page = PodScrape(at=0.0, concurrency_seconds_total=0.0, queue_depth=0.0, inflight=1.0,
                     workers=2)  # fmt: skip
    tracker.update({"a": page, "b": page})
    tracker.update({"a": PodScrape(2.0, 4.0, 0.0, 1.0, 2)}, keep=["b"])  # b left out
    # b read again 4 s after its last scrape: 12 concurrency-seconds over those 4 s
    demand = tracker.update({"b": PodScrape(4.0, 12.0, 0.0, 1.0, 2)}, keep=["a"])
    assert demand["b"] is not None
    assert demand["b"].concurrency == pytest.approx(3.0)
    assert set(tracker.scrapes) == {"a", "b"}
    tracker.update({"a": PodScrape(6.0, 4.0, 0.0, 1.0, 2)})  # b gone: forgotten
    assert set(tracker.scrapes) == {"a"}
