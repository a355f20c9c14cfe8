"""Local processes for the measuring commands: `rscore sim validate` and the benchmarks.

`Processes` starts commands each in its own process group, with its output in a log
file of a folder, and ends them all on `close()`: SIGTERM to each group's leader, then
SIGKILL to whatever is left of the group. `free_port` finds a free port of a host,
`children` lists a process's children from /proc, `machine` describes this machine.

bench/ imports these too: the installed CLI cannot import bench/, so what both need
lives here. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

__all__ = ["Processes", "children", "free_port", "machine"]


class Processes:
    """The processes a command started, each in its own process group; `close()` ends
    them all. `check_alive` raises `error` (with the log's tail) once one has exited."""

    def __init__(
        self,
        log_dir: Path,
        error: type[Exception] = RuntimeError,
        *,
        cwd: Path | None = None,
        tail_lines: int = 20,
    ) -> None:
        self.log_dir = log_dir
        self._error = error
        self._cwd = cwd
        self._tail_lines = tail_lines
        self._started: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            command,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own group: Ctrl-C reaches us, we end it
        )
        self._started[name] = process
        return process

    def pid(self, name: str) -> int:
        return self._started[name].pid

    def check_alive(self) -> None:
        for name, process in self._started.items():
            if process.poll() is not None:
                raise self._error(
                    f"{name} exited with status {process.returncode}\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int | None = None) -> str:
        lines = self._tail_lines if lines is None else lines
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {name}| {line}" for line in text.splitlines()[-lines:])

    def close(self, grace_s: float = 15.0) -> None:
        processes = list(self._started.values())
        for process in processes:
            if process.poll() is None:
                process.terminate()  # the leader only: rscore stops its own workers
        deadline = time.monotonic() + grace_s
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # stragglers of its group
            process.wait()
        self._started.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, in pid order."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def machine() -> str:
    """The CPU model, the usable cores, the OS and Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {len(os.sched_getaffinity(0))} usable cores; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}"
    )
