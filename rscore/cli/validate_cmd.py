"""`rscore sim validate`: the simulator's error against a real `rscore serve` of a bundle.

    rscore sim validate BUNDLE SCENARIO.toml --out DIR [--levels 0.3,0.6,0.9] [--duration-s S]

Steps (docs/simulator.md, "Validation", says why each is there):

1. measure the bundle's calls on one R worker, as `rscore sim measure` does;
2. start the pod (`rscore serve BUNDLE --auth none`, its default workers, the scenario's
   queue bound, timeout and batching) and the echo server, on 127.0.0.1;
3. the closed-loop saturation throughput (concurrency doubled from the worker count
   until the answers per second stop growing by 5 %), and at each step the sidecar's
   CPU, answers and R calls (from the pod's rscore_batch_rows histogram);
4. a low-load run: one request per R call, which with the sweep separates the
   sidecar's CPU per request from its CPU per call (the fit); then the pod's capacity,
   open loop (the highest Poisson rate it sustains: every request answered, p99 under
   the timeout), by bisection below the closed-loop throughput; and the HTTP path's
   fixed time (the low-load real median beyond the simulated);
5. per level: the scenario's workload scaled to `level x capacity` for `--duration-s`,
   replayed open-loop by a client in its own process (rscore/cli/replay_client.py),
   first against the echo server (the client's floor), then, after half a second in
   which the runnable threads of other processes are counted, against the pod; the
   very send times the pod saw are simulated (one pod, its settings, the measured
   service, the calibrated sidecar sharing the cores with those threads and the
   client; and, for comparison, without the sidecar model); and, as a diagnostic the
   simulation does not use, the pod's own mean time inside R per call over the level
   (its rscore_scoring_duration_seconds histogram) against the measurement's at the
   same rows per call (validate.json's `diagnostics`, `r_slowdown`);
6. write validate.json, validate.png (real vs simulated latency CDF per level),
   calibrated.toml (the [service] and [pods] keys to paste into a scenario) and print
   the table.

The simulator stays pure: everything here that touches processes, sockets and the
clock is in this module, rscore/cli/real_pod.py and the client; the arithmetic is in
rscore/sim/validate.py. Loads only 127.0.0.1 and leaves no process behind.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rscore.cli.processes import machine

if TYPE_CHECKING:
    import numpy as np

    from rscore.cli.real_pod import ClientRun, Rig
    from rscore.sim.measure import Fit
    from rscore.sim.scenario import Scenario
    from rscore.sim.service import ServiceSpec
    from rscore.sim.validate import Calibration, PodSettings
    from rscore.sim.workload import WorkloadSpec

__all__ = ["validate"]

CAPACITY_STEP_S = 2.0  # each concurrency of the saturation sweep
CAPACITY_GAIN = 0.05  # the sweep stops when doubling the concurrency gains less than this
CAPACITY_PROBES = 5  # open-loop bisection steps: the capacity within 1/32 of the range
CAPACITY_GROWTH, CAPACITY_GROWTH_STEPS = 1.5, 3  # above the closed loop, while sustained
WARMUP_S = 1.0
LOW_LOAD_SHARE = 0.05  # the calibration run's rate, a share of capacity ...
LOW_LOAD_REQUESTS = 300  # ... for this many requests (at most LOW_LOAD_MAX_S seconds)
LOW_LOAD_MAX_S = 20.0
IDLE_S = 1.0  # the pod's CPU with no request, measured for this long
QUIET_S = 0.5  # before each run: what the machine's other work keeps busy meanwhile
FLOOR_S = 5.0  # each level's schedule replayed against the echo server for this long
MAX_CONNECTIONS = 256  # connections the client opens beforehand (more on demand)
CLIENT = (
    "rscore.cli.replay_client: open loop, a process of its own (not pinned: the pod "
    "needs both cores), Python asyncio on uvloop, raw HTTP/1.1 over keep-alive "
    "connections opened beforehand, one request per connection at a time"
)


def _levels(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not levels or any(not 0 < level <= 2 for level in levels):
        raise click.BadParameter("give one or more shares of capacity, each in (0, 2]")
    return levels


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument(
    "scenario_path", metavar="SCENARIO.toml",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)  # fmt: skip
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results (created if missing).",
)  # fmt: skip
@click.option("--levels", default="0.3,0.6,0.9", show_default=True, callback=_levels,
              help="Loads to replay, as shares of the pod's measured capacity.")  # fmt: skip
@click.option("--duration-s", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True, help="Seconds of traffic replayed at each level.")  # fmt: skip
@click.option("--requests", type=click.IntRange(min=10), default=1000, show_default=True,
              help="One-row calls the measurement times (`sim measure --requests`).")  # fmt: skip
def validate(
    *,
    bundle: Path,
    scenario_path: Path,
    out_dir: Path,
    levels: tuple[float, ...],
    duration_s: float,
    requests: int,
) -> None:
    """Replay SCENARIO.toml's workload against a real pod of BUNDLE and simulate it.

    Writes validate.json, validate.png and calibrated.toml into --out and prints the
    simulator's error per load level (docs/simulator.md, "Validation").
    """
    from rscore.cli.real_pod import PodError
    from rscore.r_scorer.timing import MeasureError
    from rscore.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_path)
    except (ScenarioError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        document, curves = run_validation(
            _Ask(bundle, scenario_path, scenario, out_dir, levels, duration_s, requests), _say
        )
    except (MeasureError, PodError, ValueError) as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    paths = _write(document, curves, out_dir)
    from rscore.sim.validate import table

    calibration = document["calibration"]
    click.echo(
        f"{document['workload']}; capacity {calibration['capacity_rps']:.0f} req/s open loop "
        f"({calibration['closed_loop_rps']:.0f} closed loop); "
        f"sidecar {1e3 * calibration['sidecar_s']:.3f} ms/request "
        f"+ {1e3 * calibration['sidecar_call_s']:.3f} ms/R call, "
        f"HTTP path {1e3 * calibration['http_s']:.3f} ms, "
        f"{calibration['cores_left']:.2f} of {calibration['usable_cores']:g} cores left to "
        "the pod at saturation (each level: its own, measured)"
    )
    click.echo(table(document["levels"]))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


def _say(message: str) -> None:
    click.echo(message, err=True)


# --- the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ask:
    """What the command was asked."""

    bundle: Path
    scenario_path: Path
    scenario: Scenario
    out_dir: Path
    levels: tuple[float, ...]
    duration_s: float
    requests: int


@dataclass
class _Pod:
    """The pod under test and what every phase needs of it."""

    rig: Rig
    body: str
    settings: PodSettings
    service: ServiceSpec
    rows: int
    seed: int
    connections: int
    say: Callable[[str], None]
    runs_dir: Path  # each level's per-request record
    inside_r: Fit | None  # the measurement's mean time inside R per call (diagnostics only)

    @property
    def timeout_s(self) -> float:
        return self.settings.request_timeout_s + 5.0  # the pod answers 504 first

    def closed(self, concurrency: int, seconds: float) -> ClientRun:
        plan = {"mode": "closed", "body": self.body, "timeout_s": self.timeout_s,
                "connections": concurrency, "duration_s": seconds}  # fmt: skip
        return self.rig.run_client("pod", plan, seconds + self.timeout_s)

    def replay(self, target: str, offsets: list[float], connections: int) -> ClientRun:
        plan = {"mode": "replay", "body": self.body, "timeout_s": self.timeout_s,
                "connections": connections, "offsets": offsets}  # fmt: skip
        bound = (offsets[-1] if offsets else 0.0) + self.timeout_s
        return self.rig.run_client(target, plan, bound)


@dataclass
class _Level:
    """A level's raw outcome, kept for the plot."""

    level: float
    real: np.ndarray
    sim: np.ndarray
    bare: np.ndarray


def run_validation(ask: _Ask, say: Callable[[str], None]) -> tuple[dict[str, Any], list[_Level]]:
    """Everything but writing the files: validate.json's document and the curves."""
    from rscore.cli.real_pod import Rig
    from rscore.r_scorer.cores import detect_usable_cores
    from rscore.r_scorer.timing import measure_bundle
    from rscore.sim.measure import fit_inside_r, fit_measurement, simulator_keys, write_results
    from rscore.sim.service import ServiceSpec
    from rscore.sim.validate import PodSettings
    from rscore.sim.workload import describe

    bundle, scenario, out_dir, requests = ask.bundle, ask.scenario, ask.out_dir, ask.requests
    say(f"measuring {bundle}'s calls on one R worker ({requests} one-row calls) ...")
    measured = out_dir / "measure"
    measurement = measure_bundle(bundle, requests=requests, worker_log=measured / "worker.log")
    fit = fit_measurement(measurement)
    try:  # what the pod's own time inside R is set against, per level (a diagnostic)
        inside_r: Fit | None = fit_inside_r(measurement)
    except ValueError:
        inside_r = None
    write_results(measurement, fit, measured)
    keys = simulator_keys(measurement, fit)
    service = ServiceSpec(
        kind="empirical",
        path=(measured / "service_times.txt").resolve(),
        mean_s=keys["mean_s"],
        per_row_s=keys["per_row_s"],
    )
    rows = scenario.workload.rows
    body = _body(measurement.rows, rows)
    pods = scenario.pods
    settings = PodSettings(
        workers=detect_usable_cores(),
        max_queue=pods.max_queue,
        request_timeout_s=pods.request_timeout_s,
        max_batch_rows=pods.max_batch_rows if measurement.batchable else 1,
    )
    flags = [
        "--workers", str(settings.workers), "--max-queue", str(settings.max_queue),
        "--request-timeout-ms", str(max(1, round(1000 * settings.request_timeout_s))),
        "--max-batch-rows", str(pods.max_batch_rows),
    ]  # fmt: skip
    connections = min(MAX_CONNECTIONS, settings.max_queue * settings.workers + settings.workers)
    with Rig(out_dir / "logs") as rig:
        say(f"starting the pod: rscore serve {bundle} {' '.join(flags)} ...")
        rig.start_pod(bundle, flags)
        rig.start_echo()
        rig.wait_ready(body)
        runs = out_dir / "runs"
        runs.mkdir(exist_ok=True)
        pod = _Pod(
            rig, body, settings, service, rows, scenario.seed, connections, say, runs, inside_r
        )
        calibration, sweep = _calibrate(pod)
        entries, curves = [], []
        for level in ask.levels:
            entry, curve = _level(pod, level, scenario.workload, calibration, ask.duration_s)
            entries.append(entry)
            curves.append(curve)
    document = {
        "bundle": str(bundle),
        "scenario": str(ask.scenario_path),
        "levels": entries,
        "workload": describe(scenario.workload),
        "duration_s": ask.duration_s,
        "seed": scenario.seed,
        "machine": machine(),
        "pod": {
            "command": f"rscore serve {bundle} --auth none {' '.join(flags)}",
            "workers": settings.workers,
            "max_queue": settings.max_queue,
            "request_timeout_s": settings.request_timeout_s,
            "max_batch_rows": settings.max_batch_rows,
            "batchable": measurement.batchable,
            "rows_per_request": rows,
        },
        "service": {
            "kind": "empirical",
            "path": str(service.path),
            "mean_s": keys["mean_s"],
            "per_row_s": keys["per_row_s"],
            "fit": {"a_s": fit.a_s, "c_s": fit.c_s, "r2": fit.r2},
            # The mean time inside R per call on the batch size, which each level's
            # diagnostics set the pod's own against (None: the measurement has none).
            "inside_r_fit": None
            if inside_r is None
            else {"a_s": inside_r.a_s, "c_s": inside_r.c_s, "r2": inside_r.r2},
        },
        "calibration": {**calibration.as_json(), "sweep": sweep},
        "client": {"kind": CLIENT, "connections": connections},
    }
    return document, curves


def _body(columns: dict[str, list[Any]], rows: int) -> str:
    """A /score body of `rows` rows: the measured rows, repeated in order."""
    import orjson

    names = list(columns)
    count = len(next(iter(columns.values()))) if columns else 0
    if count == 0:
        raise ValueError("the measurement kept no rows to send")
    data = [[columns[name][i % count] for name in names] for i in range(rows)]
    return orjson.dumps({"dataframe_split": {"columns": names, "data": data}}).decode()


def _calibrate(pod: _Pod) -> tuple[Calibration, dict[str, list[dict[str, float]]]]:
    """Capacity, and the sidecar's CPU per request and per R call, from the saturation
    sweep and a low-load run; then the HTTP path's fixed time, at low load."""
    import numpy as np

    from rscore.sim.validate import (
        Calibration,
        LoopSample,
        competing_threads,
        cores_left,
        fit_sidecar,
        http_seconds,
        run_stats,
        sidecar_model,
        simulate,
        validation_pods,
    )

    settings, say = pod.settings, pod.say
    pod.closed(2 * settings.workers, WARMUP_S)
    idle = pod.rig.idle_cpu(IDLE_S)
    idle_rate = idle.sidecar_s / idle.at if idle.at > 0 else 0.0  # its timers

    def sample(run: ClientRun) -> LoopSample:
        return LoopSample(run.cpu.sidecar_s - idle_rate * run.cpu.at, run.replied, run.cpu.calls)

    ceiling = settings.max_queue * settings.workers + settings.workers
    concurrency, best, sweep, samples = settings.workers, None, [], []
    while True:
        run = pod.closed(concurrency, CAPACITY_STEP_S)
        throughput = run.answered / run.cpu.at
        samples.append(sample(run))
        sweep.append({
            "concurrency": concurrency, "answers_per_s": throughput,
            "requests_per_call": run.replied / max(1, run.cpu.calls),
            "sidecar_ms_per_request": 1e3 * samples[-1].cpu_s / max(1, run.replied),
        })  # fmt: skip
        say(f"capacity: {concurrency} concurrent requests: {throughput:.0f} answers/s")
        gained = best is None or throughput > best[0] * (1 + CAPACITY_GAIN)
        if best is None or throughput > best[0]:
            best = (throughput, run)
        if not gained or concurrency * 2 > min(ceiling, MAX_CONNECTIONS):
            break
        concurrency *= 2
    closed_capacity, saturated = best
    usable = float(len(os.sched_getaffinity(0)))
    left = cores_left(usable, saturated.cpu.others_s, saturated.cpu.at)
    # Low load: calls of one request each (what separates the per-call cost), and the
    # pod's fixed costs alone.
    rate = LOW_LOAD_SHARE * closed_capacity
    count = int(min(LOW_LOAD_REQUESTS, rate * LOW_LOAD_MAX_S)) or 1
    offsets = np.cumsum(np.random.default_rng(pod.seed).exponential(1 / rate, count)).tolist()
    say(f"low load: {count} requests at {rate:.0f} req/s ...")
    low = pod.replay("pod", offsets, settings.workers * 2)
    if low.answered == 0:
        raise ValueError("no request of the low-load run was answered (see logs/pod.log)")
    samples.append(sample(low))
    request_s, call_s = fit_sidecar(samples)
    capacity, probes = _open_loop_capacity(pod, rate, closed_capacity)
    first = Calibration(capacity, closed_capacity, request_s, call_s, 0.0, left, usable)
    others = competing_threads(low.background, low.client_wanting_s, low.cpu.at)
    simulated = run_stats(simulate(
        low.sent, pod.service, validation_pods(settings), rows=pod.rows, seed=pod.seed,
        sidecar=sidecar_model(first, others),
    ))  # fmt: skip
    assert simulated.p50_s is not None
    real_median = float(np.median(low.latencies()))
    calibration = dataclasses.replace(first, http_s=http_seconds(real_median, simulated.p50_s))
    return calibration, {"closed_loop": sweep, "open_loop": probes}


def _open_loop_capacity(pod: _Pod, low: float, high: float) -> tuple[float, list[dict[str, float]]]:
    """The highest Poisson rate the pod sustains open loop: every request answered 200
    and the p99 under the timeout over CAPACITY_STEP_S. Bisection between `low` (the
    low-load rate, sustained) and `high` (the closed-loop saturation throughput, where
    a full queue makes batches as large as they get: more than an open loop sees), in
    CAPACITY_PROBES steps; when `high` is sustained (a sweep cut short by a noisy
    step), `high` grows by CAPACITY_GROWTH until it is not (at most
    CAPACITY_GROWTH_STEPS times, then the last sustained rate is the answer)."""
    import numpy as np

    rng = np.random.default_rng(pod.seed)
    probes: list[dict[str, float]] = []

    def sustained(rate: float) -> bool:
        count = max(1, round(rate * CAPACITY_STEP_S))
        offsets = np.sort(rng.random(count) * CAPACITY_STEP_S).tolist()
        run = pod.replay("pod", offsets, pod.connections)
        p99 = _quantile(run.latencies(), 0.99) or math.inf
        ok = run.answered == count and p99 < pod.settings.request_timeout_s
        probes.append({"rate_rps": rate, "p99_s": p99, "answered": run.answered / count})
        pod.say(f"capacity (open loop): {rate:.0f} req/s: p99 {1e3 * p99:.1f} ms, "
                f"{'sustained' if ok else 'not sustained'}")  # fmt: skip
        return ok

    for _ in range(CAPACITY_GROWTH_STEPS):
        # The closed loop stopped short (a noisy step ends its sweep): look above it.
        if not sustained(high):
            break
        low, high = high, high * CAPACITY_GROWTH
    else:
        return low, probes
    for _ in range(CAPACITY_PROBES):
        middle = (low + high) / 2
        if sustained(middle):
            low = middle
        else:
            high = middle
    return low, probes


def _level(
    pod: _Pod, level: float, workload: WorkloadSpec, calibration: Calibration, duration_s: float
) -> tuple[dict[str, Any], _Level]:
    import numpy as np

    from rscore.sim.sidecar import SidecarModel
    from rscore.sim.validate import (
        competing_threads,
        cores_left,
        errors,
        level_entry,
        r_diagnostics,
        real_stats,
        run_stats,
        schedule,
        sidecar_model,
        simulate,
        validation_pods,
    )

    rate = level * calibration.capacity_rps
    _, times = schedule(workload, duration_s, rate, pod.seed)
    offsets = times.tolist()
    pod.say(f"level {level:g}: {len(offsets)} requests in {duration_s:g} s (mean {rate:.0f}/s)")
    floor = pod.replay("echo", [t for t in offsets if t < FLOOR_S], pod.connections)
    quiet, before = pod.rig.quiet(QUIET_S)
    run = pod.replay("pod", offsets, pod.connections)
    # What else wanted the cores in this run: the machine's other runnable threads and
    # the client, counted over the run itself: measured, not fitted.
    others = competing_threads(run.background, run.client_wanting_s, run.cpu.at)
    pods = validation_pods(pod.settings)
    simulated = simulate(run.sent, pod.service, pods, rows=pod.rows, seed=pod.seed,
                         sidecar=sidecar_model(calibration, others))  # fmt: skip
    bare = simulate(run.sent, pod.service, pods, rows=pod.rows, seed=pod.seed,
                    sidecar=SidecarModel())  # fmt: skip
    np.savez_compressed(
        pod.runs_dir / f"level-{level:g}.npz",
        scheduled=run.scheduled, sent=run.sent, done=run.done, status=run.status,
        sim_latencies=simulated.latencies, sim_done=simulated.done_times,
    )  # fmt: skip
    real = real_stats(run.sent, run.done, run.status)
    entry = level_entry(level, len(offsets) / duration_s, real, run_stats(simulated))
    known = np.isin(run.status, (200, 429, 504))
    entry["schedule_requests"] = len(offsets)
    entry["other_failures"] = int((~known).sum())  # no answer, or another status
    without = run_stats(bare)
    entry["sim_without_sidecar"] = without.as_json()
    entry["error_without_sidecar"] = errors(real, without)
    lag = run.lag()
    entry["client"] = {
        "lag_p50_s": _quantile(lag, 0.5),
        "lag_p99_s": _quantile(lag, 0.99),
        "lag_max_s": float(np.max(lag)) if lag.size else None,
        "cpu_s_per_request": run.client_cpu_s / max(1, len(offsets)),
        "connections_opened": run.opened,
        "echo_requests": len(floor.status),
        "echo_p50_s": _quantile(floor.latencies(), 0.5),
        "echo_p99_s": _quantile(floor.latencies(), 0.99),
        "echo_lag_p99_s": _quantile(floor.lag(), 0.99),
    }
    at = run.cpu.at if run.cpu.at > 0 else math.nan
    entry["pod_cpu"] = {
        "sidecar_s_per_request": run.cpu.sidecar_s / max(1, run.replied),
        "workers_s_per_request": run.cpu.workers_s / max(1, run.replied),
        "sidecar_cores": run.cpu.sidecar_s / at,
        "workers_cores": run.cpu.workers_s / at,
        "client_cores": run.client_cpu_s / at,
        "others_cores": run.cpu.others_s / at,  # the client among them
        "machine_busy_cores": run.cpu.machine_s / at,
        "cores_left": cores_left(calibration.usable_cores, run.cpu.others_s, run.cpu.at),
        "quiet_others_cores": quiet.others_s / quiet.at if quiet.at > 0 else None,
        "background_threads": run.background,
        "background_threads_before": before,  # counted with the pod idle, just before
        "competing_threads": others,
        # The pod's threads: how many were runnable on average, and the speed they ran
        # at meanwhile (CPU over runnable time: 1 when none ever waited for a core).
        "pod_threads_runnable": run.cpu.pod_wanting_s / at,
        "pod_speed": (run.cpu.sidecar_s + run.cpu.workers_s) / run.cpu.pod_wanting_s
        if run.cpu.pod_wanting_s > 0
        else None,
    }
    entry["batches"] = {
        "real_calls": run.cpu.calls,
        "real_requests_per_call": run.replied / max(1, run.cpu.calls),
        "sim_calls": simulated.calls,
        "sim_requests_per_call": simulated.served / max(1, simulated.calls),
    }
    # What the real run shows of the pod that the simulation was not given (it predicts
    # from the measurement and the calibration, made before): how R ran in the pod.
    entry["diagnostics"] = r_diagnostics(pod.inside_r, run.cpu.r_s, run.cpu.calls, run.cpu.rows)
    slowdown = entry["diagnostics"]["r_slowdown"]
    if slowdown is not None:
        pod.say(f"level {level:g}: R took {slowdown:.2f}x the measured time per call in the pod")
    return entry, _Level(level, run.latencies(), simulated.latencies, bare.latencies)


def _quantile(values: np.ndarray, fraction: float) -> float | None:
    import numpy as np

    from rscore.sim.metrics import rank_or_none

    return rank_or_none(np.sort(values), fraction)


# --- the files -------------------------------------------------------------------------


def _write(document: dict[str, Any], curves: list[_Level], out_dir: Path) -> list[Path]:
    from rscore.sim.output import write_json
    from rscore.sim.plots import plot_validate

    calibration = document["calibration"]
    fragment = out_dir / "calibrated.toml"
    fragment.write_text(
        f"# rscore sim validate {document['bundle']} {document['scenario']}\n"
        f"# {document['machine']}\n"
        "# Paste into a scenario to simulate this pod on this machine (docs/simulator.md).\n"
        "[service]\n"
        'kind = "empirical"\n'
        f"path = {document['service']['path']!r}\n"
        f"mean_s = {document['service']['mean_s']!r}\n"
        f"per_row_s = {document['service']['per_row_s']!r}\n\n"
        "[pods]\n"
        f"workers = {document['pod']['workers']}\n"
        f"max_queue = {document['pod']['max_queue']}\n"
        f"request_timeout_s = {document['pod']['request_timeout_s']!r}\n"
        f"max_batch_rows = {document['pod']['max_batch_rows']}\n"
        "# sidecar_s: per request plus one R call's (a scenario has no per-call cost yet:\n"
        f"# validate fitted {calibration['sidecar_s']!r} s per request and\n"
        f"# {calibration['sidecar_call_s']!r} s per call); cores: left at saturation.\n"
        f"sidecar_s = {calibration['sidecar_s'] + calibration['sidecar_call_s']!r}\n"
        f"http_s = {calibration['http_s']!r}\n"
        f"cores = {calibration['cores_left']!r}\n"
    )
    plot = plot_validate(
        [(f"{c.level:g} x capacity", c.real, c.sim, c.bare) for c in curves],
        f"{Path(document['bundle']).name}: {document['workload']}",
        out_dir / "validate.png",
    )
    return [write_json(out_dir / "validate.json", document), plot, fragment]
