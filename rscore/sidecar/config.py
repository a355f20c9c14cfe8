"""The sidecar's settings and their defaults: the one source `rscore serve --help` and
`create_app` both read.

Light on purpose: the CLI imports it to show defaults, so it must never import aiohttp,
numpy, R or anything that starts work; only constants and a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rscore.r_scorer.liveness import DEFAULT_NO_WORKER_GRACE_S
from rscore.r_scorer.payload import DEFAULT_MAX_COLUMNS, DEFAULT_MAX_ROWS

__all__ = [
    "DEFAULT_FANOUT_QUIET_MS",
    "DEFAULT_FANOUT_SAVING_MS",
    "DEFAULT_MIN_CHUNK_ROWS",
    "SidecarConfig",
]

# A chunk of fewer rows is not worth a worker: R's per-call cost (~1 ms) and the
# protocol's stay well under the chunk's own time from here on (measured on iris-rf:
# 10,000 rows take ~40 ms inside randomForest's predict()).
DEFAULT_MIN_CHUNK_ROWS = 10_000
# A worker is idle enough to take a chunk once it has answered no other request (one not
# split) for this long. A pod serving a steady stream of small requests has workers idle
# for moments between them (~1 ms at 1,000 requests/s): idle, but not unloaded, and a
# split would stall that stream for the chunks' whole time. Back-to-back large requests
# from one client still split: their chunks do not count.
DEFAULT_FANOUT_QUIET_MS = 100.0
# Split only when R's time for the request, as measured per row on earlier large calls,
# would shrink by at least this much: a chunk costs its own request and answer, and the
# answers' text is joined. An lm's 100,000 rows take ~4 ms in R (nothing to gain); a
# random forest's ~400 ms.
DEFAULT_FANOUT_SAVING_MS = 25.0


@dataclass(frozen=True)
class SidecarConfig:
    """The sidecar's flags (see `rscore serve --help`)."""

    max_queue: int = 128  # per worker
    request_timeout_ms: int = 5000  # queue wait + scoring, as Azure ML's default
    max_body_bytes: int = 10 * 1024 * 1024
    collect_dir: Path | None = None
    collect_sample_rate: float = 0.1
    collect_max_bytes: int = 1 << 30  # all collected files together; oldest hours go first
    collect_max_record_bytes: int = 1 << 20  # a bigger record is written as a marker
    drain_timeout_s: float = 30.0  # after SIGTERM, how long accepted requests may take
    max_batch_rows: int = 256  # rows of waiting requests merged into one R call
    max_batch_delay_ms: float = 0.0  # wait this long for a batch to gather (Triton: 0)
    min_chunk_rows: int = DEFAULT_MIN_CHUNK_ROWS  # fan-out over idle workers: rows a chunk
    fanout_quiet_ms: float = DEFAULT_FANOUT_QUIET_MS  # fan-out: idle this long (no flag yet)
    fanout_saving_ms: float = DEFAULT_FANOUT_SAVING_MS  # fan-out: R time saved at least
    no_worker_grace_s: float = DEFAULT_NO_WORKER_GRACE_S  # /healthz 503 past this (0: never)
    # Bytes of bodies read, parsed, queued or scored at once (docs/security.md: why 16 MiB).
    max_body_bytes_in_flight: int = 16 * 1024 * 1024
    max_rows: int = DEFAULT_MAX_ROWS  # per request
    max_columns: int = DEFAULT_MAX_COLUMNS  # per request

    def __post_init__(self) -> None:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"--max-body-bytes-in-flight ({self.max_body_bytes_in_flight}) must be at "
                f"least --max-body-bytes ({self.max_body_bytes}): else a body the limit "
                "allows could never be read"
            )
