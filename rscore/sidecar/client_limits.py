"""The decisions about client connections, as plain values and functions: what a
connection may hold (`ClientLimits`), what the client owes and by when (`Phase`,
`deadline`), what to do when a deadline passes (`on_expiry`), whether one more
connection is admitted (`ConnectionCap`), and how many file descriptors that takes
(`fd_budget`). `rscore.sidecar.client_deadlines` carries them out on aiohttp's connections.

No I/O, no clock, no aiohttp: every input comes in as an argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "RESERVED_FDS",
    "ClientLimits",
    "ConnectionCap",
    "FdBudget",
    "Handling",
    "Outcome",
    "Phase",
    "deadline",
    "fd_budget",
    "on_expiry",
]

# Descriptors the process needs besides client connections: listening sockets, one
# socket and a few pipes per R worker, log, watched and collected files, the loop's own.
RESERVED_FDS = 256


@dataclass(frozen=True)
class ClientLimits:
    """The flags (see `rscore serve --help`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections!r}")


class Phase(enum.StrEnum):
    """What the client owes on a connection; also the metric's `phase` label."""

    HEADER = "header"  # (the rest of) a request's header block
    BODY = "body"  # the rest of a request's body
    IDLE = "idle"  # nothing: the next request is the client's choice


def deadline(limits: ClientLimits, phase: Phase, since: float) -> float:
    """When the client's time for `phase`, owed from `since`, is up."""
    # (branches, not a dict built per call: this runs a few times per request)
    if phase is Phase.IDLE:
        return since + limits.keepalive_timeout_s
    if phase is Phase.HEADER:
        return since + limits.header_timeout_s
    return since + limits.body_timeout_s


class Handling(enum.Enum):
    """What the server side of a connection is doing when a deadline passes."""

    WAITING = "waiting"  # waiting for the next request's header
    READING = "reading"  # the late body's handler runs and has not begun its answer
    STREAMING = "streaming"  # the late body's handler runs and has begun its answer
    ANSWERING = "answering"  # another (earlier, pipelined) request's handler runs
    BETWEEN = "between"  # no handler runs and none waits (discarding an unread body)


class Outcome(enum.Enum):
    """What to do with a connection whose deadline passed."""

    KEEP = "keep"  # not the client's turn: a handler runs; look again later
    CLOSE = "close"  # close now, nothing to answer
    ANSWER_408 = "answer_408"  # the client began a request: 408, then close
    FAIL_BODY_READ = "fail_body_read"  # the handler's body read raises 408; then close
    CLOSE_AFTER_ANSWER = "close_after_answer"  # let the running handler answer, then close


def on_expiry(phase: Phase, handling: Handling, began_request: bool) -> Outcome:
    """The decision when `phase`'s deadline passes (`began_request`: bytes of a request
    arrived since the connection was last idle)."""
    if phase is Phase.IDLE:
        # A kept-alive connection closes silently (RFC 9112 9.8): a 408 there could
        # cross a request the client sends at the same moment.
        return Outcome.CLOSE if handling is Handling.WAITING else Outcome.KEEP
    if phase is Phase.BODY and handling is Handling.READING:
        return Outcome.FAIL_BODY_READ
    if phase is Phase.BODY and handling is Handling.STREAMING:
        # Past its deadline with an answer under way: no 408 can go out; cut.
        return Outcome.CLOSE
    if handling is not Handling.WAITING and handling is not Handling.BETWEEN:
        return Outcome.CLOSE_AFTER_ANSWER  # never write into an answer under way
    if phase is Phase.HEADER and handling is Handling.WAITING and began_request:
        return Outcome.ANSWER_408
    if phase is Phase.HEADER and handling is Handling.BETWEEN:
        return Outcome.CLOSE_AFTER_ANSWER  # a queued request may be about to run
    return Outcome.CLOSE


class ConnectionCap:
    """Open connections, at most `limit`: `admit()` takes a place, `release()` frees it."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def admit(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open = max(0, self.open - 1)


@dataclass(frozen=True)
class FdBudget:
    soft_limit: int | None  # RLIMIT_NOFILE's soft limit to set; None: leave it as it is
    max_connections: int  # the cap that fits


def fd_budget(
    max_connections: int,
    *,
    soft: int | None,
    hard: int | None,
    per_connection: int,
    reserved: int = RESERVED_FDS,
) -> FdBudget:
    """The file descriptors `max_connections` need (`per_connection` each, plus
    `reserved`) against RLIMIT_NOFILE (None: unlimited): the soft limit is raised, up
    to the hard one, if that is short; a cap that cannot fit even then is lowered to
    what does, so that accepting never fails for want of a descriptor."""
    needed = max_connections * per_connection + reserved
    if soft is None or needed <= soft:
        return FdBudget(None, max_connections)
    if hard is None or needed <= hard:
        return FdBudget(needed, max_connections)
    return FdBudget(hard, max(1, (hard - reserved) // per_connection))
