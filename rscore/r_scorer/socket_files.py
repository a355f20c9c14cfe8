"""The scorer's small state files beside its socket, which the sidecar reads.

The scorer and the sidecar are two containers sharing only the socket's folder (an
emptyDir): the scorer writes what only it can see (liveness, its workers' memory, its
cold start) as JSON files there, and the sidecar reads them when it is scraped. Each
write replaces the file atomically, so a reader never sees half of one; a reader treats
a missing or unreadable file as "nothing known", never as an error.

Never holds a lock, never blocks on the reader, never writes outside the folder given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "COLD_START_NAME",
    "COLD_START_PHASES",
    "read_cold_start",
    "replace_json",
    "write_cold_start",
]

COLD_START_NAME = "cold-start.json"
# Seconds, the slowest worker's: R start-up, the bundle's packages, the model; and from
# the scorer's start until every worker is ready.
COLD_START_PHASES = ("r_start_s", "packages_s", "model_s", "ready_s")


def replace_json(path: Path, record: Any) -> None:
    """Write `record` as JSON to `path`, atomically (a partial file, then a rename)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(orjson.dumps(record))
    os.replace(partial, path)


def write_cold_start(path: Path, cold_start: Mapping[str, float]) -> None:
    """The scorer's cold start by phase (`COLD_START_PHASES`), written once at start."""
    replace_json(path, {phase: float(cold_start[phase]) for phase in COLD_START_PHASES})


def read_cold_start(path: Path) -> dict[str, float]:
    """The phases a cold-start file holds as finite, non-negative seconds; {} when the
    file is missing or unreadable (the scorer has not finished starting, or is older)."""
    try:
        record: Any = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(record, dict):
        return {}
    phases: dict[str, float] = {}
    for phase in COLD_START_PHASES:
        value = record.get(phase)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and value >= 0:
            phases[phase] = float(value)
    return phases
