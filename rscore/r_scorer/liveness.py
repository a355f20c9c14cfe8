"""Whether a scoring process is live: can it still get an R worker back by itself?

One decision, `liveness_problem()`, pure, for both deployments. The sidecar's
`/healthz` asks it with the last moment a worker was connected; the r-scorer
container's exec livenessProbe (`rscore scorer-live`) asks it with what the
supervisor's monitor thread last wrote to `scorer-live.json` in the socket folder:
its heartbeat, the last moment a worker had loaded the bundle and was running, and the
bounds. A pod is not live when its monitor has stopped beating (stuck or dead), or when
no worker has been up for longer than `--no-worker-grace-s` (restarts are not bringing
one back: EMFILE, a bundle that no longer loads). Before the first worker there is
nothing to judge: the first model load is the startupProbe's business.

Why a file and an exec probe for the r-scorer rather than an HTTP port: kubelet's
httpGet reaches the pod's address, so a health port would listen on the network (one
more thing for the NetworkPolicy to close) in a container that serves nothing else; an
exec probe reads a file in a folder only this user may enter, and a monitor that is
stuck cannot keep the file fresh, where a separate HTTP thread might answer on.

Times are CLOCK_MONOTONIC (Python's `time.monotonic()` on Linux): one clock for every
process of the machine, so the probe may compare the monitor's times with its own, and
immune to wall-clock steps. Never starts R and never raises out of `probe_file()`: a
missing or garbled file is a reason, not a crash.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from rscore.r_scorer.socket_files import replace_json

LIVENESS_NAME = "scorer-live.json"  # beside the socket, in the private socket folder
# A model load as slow as the startupProbe allows (300 s: Azure ML's 30 x 10 s), plus
# the supervisor's longest restart back-off (30 s), plus 30 s to spare: a worker that
# crashed must have had time to load again before the pod is called dead.
DEFAULT_NO_WORKER_GRACE_S = 360.0
# The monitor beats every 50 ms and writes the file once a second; 30 s of silence is
# no slow tick but a thread that is stuck or gone.
MONITOR_STALL_S = 30.0
WRITE_EVERY_S = 1.0


@dataclass(frozen=True)
class LivenessBounds:
    no_worker_grace_s: float = DEFAULT_NO_WORKER_GRACE_S  # 0: never fail for no worker
    monitor_stall_s: float = MONITOR_STALL_S


def liveness_problem(
    now: float,
    *,
    worker_seen_at: float | None,
    heartbeat_at: float | None,
    bounds: LivenessBounds,
) -> str | None:
    """Why the process is not live, or None if it is.

    `worker_seen_at`: the last moment a worker was up (None: none yet, still starting);
    `heartbeat_at`: the monitor's last beat (None: no monitor to judge, the sidecar)."""
    if heartbeat_at is not None and now - heartbeat_at > bounds.monitor_stall_s:
        return (
            f"the supervisor's monitor has not beaten for {now - heartbeat_at:.0f} s (bound "
            f"{bounds.monitor_stall_s:.0f} s): it is stuck, dead, or cannot write its "
            f"liveness file, so no worker would be restarted"
        )
    if worker_seen_at is None or bounds.no_worker_grace_s <= 0:
        return None
    workerless_s = now - worker_seen_at
    if workerless_s > bounds.no_worker_grace_s:
        return (
            f"no R worker for {workerless_s:.0f} s (--no-worker-grace-s "
            f"{bounds.no_worker_grace_s:.0f}): restarts are not bringing one back"
        )
    return None


def write_liveness_file(
    path: Path, *, heartbeat_at: float, worker_seen_at: float | None, bounds: LivenessBounds
) -> None:
    """Replace `path` atomically: the probe never reads half a file."""
    record = {
        "clock": "CLOCK_MONOTONIC",
        "pid": os.getpid(),
        "heartbeat_at": heartbeat_at,
        "worker_seen_at": worker_seen_at,
        "no_worker_grace_s": bounds.no_worker_grace_s,
        "monitor_stall_s": bounds.monitor_stall_s,
    }
    replace_json(path, record)


def probe_file(path: Path, now: float | None = None) -> str | None:
    """The exec probe's answer: why the scorer that writes `path` is not live, or None."""
    now = time.monotonic() if now is None else now
    try:
        record: Any = orjson.loads(path.read_bytes())
        heartbeat_at = float(record["heartbeat_at"])
        seen = record["worker_seen_at"]
        bounds = LivenessBounds(
            no_worker_grace_s=float(record["no_worker_grace_s"]),
            monitor_stall_s=float(record["monitor_stall_s"]),
        )
    except FileNotFoundError:
        return (
            f"no liveness file at {path}: the scorer has not finished starting, or runs "
            f"with another --socket-dir"
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return f"unreadable liveness file {path}: {exc!r}"
    return liveness_problem(
        now,
        worker_seen_at=None if seen is None else float(seen),
        heartbeat_at=heartbeat_at,
        bounds=bounds,
    )
