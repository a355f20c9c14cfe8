"""What each R worker really costs in memory, from the kernel's `/proc/PID/smaps_rollup`.

RSS counts every page a process maps, so N forked workers sharing one model look N
times as big as they are. The kernel's smaps_rollup also gives PSS (each shared page
divided by the processes sharing it: the workers' PSS adds up to what they cost
together) and the private pages (only this process maps them: what a second worker
adds). `parse_smaps_rollup()` reads those numbers (pure); `read_worker_memory()` reads
one process's. The supervisor's monitor measures its workers now and then and writes
`worker-memory.json` beside the workers' socket (`write_memory_file()`); the sidecar
reads it at scrape time (`read_memory_file()`) for `rscore_worker_pss_bytes` and
`rscore_worker_private_bytes` by slot: the file, not /proc, because in a pod the
sidecar's container does not see the r-scorer's processes.

Never starts R and never raises out of the readers for a process that is gone or a
file that is missing or garbled: no number is an answer too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from rscore.r_scorer.socket_files import replace_json

MEMORY_NAME = "worker-memory.json"  # beside the socket, in the private socket folder
MEASURE_EVERY_S = 5.0  # the monitor's period; a scrape interval is 15-60 s


@dataclass(frozen=True)
class Memory:
    """One process's memory, in bytes."""

    rss: int
    pss: int
    private: int  # Private_Clean + Private_Dirty: pages no other process maps
    shared: int  # Shared_Clean + Shared_Dirty


@dataclass(frozen=True)
class WorkerMemory:
    """One worker's memory, as the supervisor writes it for the sidecar."""

    slot: int
    pid: int
    generation: int
    pss_bytes: int
    private_bytes: int
    rss_bytes: int


def parse_smaps_rollup(text: str) -> Memory:
    """The totals of a smaps_rollup file (its fields are in kB: 1024 bytes)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * 1024
    return Memory(
        rss=fields.get("Rss", 0),
        pss=fields.get("Pss", 0),
        private=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        shared=fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0),
    )


def read_process_memory(pid: int) -> Memory | None:
    """The memory of process `pid`, or None if it is gone or not ours to read."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return parse_smaps_rollup(text)


def read_worker_memory(slot: int, pid: int, generation: int) -> WorkerMemory | None:
    memory = read_process_memory(pid)
    if memory is None:
        return None
    return WorkerMemory(slot, pid, generation, memory.pss, memory.private, memory.rss)


def write_memory_file(path: Path, workers: list[WorkerMemory]) -> None:
    """Replace `path` atomically: a scrape never reads half a file."""
    replace_json(path, {"workers": [asdict(worker) for worker in workers]})


def read_memory_file(path: Path) -> list[WorkerMemory]:
    """The workers of a memory file; none if it is missing or unreadable."""
    try:
        record: Any = orjson.loads(path.read_bytes())
        return [
            WorkerMemory(
                slot=int(entry["slot"]),
                pid=int(entry["pid"]),
                generation=int(entry["generation"]),
                pss_bytes=int(entry["pss_bytes"]),
                private_bytes=int(entry["private_bytes"]),
                rss_bytes=int(entry["rss_bytes"]),
            )
            for entry in record["workers"]
        ]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return []
