"""The byte budget of admission: how many bytes of request bodies the sidecar holds at once.

The queue bound counts requests; a request's memory grows with its body. From its first
byte read until it is answered, a body costs the sidecar about ten times its size
(the bytes, the parsed document while it is parsed, the coerced columns while they wait
for and go to a worker: measured with `rscore serve` and 9 MB bodies, see
docs/security.md). So a scoring request takes its body's bytes from a `BodyBudget`
before the body is read (its Content-Length; sent chunked, each chunk as it arrives)
and gives them back when it is answered, whatever the path; a request the budget has no
room for is refused (429) before its body is read, and memory stays bounded however many
large bodies arrive together.

Pure accounting: no I/O, no clock, no HTTP (the handler turns a refusal into a status).
"""

from __future__ import annotations


class BodyBudget:
    """Bytes of bodies held against a limit; nothing is ever held past it."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the body budget must be at least one byte")
        self.limit = limit
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def take(self, nbytes: int) -> bool:
        """Hold `nbytes` more if they fit; False (and nothing held) if not."""
        if nbytes < 0:
            raise ValueError("cannot take a negative number of bytes")
        if self._held + nbytes > self.limit:
            return False
        self._held += nbytes
        return True

    def give_back(self, nbytes: int) -> None:
        if not 0 <= nbytes <= self._held:
            raise ValueError(f"giving back {nbytes} bytes but {self._held} are held")
        self._held -= nbytes


class BodyHold:
    """One request's share of the budget: what it took, given back once."""

    __slots__ = ("budget", "nbytes")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.nbytes = 0

    def take(self, nbytes: int) -> bool:
        if not self.budget.take(nbytes):
            return False
        self.nbytes += nbytes
        return True

    def release(self) -> int:
        """Give back everything held; a second call gives back nothing. Returns the
        bytes given back."""
        released, self.nbytes = self.nbytes, 0
        self.budget.give_back(released)
        return released
