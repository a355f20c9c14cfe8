"""The sidecar model of the engine (`[pods] sidecar_s`, `http_s`, `cores`; rscore.sim.sidecar):
hand-checkable cases, and conservation of requests under overload with it on."""

from __future__ import annotations

import numpy as np
import pytest

from rscore.sim.cluster import PodSpec
from rscore.sim.service import ServiceSpec
from rscore.sim.sidecar import SidecarModel, core_share, loop_turn
from rscore.sim.validate import simulate

CONSTANT_1S = ServiceSpec(kind="lognormal", mean_s=1.0, cv=0.0, per_row_s=0.1)


@pytest.mark.parametrize(
    ("cores", "consumers", "share"),
    [
        (None, 5, 1.0),  # unlimited cores: nobody waits
        (2.0, 0, 1.0),
        (2.0, 2, 1.0),
        (2.0, 3, 2 / 3),
        (1.0, 4, 0.25),
        (2.5, 3, 2.5 / 3),
    ],
)
def test_core_share(cores: float | None, consumers: int, share: float) -> None:
    assert core_share(cores, consumers) == pytest.approx(share)


@pytest.mark.parametrize(
    ("cores", "consumers", "others", "share"),
    [
        (2.0, 1, 1.0, 1.0),  # the loop and the client: a core each
        (2.0, 2, 2.0, 0.5),  # two calls beside two other threads: half a core each
        (2.0, 3, 0.2, 2 / 3.2),  # a client busy a fifth of the time
        (None, 3, 5.0, 1.0),  # unlimited cores
    ],
)
def test_core_share_with_other_processes(
    cores: float | None, consumers: int, others: float, share: float
) -> None:
    assert core_share(cores, consumers, others) == pytest.approx(share)


@pytest.mark.parametrize(
    ("now", "free_at", "work", "share", "wake", "ends"),
    [
        (1.0, 0.0, 0.5, 1.0, 0.0, 1.5),  # the loop is idle: the turn starts now
        (1.0, 3.0, 0.5, 1.0, 0.0, 3.5),  # busy until 3: FIFO
        (1.0, 0.0, 0.5, 0.5, 0.0, 2.0),  # half a core: twice as long
        (2.0, 2.0, 0.0, 1.0, 0.0, 2.0),
        (1.0, 0.0, 0.5, 1.0, 0.25, 1.75),  # an idle loop wakes first
        (1.0, 3.0, 0.5, 1.0, 0.25, 3.5),  # a busy one is awake: no wake-up
        (1.0, 0.0, 0.5, 0.5, 0.25, 2.5),  # waking runs at the share too
    ],
)
def test_loop_turn(
    now: float, free_at: float, work: float, share: float, wake: float, ends: float
) -> None:
    assert loop_turn(now, free_at, work, share, wake) == pytest.approx(ends)


def pods(**keys: float) -> PodSpec:
    return PodSpec(workers=2, request_timeout_s=60.0, **keys)  # type: ignore[arg-type]


def test_a_request_pays_two_loop_turns_and_the_http_path() -> None:
    result = simulate(np.array([0.0]), CONSTANT_1S, pods(sidecar_s=0.2, http_s=0.05))
    assert result.latencies.tolist() == pytest.approx([0.1 + 1.0 + 0.1 + 0.05])
    assert result.end_s == pytest.approx(1.25)  # the run ends with the answer, not the call


def test_an_idle_loop_wakes_and_a_busy_one_does_not() -> None:
    # Wake-ups of 0.05: r0's turn finds the loop idle ([0, 0.15]); r1's, at the same
    # instant, finds it busy ([0.15, 0.25]). Calls [0.15, 1.15] and [0.25, 1.25]; r0's
    # answer wakes the loop again ([1.15, 1.3]) and r1's finds it busy ([1.3, 1.4]).
    spec = pods(sidecar_s=0.2, sidecar_wake_s=0.05)
    result = simulate(np.array([0.0, 0.0]), CONSTANT_1S, spec)
    assert sorted(result.latencies.tolist()) == pytest.approx([1.3, 1.4])


def test_the_loop_is_one_fifo_server() -> None:
    # r0 parsed [0, 0.1], r1 waits for it: [0.1, 0.2]; calls [0.1, 1.1] and [0.2, 1.2];
    # answers written [1.1, 1.2] and [1.2, 1.3].
    result = simulate(np.array([0.0, 0.0]), CONSTANT_1S, pods(sidecar_s=0.2))
    assert sorted(result.latencies.tolist()) == pytest.approx([1.2, 1.3])


def test_calls_share_the_pods_cores() -> None:
    # One core, two workers: r0's call starts alone (full speed, 1 s); r1's starts
    # beside it and runs at half speed (2 s). Without `cores`, both take 1 s.
    shared = simulate(np.array([0.0, 0.0]), CONSTANT_1S, pods(cores=1.0))
    assert sorted(shared.latencies.tolist()) == pytest.approx([1.0, 2.0])
    alone = simulate(np.array([0.0, 0.0]), CONSTANT_1S, pods())
    assert alone.latencies.tolist() == pytest.approx([1.0, 1.0])


def test_the_loop_runs_slower_while_workers_hold_the_cores() -> None:
    # One core: r0's turn runs alone (0.1 s) and so does its call (until 1.1). r1,
    # arriving at 0.5, is parsed beside that call at half speed (0.2 s, until 0.7); its
    # call starts beside r0's at half speed (2 s, until 2.7). r0's answer, at 1.1, is
    # written at a third of a core (two calls and the loop): 0.3 s, latency 1.4; r1's,
    # at 2.7, at half (one call and the loop): 0.2 s, latency 2.9 - 0.5.
    result = simulate(np.array([0.0, 0.5]), CONSTANT_1S, pods(sidecar_s=0.2, cores=1.0))
    assert sorted(result.latencies.tolist()) == pytest.approx([1.4, 2.4])


def test_a_request_whose_deadline_passes_in_the_loop_is_a_504() -> None:
    # Turns of 1 s: r0 is admitted at 1, r1 at 2 and r2 at 3, past their 1.5 s deadline.
    spec = PodSpec(workers=2, request_timeout_s=1.5, sidecar_s=2.0)
    fast = ServiceSpec(kind="lognormal", mean_s=0.1, cv=0.0)
    result = simulate(np.array([0.0, 0.0, 0.0]), fast, spec)
    assert result.timeout_times.tolist() == pytest.approx([1.5, 1.5])
    assert result.latencies.size == 1


def test_every_request_is_answered_once_under_overload_with_the_sidecar() -> None:
    rng = np.random.default_rng(5)
    times = np.sort(rng.random(20_000) * 2.0)  # 10,000 req/s at a pod that serves less
    service = ServiceSpec(kind="exponential", mean_s=0.002, per_row_s=0.0001)
    spec = PodSpec(
        workers=2, max_queue=32, request_timeout_s=0.5, max_batch_rows=16, sidecar_s=0.0002,
        http_s=0.0003, cores=1.5,
    )  # fmt: skip
    result = simulate(times, service, spec)
    answered = result.latencies.size + result.reject_times.size + result.timeout_times.size
    assert result.requests == answered == times.size
    assert result.reject_times.size > 0
    assert result.latencies.size > 0
    assert result.end_s >= result.done_times.max()


def test_a_worker_takes_its_next_call_once_the_loop_has_read_its_reply() -> None:
    # One worker, turns of 0.1 and 0.5 s of loop work per R call: r0 parsed [0, 0.1],
    # its call [0.1, 1.1]; r1 parsed [0.1, 0.2] waits. The reply is read [1.1, 1.6],
    # r0's answer written [1.6, 1.7]; only then (1.6) does r1's call start [1.6, 2.6],
    # its reply read [2.6, 3.1] and its answer written [3.1, 3.2].
    loop = SidecarModel(request_s=0.2, call_s=0.5)
    spec = PodSpec(workers=1, request_timeout_s=60.0)
    result = simulate(np.array([0.0, 0.0]), CONSTANT_1S, spec, sidecar=loop)
    assert sorted(result.latencies.tolist()) == pytest.approx([1.7, 3.2])
    assert result.calls == 2


def test_a_batch_costs_the_loop_one_call() -> None:
    # Batches: r1 and r2 wait behind r0 and share one call (a + 2c = 1.1 s). The loop
    # reads two replies (1 s each), not three.
    loop = SidecarModel(call_s=1.0)
    spec = PodSpec(workers=1, request_timeout_s=60.0, max_batch_rows=8)
    result = simulate(np.array([0.0, 0.0, 0.0]), CONSTANT_1S, spec, sidecar=loop)
    # r0: call [0, 1], reply read [1, 2]; r1 + r2: call [2, 3.1], reply read [3.1, 4.1].
    assert sorted(result.latencies.tolist()) == pytest.approx([2.0, 4.1, 4.1])
    assert result.calls == 2


def test_other_processes_slow_the_pods_calls() -> None:
    # One core shared with one other runnable thread: a 1 s call takes 2 s.
    shared = SidecarModel(cores=1.0, others=1.0)
    spec = PodSpec(workers=1, request_timeout_s=60.0)
    result = simulate(np.array([0.0]), CONSTANT_1S, spec, sidecar=shared)
    assert result.latencies.tolist() == pytest.approx([2.0])


def test_a_scenario_s_pods_keys_are_its_sidecar() -> None:
    spec = pods(sidecar_s=0.2, sidecar_wake_s=0.05, http_s=0.01, cores=1.5)
    assert SidecarModel.of_pods(spec) == SidecarModel(0.2, 0.0, 0.05, 0.01, 1.5)
    assert SidecarModel.of_pods(spec).on
    assert not SidecarModel.of_pods(pods()).on
