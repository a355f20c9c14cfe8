"""The sidecar's share of a pod: its event loop as a FIFO server, and cores shared with R.

A real pod is not its R workers alone. Every request is parsed, admitted and answered by
the sidecar's event loop (one thread: one request's turn at a time), and the loop runs
on the same cores as the R workers, which by default are as many as the cores. The
engine models both when a pod's spec asks (`PodSpec.models_sidecar`):

- the loop: each request takes two turns of `request_s / 2` CPU seconds, one on arrival
  (before admission) and one when its call ends (writing the answer), in the order they
  come (Lindley's recursion: a turn starts when both it and the loop are there); each R
  call costs the loop `call_s` more when its reply comes (reading it, splitting a
  batch's predictions, writing the worker's next call), and the worker takes its next
  call only once the loop has read the reply (rscore/sidecar/admission.py starts the next call
  from the reply's callback): a busy loop idles the workers, and batches grow behind
  it, as they do in the real pod. A request the loop gives to an idle worker is written
  at once (docs/simulator.md says why writing it at the end of the loop's iteration
  was reverted). A turn that finds the loop idle costs `wake_s` more
  (the loop wakes: a fresh iteration, its poll and its callbacks). Per-call work is
  why a pod that batches little spends more sidecar CPU per request than a saturated
  one: the cost per request is `request_s + call_s * calls / requests`;
- the cores: one processor-sharing resource of `cores` shared by the pod's consumers
  (the R workers in a call, and the loop when it has work) and `others`, the runnable
  threads of every other process on them (on a shared machine: the load client, the
  machine's other work; validate measures them); when more want a core than there
  are, each runs at `cores / (consumers + others)` of full speed, as the kernel's fair
  scheduler shares it; a turn or a call keeps the speed it started with (a call is
  short next to how often that count changes at the loads where it matters);
- the HTTP path (`http_s`): a fixed time added to every answer, outside the pod's CPU.

A scenario's `[pods]` gives `sidecar_s` (request_s), `sidecar_wake_s`, `http_s` and
`cores` (`SidecarModel.of_pods`); `rscore sim validate` hands the engine a
`SidecarModel` of its own, with the per-call cost it fits. The numbers come from a real
pod (validate measures them); nothing here is tuned to a machine. Pure arithmetic: no
clock, no I/O, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rscore.sim.cluster import PodSpec

__all__ = ["SidecarModel", "core_share", "loop_turn"]


@dataclass(frozen=True)
class SidecarModel:
    """The pod's sidecar as the engine models it (all zero/None: not at all)."""

    request_s: float = 0.0  # loop CPU seconds per request: two turns of half of it
    call_s: float = 0.0  # loop CPU seconds per R call, when its reply comes
    wake_s: float = 0.0  # more for a turn that finds the loop idle
    http_s: float = 0.0  # fixed time of the HTTP path, outside the pod's CPU
    cores: float | None = None  # the cores the loop and the workers share; None: unlimited
    others: float = 0.0  # other runnable threads on those cores, on average (measured)

    def __post_init__(self) -> None:
        if min(self.request_s, self.call_s, self.wake_s, self.http_s, self.others) < 0:
            raise ValueError("sidecar: request_s, call_s, wake_s, http_s, others must be >= 0")
        if self.cores is not None and not self.cores > 0:
            raise ValueError("sidecar: cores > 0")

    @classmethod
    def of_pods(cls, pods: PodSpec) -> SidecarModel:
        """A scenario's sidecar: its `[pods]` keys (no per-call cost: they have none)."""
        return cls(pods.sidecar_s, 0.0, pods.sidecar_wake_s, pods.http_s, pods.cores)

    @property
    def on(self) -> bool:
        """Whether requests pass the loop and share the pod's cores."""
        return (
            self.request_s > 0
            or self.call_s > 0
            or self.wake_s > 0
            or self.http_s > 0
            or self.cores is not None
        )


def core_share(cores: float | None, consumers: int, others: float = 0.0) -> float:
    """The speed (1: full) of each of `consumers` that share `cores` (None: unlimited)
    with `others` runnable threads of other processes: the kernel's fair share, each
    runnable thread alike."""
    wanting = consumers + others
    if cores is None or wanting <= cores:
        return 1.0
    return cores / wanting


def loop_turn(
    now: float, free_at: float, work_s: float, share: float, wake_s: float = 0.0
) -> float:
    """When a turn of `work_s` CPU seconds that joins the loop at `now` ends: it starts
    once the loop is free (`free_at`), costs `wake_s` more if the loop was idle, and
    runs at `share` of a core."""
    if free_at > now:
        return free_at + work_s / share
    return now + (work_s + wake_s) / share
