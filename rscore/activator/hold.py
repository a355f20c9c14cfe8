"""What the activator does with a request: forward it, hold it, or refuse it.

Pure decisions over plain numbers, shared by the proxy and its tests: no I/O, no clock
(every time arrives as an argument), no sleeping, no logging. The rules:

- while the upstream (the model's Service) is believed ready, a request goes straight
  through; while it is not, the request is *held* (waits for a ready pod), if fewer than
  `max_held` are held already, else it is refused at once: 503 with Retry-After;
- an attempt that found no ready pod (the connection was refused: a Service with no
  ready endpoint refuses; or a pod answered 503: not ready yet, or draining) holds the
  request too; a request held longer than `hold_timeout_s` is answered 504;
- an attempt whose connection dropped before any answer is sent once more (the routes
  behind the activator have no side effects), then answered 502;
- every other answer of the upstream, errors included, is passed on as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Action",
    "Attempt",
    "HoldLimits",
    "after_attempt",
    "classify",
    "on_arrival",
    "on_wake",
    "probe_delay",
]


class Action(StrEnum):
    FORWARD = "forward"  # send it upstream now
    HOLD = "hold"  # wait until the upstream looks ready
    PASS = "pass"  # hand the upstream's answer to the client as it is
    FULL = "full"  # 503 + Retry-After: the hold queue is full
    EXPIRED = "expired"  # 504: held for the whole hold timeout
    DROPPED = "dropped"  # 502: the upstream dropped the connection, twice


class Attempt(StrEnum):
    ANSWERED = "answered"  # an HTTP answer to pass on (any status but 503)
    REFUSED = "refused"  # no connection: no ready endpoint behind the Service
    UNAVAILABLE = "unavailable"  # 503: the pod is not ready yet, or draining
    DROPPED = "dropped"  # connected, then closed before any answer


@dataclass(frozen=True)
class HoldLimits:
    max_held: int = 1000
    hold_timeout_s: float = 60.0
    retry_after_s: int = 5  # Retry-After of the 503 when the hold queue is full
    retries_after_drop: int = 1

    def __post_init__(self) -> None:
        if self.max_held < 0:
            raise ValueError(f"max_held must be >= 0, got {self.max_held}")
        if not self.hold_timeout_s > 0:
            raise ValueError(f"hold_timeout_s must be > 0, got {self.hold_timeout_s}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.retries_after_drop < 0:
            raise ValueError("retries_after_drop must be >= 0")


def classify(status: int | None, *, connected: bool = True) -> Attempt:
    """An attempt's outcome from its HTTP status (None: no answer came back)."""
    if status is None:
        return Attempt.DROPPED if connected else Attempt.REFUSED
    return Attempt.UNAVAILABLE if status == 503 else Attempt.ANSWERED


def on_arrival(limits: HoldLimits, *, upstream_ready: bool, held: int) -> Action:
    """A new request. `held`: requests held now, this one not counted."""
    if upstream_ready:
        return Action.FORWARD
    return Action.HOLD if held < limits.max_held else Action.FULL


def after_attempt(
    limits: HoldLimits,
    attempt: Attempt,
    *,
    is_held: bool,
    held: int,
    waited_s: float,
    drops: int = 0,
) -> Action:
    """After one try upstream. `is_held`: this request is already counted in `held`;
    `waited_s`: since it arrived; `drops`: how many of its attempts dropped, this one
    included."""
    if attempt is Attempt.ANSWERED:
        return Action.PASS
    if attempt is Attempt.DROPPED:
        return Action.FORWARD if drops <= limits.retries_after_drop else Action.DROPPED
    if waited_s >= limits.hold_timeout_s:
        return Action.EXPIRED
    if is_held or held < limits.max_held:
        return Action.HOLD
    return Action.FULL


def on_wake(limits: HoldLimits, *, waited_s: float) -> Action:
    """A held request woken (the upstream looks ready) or at the end of its wait."""
    return Action.EXPIRED if waited_s >= limits.hold_timeout_s else Action.FORWARD


def probe_delay(failures: int, base_s: float = 0.025, cap_s: float = 0.1) -> float:
    """Pause before the next readiness probe after `failures` failed ones in a row.

    Short and capped: a refused connection costs the Service nothing, and a pod that
    just became ready should get its held requests within a tenth of a second.
    """
    if failures <= 0:
        return 0.0
    return min(cap_s, base_s * 2 ** min(failures - 1, 30))
