"""A real pod on this machine for `rscore sim validate`: processes, CPU, the client.

`Rig` starts `rscore serve BUNDLE` (the pod: the sidecar in the main process, its R
workers as children) and the echo server, each in its own process group on free ports of
127.0.0.1, waits until they answer, runs the open-loop client
(rscore/cli/replay_client.py) as a process of its own for each plan, and reads the
CPU seconds the sidecar, the workers and the whole machine spent meanwhile from /proc.
On exit (errors and Ctrl-C included) it ends every process it started: SIGTERM to each
group's leader, SIGKILL to whatever is left of the group.

Loads only 127.0.0.1; every process it starts is bounded by a timeout; never leaves one
behind; writes only the log files and plans in the folder it is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from rscore.cli.processes import Processes, children, free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # R start and model load of every worker
QUIET_TICK_S = 0.005  # the runnable threads' sampling period (quiet window, and runs)
CLIENT_SLACK_S = 60.0  # beyond the plan's own length and timeout, before the client is killed

__all__ = [
    "ClientRun",
    "CpuSample",
    "PodError",
    "Rig",
    "answers",
    "batch_counts",
    "free_port",
    "r_seconds",
]


class PodError(RuntimeError):
    """The real pod (or the client) failed: the message says which and shows its log."""


_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _wanting_s(pids: list[int]) -> float:
    """Seconds the threads of these processes ran or waited to run (runnable), so far:
    /proc/PID/task/TID/schedstat's first two fields."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = (task / "schedstat").read_text().split()
                    total += int(fields[0]) + int(fields[1])
    return total / 1e9


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the R workers may be a zygote's children)."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children(child))
    return found


def _runnable() -> int:
    """Threads runnable on the machine now, this one among them (/proc/loadavg's fourth
    field, running/total: the kernel's procs_running, from a file a few bytes long)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK  # guest time is already inside user time


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    sidecar_s: float  # the pod's main process (the sidecar; the supervisor is a thread)
    workers_s: float  # the processes below it (the R workers, and a zygote if any)
    machine_s: float  # every process on the machine
    calls: int = 0  # R calls the pod made (its rscore_batch_rows histogram's count)
    rows: int = 0  # rows those calls scored (the histogram's sum)
    pod_wanting_s: float = 0.0  # seconds the pod's threads ran or waited for a core
    r_s: float = 0.0  # seconds inside R (its rscore_scoring_duration_seconds' sum)

    def minus(self, before: CpuSample) -> CpuSample:
        return CpuSample(
            self.at - before.at,
            self.sidecar_s - before.sidecar_s,
            self.workers_s - before.workers_s,
            self.machine_s - before.machine_s,
            self.calls - before.calls,
            self.rows - before.rows,
            self.pod_wanting_s - before.pod_wanting_s,
            self.r_s - before.r_s,
        )

    @property
    def others_s(self) -> float:
        """CPU seconds every process but the pod spent (the client among them)."""
        return max(0.0, self.machine_s - self.sidecar_s - self.workers_s)


@dataclass(frozen=True)
class ClientRun:
    """One plan's per-request record (seconds from its start) and the client's cost."""

    scheduled: np.ndarray
    sent: np.ndarray
    done: np.ndarray
    status: np.ndarray
    client_cpu_s: float
    opened: int
    cpu: CpuSample  # what the pod and the machine spent during the run
    runnable: float = 0.0  # threads runnable on the machine during the run, on average
    client_wanting_s: float = 0.0  # seconds the client's threads ran or waited for a core

    @property
    def background(self) -> float:
        """Other processes' runnable threads during the run, on average: every runnable
        thread less the pod's and the client's (each a share of the run)."""
        if not self.cpu.at > 0:
            return 0.0
        ours = (self.cpu.pod_wanting_s + self.client_wanting_s) / self.cpu.at
        return max(0.0, self.runnable - ours)

    @property
    def answered(self) -> int:
        return int((self.status == 200).sum())

    @property
    def replied(self) -> int:
        """Requests that got any HTTP answer (the sidecar's loop handled each)."""
        return int((self.status > 0).sum())

    def latencies(self) -> np.ndarray:
        ok = self.status == 200
        return (self.done - self.sent)[ok]

    def lag(self) -> np.ndarray:
        """Actual minus scheduled send time of each request: the schedule kept or not."""
        return self.sent - self.scheduled


class Rig:
    """The pod, the echo server and the client runs; a context manager that cleans up."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._processes = Processes(folder, PodError, tail_lines=15)
        self.pod_url = ""
        self.echo_url = ""
        self._pod_port = self._echo_port = self._metrics_port = 0
        self._runs = 0

    def __enter__(self) -> Rig:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- processes -------------------------------------------------------------------

    def start_pod(self, bundle: Path, serve_flags: list[str]) -> None:
        """`rscore serve BUNDLE --auth none` with `serve_flags` (the pod's settings)."""
        self._pod_port = free_port()
        self._metrics_port = free_port()
        command = [
            sys.executable, "-m", "rscore.cli", "serve", str(bundle), "--auth", "none",
            "--host", HOST, "--port", str(self._pod_port),
            "--metrics-port", str(self._metrics_port),
            *serve_flags,
        ]  # fmt: skip
        self._processes.start("pod", command)
        self.pod_url = f"http://{HOST}:{self._pod_port}"

    def start_echo(self) -> None:
        self._echo_port = free_port()
        self._processes.start(
            "echo", [sys.executable, "-m", "rscore.cli.echo_server", "--port", str(self._echo_port)]
        )
        self.echo_url = f"http://{HOST}:{self._echo_port}"

    def wait_ready(self, body: str) -> None:
        """Until the pod's /readyz and the echo server's /score answer 200."""
        deadline = time.monotonic() + START_TIMEOUT_S
        checks: list[tuple[str, bytes | None]] = []
        if self.pod_url:
            checks.append((f"{self.pod_url}/readyz", None))
        if self.echo_url:
            checks.append((f"{self.echo_url}/score", body.encode()))
        for url, data in checks:
            while True:
                self._processes.check_alive()
                if answers(url, data):
                    break
                if time.monotonic() > deadline:
                    raise PodError(f"{url} did not answer within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.2)

    def cpu(self) -> CpuSample:
        """The CPU so far, and the R calls the pod made (read first: the scrape's own
        CPU falls outside the window it opens or closes)."""
        calls, rows, r_s = self._r_calls()
        pod = self._processes.pid("pod")
        below = _descendants(pod)
        return CpuSample(
            time.monotonic(),
            _process_cpu_s(pod),
            sum(_process_cpu_s(child) for child in below),
            _machine_busy_s(),
            calls,
            rows,
            _wanting_s([pod, *below]),
            r_s,
        )

    def _r_calls(self) -> tuple[int, int, float]:
        """(R calls, rows, seconds inside R) from the pod's rscore_batch_rows and
        rscore_scoring_duration_seconds histograms; zeros without a pod."""
        if not self._metrics_port:
            return 0, 0, 0.0
        url = f"http://{HOST}:{self._metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5.0) as response:
                exposition = response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, 0, 0.0
        samples = _read_samples(exposition)  # one pass for both
        return (*batch_counts(exposition, samples), r_seconds(exposition, samples))

    def idle_cpu(self, seconds: float) -> CpuSample:
        """What the pod spends with no request at all for `seconds` (its timers)."""
        return self.quiet(seconds)[0]

    def quiet(self, seconds: float) -> tuple[CpuSample, float]:
        """`seconds` with no request: what the pod and everyone else spend meanwhile,
        and how many threads of other processes were runnable, on average (sampled
        every QUIET_TICK_S, less this reader)."""
        before = self.cpu()
        end = time.monotonic() + seconds
        counts = []
        while time.monotonic() < end:
            counts.append(_runnable() - 1)
            time.sleep(QUIET_TICK_S)  # a sampling period, not a wait for anything
        return self.cpu().minus(before), max(0.0, float(np.mean(counts))) if counts else 0.0

    def close(self) -> None:
        self._processes.close(grace_s=20.0)

    # --- the client ------------------------------------------------------------------

    def run_client(self, target: str, plan: dict[str, Any], bound_s: float) -> ClientRun:
        """Run one plan (see replay_client) against "pod" or "echo"; kill the client if
        it is not done within `bound_s` + CLIENT_SLACK_S."""
        self._processes.check_alive()
        self._runs += 1
        port = self._pod_port if target == "pod" else self._echo_port
        plan_path = self.folder / f"plan-{self._runs}.json"
        result_path = self.folder / f"result-{self._runs}.npz"
        plan_path.write_text(json.dumps({**plan, "port": port}))
        command = [sys.executable, "-m", "rscore.cli.replay_client", str(plan_path),
                   str(result_path)]  # fmt: skip
        deadline = time.monotonic() + bound_s + CLIENT_SLACK_S
        with (self.folder / "client.log").open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        assert process.stdout is not None
        try:
            # The client says when its run starts and ends (after its start-up and before
            # it writes its file): the CPU is read at exactly those moments.
            marks, wanting = [], []
            counter = _RunnableCounter()
            for expected in (b"go", b"end"):
                line = _read_line(process.stdout, deadline)
                if line != expected:
                    break
                marks.append(self.cpu())
                wanting.append(_wanting_s([process.pid]))
                if expected == b"go":
                    counter.start()
            counter.stop()
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise PodError(
                f"the client did not finish within {bound_s + CLIENT_SLACK_S:.0f} s"
            ) from None
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            process.stdout.close()
        if process.returncode != 0 or len(marks) != 2:
            raise PodError(f"the client failed (exit {process.returncode})\n"
                           f"{self._processes.log_tail('client')}")  # fmt: skip
        cpu = marks[1].minus(marks[0])
        with np.load(result_path) as data:
            run = ClientRun(
                scheduled=data["scheduled"],
                sent=data["sent"],
                done=data["done"],
                status=data["status"],
                client_cpu_s=float(data["cpu_s"]),
                opened=int(data["opened"]),
                cpu=cpu,
                runnable=counter.mean,
                client_wanting_s=wanting[1] - wanting[0],
            )
        plan_path.unlink()
        result_path.unlink()
        self._processes.check_alive()
        return run


class _RunnableCounter:
    """Counts the machine's runnable threads every QUIET_TICK_S in a thread of its own
    while a run goes on (less itself): `mean` once stopped."""

    def __init__(self) -> None:
        self._counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _count(self) -> None:
        while not self._stop.wait(QUIET_TICK_S):
            self._counts.append(_runnable() - 1)

    @property
    def mean(self) -> float:
        return max(0.0, float(np.mean(self._counts))) if self._counts else 0.0


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line of the client's stdout (stripped), or None at its end or the deadline."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(max(0.0, deadline - time.monotonic())):
            return None
    line = stream.readline()
    return line.strip() if line else None


# The samples the validation reads from the pod's page (`_r_calls`): histogram sums and
# counts, unlabelled.
_READ = ("rscore_batch_rows_count", "rscore_batch_rows_sum", "rscore_scoring_duration_seconds_sum")


def _read_samples(exposition: str) -> dict[str, float]:
    """`_READ`'s samples found in a Prometheus exposition, in one pass over its lines."""
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        name, _, value = line.partition(" ")
        if name in _READ:
            found[name] = float(value.rsplit(" ", 1)[-1])
    return found


def batch_counts(exposition: str, samples: dict[str, float] | None = None) -> tuple[int, int]:
    """(count, sum) of the rscore_batch_rows histogram in a Prometheus exposition."""
    found = _read_samples(exposition) if samples is None else samples
    return int(found.get("rscore_batch_rows_count", 0.0)), int(
        found.get("rscore_batch_rows_sum", 0.0)
    )


def r_seconds(exposition: str, samples: dict[str, float] | None = None) -> float:
    """The sum of the rscore_scoring_duration_seconds histogram (seconds inside R over
    every R call) in a Prometheus exposition; 0 without it."""
    found = _read_samples(exposition) if samples is None else samples
    return found.get("rscore_scoring_duration_seconds_sum", 0.0)


def answers(url: str, data: bytes | None) -> bool:
    """Whether `url` answers 200 now (a POST of `data`, or a GET)."""
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
