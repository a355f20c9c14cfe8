"""Which ready pods of a ScoringAutoscaler to scrape this tick, and what stands in for
the others.

Below `scrape_all_up_to` ready pods, every one. Above, a sample sized so that the mean
concurrency per pod is within `relative_error` of the true mean with probability
`confidence`: the normal-approximation size for a mean, n0 = (z x CV / e)^2, with the
finite population correction n = n0 / (1 + (n0 - 1) / N), where CV is the coefficient
of variation of the pods' concurrency as last observed (`prior_cv` before any
observation, or when the mean is 0 and CV says nothing). The sample is sticky and
rotates (`Rotation`): the pods read this tick and the one before give the estimate, a
pod joining primes its counters for the next tick, and every pod is read within a
bounded number of ticks.

Every pod outside the estimate gets a stand-in demand: the mean of the estimate's. That
is the policy's own extrapolation of failed scrapes (it scales the scraped pods' sum by
ready / scraped, `rscore.autoscaler.policy._demand`), done before the policy sees the pods, so
that a pod left out on purpose is not a pod without data, which would hold every
scale-down. A stand-in has no service time of its own: the policy gives it the fleet's
(arrival-weighted), which makes its busy workers exactly the estimate's mean.

Shared by the controller (rscore.autoscaler.reconcile) and the simulator (rscore.sim.policies), so
the simulator measures what sampling does to cost and latency. Pure: no I/O, no clock;
randomness comes in as a `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist, fmean, pstdev

from rscore.autoscaler.scrape import PodDemand

__all__ = [
    "Choice",
    "Rotation",
    "SamplingPolicy",
    "coefficient_of_variation",
    "rotation_bound",
    "sample_size",
    "sampled_demand",
    "select",
    "stand_ins",
]


@dataclass(frozen=True)
class SamplingPolicy:
    """How many pods to scrape. `enabled=False` scrapes every ready pod every tick."""

    enabled: bool = True
    scrape_all_up_to: int = 50  # ready pods: a population this small is scraped whole
    confidence: float = 0.95  # that the sample mean is within relative_error
    relative_error: float = 0.10
    prior_cv: float = 1.0  # before any observation: spread as wide as an exponential's
    max_cv: float = 3.0  # a CV beyond this (a near-idle fleet) is taken as this
    min_sample: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not self.relative_error > 0:
            raise ValueError(f"relative_error must be > 0, got {self.relative_error}")
        if self.scrape_all_up_to < 0 or self.min_sample < 1:
            raise ValueError("scrape_all_up_to must be >= 0 and min_sample >= 1")
        if not 0 < self.prior_cv <= self.max_cv:
            raise ValueError("need 0 < prior_cv <= max_cv")


ALL = SamplingPolicy(enabled=False)


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Population standard deviation over the mean; None for fewer than 2 values or a
    mean of 0 (an idle fleet says nothing about the spread of its load)."""
    if len(values) < 2:
        return None
    mean = fmean(values)
    if mean <= 0:
        return None
    return pstdev(values, mean) / mean


def sample_size(population: int, cv: float | None, policy: SamplingPolicy) -> int:
    """Pods to scrape out of `population` ready ones, given the last observed CV."""
    if not policy.enabled or population <= policy.scrape_all_up_to:
        return population
    spread = policy.prior_cv if cv is None else min(max(cv, 0.0), policy.max_cv)
    z = NormalDist().inv_cdf(0.5 + policy.confidence / 2)
    n0 = (z * spread / policy.relative_error) ** 2
    n = n0 / (1 + (n0 - 1) / population) if n0 > 1 else n0
    return min(population, max(policy.min_sample, math.ceil(n)))


def rotation_bound(population: int, size: int) -> int:
    """Ticks within which every pod is read at least once when each tick reads the
    `size` pods read longest ago (`select`)."""
    return 1 if size >= population else math.ceil(population / max(size, 1))


def select(
    ready: Sequence[str], last_seen: Mapping[str, int], size: int, rng: random.Random
) -> list[str]:
    """The `size` pods of `ready` scraped longest ago (never: first), ties at random.

    `last_seen` maps a pod to the tick it was last scraped (any increasing count)."""
    if size >= len(ready):
        return list(ready)
    order = list(ready)
    rng.shuffle(order)  # the random tie-break; the sort below is stable
    order.sort(key=lambda pod: last_seen.get(pod, -1))
    return order[:size]


def stand_ins(
    scraped: Mapping[str, PodDemand | None], left_out: Collection[str]
) -> dict[str, PodDemand]:
    """A demand for each pod of `left_out`: the mean over the pods scraped with an
    answer; {} when none answered (then the left-out pods are missing data, as they
    should be: nothing is known of the load)."""
    known = [d for d in scraped.values() if d is not None]
    if not known or not left_out:
        return {}
    arrivals = [d.arrival_rate for d in known]
    mean = PodDemand(
        concurrency=fmean(d.concurrency for d in known),
        # The arrival path only when every scraped pod has it, else their concurrency
        # (as the policy counts a pod without arrivals).
        arrival_rate=None if None in arrivals else fmean(a for a in arrivals if a is not None),
        service_s=None,  # the fleet's, in the policy: busy = the scraped pods' mean
        queue_depth=fmean(d.queue_depth for d in known),
    )
    return dict.fromkeys(left_out, mean)


@dataclass(frozen=True)
class Choice:
    """One tick's pods to scrape, and which of them speak for the others."""

    scrape: tuple[str, ...]  # in the order of the ready pods
    fresh: frozenset[str]  # scraped this tick and the one before: their own demand

    def stand_ins_for(self, ready: Sequence[str]) -> list[str]:
        """The ready pods whose demand is the fresh pods' mean (a sampled pod that
        joined the sample this tick too: its counters span all the ticks since it was
        last read, which says nothing about this one)."""
        return [name for name in ready if name not in self.fresh]


@dataclass
class Rotation:
    """One ScoringAutoscaler's sample between ticks, kept by the controller per object
    (in its reconcile memory) and by the simulator per run.

    Above the threshold the sample is sticky: a pod stays in it `STAY` ticks, so that
    most of its pods were also read the tick before and their counters give the load of
    this interval (a pod read after k ticks would give the average of k); each tick the
    longest-serving quarter leaves and as many pods join, those read longest ago first
    (a pod never read before any other). The `size` pods read the tick before are the
    estimate (`Choice.fresh`); the joiners only prime their counters for the next tick.
    Every pod is read within ceil(N / joiners) + STAY ticks."""

    STAY = 4  # ticks a pod spends in the sample

    rng: random.Random = field(default_factory=random.Random)
    last_seen: dict[str, int] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)  # in the sample: since (tick)
    ticks: int = 0
    cv: float | None = None

    def choose(self, ready: Sequence[str], policy: SamplingPolicy) -> Choice:
        self.ticks += 1
        present = set(ready)
        self.last_seen = {n: t for n, t in self.last_seen.items() if n in present}
        size = sample_size(len(ready), self.cv, policy)
        if size >= len(ready):  # every pod, every tick: each speaks for itself
            self.members = {}
            self.last_seen.update(dict.fromkeys(ready, self.ticks))
            return Choice(tuple(ready), frozenset(ready))
        read_last_tick = {n for n, t in self.last_seen.items() if t == self.ticks - 1}
        joiners = math.ceil(size / (self.STAY - 1))
        staying = sorted((n for n in self.members if n in present), key=lambda n: self.members[n])
        # The longest-serving leave: `size` stay (fewer while the sample fills up).
        staying = staying[max(0, len(staying) - size) :]
        others = [n for n in ready if n not in set(staying)]
        joining = select(others, self.last_seen, size + joiners - len(staying), self.rng)
        self.members = {n: self.members[n] for n in staying}
        self.members.update(dict.fromkeys(joining, self.ticks))
        self.last_seen.update(dict.fromkeys(self.members, self.ticks))
        # Joiners read last tick anyway (the sample has just begun) are fresh too; with
        # no pod read last tick (the first tick), the sample speaks as it can.
        fresh = frozenset(n for n in self.members if n in read_last_tick)
        scrape = tuple(n for n in ready if n in self.members)
        return Choice(scrape, fresh or frozenset(scrape))

    def observed(self, demand: Mapping[str, PodDemand | None]) -> None:
        """The fresh pods' demand: their spread sizes the next sample (an idle or
        one-pod sample keeps the last)."""
        spread = coefficient_of_variation([d.concurrency for d in demand.values() if d])
        if spread is not None:
            self.cv = spread


def sampled_demand(
    choice: Choice, ready: Sequence[str], demand: Mapping[str, PodDemand | None]
) -> dict[str, PodDemand | None]:
    """Every ready pod's demand for the policy: the fresh pods' own (None where their
    scrape failed), the others' the fresh pods' mean (none when no fresh pod answered:
    then they are missing, as nothing is known)."""
    fresh = {n: demand.get(n) for n in ready if n in choice.fresh}
    return {**fresh, **stand_ins(fresh, choice.stand_ins_for(ready))}
