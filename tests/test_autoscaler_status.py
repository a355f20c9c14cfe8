"""rscore.autoscaler.status: conditions, the status merge patch and Events; and the pure backoff
of rscore.autoscaler.kube_io (`retry_delay`) that decides when a failed write is tried again."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from rscore.autoscaler.kube_io import retry_delay
from rscore.autoscaler.policy import MODE_PANIC, MODE_STABLE, Recommendation
from rscore.autoscaler.status import (
    Condition,
    event_body,
    limit_condition,
    merge_conditions,
    status_body,
)

T0 = "2026-11-26T03:00:00Z"
T1 = "2026-11-26T04:00:00Z"


def stored(type_: str, status: str, since: str | None = T0, generation: int = 1) -> dict:
    condition = {
        "type": type_,
        "status": status,
        "reason": "Before",
        "message": "as it was",
        "observedGeneration": generation,
    }
    if since is not None:
        condition["lastTransitionTime"] = since
    return condition


# --- merge_conditions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "new", "since"),
    [
        ([], Condition("AbleToScale", True, "R", "m"), T1),  # first time: now
        ([stored("AbleToScale", "True")], Condition("AbleToScale", True, "R", "m"), T0),
        ([stored("AbleToScale", "False")], Condition("AbleToScale", False, "R", "m"), T0),
        ([stored("AbleToScale", "True")], Condition("AbleToScale", False, "R", "m"), T1),
        ([stored("AbleToScale", "False")], Condition("AbleToScale", True, "R", "m"), T1),
        ([stored("AbleToScale", "Unknown")], Condition("AbleToScale", True, "R", "m"), T1),
        ([stored("AbleToScale", "True", None)], Condition("AbleToScale", True, "R", "m"), T1),
        ([stored("AbleToScale", "True", "")], Condition("AbleToScale", True, "R", "m"), T1),
        ([stored("ScalingActive", "True")], Condition("AbleToScale", True, "R", "m"), T1),
    ],
    ids=[
        "new",
        "still-true",
        "still-false",
        "true-to-false",
        "false-to-true",
        "unknown-to-true",
        "no-time-recorded",
        "empty-time",
        "other-type",
    ],
)
def test_last_transition_time_moves_only_when_the_status_changes(
    existing: list[dict], new: Condition, since: str
) -> None:
    merged = {c["type"]: c for c in merge_conditions(existing, [new], T1, generation=2)}
    assert merged[new.type]["lastTransitionTime"] == since


def test_a_merged_condition_is_the_new_one() -> None:
    (merged,) = merge_conditions(
        [stored("ScalingActive", "True")],
        [Condition("ScalingActive", True, "ValidMetricFound", "concurrency 3.2")],
        T1,
        generation=5,
    )
    assert merged == {
        "type": "ScalingActive",
        "status": "True",
        "reason": "ValidMetricFound",
        "message": "concurrency 3.2",
        "lastTransitionTime": T0,  # unchanged status: kept
        "observedGeneration": 5,
    }


def test_untouched_condition_types_are_kept_as_they_were() -> None:
    limited = stored("ScalingLimited", "True", generation=1) | {"extra": "kept"}
    merged = merge_conditions(
        [stored("AbleToScale", "True"), limited],
        [Condition("AbleToScale", False, "FailedGetScale", "boom")],
        T1,
        generation=4,
    )
    assert [c["type"] for c in merged] == ["AbleToScale", "ScalingLimited"]
    assert merged[1] == limited
    assert merged[0]["observedGeneration"] == 4
    assert merged[0]["lastTransitionTime"] == T1


def test_conditions_are_sorted_by_type_and_unique() -> None:
    merged = merge_conditions(
        [stored("ScalingLimited", "False"), stored("AbleToScale", "True"), {"status": "True"}],
        [
            Condition("ScalingActive", True, "A", "a"),
            Condition("AbleToScale", True, "B", "b"),
            Condition("ScalingActive", False, "C", "c"),  # the last one of a type wins
        ],
        T1,
        generation=1,
    )
    assert [c["type"] for c in merged] == ["AbleToScale", "ScalingActive", "ScalingLimited"]
    assert merged[1]["status"] == "False"
    assert merged[1]["reason"] == "C"


@pytest.mark.parametrize(
    ("status", "text"), [(True, "True"), (False, "False")], ids=["true", "false"]
)
def test_status_is_the_api_string(status: bool, text: str) -> None:
    (merged,) = merge_conditions([], [Condition("AbleToScale", status, "R", "m")], T1, 0)
    assert merged["status"] == text


def test_existing_conditions_are_not_mutated() -> None:
    existing = [stored("AbleToScale", "True")]
    snapshot = [dict(c) for c in existing]
    merge_conditions(existing, [Condition("AbleToScale", False, "R", "m")], T1, 9)
    assert existing == snapshot


def test_no_new_conditions_keeps_everything() -> None:
    existing = [stored("B", "True"), stored("A", "False")]
    assert merge_conditions(existing, [], T1, 3) == [existing[1], existing[0]]


# --- limit_condition ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "low", "high", "expected"),
    [
        (10, 1, 10, ("True", "AtMaxReplicas", "at maxReplicas 10")),
        (12, 1, 10, ("True", "AtMaxReplicas", "at maxReplicas 10")),
        (1, 1, 10, ("True", "AtMinReplicas", "at minReplicas 1")),
        (0, 0, 10, ("True", "AtMinReplicas", "at minReplicas 0")),
        (5, 1, 10, ("False", "DesiredWithinRange", "the desired count is within range")),
        (3, 3, 3, ("True", "AtMaxReplicas", "at maxReplicas 3")),  # max wins when min == max
    ],
    ids=["at-max", "above-max", "at-min", "at-zero", "within", "min-equals-max"],
)
def test_limit_condition(desired: int, low: int, high: int, expected: tuple) -> None:
    condition = limit_condition(desired, low, high)
    assert condition.type == "ScalingLimited"
    assert ("True" if condition.status else "False", condition.reason, condition.message) == (
        expected
    )


# --- status_body -------------------------------------------------------------------------


def recommendation(observed: float | None = 3.14159, mode: str = MODE_STABLE) -> Recommendation:
    return Recommendation(
        desired_replicas=4,
        desired_nodes=2,
        mode=mode,
        reason="concurrency stable 3.14",
        observed_concurrency=observed,
        observed_panic_concurrency=9.0,
    )


CONDITIONS = [stored("AbleToScale", "True")]


def test_status_body_with_a_recommendation() -> None:
    body = status_body(
        recommendation=recommendation(),
        current_replicas=3,
        current_nodes=1,
        last_scale_time=T0,
        conditions=CONDITIONS,
        generation=7,
    )
    assert body == {
        "status": {
            "currentReplicas": 3,
            "currentNodes": 1,
            "lastScaleTime": T0,
            "observedGeneration": 7,
            "conditions": CONDITIONS,
            "desiredReplicas": 4,
            "desiredNodes": 2,
            "observedConcurrency": 3.142,
            "mode": "Stable",
            "reason": "concurrency stable 3.14",
        }
    }


def test_status_body_without_a_recommendation() -> None:
    """Only what is known is written; None values clear stale fields (merge patch)."""
    body = status_body(
        recommendation=None,
        current_replicas=None,
        current_nodes=None,
        last_scale_time=None,
        conditions=CONDITIONS,
        generation=2,
    )
    assert body == {
        "status": {
            "currentReplicas": None,
            "currentNodes": None,
            "lastScaleTime": None,
            "observedGeneration": 2,
            "conditions": CONDITIONS,
        }
    }
    for absent in ("desiredReplicas", "desiredNodes", "observedConcurrency", "mode", "reason"):
        assert absent not in body["status"]


@pytest.mark.parametrize(
    ("observed", "expected"),
    [(None, None), (0.0, 0.0), (2.0, 2.0), (1.23456, 1.235), (0.0004, 0.0), (12.3444, 12.344)],
    ids=["none", "zero", "integral", "round-up", "tiny", "round-down"],
)
def test_observed_concurrency_is_rounded_to_three_places(
    observed: float | None, expected: float | None
) -> None:
    body = status_body(
        recommendation=recommendation(observed),
        current_replicas=1,
        current_nodes=None,
        last_scale_time=None,
        conditions=[],
        generation=1,
    )
    assert body["status"]["observedConcurrency"] == expected
    assert body["status"]["desiredNodes"] == 2


def test_status_body_mode() -> None:
    body = status_body(
        recommendation=recommendation(mode=MODE_PANIC),
        current_replicas=1,
        current_nodes=None,
        last_scale_time=None,
        conditions=[],
        generation=1,
    )
    assert body["status"]["mode"] == "Panic"


# --- event_body --------------------------------------------------------------------------

INVOLVED = {
    "apiVersion": "rscore.dev/v1alpha1",
    "kind": "ScoringAutoscaler",
    "metadata": {
        "name": "iris",
        "namespace": "models",
        "uid": "8d1f-uid",
        "resourceVersion": "4711",
        "generation": 3,
    },
    "spec": {"maxReplicas": 3},
}


def event(**overrides: Any) -> dict[str, Any]:
    arguments = {
        "involved": INVOLVED,
        "reason": "ScaledUp",
        "message": "Deployment/iris: 1 -> 3",
        "now_iso": T1,
        "component": "rscore-autoscaler",
    } | overrides
    return event_body(**arguments)


def test_event_body_shape() -> None:
    assert event() == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "iris.", "namespace": "models"},
        "involvedObject": {
            "apiVersion": "rscore.dev/v1alpha1",
            "kind": "ScoringAutoscaler",
            "name": "iris",
            "namespace": "models",
            "uid": "8d1f-uid",
            "resourceVersion": "4711",
        },
        "reason": "ScaledUp",
        "message": "Deployment/iris: 1 -> 3",
        "type": "Normal",
        "source": {"component": "rscore-autoscaler"},
        "reportingComponent": "rscore-autoscaler",
        "firstTimestamp": T1,
        "lastTimestamp": T1,
        "count": 1,
    }


@pytest.mark.parametrize(
    ("warning", "type_"), [(False, "Normal"), (True, "Warning")], ids=["normal", "warning"]
)
def test_event_type(warning: bool, type_: str) -> None:
    assert event(warning=warning)["type"] == type_


@pytest.mark.parametrize(
    ("length", "kept"),
    [(0, 0), (10, 10), (1023, 1023), (1024, 1024), (1025, 1024), (100_000, 1024)],
    ids=["empty", "short", "1023", "1024", "1025", "huge"],
)
def test_event_message_is_truncated_to_1024(length: int, kept: int) -> None:
    message = "".join(chr(ord("a") + i % 26) for i in range(length))
    body = event(message=message)
    assert body["message"] == message[:kept]
    assert len(body["message"]) == kept


def test_event_about_a_list_item_without_kind_or_api_version() -> None:
    """Items of a list response lack apiVersion and kind; the object is a ScoringAutoscaler."""
    body = event(involved={"metadata": INVOLVED["metadata"]})
    assert body["involvedObject"]["apiVersion"] == "rscore.dev/v1alpha1"
    assert body["involvedObject"]["kind"] == "ScoringAutoscaler"
    assert body["involvedObject"]["uid"] == "8d1f-uid"


def test_event_about_an_object_without_metadata() -> None:
    body = event(involved={})
    assert body["metadata"] == {"generateName": "scoringautoscaler.", "namespace": None}
    assert body["involvedObject"]["name"] is None


# --- retry_delay (rscore.autoscaler.kube_io) ----------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "retry_after", "jitter", "delay"),
    [
        # exponential growth from the base
        (1, 0.2, 2.0, None, 1.0, 0.2),
        (2, 0.2, 2.0, None, 1.0, 0.4),
        (3, 0.2, 2.0, None, 1.0, 0.8),
        (4, 0.2, 2.0, None, 1.0, 1.6),
        # capped
        (5, 0.2, 2.0, None, 1.0, 2.0),
        (10, 0.2, 2.0, None, 1.0, 2.0),
        (60, 0.2, 2.0, None, 1.0, 2.0),
        (1, 5.0, 2.0, None, 1.0, 2.0),  # a base above the cap
        # jitter scales the delay, capped or not
        (1, 0.2, 2.0, None, 0.5, 0.1),
        (3, 0.2, 2.0, None, 0.75, 0.6),
        (10, 0.2, 2.0, None, 0.5, 1.0),
        (2, 0.2, 2.0, None, 0.0, 0.0),
        # Retry-After wins over the backoff, without jitter, but is capped
        (1, 0.2, 2.0, 1.5, 0.5, 1.5),
        (4, 0.2, 2.0, 0.1, 1.0, 0.1),
        (1, 0.2, 2.0, 30.0, 1.0, 2.0),
        (1, 0.2, 2.0, 0.0, 1.0, 0.0),
        (1, 0.2, 2.0, -5.0, 1.0, 0.0),
        (1, 0.2, 2.0, math.inf, 1.0, 2.0),
    ],
    ids=[
        "attempt-1",
        "attempt-2",
        "attempt-3",
        "attempt-4",
        "attempt-5-capped",
        "attempt-10-capped",
        "attempt-60-capped",
        "base-above-cap",
        "jitter-half",
        "jitter-three-quarters",
        "jitter-on-cap",
        "jitter-zero",
        "retry-after-wins",
        "retry-after-shorter",
        "retry-after-capped",
        "retry-after-zero",
        "retry-after-negative",
        "retry-after-infinite",
    ],
)
def test_retry_delay(
    attempt: int, base: float, cap: float, retry_after: float | None, jitter: float, delay: float
) -> None:
    assert retry_delay(attempt, base, cap, retry_after, jitter) == pytest.approx(delay)


def test_retry_delay_grows_until_the_cap() -> None:
    delays = [retry_delay(n, 0.1, 3.0, None, 1.0) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert all(b == pytest.approx(min(3.0, 2 * a)) for a, b in itertools.pairwise(delays))
    assert max(delays) == 3.0
