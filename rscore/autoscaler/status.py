"""What the controller writes back: the `status` of a ScoringAutoscaler and its Events.

Pure builders over plain data; the controller sends what they return. Conditions follow
metav1.Condition and the HPA's names (AbleToScale, ScalingActive, ScalingLimited);
`lastTransitionTime` moves only when a condition's status changes. The status also keeps
the forecast's demand profile (`demandProfile`, `rscore.autoscaler.forecast`'s JSON form, about
8-19 KiB) so that a restarted controller or a new leader does not start from scratch;
`profile_from_status` reads it back and never raises.

A status is written when it changes (`status_change`), but not every change is worth a
write at once: what the policy decided, the conditions' states and the wording of the
reason and messages are; the readings that move every tick (the observed concurrency,
the figures within the reason and the messages) ride along with those, or go on their
own at a heartbeat, so a thousand ScoringAutoscalers at a steady load do not cost a
write and a watch event each per tick.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rscore.autoscaler.forecast import DemandProfile
from rscore.autoscaler.policy import Recommendation
from rscore.autoscaler.ticks import stable_fraction

__all__ = [
    "CHANGED",
    "READINGS_ONLY",
    "UNCHANGED",
    "Condition",
    "event_body",
    "heartbeat_due",
    "merge_conditions",
    "profile_from_status",
    "status_body",
    "status_change",
]

# A status field that is a reading of the load (`status_change`): written at a heartbeat,
# or along with a change of anything else. The reason and the conditions' messages are
# readings in their figures only: a clause that comes or goes is a change.
_READINGS = frozenset({"observedConcurrency"})
_FIGURES = re.compile(r"[-+]?[0-9][0-9.e+-]*")

# Unchanged / only readings changed / something else changed.
UNCHANGED, READINGS_ONLY, CHANGED = 0, 1, 2


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def merge_conditions(
    existing: Iterable[Mapping[str, Any]],
    new: Iterable[Condition],
    now_iso: str,
    generation: int,
) -> list[dict[str, Any]]:
    """Conditions after this tick; untouched types are kept as they were."""
    merged = {c["type"]: dict(c) for c in existing if "type" in c}
    for condition in new:
        status = "True" if condition.status else "False"
        before = merged.get(condition.type)
        since = (
            before["lastTransitionTime"]
            if before and before.get("status") == status and before.get("lastTransitionTime")
            else now_iso
        )
        merged[condition.type] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    return sorted(merged.values(), key=lambda c: c["type"])


def limit_condition(desired: int, min_replicas: int, max_replicas: int) -> Condition:
    if desired >= max_replicas:
        return Condition("ScalingLimited", True, "AtMaxReplicas", f"at maxReplicas {max_replicas}")
    if desired <= min_replicas:
        return Condition("ScalingLimited", True, "AtMinReplicas", f"at minReplicas {min_replicas}")
    return Condition(
        "ScalingLimited", False, "DesiredWithinRange", "the desired count is within range"
    )


def status_body(
    *,
    recommendation: Recommendation | None,
    current_replicas: int | None,
    current_nodes: int | None,
    last_scale_time: str | None,
    conditions: list[dict[str, Any]],
    generation: int,
    demand_profile: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A merge patch for the status subresource (None values clear stale fields).

    `demand_profile` (a `DemandProfile.to_dict()`) is written only when given: it is large
    and changes once a slot, so most patches leave the stored one as it is.
    """
    status: dict[str, Any] = {
        "currentReplicas": current_replicas,
        "currentNodes": current_nodes,
        "lastScaleTime": last_scale_time,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    if recommendation is not None:
        observed = recommendation.observed_concurrency
        status |= {
            "desiredReplicas": recommendation.desired_replicas,
            "desiredNodes": recommendation.desired_nodes,
            "observedConcurrency": None if observed is None else round(observed, 3),
            "mode": recommendation.mode,
            "reason": recommendation.reason,
        }
    if demand_profile is not None:
        status["demandProfile"] = dict(demand_profile)
    return {"status": status}


def _wording(text: Any) -> Any:
    return _FIGURES.sub("#", text) if isinstance(text, str) else text


def _settled(field: str, value: Any) -> Any:
    """A status field without its readings: the figures of the reason and of the
    conditions' messages masked."""
    if field == "reason":
        return _wording(value)
    if field == "conditions" and isinstance(value, list):
        return [
            {k: _wording(v) if k == "message" else v for k, v in c.items()}
            if isinstance(c, dict)
            else c
            for c in value
        ]
    return value


def status_change(previous: Mapping[str, Any], new: Mapping[str, Any]) -> int:
    """How the `status` of a merge patch (`status_body`'s) differs from the stored one:
    UNCHANGED, READINGS_ONLY (the observed concurrency, figures in the reason or the
    conditions' messages) or CHANGED (a decision, a count, a condition's state, the
    wording of the reason, a saved profile...)."""
    readings = False
    for field, value in new.items():
        before = previous.get(field)
        if before == value:
            continue
        if field in _READINGS or _settled(field, before) == _settled(field, value):
            readings = True
            continue
        return CHANGED
    return READINGS_ONLY if readings else UNCHANGED


def heartbeat_due(namespace: str, name: str, every_s: float, written_at: float, now: float) -> bool:
    """Has this object's heartbeat come since its status was last written at `written_at`?

    Each object beats on a grid of its own, `every_s` apart and shifted by a stable hash
    of its name: a status written for its readings alone waits for the next beat, so a
    thousand objects whose first writes came in the same tick (a new term's) spread their
    heartbeats evenly over the interval instead of coming back together. A beat that
    comes less than half a period after a write (one made for another reason, or a
    term's first) is let pass for the next: readings are written at most once per
    `every_s / 2`, and once per `every_s` at a steady load."""
    phase = every_s * stable_fraction(f"{namespace}/{name}")
    after = written_at + every_s / 2  # the beats before this are let pass
    return math.floor((now - phase) / every_s) > math.floor((after - phase) / every_s)


def profile_from_status(
    status: Mapping[str, Any] | None,
) -> tuple[DemandProfile | None, str | None]:
    """(the demand profile a status keeps, or None; why it was dropped, or None).

    No `demandProfile` is no history: (None, None). One that does not read back (hand
    edited, truncated, written by another format version) is dropped with the reason,
    which the controller announces once; the forecast then starts empty.
    """
    saved = (status or {}).get("demandProfile")
    if saved is None:
        return None, None
    try:
        return DemandProfile.from_dict(saved), None
    except ValueError as error:
        return None, f"status.demandProfile dropped, the forecast starts without history: {error}"


def event_body(
    *,
    involved: Mapping[str, Any],
    reason: str,
    message: str,
    now_iso: str,
    component: str,
    warning: bool = False,
) -> dict[str, Any]:
    """A core/v1 Event about a ScoringAutoscaler; the API server names it from the prefix."""
    metadata = involved.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{metadata.get('name', 'scoringautoscaler')}.",
            "namespace": metadata.get("namespace"),
        },
        "involvedObject": {
            # list items may lack these; the object is always a ScoringAutoscaler
            "apiVersion": involved.get("apiVersion") or "rscore.dev/v1alpha1",
            "kind": involved.get("kind") or "ScoringAutoscaler",
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now_iso,
        "lastTimestamp": now_iso,
        "count": 1,
    }
