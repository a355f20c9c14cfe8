"""`rscore sim validate`'s arithmetic: the simulator's error against a real pod.

The real pod is driven elsewhere (rscore/cli/validate_cmd.py: processes, sockets, the
clock); this module gets what was measured and does the rest, purely:

- the schedule: the scenario's workload scaled so that it arrives at a share of the
  pod's capacity (`scaled_workload`, `schedule`);
- the calibration: the sidecar's CPU per request and per R call, fitted to the sidecar
  process's CPU, answers and R calls over validate's own runs (`LoopSample`,
  `fit_sidecar`); the other processes' runnable threads that share the cores with
  the pod in each run (`competing_threads`); and the HTTP path's fixed time, from a
  low-load run (`http_seconds`);
- the simulation of the very request times the pod saw, one pod with its settings and
  the calibrated sidecar, its loop and R workers sharing the usable cores with those
  threads (`sidecar_model`, `simulate`);
- a diagnostic the simulation does not use: how much slower (or faster) R ran per call
  in the pod over a level than in the measurement at the same rows per call
  (`r_diagnostics`, from the pod's own time inside R and rscore.sim.measure's `fit_inside_r`);
- the statistics of both runs in one shape (`Stats`, `real_stats`, `run_stats`), the
  errors (`errors`: latencies relative, sim / real - 1; failures in percentage points),
  validate.json's document and the printed table.

Never reads the clock, never starts a process, never opens a socket; writes nothing
(the command writes the files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rscore.sim.cluster import ControllerSpec, NodeSpec, PodSpec
from rscore.sim.distributions import Streams
from rscore.sim.engine import Engine, RunResult
from rscore.sim.measure import Fit
from rscore.sim.metrics import rank_or_none
from rscore.sim.policies import StaticController
from rscore.sim.service import ServiceSpec
from rscore.sim.sidecar import SidecarModel
from rscore.sim.workload import WorkloadSpec, arrival_blocks

__all__ = [
    "LATENCY_KEYS",
    "STAT_KEYS",
    "Calibration",
    "LoopSample",
    "PodSettings",
    "Stats",
    "competing_threads",
    "cores_left",
    "errors",
    "fit_sidecar",
    "http_seconds",
    "level_entry",
    "r_diagnostics",
    "real_stats",
    "relative_error",
    "run_stats",
    "scaled_workload",
    "schedule",
    "sidecar_model",
    "simulate",
    "table",
    "validation_pods",
]

STAT_KEYS = (
    "requests", "p50_s", "p90_s", "p99_s", "mean_s", "reject_rate", "timeout_rate",
    "throughput_rps",
)  # fmt: skip
LATENCY_KEYS = {"p50": "p50_s", "p90": "p90_s", "p99": "p99_s", "mean": "mean_s"}
OK, REJECTED, TIMED_OUT = 200, 429, 504
SCHEDULE_ROUNDS = 6  # rescaling rounds of a workload to the rate asked


@dataclass(frozen=True)
class Stats:
    """One run, real or simulated, in validate.json's shape. Latencies are those of the
    answered requests (200), nearest-rank; rates are shares of all requests."""

    requests: int
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    mean_s: float | None
    reject_rate: float  # 429
    timeout_rate: float  # 504
    throughput_rps: float  # answers (200) per second from the schedule's start to the last

    def as_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in STAT_KEYS}

    @property
    def failure_rate(self) -> float:
        return self.reject_rate + self.timeout_rate


def _stats(
    latencies: np.ndarray, requests: int, rejected: int, timeouts: int, end_s: float
) -> Stats:
    ordered = np.sort(latencies)
    return Stats(
        requests=requests,
        p50_s=rank_or_none(ordered, 0.50),
        p90_s=rank_or_none(ordered, 0.90),
        p99_s=rank_or_none(ordered, 0.99),
        mean_s=float(ordered.mean()) if ordered.size else None,
        reject_rate=rejected / requests if requests else 0.0,
        timeout_rate=timeouts / requests if requests else 0.0,
        throughput_rps=ordered.size / end_s if end_s > 0 else 0.0,
    )


def real_stats(sent: np.ndarray, done: np.ndarray, status: np.ndarray) -> Stats:
    """The real run's statistics: one entry per request of the schedule (times in
    seconds from the schedule's start; status 0 when no HTTP answer came)."""
    answered = status == OK
    latencies = (done - sent)[answered]
    end = float(np.nanmax(done)) if done.size and not np.isnan(done).all() else 0.0
    return _stats(
        latencies,
        int(status.size),
        int((status == REJECTED).sum()),
        int((status == TIMED_OUT).sum()),
        end,
    )


def run_stats(result: RunResult) -> Stats:
    """The simulated run's statistics, in the same shape."""
    return _stats(
        result.latencies,
        result.requests,
        int(result.reject_times.size),
        int(result.timeout_times.size),
        result.end_s,
    )


def relative_error(sim: float | None, real: float | None) -> float | None:
    """sim / real - 1 (None when either is missing or real is 0)."""
    if sim is None or real is None or real == 0:
        return None
    return sim / real - 1.0


def errors(real: Stats, sim: Stats) -> dict[str, float | None]:
    """Latency errors relative (sim / real - 1); the 429 + 504 rate's in points."""
    out: dict[str, float | None] = {
        name: relative_error(getattr(sim, key), getattr(real, key))
        for name, key in LATENCY_KEYS.items()
    }
    out["failure_rate_points"] = 100.0 * (sim.failure_rate - real.failure_rate)
    return out


# --- the schedule ------------------------------------------------------------------------


def scaled_workload(spec: WorkloadSpec, factor: float) -> WorkloadSpec:
    """The workload with `factor` times the rate, by its own means: a rate (poisson,
    diurnal, mmpp) is multiplied; a trace's `scale`, in its `scale_mode`."""
    if spec.kind == "trace":
        return dataclasses.replace(spec, scale=spec.scale * factor)
    if spec.kind == "mmpp":
        return dataclasses.replace(spec, rates=tuple(r * factor for r in spec.rates))
    return dataclasses.replace(spec, rate=spec.rate * factor)


def _arrivals(spec: WorkloadSpec, duration_s: float, seed: int) -> np.ndarray:
    blocks = list(arrival_blocks(spec, duration_s, Streams(seed)["arrivals"]))
    return np.concatenate(blocks) if blocks else np.empty(0)


def schedule(
    spec: WorkloadSpec, duration_s: float, rate_rps: float, seed: int
) -> tuple[WorkloadSpec, np.ndarray]:
    """The workload scaled to arrive at `rate_rps` on average over `duration_s`, and its
    arrival times (from the scenario's seed). A Poisson workload takes the rate as it
    is; any other is scaled by the ratio of the count asked to the count drawn, drawn
    again with the same seed, until the two agree within 1 % (every kind's count grows
    in proportion to its rate or scale, so a few rounds do)."""
    if not rate_rps > 0 or not duration_s > 0:
        raise ValueError("schedule: rate_rps and duration_s must be > 0")
    if spec.kind == "poisson":
        scaled = dataclasses.replace(spec, rate=rate_rps)
        return scaled, _arrivals(scaled, duration_s, seed)
    wanted = rate_rps * duration_s
    scaled, times = spec, _arrivals(spec, duration_s, seed)
    for _ in range(SCHEDULE_ROUNDS):
        if times.size == 0:
            raise ValueError(f"the workload has no arrivals in its first {duration_s:g} s")
        if abs(times.size / wanted - 1) <= 0.01:
            break
        scaled = scaled_workload(scaled, wanted / times.size)
        times = _arrivals(scaled, duration_s, seed)
    return scaled, times


# --- calibration -------------------------------------------------------------------------


@dataclass(frozen=True)
class PodSettings:
    """The real pod's settings, which the simulated pod takes over."""

    workers: int
    max_queue: int
    request_timeout_s: float
    max_batch_rows: int  # 1 when the model is not batchable (the sidecar never merges)


@dataclass(frozen=True)
class Calibration:
    """What validate measured of the pod besides R: see docs/simulator.md."""

    capacity_rps: float  # the highest Poisson rate the pod sustains (open loop)
    closed_loop_rps: float  # its closed-loop saturation throughput (answers per second)
    sidecar_s: float  # the sidecar's CPU seconds per request (fitted, with sidecar_call_s)
    sidecar_call_s: float  # ... and per R call (writing it, reading its reply)
    http_s: float  # low-load real median minus the simulated one without it
    cores_left: float  # the usable cores less everyone else's use, at saturation
    usable_cores: float  # the cores this process may run on (sched_getaffinity)

    def as_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoopSample:
    """One run's sidecar CPU and what it did: a point of the sidecar's cost fit."""

    cpu_s: float  # the sidecar process's CPU seconds over the run, its idle timers' less
    answered: int  # requests it answered (any status)
    calls: int  # R calls it made


def fit_sidecar(samples: Sequence[LoopSample]) -> tuple[float, float]:
    """(seconds per request, seconds per R call): the non-negative least-squares fit of
    `cpu_s = request_s * answered + call_s * calls` over the runs. The runs differ in
    how many requests share a call (a saturated pod batches, a quiet one does not),
    which is what separates the two costs; when they do not (or a cost comes out
    negative), the better of the one-cost fits."""
    usable = [x for x in samples if x.answered > 0]
    if not usable:
        return 0.0, 0.0
    y = np.array([max(0.0, x.cpu_s) for x in usable])
    a = np.array([[x.answered, x.calls] for x in usable], dtype=np.float64)
    candidates: list[tuple[float, float]] = []
    if len(usable) >= 2 and np.linalg.matrix_rank(a) == 2:
        both = np.linalg.lstsq(a, y, rcond=None)[0]
        if both.min() >= 0:
            candidates.append((float(both[0]), float(both[1])))
    for column in (0, 1):
        x = a[:, column]
        if x @ x > 0:
            k = max(0.0, float(x @ y / (x @ x)))
            candidates.append((k, 0.0) if column == 0 else (0.0, k))

    def residual(fit: tuple[float, float]) -> float:
        return float(np.sum((a @ np.array(fit) - y) ** 2))

    return min(candidates, key=residual)


def cores_left(usable: float, others_s: float, elapsed_s: float) -> float:
    """The cores the pod had over a run: the usable cores less what every other process
    (the client among them) used meanwhile; at least a tenth of a core."""
    if not elapsed_s > 0:
        return usable
    return max(0.1, min(usable, usable - max(0.0, others_s) / elapsed_s))


def http_seconds(real_median_s: float, simulated_median_s: float) -> float:
    """The fixed time of the HTTP path: what the real low-load median has beyond the
    simulated one (the pod's R and sidecar costs without it); never negative."""
    return max(0.0, real_median_s - simulated_median_s)


def r_diagnostics(inside_r: Fit | None, r_s: float, calls: int, rows: int) -> dict[str, Any]:
    """How R ran in the pod over a level, against the measurement (a diagnostic: the
    simulation never uses it, it predicts the pod from what was measured before).

    `r_s`, `calls`, `rows`: the seconds inside R, the R calls and their rows the pod
    made over the level (its rscore_scoring_duration_seconds and rscore_batch_rows
    histograms' deltas); `inside_r`: the measurement's mean time inside R per call at a
    batch size (rscore.sim.measure.fit_inside_r). `r_slowdown` is the pod's mean time inside R
    per call over the measurement's at the pod's mean rows per call: above 1 when R ran
    slower in the pod (the cores it shared with the sidecar, the client and the
    machine's other work, or a machine that drifted since the measurement). None where
    there is nothing to go by (no call, no time inside R, no measurement of it)."""
    real = r_s / calls if calls > 0 and r_s > 0 else None
    per_call = rows / calls if calls > 0 else None
    measured = (
        inside_r.a_s + inside_r.c_s * per_call
        if inside_r is not None and per_call is not None
        else None
    )
    slowdown = real / measured if real is not None and measured and measured > 0 else None
    return {
        "r_slowdown": slowdown,
        "real_r_s_per_call": real,
        "measured_r_s_per_call": measured,
        "rows_per_call": per_call,
    }


def validation_pods(settings: PodSettings) -> PodSpec:
    """The simulated pod: one, ready, with the real pod's settings."""
    return PodSpec(
        workers=settings.workers,
        initial=1,
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        max_batch_rows=settings.max_batch_rows,
    )


def competing_threads(background: float, client_s: float, elapsed_s: float) -> float:
    """The other processes' runnable threads while the pod serves a run, on average:
    the machine's other work (`background`: its runnable threads over the run), plus the
    load client (`client_s`: the seconds its threads ran or waited for a core over the
    run's `elapsed_s`; a thread runnable a share u of the time wants a core that share
    of it)."""
    client = max(0.0, client_s) / elapsed_s if elapsed_s > 0 else 0.0
    return max(0.0, background) + client


def sidecar_model(calibration: Calibration, others: float) -> SidecarModel:
    """The calibrated sidecar: its loop and the R workers share the usable cores with
    `others` runnable threads of other processes (`competing_threads`)."""
    return SidecarModel(
        request_s=calibration.sidecar_s,
        call_s=calibration.sidecar_call_s,
        http_s=calibration.http_s,
        cores=calibration.usable_cores,
        others=others,
    )


def simulate(
    times: np.ndarray,
    service: ServiceSpec,
    pods: PodSpec,
    *,
    rows: int = 1,
    seed: int = 1,
    sidecar: SidecarModel | None = None,
) -> RunResult:
    """The engine on exactly these arrival times (seconds, sorted), one static pod;
    `sidecar`: its model (None: the pods' own keys)."""
    times = np.sort(np.asarray(times, dtype=np.float64))
    duration = float(times[-1]) + 1e-9 if times.size else 1.0
    engine = Engine(
        arrivals=iter([times]),
        duration_s=duration,
        service=service,
        pods=pods,
        nodes=NodeSpec(pods_per_node=1, min_nodes=1, max_nodes=1),
        controller=StaticController(1),
        controller_spec=ControllerSpec(),
        streams=Streams(seed),
        rows=rows,
        sample_s=max(10.0, duration),
        sidecar=sidecar,
    )
    return engine.run()


# --- the document ------------------------------------------------------------------------


def level_entry(level: float, rate_rps: float, real: Stats, sim: Stats) -> dict[str, Any]:
    """One entry of validate.json's `levels`."""
    return {
        "level": level,
        "rate_rps": rate_rps,
        "real": real.as_json(),
        "sim": sim.as_json(),
        "error": errors(real, sim),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(levels: Sequence[dict[str, Any]]) -> str:
    """The printed table: per level, real and simulated p50/p99 (ms), 429+504 rates and
    the errors; and the diagnostic `r_slowdown` (`r_diagnostics`), where there is one."""
    rows = [[
        "level", "rate/s", "real p50", "sim p50", "err", "real p99", "sim p99", "err",
        "real fail", "sim fail", "err pts", "R slowdown",
    ]]  # fmt: skip
    for entry in levels:
        real, sim, error = entry["real"], entry["sim"], entry["error"]
        real_fail = 100 * (real["reject_rate"] + real["timeout_rate"])
        sim_fail = 100 * (sim["reject_rate"] + sim["timeout_rate"])
        rows.append([
            f"{entry['level']:g}", f"{entry['rate_rps']:.0f}",
            _ms(real["p50_s"]), _ms(sim["p50_s"]), _pct(error["p50"]),
            _ms(real["p99_s"]), _ms(sim["p99_s"]), _pct(error["p99"]),
            f"{real_fail:.2f}%", f"{sim_fail:.2f}%", f"{error['failure_rate_points']:+.2f}",
            _times(entry.get("diagnostics", {}).get("r_slowdown")),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(
        1,
        "(latencies in ms; err: sim / real - 1; err pts: failure rates' difference; "
        "R slowdown: the pod's time inside R per call over the measurement's, "
        "a diagnostic the simulation does not use)",
    )
    return "\n".join(lines)
