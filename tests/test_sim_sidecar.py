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
    # instant, finds it busy ([0.15, 0.25]). r0's call is written at the end of the
    # loop's iteration (0.25, after r1's turn, which takes the other idle worker): calls
    # [0.25, 1.25] both; the first answer wakes the loop again ([1.25, 1.4]) and the
    # second finds it busy ([1.4, 1.5]).
    spec = pods(sidecar_s=0.2, sidecar_wake_s=0.05)
    result = simulate(np.array([0.0, 0.0]), CONSTANT_1S, spec)
    assert sorted(result.latencies.tolist()) == pytest.approx([1.4, 1.5])


def test_requests_the_loop_admits_in_one_iteration_share_the_call() -> None:
    # One worker, batches of up to 4 rows. Three requests at once: turns [0, 0.1],
    # [0.1, 0.2], [0.2, 0.3]. r0 finds the worker idle at 0.1, but its call is written
    # when the loop is through the turns already waiting (0.3), by when r1 and r2 are
    # queued: one call of 3 rows, 0.9 + 0.1 * 3 = 1.2 s ([0.3, 1.5]); answers [1.5, 1.6],
    # [1.6, 1.7], [1.7, 1.8]. (Written at once, r0 would be alone in [0.1, 1.1] and the
    # others would wait for it.)
    spec = PodSpec(workers=1, request_timeout_s=60.0, max_batch_rows=4, sidecar_s=0.2)
    result = simulate(np.array([0.0, 0.0, 0.0]), CONSTANT_1S, spec)
    assert result.calls == 1
    assert sorted(result.latencies.tolist()) == pytest.approx([1.6, 1.7, 1.8])


@pytest.mark.parametrize(
    ("workers", "max_rows", "arrivals", "latencies", "calls"),
    [
        # Turns of 0.1 s (sidecar_s 0.2, half on the way in and half out); a call of k
        # rows costs 0.9 + 0.1 k s. The loop writes a call given to an idle worker when
        # it is through the turns already waiting (rscore/sidecar/admission.py's
        # _send_assigned); the requests those admit join the call.
        # A lone request finds the loop idle: written at once, [0.1, 1.1], out at 1.2.
        (1, 4, [0.0], [1.2], 1),
        # Far apart: each finds the loop idle, alone in its call.
        (1, 4, [0.0, 5.0], [1.2, 1.2], 2),
        # One worker busy with r0 ([0.1, 1.1]); r1 and r2 arrive at 0.5: turns
        # [0.5, 0.6] and [0.6, 0.7]. r1 takes the idle worker at 0.6, but its call is
        # written at 0.7 with r2, admitted meanwhile: one call of 2 rows, [0.7, 1.8].
        # Answers: r0 [1.1, 1.2]; r1 [1.8, 1.9], r2 [1.9, 2.0] (from 0.5: 1.4, 1.5).
        (2, 4, [0.0, 0.5, 0.5], [1.2, 1.4, 1.5], 2),
        # Three at once, one worker: r0 is given the worker at 0.1, written at 0.3 with
        # r1 and r2: one call of 3 rows, [0.3, 1.5]; answers [1.5, 1.6] ... [1.7, 1.8].
        (1, 4, [0.0, 0.0, 0.0], [1.6, 1.7, 1.8], 1),
        # Three at once, two workers: each idle worker takes one request first (r0 at
        # 0.1, r1 at 0.2), both written at 0.3, when r2 (admitted at 0.3) joins r0's
        # call: [0.3, 1.4] of 2 rows and r1's [0.3, 1.3]. Answers: r1 [1.3, 1.4]; r0
        # [1.4, 1.5], r2 [1.5, 1.6].
        (2, 4, [0.0, 0.0, 0.0], [1.4, 1.5, 1.6], 2),
        # Calls of one row: r0 is written at 0.2 alone ([0.2, 1.2]); r1, queued behind
        # it, takes the worker when the reply is read (1.2): [1.2, 2.2], out [2.2, 2.3].
        (1, 1, [0.0, 0.0], [1.3, 2.3], 2),
    ],
)
def test_calls_are_written_at_the_end_of_the_loops_iteration(
    workers: int, max_rows: int, arrivals: list[float], latencies: list[float], calls: int
) -> None:
    spec = PodSpec(workers=workers, request_timeout_s=60.0, max_batch_rows=max_rows, sidecar_s=0.2)
    result = simulate(np.array(arrivals), CONSTANT_1S, spec)
    assert sorted(result.latencies.tolist()) == pytest.approx(latencies)
    assert result.calls == calls
    assert result.timeout_times.size == result.reject_times.size == 0


def test_the_loop_is_one_fifo_server() -> None:
    # r0 parsed [0, 0.1], r1 waits for it: [0.1, 0.2]; r0's call is written at the end
    # of that iteration, beside r1's on the other worker: calls [0.2, 1.2]; answers
    # written one after the other, [1.2, 1.3] and [1.3, 1.4].
    result = simulate(np.array([0.0, 0.0]), CONSTANT_1S, pods(sidecar_s=0.2))
    assert sorted(result.latencies.tolist()) == pytest.approx([1.3, 1.4])


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
    # Turns of 1 s: r0 is admitted at 1, r1 at 2 and r2 at 3, past their 1.5 s deadline:
    # 504s there, never scored. r0's call is written at the end of the loop's iteration
    # (3, after the turns that were waiting) and ends past its deadline: a 504 too.
    spec = PodSpec(workers=2, request_timeout_s=1.5, sidecar_s=2.0)
    fast = ServiceSpec(kind="lognormal", mean_s=0.1, cv=0.0)
    result = simulate(np.array([0.0, 0.0, 0.0]), fast, spec)
    assert result.timeout_times.tolist() == pytest.approx([1.5, 1.5, 1.5])
    assert result.calls == 1
    assert result.latencies.size == 0


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
    # its call written after r1's turn [0.1, 0.2] (no batching: r1 waits): [0.2, 1.2].
    # The reply is read [1.2, 1.7], r0's answer written [1.7, 1.8]; only then (1.7) does
    # r1's call start [1.7, 2.7], its reply read [2.7, 3.2] and its answer written
    # [3.2, 3.3].
    loop = SidecarModel(request_s=0.2, call_s=0.5)
    spec = PodSpec(workers=1, request_timeout_s=60.0)
    result = simulate(np.array([0.0, 0.0]), CONSTANT_1S, spec, sidecar=loop)
    assert sorted(result.latencies.tolist()) == pytest.approx([1.8, 3.3])
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
