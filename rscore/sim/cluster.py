"""What a pod, a node pool and the controller loop are, with their documented defaults.

The engine keeps the moving state (in flat lists, for speed); this module holds the
specs, the node pool presets (CPU and GPU), and the cluster-autoscaler emulation used
for policies that do not size nodes themselves: scale up at once to fit every pod, scale
down an empty node after `scale_down_delay_s` (the Cluster Autoscaler's
scale-down-unneeded-time).

Pure: no I/O, no clock, no randomness (delays are sampled by the engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rscore.autoscaler.ticks import mean_reading_lead_s
from rscore.sim.distributions import Delay
from rscore.sim.sidecar import SidecarModel

__all__ = [
    "ROUTING",
    "ControllerSpec",
    "NodeAutoscaler",
    "NodeSpec",
    "PodSpec",
    "node_preset",
    "pods_that_fit",
]

ROUTING = ("random", "least_loaded")
CA_SCALE_DOWN_DELAY_S = 600.0  # the Cluster Autoscaler's scale-down-unneeded-time


@dataclass(frozen=True)
class PodSpec:
    workers: int = 4  # R worker processes per pod, each one call at a time
    initial: int = 1  # ready pods at t = 0 (and the static policy's fixed count)
    max_queue: int = 128  # waiting requests per worker (the sidecar's --max-queue)
    request_timeout_s: float = 5.0  # queue wait + scoring (the sidecar's --request-timeout-ms)
    max_batch_rows: int = 1  # rows merged into one R call; 1 disables batching
    routing: str = "random"  # kube-proxy picks a ready endpoint at random
    schedule_s: Delay = field(default_factory=lambda: Delay("lognormal", 1.0, 0.5))
    image_pull_s: Delay = field(default_factory=lambda: Delay("lognormal", 30.0, 0.3))
    model_load_s: Delay = field(default_factory=lambda: Delay("lognormal", 5.0, 0.3))
    gateway_max_queue: int = 10_000  # held while no pod is ready (as Knative's activator)
    # The sidecar's own cost (measured by `rscore sim validate`): its event loop's CPU
    # seconds per request (one loop per pod, a FIFO server: half before admission, half
    # on the answer), a fixed latency outside the pod's CPU (the HTTP path to and from
    # the client), and the cores the loop and the R workers share (None: R calls never
    # wait for a core). All zero/None: the pod is its workers alone, as before.
    sidecar_s: float = 0.0
    sidecar_wake_s: float = 0.0  # more CPU for a turn that finds the loop idle (it wakes)
    http_s: float = 0.0
    cores: float | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.initial < 0 or self.max_queue < 0:
            raise ValueError("pods: workers >= 1, initial >= 0, max_queue >= 0")
        if self.sidecar_s < 0 or self.sidecar_wake_s < 0 or self.http_s < 0:
            raise ValueError("pods: sidecar_s >= 0, sidecar_wake_s >= 0, http_s >= 0")
        if self.cores is not None and not self.cores > 0:
            raise ValueError("pods: cores > 0")
        if not self.request_timeout_s > 0 or self.max_batch_rows < 1:
            raise ValueError("pods: request_timeout_s > 0, max_batch_rows >= 1")
        if self.routing not in ROUTING:
            raise ValueError(f"pods routing must be one of {ROUTING}, got {self.routing!r}")
        if self.gateway_max_queue < 0:
            raise ValueError("pods: gateway_max_queue >= 0")

    @property
    def models_sidecar(self) -> bool:
        """Whether requests pass the sidecar's loop and share the pod's cores."""
        return SidecarModel.of_pods(self).on

    @property
    def start_mean_s(self) -> float:
        """Mean time from creation to ready on a node without the image."""
        return self.schedule_s.mean + self.image_pull_s.mean + self.model_load_s.mean


# Prices are on-demand list prices of common instance types (us-east-1, 2025): a 4 vCPU /
# 16 GiB general-purpose node (m6i.xlarge) and a 1-GPU node (g5.xlarge, NVIDIA A10G).
_PRESETS: dict[str, dict[str, object]] = {
    "cpu": {
        "price_per_hour": 0.192,
        "cpus": 4,
        "memory_gib": 16.0,
        "provision_s": Delay("lognormal", 90.0, 0.2),
    },
    "gpu": {
        "price_per_hour": 1.006,
        "cpus": 4,
        "memory_gib": 16.0,
        "pods_per_node": 1,  # one GPU, one pod
        "provision_s": Delay("lognormal", 240.0, 0.25),
    },
}


@dataclass(frozen=True)
class NodeSpec:
    kind: str = "cpu"
    price_per_hour: float = 0.192
    cpus: int = 4
    # Memory the node's pods may use, and what one pod needs (its R workers, measured as
    # the sum of rscore_worker_pss_bytes, plus the sidecar): None, memory never limits.
    memory_gib: float = 16.0
    pod_memory_mib: float | None = None
    pods_per_node: int | None = None  # None: min(by CPU, by memory), at least 1
    min_nodes: int = 0
    max_nodes: int = 100
    # None: each policy's own default (the Cluster Autoscaler's 600 s for the emulation
    # under static, kpa and hpa; the CRD's nodePool default for rscore).
    scale_down_delay_s: float | None = None
    provision_s: Delay = field(default_factory=lambda: Delay("lognormal", 90.0, 0.2))

    def __post_init__(self) -> None:
        if self.kind not in _PRESETS:
            raise ValueError(f"nodes kind must be one of {tuple(_PRESETS)}, got {self.kind!r}")
        delay = self.scale_down_delay_s
        if self.price_per_hour < 0 or self.cpus < 1 or (delay is not None and delay < 0):
            raise ValueError("nodes: price_per_hour >= 0, cpus >= 1, scale_down_delay_s >= 0")
        if not 0 <= self.min_nodes <= self.max_nodes or self.max_nodes < 1:
            raise ValueError("nodes: 0 <= min_nodes <= max_nodes, max_nodes >= 1")
        if self.pods_per_node is not None and self.pods_per_node < 1:
            raise ValueError("nodes: pods_per_node >= 1")
        if not self.memory_gib > 0 or (
            self.pod_memory_mib is not None and not self.pod_memory_mib > 0
        ):
            raise ValueError("nodes: memory_gib > 0, pod_memory_mib > 0")

    def per_node(self, workers: int) -> int:
        """Pods a node holds: as given, else as many as both its CPUs (one per worker)
        and its memory allow, and at least one (a pod too big for any node is the
        operator's to see, not the simulator's to refuse)."""
        if self.pods_per_node is not None:
            return self.pods_per_node
        return pods_that_fit(self.cpus, workers, self.memory_gib, self.pod_memory_mib)


def pods_that_fit(cpus: int, workers: int, memory_gib: float, pod_memory_mib: float | None) -> int:
    """min(pods by CPU, pods by memory), at least 1: a node of `cpus` and `memory_gib`
    for pods of `workers` workers (one core each) needing `pod_memory_mib` each."""
    by_cpu = cpus // workers
    if pod_memory_mib is None:
        return max(1, by_cpu)
    by_memory = math.floor(memory_gib * 1024 / pod_memory_mib)
    return max(1, min(by_cpu, by_memory))


def node_preset(kind: str) -> dict[str, object]:
    """The defaults of a pool kind (cpu, gpu), to be overridden by the scenario."""
    if kind not in _PRESETS:
        raise ValueError(f"nodes kind must be one of {tuple(_PRESETS)}, got {kind!r}")
    return dict(_PRESETS[kind])


@dataclass(frozen=True)
class ControllerSpec:
    interval_s: float = 2.0  # controller tick (Knative's autoscaler ticks every 2 s)
    # Scrape + decide + API call: the decision lands this late. The real controller
    # writes /scale ~3 ms after its scrape (API emulator, docs/simulator.md "Controller
    # timing"); 50 ms allows for a real API server's round trip.
    scrape_delay_s: float = 0.05
    # How long before its tick the rscore policy's pods are read: the controller follows
    # each pod's /metrics/stream, whose readings come 0.05 to 0.25 of an interval before
    # the tick (rscore.autoscaler.ticks.mean_reading_lead_s); None: that mean, 0: read at
    # the tick (a GET, `--no-metric-streams`).
    reading_lead_s: float | None = None
    # Unix time at t = 0: the forecast learns time of day and week from it. The default,
    # a Monday 00:00 UTC, suits any trace whose first second is a midnight.
    wall_start_s: float = 1_700_438_400.0
    # Seconds of the trace before the run the controller has already seen: its demand
    # profile is learned from them (rscore.sim.history), as a deployed controller keeps it.
    history_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or self.scrape_delay_s < 0 or self.history_s < 0:
            raise ValueError("controller: interval_s > 0, scrape_delay_s >= 0, history_s >= 0")
        if self.reading_lead_s is not None and not 0 <= self.reading_lead_s < self.interval_s:
            raise ValueError("controller: reading_lead_s must be in [0, interval_s)")

    @property
    def lead_s(self) -> float:
        """The reading lead in force (`reading_lead_s`, or the streams' mean)."""
        if self.reading_lead_s is None:
            return mean_reading_lead_s(self.interval_s)
        return self.reading_lead_s


class NodeAutoscaler:
    """Cluster Autoscaler emulation: fit every pod now; shrink after a quiet delay."""

    def __init__(self, spec: NodeSpec, per_node: int) -> None:
        self._spec = spec
        self._per_node = per_node
        self._below_since: float | None = None

    def desired(self, now: float, pods: int, current: int) -> int:
        spec = self._spec
        need = min(max(math.ceil(pods / self._per_node), spec.min_nodes), spec.max_nodes)
        if need >= current:
            self._below_since = None
            return need
        if self._below_since is None:
            self._below_since = now
        delay = (
            CA_SCALE_DOWN_DELAY_S if spec.scale_down_delay_s is None else spec.scale_down_delay_s
        )
        if now - self._below_since >= delay:
            return need
        return current
