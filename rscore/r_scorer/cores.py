"""How many R workers to run: the cores this container may use, not the host's.

The answer is the smaller of the CPU affinity set and the cgroup CPU quota (rounded
down, at least 1), as a Kubernetes CPU limit of "2" or "1500m" would have it. The
decision `usable_cores()` is pure; `detect_usable_cores()` reads the system.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def usable_cores(affinity_cores: int, quota_us: int | None, period_us: int | None) -> int:
    """Cores usable by this container; `quota_us` None or negative means no quota."""
    cores = max(1, affinity_cores)
    if quota_us is not None and quota_us > 0 and period_us:
        cores = min(cores, max(1, math.floor(quota_us / period_us)))
    return cores


def parse_cpu_max(text: str) -> tuple[int | None, int | None]:
    """cgroup v2 `cpu.max`: "max 100000" (no quota) or "150000 100000"."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None, None
    return int(fields[0]), int(fields[1])


def detect_usable_cores() -> int:
    affinity = len(os.sched_getaffinity(0))
    quota, period = _read_quota()
    return usable_cores(affinity, quota, period)


def _read_quota() -> tuple[int | None, int | None]:
    try:
        return parse_cpu_max(CGROUP_V2_CPU_MAX.read_text())
    except (OSError, ValueError):
        pass
    try:
        return int(CGROUP_V1_QUOTA.read_text()), int(CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None, None
