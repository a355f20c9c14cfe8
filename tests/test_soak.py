"""`make soak`'s verdict, and a short soak of a real `rscore serve` (about a minute):
TLS, API keys, real R workers SIGKILLed and keys rotated under an open-loop stream of
valid and hostile requests. The 10-minute run and its RSS figures are `make soak`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.soak import (
    BAD_JSON,
    KILL_502_WINDOW_S,
    MIX,
    SLOW,
    VALID,
    WRONG_KEY,
    Outcome,
    classify,
    judge,
    rss_growth,
    run_soak,
)


def outcome(kind: str, status: int | str, done_s: float = 10.0, correct: bool | None = None):
    return Outcome(kind, done_s - 0.01, done_s, status, correct)


@pytest.mark.parametrize(
    ("case", "kills", "expected"),
    [
        (outcome(VALID, 200, correct=True), [], "ok"),
        (outcome(VALID, 200, correct=False), [], "fail: valid got a wrong answer"),
        (outcome(VALID, 429), [], "refused"),  # not accepted: allowed
        (outcome(VALID, 502, done_s=10.0), [9.0], "killed"),
        (outcome(VALID, 502, done_s=10.0 + KILL_502_WINDOW_S), [9.0], "fail: valid got 502"),
        (outcome(VALID, 502), [], "fail: valid got 502"),
        (outcome(VALID, 504), [9.9], "fail: valid got 504"),
        (outcome(VALID, 401), [], "fail: valid got 401"),  # a rotation lost a key
        (outcome(VALID, "error: ClientOSError"), [], "fail: valid got error: ClientOSError"),
        (outcome(BAD_JSON, 400), [], "ok"),
        (outcome(BAD_JSON, 500), [], "fail: bad_json got 500"),
        (outcome(WRONG_KEY, 401), [], "ok"),
        (outcome(SLOW, 408), [], "ok"),
        (outcome(SLOW, "closed"), [], "ok"),
        (outcome(SLOW, "still open"), [], "fail: slow got still open"),
    ],
)
def test_classify(case: Outcome, kills: list[float], expected: str) -> None:
    assert classify(case, kills) == expected


@pytest.mark.parametrize(
    ("samples", "growth"),
    [
        ([(t, 100.0) for t in range(120, 600, 5)], 0.0),
        ([(t, 100.0 + (t >= 540) * 10) for t in range(120, 600, 5)], 0.1),
        ([(t, 100.0) for t in range(120, 200, 5)], None),  # under two minutes: no verdict
        ([(t, 50.0) for t in range(0, 120, 5)], None),  # nothing after minute 2
    ],
)
def test_rss_growth(samples: list[tuple[float, float]], growth: float | None) -> None:
    got = rss_growth(samples, from_s=120.0)
    assert got == pytest.approx(growth) if growth is not None else got is None


def test_the_verdict_needs_every_request_accounted_for_and_flat_memory() -> None:
    flat = [(float(t), 1e8) for t in range(0, 600, 5)]
    grown = [(float(t), 1e8 * (1.0 + (t >= 540) * 0.06)) for t in range(0, 600, 5)]
    good = [outcome(VALID, 200, correct=True), outcome(WRONG_KEY, 401)]
    assert judge(good, [], flat, flat, 600.0).passed
    assert not judge(good, [], grown, flat, 600.0).passed
    assert judge(good, [], grown, flat, 60.0).passed  # too short to judge memory
    assert not judge([*good, outcome(VALID, 504)], [], flat, flat, 600.0).passed


@pytest.mark.slow
@pytest.mark.real_r
@pytest.mark.e2e
@pytest.mark.timeout(600)  # a soak: about a minute alone, more under load
async def test_a_short_soak_loses_nothing(tmp_path: Path) -> None:
    # In a thread: the harness runs an event loop of its own (asyncio.run), which must not
    # replace (and leak) the test's.
    run = await asyncio.to_thread(
        run_soak, tmp_path, duration_s=45.0, load=0.5, kill_every_s=15.0, rotate_every_s=20.0
    )
    assert len(run.kills) >= 2
    assert run.rotations >= 1
    kinds = {o.kind for o in run.outcomes}
    assert kinds == set(MIX)
    assert not run.verdict.failures, run.verdict.failures
    assert run.verdict.passed
