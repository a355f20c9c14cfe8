"""A real pod on this machine for `rscore sim validate`: processes, CPU, the client.

`Rig` starts `rscore serve BUNDLE` (the pod: the sidecar in the main process, its R
workers as children) and the echo server, each in its own process group on free ports of
127.0.0.1, waits until they answer, runs the open-loop client
(rscore_cli/replay_client.py) as a process of its own for each plan, and reads the
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
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from rscore_cli.processes import Processes, children, free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # R start and model load of every worker
CLIENT_SLACK_S = 60.0  # beyond the plan's own length and timeout, before the client is killed

__all__ = ["ClientRun", "CpuSample", "PodError", "Rig", "answers", "free_port"]


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


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK  # guest time is already inside user time


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    sidecar_s: float  # the pod's main process (the sidecar; the supervisor is a thread)
    workers_s: float  # its children (the R workers)
    machine_s: float  # every process on the machine

    def minus(self, before: CpuSample) -> CpuSample:
        return CpuSample(
            self.at - before.at,
            self.sidecar_s - before.sidecar_s,
            self.workers_s - before.workers_s,
            self.machine_s - before.machine_s,
        )


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

    @property
    def answered(self) -> int:
        return int((self.status == 200).sum())

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
        self._pod_port = self._echo_port = 0
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
        command = [
            sys.executable, "-m", "rscore_cli", "serve", str(bundle), "--auth", "none",
            "--host", HOST, "--port", str(self._pod_port), "--metrics-port", str(free_port()),
            *serve_flags,
        ]  # fmt: skip
        self._processes.start("pod", command)
        self.pod_url = f"http://{HOST}:{self._pod_port}"

    def start_echo(self) -> None:
        self._echo_port = free_port()
        self._processes.start(
            "echo", [sys.executable, "-m", "rscore_cli.echo_server", "--port", str(self._echo_port)]
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
        pod = self._processes.pid("pod")
        return CpuSample(
            time.monotonic(),
            _process_cpu_s(pod),
            sum(_process_cpu_s(child) for child in children(pod)),
            _machine_busy_s(),
        )

    def idle_cpu(self, seconds: float) -> CpuSample:
        """What the pod spends with no request at all for `seconds` (its timers)."""
        before = self.cpu()
        time.sleep(seconds)  # a measurement window, not a wait for anything
        return self.cpu().minus(before)

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
        command = [sys.executable, "-m", "rscore_cli.replay_client", str(plan_path),
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
            marks = []
            for expected in (b"go", b"end"):
                line = _read_line(process.stdout, deadline)
                if line != expected:
                    break
                marks.append(self.cpu())
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
            )
        plan_path.unlink()
        result_path.unlink()
        self._processes.check_alive()
        return run


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line of the client's stdout (stripped), or None at its end or the deadline."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(max(0.0, deadline - time.monotonic())):
            return None
    line = stream.readline()
    return line.strip() if line else None


def answers(url: str, data: bytes | None) -> bool:
    """Whether `url` answers 200 now (a POST of `data`, or a GET)."""
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
