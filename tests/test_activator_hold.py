"""rscore.activator.hold, the activator's decisions, as tables of cases: plain numbers in, an
action out. The proxy (tests/test_activator.py) only carries these out."""

from __future__ import annotations

import pytest

from rscore.activator.hold import (
    Action,
    Attempt,
    HoldLimits,
    after_attempt,
    classify,
    on_arrival,
    on_wake,
    probe_delay,
)

LIMITS = HoldLimits(max_held=3, hold_timeout_s=10.0, retry_after_s=5)


@pytest.mark.parametrize(
    ("ready", "held", "expected"),
    [
        (True, 0, Action.FORWARD),  # the usual case: straight through
        (True, 3, Action.FORWARD),  # a full queue does not matter while pods are ready
        (False, 0, Action.HOLD),
        (False, 2, Action.HOLD),  # the last free place
        (False, 3, Action.FULL),  # 503 + Retry-After at once
        (False, 7, Action.FULL),
    ],
)
def test_on_arrival(ready: bool, held: int, expected: Action) -> None:
    assert on_arrival(LIMITS, upstream_ready=ready, held=held) is expected


def test_no_place_to_hold_refuses_every_request_while_no_pod_is_ready() -> None:
    limits = HoldLimits(max_held=0)
    assert on_arrival(limits, upstream_ready=False, held=0) is Action.FULL
    assert after_attempt(limits, Attempt.REFUSED, is_held=False, held=0, waited_s=0) is Action.FULL


@pytest.mark.parametrize(
    ("attempt", "is_held", "held", "waited_s", "drops", "expected"),
    [
        # any answer is passed on, whatever its status and however long it took
        (Attempt.ANSWERED, False, 0, 0.0, 0, Action.PASS),
        (Attempt.ANSWERED, True, 3, 99.0, 0, Action.PASS),
        # no ready endpoint (refused) or a pod not ready yet (503): hold, if there is room
        (Attempt.REFUSED, False, 0, 0.0, 0, Action.HOLD),
        (Attempt.UNAVAILABLE, False, 2, 0.0, 0, Action.HOLD),
        (Attempt.REFUSED, False, 3, 0.0, 0, Action.FULL),
        (Attempt.UNAVAILABLE, False, 3, 0.0, 0, Action.FULL),
        # a request held before keeps its place even when the queue filled meanwhile
        (Attempt.REFUSED, True, 3, 1.0, 0, Action.HOLD),
        # the hold time is up: 504
        (Attempt.REFUSED, True, 0, 10.0, 0, Action.EXPIRED),
        (Attempt.UNAVAILABLE, True, 0, 12.5, 0, Action.EXPIRED),
        (Attempt.REFUSED, True, 0, 9.999, 0, Action.HOLD),
        # a dropped connection is tried once more, then 502
        (Attempt.DROPPED, False, 0, 0.0, 1, Action.FORWARD),
        (Attempt.DROPPED, True, 0, 0.0, 2, Action.DROPPED),
    ],
)
def test_after_attempt(
    attempt: Attempt, is_held: bool, held: int, waited_s: float, drops: int, expected: Action
) -> None:
    action = after_attempt(
        LIMITS, attempt, is_held=is_held, held=held, waited_s=waited_s, drops=drops
    )
    assert action is expected


@pytest.mark.parametrize(
    ("waited_s", "expected"),
    [(0.0, Action.FORWARD), (9.9, Action.FORWARD), (10.0, Action.EXPIRED), (30.0, Action.EXPIRED)],
)
def test_on_wake(waited_s: float, expected: Action) -> None:
    assert on_wake(LIMITS, waited_s=waited_s) is expected


@pytest.mark.parametrize(
    ("status", "connected", "expected"),
    [
        (200, True, Attempt.ANSWERED),
        (401, True, Attempt.ANSWERED),  # the sidecar's answers, errors included, are passed on
        (429, True, Attempt.ANSWERED),
        (500, True, Attempt.ANSWERED),
        (502, True, Attempt.ANSWERED),
        (504, True, Attempt.ANSWERED),
        (503, True, Attempt.UNAVAILABLE),  # not ready, or draining: nothing was done
        (None, False, Attempt.REFUSED),
        (None, True, Attempt.DROPPED),
    ],
)
def test_classify(status: int | None, connected: bool, expected: Attempt) -> None:
    assert classify(status, connected=connected) is expected


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (1, 0.025), (2, 0.05), (3, 0.1), (4, 0.1), (1000, 0.1)],
)
def test_probe_delay_is_short_and_capped(failures: int, expected: float) -> None:
    assert probe_delay(failures) == pytest.approx(expected)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_held": -1},
        {"hold_timeout_s": 0},
        {"hold_timeout_s": -5},
        {"retry_after_s": -1},
        {"retries_after_drop": -1},
    ],
)
def test_limits_refuse_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        HoldLimits(**fields)  # type: ignore[arg-type]
