"""The sidecar's share of a pod: its event loop as a FIFO server, and cores shared with R.

A real pod is not its R workers alone. Every request is parsed, admitted and answered by
the sidecar's event loop (one thread: one request's turn at a time), and the loop runs
on the same cores as the R workers, which by default are as many as the cores. The
engine models both when a pod's spec asks (`PodSpec.models_sidecar`):

- the loop: each request takes two turns of `sidecar_s / 2` CPU seconds, one on arrival
  (before admission) and one when its call ends (writing the answer), in the order they
  come (Lindley's recursion: a turn starts when both it and the loop are there); a turn
  that finds the loop idle costs `sidecar_wake_s` more (the loop wakes: a fresh
  iteration, its poll and its callbacks), which a busy loop shares among the turns it
  finds ready: why a loaded sidecar spends less CPU per request than an idle one;
- the cores: when more of the pod's consumers (the R workers in a call, and the loop
  when it has work) want a core than the pod has, each runs at `cores / consumers` of
  full speed; a turn or a call keeps the speed it started with (a call is short next
  to how often that count changes at the loads where it matters);
- the HTTP path (`http_s`): a fixed time added to every answer, outside the pod's CPU.

The numbers come from a real pod (`rscore sim validate` measures them); nothing here
is tuned to a machine. Pure arithmetic: no clock, no I/O, no randomness.
"""

from __future__ import annotations

__all__ = ["core_share", "loop_turn"]


def core_share(cores: float | None, consumers: int) -> float:
    """The speed (1: full) of each of `consumers` that share `cores` (None: unlimited)."""
    if cores is None or consumers <= cores:
        return 1.0
    return cores / consumers


def loop_turn(
    now: float, free_at: float, work_s: float, share: float, wake_s: float = 0.0
) -> float:
    """When a turn of `work_s` CPU seconds that joins the loop at `now` ends: it starts
    once the loop is free (`free_at`), costs `wake_s` more if the loop was idle, and
    runs at `share` of a core."""
    if free_at > now:
        return free_at + work_s / share
    return now + (work_s + wake_s) / share
