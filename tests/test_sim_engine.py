"""The engine's rules on hand-checkable cases: admission (429), timeouts (504),
batching cost, routing, the gateway while no pod is ready, node billing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rscore.sim.run import run_scenario
from rscore.sim.scenario import parse_scenario

CONSTANT_1S = {"kind": "lognormal", "mean_s": 1.0, "cv": 0.0}


def azure_trace(folder: Path, times: list[float]) -> Path:
    """An Azure-format CSV with requests at these offsets (seconds)."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t in times:
        whole, frac = int(t), round((t - int(t)) * 1e7)
        lines.append(f"2023-11-16 00:{whole // 60:02d}:{whole % 60:02d}.{frac:07d},1,1")
    path = folder / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(folder: Path, times: list[float], duration: float = 1.0, **tables: Any) -> Any:
    data: dict[str, Any] = {
        "seed": 1,
        "duration_s": duration,
        "workload": {"kind": "trace", "path": str(azure_trace(folder, times))},
        "policy": {"kind": "static"},
    }
    data.update(tables)
    return run_scenario(parse_scenario(data, folder))


def test_full_queue_is_429_and_late_answers_are_504(tmp_path: Path) -> None:
    # One worker, room for 2 waiting, calls of 1 s, a 1.5 s timeout. r0 is served; r1 and
    # r2 queue; r3 and r4 find the queue full. r1 starts at 1.0 and ends at 2.0 (1.9 s
    # after arrival: 504 at 1.6, the worker still finishes); r2 is still queued at its
    # deadline 1.7 and leaves.
    r = run(
        tmp_path,
        [0.0, 0.1, 0.2, 0.3, 0.4],
        service=CONSTANT_1S,
        pods={"workers": 1, "max_queue": 2, "request_timeout_s": 1.5},
    )
    s = r.summary
    assert (s["completed"], s["rejected"], s["timeouts"]) == (1, 2, 2)
    assert r.result.reject_times.tolist() == pytest.approx([0.3, 0.4])
    assert sorted(r.result.timeout_times.tolist()) == pytest.approx([1.6, 1.7])
    assert r.result.latencies.tolist() == pytest.approx([1.0])
    assert s["served"] == 2
    assert s["wait_mean_s"] == pytest.approx(0.45)  # (0 + 0.9) / 2
    assert s["end_s"] == pytest.approx(2.0)  # runs until the last admitted call ends


@pytest.mark.parametrize(
    ("max_batch_rows", "latencies"),
    [
        # Batching: r0 alone (1.0 s); at 1.0 r1..r4 share a call of 4 rows costing
        # a + 4c = 0.9 + 0.4 = 1.3 s, ending at 2.3; then r5 alone until 3.3.
        (4, [1.0, 2.2, 2.1, 2.0, 1.9, 2.8]),
        # No batching: one call per request, 1 s each.
        (1, [1.0, 1.9, 2.8, 3.7, 4.6, 5.5]),
    ],
)
def test_dynamic_batching_merges_waiting_rows(
    tmp_path: Path, max_batch_rows: int, latencies: list[float]
) -> None:
    r = run(
        tmp_path,
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        service={**CONSTANT_1S, "per_row_s": 0.1},
        pods={"workers": 1, "max_batch_rows": max_batch_rows, "request_timeout_s": 60},
    )
    arrivals = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    done = sorted(zip(r.result.done_times.tolist(), r.result.latencies.tolist(), strict=True))
    by_arrival = sorted((t - lat, lat) for t, lat in done)
    assert [a for a, _ in by_arrival] == pytest.approx(arrivals)
    assert [lat for _, lat in by_arrival] == pytest.approx(latencies)


def test_no_queue_admits_only_to_idle_workers(tmp_path: Path) -> None:
    r = run(
        tmp_path,
        [0.0, 0.1, 0.2, 1.5],
        duration=2.0,
        service=CONSTANT_1S,
        pods={"workers": 2, "max_queue": 0},
    )
    assert (r.summary["completed"], r.summary["rejected"]) == (3, 1)
    assert r.result.reject_times.tolist() == pytest.approx([0.2])


def test_least_loaded_routing_waits_less_than_random() -> None:
    def mean_wait(routing: str) -> float:
        data = {
            "seed": 3,
            "duration_s": 3000.0,
            "workload": {"kind": "poisson", "rate": 3.2},
            "service": {"kind": "exponential", "mean_s": 1.0},
            "pods": {"workers": 1, "initial": 4, "routing": routing, "max_queue": 10**6,
                     "request_timeout_s": 1e9},
            "nodes": {"pods_per_node": 4},
            "policy": {"kind": "static"},
        }  # fmt: skip
        return run_scenario(parse_scenario(data, Path("."))).summary["wait_mean_s"]

    # Random routing makes 4 M/M/1 queues at rho 0.8 (mean wait 4 s); joining the
    # shortest queue comes close to one M/M/4 (0.75 s).
    assert mean_wait("least_loaded") < 0.5 * mean_wait("random")


def test_scale_from_zero_holds_requests_at_the_gateway(tmp_path: Path) -> None:
    # No pod and no node at first: the policy sees the held requests, orders a node
    # (10 s) and a pod (1 + 2 + 1 s): the first answers come after ~14 s.
    r = run(
        tmp_path,
        [0.5, 1.0, 1.5],
        duration=3.0,
        service={"kind": "exponential", "mean_s": 0.01},
        pods={
            "workers": 1,
            "initial": 0,
            "request_timeout_s": 60,
            "schedule_s": 1,
            "image_pull_s": 2,
            "model_load_s": 1,
        },
        nodes={"provision_s": 10, "scale_down_delay_s": 0},
        controller={"interval_s": 2.0, "scrape_delay_s": 0.0},
        policy={"kind": "rscore", "minReplicas": 0, "maxReplicas": 1},
    )
    s = r.summary
    assert s["completed"] == 3
    # First tick at 2 s orders the node; ready at 12; the pod at 16.
    assert r.result.done_times.min() == pytest.approx(16.0, abs=0.1)
    assert s["max_nodes"] == 1
    assert s["node_hours"] > 0


def test_static_cost_is_nodes_times_hours_times_price(tmp_path: Path) -> None:
    # 3 pods of 2 workers on 4-CPU nodes: 2 pods per node, 2 nodes, one hour, no load.
    data = {
        "duration_s": 3600.0,
        "workload": {"kind": "poisson", "rate": 0.0},
        "pods": {"workers": 2, "initial": 3},
        "nodes": {"kind": "cpu", "price_per_hour": 0.5},
        "policy": {"kind": "static"},
    }
    s = run_scenario(parse_scenario(data, tmp_path)).summary
    assert s["requests"] == 0
    assert s["node_hours"] == pytest.approx(2.0)
    assert s["cost_usd"] == pytest.approx(1.0)
    assert s["slo_met"] is True


def test_gpu_pool_puts_one_pod_per_node() -> None:
    data = {
        "duration_s": 600.0,
        "workload": {"kind": "poisson", "rate": 0.0},
        "pods": {"workers": 1, "initial": 3},
        "nodes": {"kind": "gpu"},
        "policy": {"kind": "static"},
    }
    s = run_scenario(parse_scenario(data, Path("."))).summary
    assert s["max_nodes"] == 3
    assert s["cost_usd"] == pytest.approx(3 * 1.006 * 600 / 3600)


def test_timeseries_buckets_add_up() -> None:
    from rscore.sim.metrics import timeseries

    data = {
        "duration_s": 300.0,
        "workload": {"kind": "poisson", "rate": 40.0},
        "service": {"kind": "exponential", "mean_s": 0.05},
        "pods": {"workers": 2, "initial": 1, "max_queue": 1, "request_timeout_s": 0.3},
        "policy": {"kind": "rscore"},
    }
    r = run_scenario(parse_scenario(data, Path(".")))
    series = timeseries(r.result, price_per_hour=0.192)
    s = r.summary
    assert int(series["arrivals"].sum()) == s["requests"]
    assert int(series["completions"].sum()) == s["completed"]
    assert int(series["rejections"].sum()) == s["rejected"]
    assert int(series["timeouts"].sum()) == s["timeouts"]
    assert float(series["cost_usd"].sum()) == pytest.approx(s["cost_usd"])
    assert series["cost_cum_usd"][-1] == pytest.approx(s["cost_usd"], rel=1e-12)
    assert np.allclose(np.cumsum(series["cost_usd"]), series["cost_cum_usd"])
    assert np.all(series["ready_pods"] >= 1)


@pytest.mark.parametrize("policy", ["static", "hpa"])
def test_requests_held_with_no_pod_ever_time_out_and_the_run_ends(policy: str) -> None:
    # Neither policy scales from zero: every request waits at the gateway, then 504.
    data = {
        "duration_s": 60.0,
        "workload": {"kind": "poisson", "rate": 5.0},
        "pods": {"initial": 0, "request_timeout_s": 3.0},
        "policy": {"kind": policy},
    }
    r = run_scenario(parse_scenario(data, Path(".")))
    s = r.summary
    assert s["requests"] == s["timeouts"] > 0
    assert r.result.timeout_times.max() <= s["end_s"] <= 63.0 + 1e-9


class Recorder:
    """A controller that keeps one pod and records what it is shown."""

    name = "recorder"
    interval_s: float | None = 7.0

    def __init__(self) -> None:
        self.views: list[Any] = []

    def tick(self, view: Any) -> tuple[int, int | None]:
        self.views.append(view)
        return 1, None


def test_the_concurrency_counter_is_the_exact_integral_of_requests_inside() -> None:
    """What the policy reads (rscore_concurrency_seconds_total) at every tick equals the
    integral of queued + in-flight requests up to then, rebuilt from the answers."""
    from rscore.sim.engine import engine_for

    scenario = parse_scenario(
        {
            "duration_s": 200.0,
            "workload": {"kind": "poisson", "rate": 30.0},
            "service": {"kind": "lognormal", "mean_s": 0.1, "cv": 1.0},
            "pods": {"workers": 2, "initial": 1, "max_queue": 10**6, "request_timeout_s": 1e9},
        },
        Path("."),
    )
    recorder = Recorder()
    result = engine_for(scenario, recorder).run()
    done, lat = result.done_times, result.latencies
    arrived = done - lat
    assert len(recorder.views) > 20
    for view in recorder.views:
        (pod,) = view.pods
        inside = np.clip(np.minimum(done, view.now) - arrived, 0.0, None).sum()
        assert pod.concurrency_seconds == pytest.approx(inside, rel=1e-9, abs=1e-9)


def test_gateway_room_counts_only_requests_still_waiting(tmp_path: Path) -> None:
    # No pod ever; the gateway holds 2. r0 and r1 time out at 1.0 and 1.1, so r2 and r3
    # (at 2.0 and 2.1) find room: four 504s, no 429.
    r = run(
        tmp_path,
        [0.0, 0.1, 2.0, 2.1],
        duration=3.0,
        pods={"initial": 0, "request_timeout_s": 1.0, "gateway_max_queue": 2},
    )
    assert (r.summary["rejected"], r.summary["timeouts"]) == (0, 4)
    assert sorted(r.result.timeout_times.tolist()) == pytest.approx([1.0, 1.1, 3.0, 3.1])


def test_watchdog_ends_a_call_past_its_deadline_and_the_worker_restarts(
    tmp_path: Path,
) -> None:
    # Calls of 3 s, a 1 s timeout: r0's call is still in R at its deadline + 0.5 s (the
    # worker's watchdog, rscore/r_scorer/worker.py): the worker ends at 1.5 and restarts in 2 s.
    # r1 waits in the queue and leaves at its deadline (1.1). r2 (3.0) waits for the
    # restarted worker (3.5); its call is ended at 4.5 in turn.
    r = run(
        tmp_path,
        [0.0, 0.1, 3.0],
        duration=3.2,
        service={"kind": "lognormal", "mean_s": 3.0, "cv": 0.0},
        pods={"workers": 1, "max_queue": 4, "request_timeout_s": 1.0, "model_load_s": 2.0},
    )
    s = r.summary
    assert (s["completed"], s["rejected"], s["timeouts"]) == (0, 0, 3)
    assert sorted(r.result.timeout_times.tolist()) == pytest.approx([1.0, 1.1, 4.0])
    assert s["worker_restarts"] == 2
    assert s["end_s"] == pytest.approx(4.5)
    assert s["wait_mean_s"] == pytest.approx(0.25)  # r0 0, r2 0.5


def test_a_call_that_ends_within_the_grace_keeps_its_worker(tmp_path: Path) -> None:
    # 1.2 s calls, 1 s timeout: R answers before the watchdog (1.5 s), 504 all the same,
    # and the worker goes on at once: r1 (1.3) is served at 1.3.
    r = run(
        tmp_path,
        [0.0, 1.3],
        duration=2.0,
        service={"kind": "lognormal", "mean_s": 1.2, "cv": 0.0},
        pods={"workers": 1, "request_timeout_s": 1.0, "model_load_s": 2.0},
    )
    assert r.summary["worker_restarts"] == 0
    assert sorted(r.result.timeout_times.tolist()) == pytest.approx([1.0, 2.3])
    assert r.summary["end_s"] == pytest.approx(2.5)


def test_watchdog_grace_is_the_workers() -> None:
    from rscore.r_scorer.protocol import WATCHDOG_GRACE_S as worker_grace
    from rscore.sim.engine import WATCHDOG_GRACE_S

    assert worker_grace == WATCHDOG_GRACE_S


@pytest.mark.parametrize("max_batch_rows", [1, 4])
def test_watchdog_on_a_call_taken_from_the_queue(tmp_path: Path, max_batch_rows: int) -> None:
    # 1.2 s calls, 1 s timeout. r0 ends at 1.2 (a 504, no restart). r1 (0.5) is taken
    # at 1.2 and would end at 2.4, past its deadline + grace (2.0): ended at 2.0.
    r = run(
        tmp_path,
        [0.0, 0.5],
        duration=1.0,
        service={"kind": "lognormal", "mean_s": 1.2, "cv": 0.0},
        pods={"workers": 1, "request_timeout_s": 1.0, "model_load_s": 2.0,
              "max_batch_rows": max_batch_rows},
    )  # fmt: skip
    assert sorted(r.result.timeout_times.tolist()) == pytest.approx([1.0, 1.5])
    assert r.summary["worker_restarts"] == 1
    assert r.summary["end_s"] == pytest.approx(2.0)


class KeepTwo(Recorder):
    interval_s: float | None = 2.5

    def tick(self, view: Any) -> tuple[int, int | None]:
        self.views.append(view)
        return 2, None


def test_least_loaded_does_not_count_requests_gone_at_their_deadline(tmp_path: Path) -> None:
    # Pods A and B, one worker each, busy for good (10 s calls ended by the watchdog at
    # 1.5 s, 100 s restarts). r0 -> A, r1 -> B, r2 waits at A and leaves at its deadline
    # (1.02). At 2.0 A and B hold nothing: r3 goes to A (the first), not to B.
    from rscore.sim.engine import engine_for

    scenario = parse_scenario(
        {
            "duration_s": 2.1,
            "workload": {"kind": "trace", "path": str(azure_trace(tmp_path, [0, 0.01, 0.02, 2]))},
            "service": {"kind": "lognormal", "mean_s": 10.0, "cv": 0.0},
            "pods": {"workers": 1, "initial": 2, "routing": "least_loaded",
                     "request_timeout_s": 1.0, "model_load_s": 100.0},
            "nodes": {"pods_per_node": 2},
        },
        tmp_path,
    )  # fmt: skip
    keep = KeepTwo()
    engine_for(scenario, keep).run()
    at = next(v for v in keep.views if v.now == 2.5)
    assert [(p.pod, p.inside) for p in at.pods] == [(0, 1), (1, 0)]


class _Flapping:
    """A policy that jumps between 0 and 40 replicas (and asks for nodes now and then),
    checking at every tick that the engine's live sets are what a scan of every pod and
    node ever created gives (the engine keeps them so that nothing scans history)."""

    name = "flapping"
    interval_s: float | None = 2.0

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.engine: Any = None
        self.checks = 0

    def tick(self, view: Any) -> tuple[int, int | None]:
        from rscore.sim.engine import DRAINING, GONE, PENDING, READY, REMOVED, STARTING, UP

        e = self.engine
        states = e.p_state
        assert list(e.live) == [p for p, s in enumerate(states) if s != GONE]
        assert e.active_pods() == [
            p for p, s in enumerate(states) if s in (PENDING, STARTING, READY)
        ]
        assert sorted(e.pending) == [p for p, s in enumerate(states) if s == PENDING]
        assert sorted(e.ready) == [p for p, s in enumerate(states) if s == READY]
        assert list(e.n_alive) == [n for n, s in enumerate(e.n_state) if s != REMOVED]
        room = {n for n, s in enumerate(e.n_state) if s == UP and e.n_pods[n] < e.per_node}
        assert e.n_room == room
        if room:  # bin packing: the fullest node with room, the oldest of those
            assert e._fullest_with_room() == max(room, key=lambda n: (e.n_pods[n], -n))
        assert all(len(heap) <= 2 * len(room) + 65 for heap in e.n_by_pods)
        assert e.in_system() == sum(e.p_n) + len(e.gateway)
        assert all(e.p_n[p] == 0 for p, s in enumerate(states) if s == GONE)
        assert view.replicas == len(e.active_pods())
        assert sum(1 for s in states if s == DRAINING) + view.replicas == len(e.live)
        # The removal order: from the node with the fewest ready pods, newest pod first.
        staying: dict[int, list[int]] = {}
        for p in e.ready:
            staying.setdefault(e.p_node[p], []).append(p)
        expected = []
        for _ in range(len(e.ready) // 2):
            node = min(staying, key=lambda n: (len(staying[n]), -max(staying[n])))
            expected.append(staying[node].pop(staying[node].index(max(staying[node]))))
            if not staying[node]:
                del staying[node]
        assert e._ready_to_remove(len(e.ready) // 2) == expected
        self.checks += 1
        replicas = int(self.rng.choice([0, 1, 3, 10, 25, 40]))
        nodes = int(self.rng.integers(0, 25)) if self.rng.random() < 0.3 else None
        return replicas, nodes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_pods_and_nodes_match_a_scan_of_history_under_a_flapping_policy(seed: int) -> None:
    from rscore.sim.engine import engine_for

    data = {
        "seed": seed,
        "duration_s": 900.0,
        "workload": {"kind": "poisson", "rate": 60.0},
        "service": {"kind": "exponential", "mean_s": 0.05},
        "pods": {"workers": 2, "initial": 3, "image_pull_s": 5.0, "model_load_s": 2.0},
        "nodes": {"max_nodes": 20, "provision_s": 20.0, "scale_down_delay_s": 30.0},
    }
    controller = _Flapping(seed)
    engine = engine_for(parse_scenario(data, Path(".")), controller)
    controller.engine = engine
    result = engine.run()
    assert controller.checks > 400
    # Hundreds of pods came and went; every request still ends one way or another.
    assert len(engine.p_state) > 200
    done = result.latencies.size + result.reject_times.size + result.timeout_times.size
    assert done == result.requests


def test_desired_replicas_is_the_last_decision_at_each_sample() -> None:
    from rscore.sim.engine import RunResult
    from rscore.sim.metrics import timeseries

    empty = np.empty(0)
    result = RunResult(
        duration_s=40.0, end_s=40.0, requests=0, done_times=empty, latencies=empty,
        reject_times=empty, timeout_times=empty, served=0, wait_sum=0.0, node_seconds=0.0,
        in_system_seconds=0.0, events=0, wall_s=0.0, samples=np.empty((0, 5)),
        arrivals_per_sample=np.zeros(5, dtype=np.int64),
        decisions=[(12.0, 3, None), (14.0, 5, 2), (20.0, 4, None), (36.0, 0, None)],
    )  # fmt: skip
    series = timeseries(result, price_per_hour=1.0)
    # Buckets end at 10, 20, 30, 40 s: none yet, then 4 (the decision at 20 s counts),
    # 4 again, then 0.
    assert np.isnan(series["desired_replicas"][0])
    assert series["desired_replicas"][1:].tolist() == [4.0, 4.0, 0.0]
    static = RunResult(**{**result.__dict__, "decisions": []})
    assert np.isnan(timeseries(static, price_per_hour=1.0)["desired_replicas"]).all()


def test_events_at_one_instant_leave_in_kind_then_push_order_never_by_payload() -> None:
    # Payloads that cannot be compared (None against a list against an int): with the
    # sequence number in each heap entry, the heap never compares them.
    import heapq

    from rscore.sim.engine import APPLY, DONEB, TICK, engine_for
    from rscore.sim.policies import StaticController

    scenario = parse_scenario(
        {"duration_s": 1, "workload": {"rate": 1.0}, "policy": {"kind": "static"}}, Path(".")
    )
    engine = engine_for(scenario, StaticController(1))
    engine.push(1.0, APPLY, 3, None)
    engine.push(1.0, APPLY, 3, [0.5])
    engine.push(1.0, TICK)
    engine.push(1.0, APPLY, None, 7)
    engine.push(1.0, DONEB, 0, [0.1, 0.2])
    popped = [heapq.heappop(engine.heap) for _ in range(5)]
    assert [(kind, a, b) for _, kind, _, a, b in popped] == [
        (DONEB, 0, [0.1, 0.2]),  # kinds first: a call's end before the controller
        (TICK, None, None),
        (APPLY, 3, None),  # then the order they were pushed in
        (APPLY, 3, [0.5]),
        (APPLY, None, 7),
    ]


def test_a_run_counts_every_arrival_and_every_event() -> None:
    # The run counts its requests and events once at the end (not per event): the
    # same numbers as counting them one by one, which the result lets one redo.
    from rscore.sim.cluster import PodSpec
    from rscore.sim.service import ServiceSpec
    from rscore.sim.validate import simulate

    times = np.sort(np.random.default_rng(3).random(3000) * 100)
    service = ServiceSpec(kind="lognormal", mean_s=0.3, cv=3.0)
    for batch in (1, 4):
        spec = PodSpec(workers=4, max_queue=8, request_timeout_s=0.1, max_batch_rows=batch)
        result = simulate(times, service, spec)
        answered = result.latencies.size + result.reject_times.size + result.timeout_times.size
        assert result.requests == answered == times.size
        assert result.worker_restarts > 0  # the watchdog's KILLED events are in it too
        # Arrivals are events too; every call's end (done, or killed by the watchdog) is
        # popped before the run can end; beyond those, only the workers' restarts (BACK,
        # the last maybe never popped), one SAMPLE and the END.
        floor = result.requests + result.calls
        assert floor <= result.events <= floor + result.worker_restarts + 2
