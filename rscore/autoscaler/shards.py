"""Which controller shard owns a ScoringAutoscaler, and which Lease a shard elects on.

With `--shards N`, the ScoringAutoscalers are split by a stable hash of
`namespace/name` (SHA-256, so every replica, every Python and every restart agrees;
Python's `hash()` is salted per process); each shard elects its leader on a Lease of
its own, so N leaders carry the load and a shard's standby replica takes over only that
shard. A replica's shard is `--shard-index`, else its StatefulSet ordinal (the number
that ends the pod's name) modulo N: a StatefulSet of 2N replicas is N shards of two.

Pure: strings and numbers in and out; no I/O.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["ShardError", "lease_name", "ordinal_of", "shard_index", "shard_of"]


class ShardError(ValueError):
    """No shard index could be found, or it is out of range."""


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard in [0, shards) that owns `namespace/name`."""
    if shards < 1:
        raise ShardError(f"shards must be >= 1, got {shards}")
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def ordinal_of(pod_name: str) -> int | None:
    """A StatefulSet pod's ordinal (`rscore-autoscaler-3` -> 3), None for other names."""
    found = re.search(r"-(\d+)$", pod_name)
    return None if found is None else int(found.group(1))


def shard_index(shards: int, flag: int | None, pod_name: str) -> int:
    """This replica's shard: the flag, else the pod's ordinal modulo `shards`; always 0
    with one shard."""
    if shards == 1:
        return 0
    if flag is not None:
        if not 0 <= flag < shards:
            raise ShardError(f"shard index {flag} is not in [0, {shards})")
        return flag
    ordinal = ordinal_of(pod_name)
    if ordinal is None:
        raise ShardError(
            f"--shards {shards} needs --shard-index, or a StatefulSet pod name ending in "
            f"its ordinal (this pod is {pod_name!r})"
        )
    return ordinal % shards


def lease_name(base: str, index: int, shards: int) -> str:
    """The Lease of shard `index`: the base name itself without shards (as before)."""
    return base if shards == 1 else f"{base}-shard-{index}"
