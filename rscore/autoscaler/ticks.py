"""When the control loop ticks: a fixed grid of slots, and what an overrun costs.

Ticks start on a grid (`first + k x interval`). A tick that ends after its slot is over
(an overrun) does not queue the ticks it missed: the loop waits for the next slot still
ahead, and the slots that passed are reported as skipped. A tick waits for its
reconciles at most `TICK_BUDGET` of the interval, so that the loop's own overhead has
room before the next slot; a reconcile still running then is left to finish (and its
object skipped by the next tick) rather than delay the others.

Pure: plain numbers in and out; no clock reads, no sleeping, no I/O.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

__all__ = [
    "READING_LEAD",
    "READING_SPREAD",
    "TICK_BUDGET",
    "NextTick",
    "mean_reading_lead_s",
    "next_tick",
    "stable_fraction",
    "tick_budget_s",
]

TICK_BUDGET = 0.8  # of the interval, for the reconciles; the rest is the loop's margin
# The pods' streamed readings come between READING_LEAD and READING_LEAD + READING_SPREAD
# of an interval before each tick (rscore.autoscaler.metric_streams.reading_phase_s).
READING_LEAD = 0.05
READING_SPREAD = 0.2


def stable_fraction(key: str) -> float:
    """A point in [0, 1] fixed by `key` (CRC-32): the same in every replica and restart,
    and spread evenly over keys, so that objects or pods given a phase by it do not all
    act in the same instant."""
    return zlib.crc32(key.encode()) / 0xFFFFFFFF


def mean_reading_lead_s(interval_s: float) -> float:
    """How long before a tick a pod's streamed reading is taken, on average (the
    simulator takes its readings then)."""
    return (READING_LEAD + READING_SPREAD / 2) * interval_s


@dataclass(frozen=True)
class NextTick:
    at: float  # when the next tick starts (a slot of the grid)
    skipped: int  # slots that passed while this tick ran: 0 unless it overran


def next_tick(started_at: float, ended_at: float, interval_s: float) -> NextTick:
    """The next tick after one that started at its slot `started_at` and ended at
    `ended_at` (same clock). Ending exactly at the next slot is on time."""
    if interval_s <= 0:
        raise ValueError(f"interval must be > 0, got {interval_s}")
    due = started_at + interval_s
    if ended_at <= due:
        return NextTick(due, 0)
    skipped = math.ceil((ended_at - due) / interval_s)
    return NextTick(due + skipped * interval_s, skipped)


def tick_budget_s(interval_s: float) -> float:
    """How long a tick waits for its reconciles."""
    return interval_s * TICK_BUDGET
