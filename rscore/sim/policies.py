"""The policies compared by the simulator, as engine controllers.

- `static`: `pods.initial` replicas, never changed.
- `rscore`: `rscore.autoscaler.policy.decide`, unchanged, fed the `Observation` the controller
  would build: each ready pod's counters are rendered as the `PodScrape` its `/metrics`
  page would parse to, and the controller's own `DemandTracker` (rscore.autoscaler.scrape) and
  `build_observation` (rscore.autoscaler.observe) turn them into the demand signal; above
  the sampling threshold only the controller's sample of the pods is read, the others
  stand in at the sample's mean (rscore.autoscaler.sampling), as in the controller. Wall time
  for the forecast is the scenario's `start_epoch_s` plus simulated time. It sizes the
  node pool too (nodePool from `[nodes]`).
- `kpa`: an independent emulation of Knative's KPA with Knative's defaults: target
  concurrency per pod = workers (containerConcurrency) x 0.7, stable window 60 s, panic
  window 6 s at 200 %, scale up x1000 and down /2 per tick, scale to zero after a 30 s
  grace when minReplicas is 0.
- `hpa`: an emulation of the HorizontalPodAutoscaler on CPU: its own 15 s sync, tolerance 0.1,
  scale-down stabilization 300 s, default scale-up limit (double or +4 per sync),
  unready pods counted as idle on a scale-up; disabled at zero replicas, as in Kubernetes.
- `oracle`: follows a node plan made with perfect foresight of the arrivals
  (`rscore.sim.oracle`): nodes ordered ahead of need by a high quantile of their start time,
  each held node full of pods.

The nodes of `static`, `kpa` and `hpa` are sized by the cluster-autoscaler emulation.
Pure decisions on what the engine shows; no I/O, no clock.
"""

from __future__ import annotations

import math
import random
from collections import deque

import numpy as np

from rscore.autoscaler.observe import PodFacts, PodUsage, build_observation
from rscore.autoscaler.policy import PolicyState, ScalingSpec, decide
from rscore.autoscaler.sampling import Rotation, SamplingPolicy, sampled_demand
from rscore.autoscaler.scrape import DemandTracker, PodDemand, PodScrape
from rscore.sim.engine import ClusterView, PodView

__all__ = [
    "HpaController",
    "KpaController",
    "OracleController",
    "RscoreController",
    "StaticController",
]

HPA_SYNC_S = 15.0
HPA_TOLERANCE = 0.1
HPA_STABILIZATION_S = 300.0


class _Rates:
    """Per-pod counter rates between two scrapes, as the controller computes them
    (rscore/autoscaler/scrape.py: `average_concurrency`): the counter's increase over the
    interval; on a pod's first scrape, the instantaneous queued + in flight."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float, float]] = {}

    def sample(self, view: ClusterView) -> list[tuple[int, float, float]]:
        """(pod, concurrency, cpu cores used) for each ready pod."""
        out, last = [], {}
        for pod in view.pods:
            previous = self._last.get(pod.pod)
            t0, c0, u0 = (pod.ready_at, 0.0, 0.0) if previous is None else previous
            dt = view.now - t0
            if previous is None or dt <= 0:
                conc = float(pod.inside)
            else:
                conc = (pod.concurrency_seconds - c0) / dt
            cpu = (pod.cpu_seconds - u0) / dt if dt > 0 else 0.0
            out.append((pod.pod, max(0.0, conc), max(0.0, cpu)))
            last[pod.pod] = (view.now, pod.concurrency_seconds, pod.cpu_seconds)
        self._last = last
        return out


class StaticController:
    name = "static"
    interval_s: float | None = None

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def tick(self, view: ClusterView) -> tuple[int, int | None]:
        return self.replicas, None


def pod_page(
    pod: PodView, now: float, workers: int, rows_per_request: int = 1, max_batch_rows: int = 0
) -> PodScrape:
    """What the pod's `/metrics` page would parse to at `now`: the sidecar's counters
    (requests finished = routed - still inside; answered = calls started; seconds in R;
    R calls = answered requests that did not join another's call)."""
    return PodScrape(
        at=now,
        concurrency_seconds_total=pod.concurrency_seconds,
        queue_depth=float(pod.queued),
        inflight=float(pod.inside - pod.queued),
        workers=workers,
        demand_requests_total=float(pod.arrivals - pod.inside),
        answered_total=float(pod.served),
        scoring_seconds_total=pod.cpu_seconds,
        calls_total=float(pod.served - pod.merged),
        rows_total=float(pod.served * rows_per_request),
        max_batch_rows=max_batch_rows,
    )


class RscoreController:
    """The production policy, one `decide` per tick, on the controller's observation."""

    name = "rscore"

    def __init__(
        self,
        spec: ScalingSpec,
        interval_s: float,
        start_epoch_s: float | None = 0.0,
        sampling: SamplingPolicy | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.sampling = sampling or SamplingPolicy()  # the controller's default
        self._rotation = Rotation(random.Random(seed))
        self.interval_s: float | None = interval_s
        self.start_epoch_s = start_epoch_s
        self.state = PolicyState()
        self._demand = DemandTracker()
        self._rates = _Rates()  # CPU used between ticks, as metrics-server reports it
        self._ahead: dict[str, PodScrape] = {}  # readings taken before the next tick

    def read(self, view: ClusterView) -> None:
        """The pods' readings for the next tick, taken ahead of it as the controller's
        streams take them (`ControllerSpec.lead_s`)."""
        self._ahead = self._pages(view, {})

    @staticmethod
    def _pages(view: ClusterView, ahead: dict[str, PodScrape]) -> dict[str, PodScrape]:
        """Each pod's reading: the one taken ahead, else one taken now."""
        pages = {}
        for pod in view.pods:
            name = f"pod-{pod.pod}"
            page = ahead.get(name)
            if page is None:
                page = pod_page(
                    pod, view.now, view.workers, view.rows_per_request, view.max_batch_rows
                )
            pages[name] = page
        return pages

    def tick(self, view: ClusterView) -> tuple[int, int | None]:
        request = view.workers * 1000.0  # one core per R worker
        # A pod read ahead gives that reading; one ready since (no stream yet) is read
        # now, as the controller reads it by GET.
        ahead, self._ahead = self._ahead, {}
        pages = self._pages(view, ahead)
        demand = self._sampled_demand(pages)
        facts = [PodFacts(name, True, False, False, None, None, request, 0.0) for name in pages]
        facts += [
            PodFacts(f"pending-{i}", False, True, False, None, None, request, 0.0)
            for i in range(view.pending)
        ]
        cpu = self._rates.sample(view)
        observation = build_observation(
            now=view.now,
            current_replicas=view.replicas,
            pods=facts,
            demand=demand,
            usage={f"pod-{pod}": PodUsage(cores * 1000.0, 0.0) for pod, _, cores in cpu},
            workers_per_pod=view.workers,
            current_nodes=view.nodes,
            unrouted_concurrency=float(view.unrouted),
            wall_s=None if self.start_epoch_s is None else self.start_epoch_s + view.now,
        )
        recommendation, self.state = decide(observation, self.state, self.spec)
        return recommendation.desired_replicas, recommendation.desired_nodes

    def _sampled_demand(self, pages: dict[str, PodScrape]) -> dict[str, PodDemand | None]:
        """The controller's sample of the pods read (rscore.autoscaler.reconcile._scrape_all),
        the others standing in at the fresh pods' mean."""
        names = list(pages)
        choice = self._rotation.choose(names, self.sampling)
        read = self._demand.update(
            {n: pages[n] for n in choice.scrape}, keep=[n for n in names if n not in choice.scrape]
        )
        self._rotation.observed({n: read[n] for n in choice.fresh if n in read})
        return sampled_demand(choice, names, read)


class KpaController:
    """Knative's KPA with its defaults (independent of rscore.autoscaler.policy)."""

    name = "kpa"

    def __init__(
        self, workers: int, interval_s: float, min_replicas: int, max_replicas: int
    ) -> None:
        self.interval_s: float | None = interval_s
        self.target = workers * 0.7  # containerConcurrency = workers, 70 % utilization
        self.stable_s, self.panic_s, self.panic_threshold = 60.0, 6.0, 2.0
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.grace_s = 30.0  # scale-to-zero-grace-period
        self._samples: deque[tuple[float, float]] = deque()
        self._rates = _Rates()
        self._panic_until: float | None = None
        self._last = 0
        self._zero_since: float | None = None

    def tick(self, view: ClusterView) -> tuple[int, int | None]:
        now = view.now
        total = sum(c for _, c, _ in self._rates.sample(view)) + view.unrouted
        self._samples.append((now, total))
        while self._samples[0][0] <= now - self.stable_s:
            self._samples.popleft()
        stable = sum(v for _, v in self._samples) / len(self._samples)
        recent = [v for t, v in self._samples if t > now - self.panic_s]
        panic = sum(recent) / len(recent)
        want_stable = math.ceil(stable / self.target)
        want_panic = math.ceil(panic / self.target)
        ready = max(1, len(view.pods))
        if want_panic / ready >= self.panic_threshold:
            self._panic_until = now + self.stable_s
        if self._panic_until is not None and now >= self._panic_until:
            self._panic_until = None
        desired = want_stable
        if self._panic_until is not None:
            desired = max(want_panic, self._last)  # never scale down in panic
        desired = min(max(desired, math.floor(ready / 2.0)), math.ceil(ready * 1000.0))
        desired = min(max(desired, self.min_replicas), self.max_replicas)
        if desired == 0 and view.replicas > 0:
            if self._zero_since is None:
                self._zero_since = now
            if now - self._zero_since < self.grace_s:
                desired = 1
        else:
            self._zero_since = None
        self._last = desired
        return desired, None


class HpaController:
    """The HorizontalPodAutoscaler on CPU utilization (autoscaling/v2 defaults).

    It syncs every HPA_SYNC_S whatever the rscore controller's interval (the engine ticks
    it at its own `interval_s`). As the HPA's replica calculator: the ratio is over the
    ready pods and `ceil(ratio x ready)` the recommendation; on a scale-up, pending pods
    count as idle, and if that flips the direction the HPA holds. The raw recommendation
    is recorded for the scale-down stabilization (the max over the last 300 s); the
    scale-up limit applies after it.
    """

    name = "hpa"

    def __init__(
        self, interval_s: float, target: float, min_replicas: int, max_replicas: int
    ) -> None:
        del interval_s  # the HPA's own sync period, not the controller's tick
        self.interval_s: float | None = HPA_SYNC_S
        self.target = target
        self.min_replicas, self.max_replicas = max(1, min_replicas), max_replicas
        self._rates = _Rates()
        self._last_sync: float | None = None
        self._desired: int | None = None
        self._recommendations: deque[tuple[float, int]] = deque()

    def _raw(self, view: ClusterView) -> int:
        """The replica calculator's recommendation (before stabilization and limits)."""
        current = view.replicas
        rates = self._rates.sample(view)  # averaged over the sync period
        if not rates:
            return current
        usage = sum(cpu for _, _, cpu in rates)
        count = len(rates)
        ratio = usage / (count * view.workers) / self.target
        if ratio > 1 and view.pending:
            # Unready pods count as idle on a scale-up; a flip of direction holds.
            count += view.pending
            ratio = usage / (count * view.workers) / self.target
            if ratio <= 1:
                return current
        if abs(ratio - 1.0) <= HPA_TOLERANCE:
            return current
        return math.ceil(ratio * count)

    def tick(self, view: ClusterView) -> tuple[int, int | None]:
        now = view.now
        current = view.replicas
        if current == 0:
            return 0, None  # Kubernetes disables the HPA of a target scaled to zero
        if self._desired is None:
            self._desired = current
        if self._last_sync is not None and now - self._last_sync < HPA_SYNC_S - 1e-9:
            return self._desired, None
        self._last_sync = now
        raw = self._raw(view)
        self._recommendations.append((now, raw))
        while self._recommendations[0][0] <= now - HPA_STABILIZATION_S:
            self._recommendations.popleft()
        desired = raw
        if raw < current:
            desired = min(current, max(v for _, v in self._recommendations))
        desired = min(desired, max(2 * current, current + 4))
        self._desired = min(max(desired, self.min_replicas), self.max_replicas)
        return self._desired, None


def _window_max(values: np.ndarray, start_s: float, end_s: float, step_s: float, floor: int) -> int:
    """The largest of `values` (one per step of `step_s` from t = 0) over the steps that
    [start_s, end_s] touches, and at least `floor` (all there is beyond the plan)."""
    window = values[max(0, int(start_s // step_s)) : int(end_s // step_s) + 1]
    return max(int(window.max()), floor) if window.size else floor


class OracleController:
    """Follows the oracle's node plan (`rscore.sim.oracle`): at each tick, the most nodes the plan
    holds while the decision is in force (it lands `apply_delay_s` later and lasts one
    interval), and every held node full of pods (pods are free; nodes are billed)."""

    name = "oracle"

    def __init__(
        self,
        nodes: np.ndarray,
        *,
        grid_s: float,
        interval_s: float,
        apply_delay_s: float,
        per_node: int,
        min_nodes: int,
        max_replicas: int,
    ) -> None:
        self.interval_s: float | None = interval_s
        self.nodes = nodes
        self.grid_s, self.apply_delay_s = grid_s, apply_delay_s
        self.per_node, self.min_nodes, self.max_replicas = per_node, min_nodes, max_replicas

    def tick(self, view: ClusterView) -> tuple[int, int | None]:
        start = view.now + self.apply_delay_s
        end = start + (self.interval_s or 0.0)
        nodes = _window_max(self.nodes, start, end, self.grid_s, self.min_nodes)
        return min(self.max_replicas, nodes * self.per_node), nodes
