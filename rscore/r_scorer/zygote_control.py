"""The supervisor's side of the zygote (`rscore.r_scorer.zygote`), and the channel between them.

The channel is a SOCK_SEQPACKET socket pair: one JSON object per packet (no framing
to get wrong), and a fork request carries the write end of the new worker's status
pipe as SCM_RIGHTS. Requests: `{"op": "fork", "slot", "generation"}`. Answers:
`{"op": "forked", "slot", "generation", "pid"}`, `{"op": "fork_failed", "message"}`,
and, whenever a child ends, `{"op": "exit", "pid", "returncode"}` (as
subprocess.Popen's: -N for signal N).

`Zygote` starts the zygote process and forks workers through it; `ForkedWorker` is a
forked worker as the supervisor sees a spawned one (pid, poll, terminate, kill, wait),
its exit status coming over the channel since only the zygote may reap it. When the
zygote dies, its children die with it (PR_SET_PDEATHSIG): every worker reads as
killed and the supervisor starts a new zygote.

Never starts R in this process; thread-safe (the monitor thread and stop() both
read the channel).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

MAX_PACKET = 65536

# Every knob the common BLAS, OpenMP and R packages read for their thread count; set in
# the zygote's environment before it starts: numpy and libR read them as they load. One
# thread per worker is also what a worker per core wants: more would fight the other
# workers for the cores.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OMP_THREAD_LIMIT": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "GOTO_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "BLIS_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "R_DATATABLE_NUM_THREADS": "1",
    "R_RANGER_NUM_THREADS": "1",
}


def send(channel: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    if fds:
        socket.send_fds(channel, [orjson.dumps(message)], list(fds))
    else:
        channel.send(orjson.dumps(message))


def receive(channel: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One packet and the file descriptors it carried; (None, []) at the channel's end."""
    data, fds, _flags, _address = socket.recv_fds(channel, MAX_PACKET, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = orjson.loads(data)
    return (message if isinstance(message, dict) else {}), list(fds)


class ZygoteGone(Exception):
    """The zygote process ended (or its channel did)."""


class ForkedWorker:
    """A worker forked by the zygote, with the Popen methods the supervisor uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.pump(0.0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0.0)
            self.zygote.pump(left)
        return self.returncode


class Zygote:
    """One zygote process for a bundle, and the workers it forked."""

    def __init__(
        self,
        bundle: Path,
        socket_path: Path,
        *,
        workers: int,
        max_requests: int,
        python: str = sys.executable,
    ) -> None:
        self.bundle = bundle
        self.socket_path = socket_path
        self.workers = workers
        self.max_requests = max_requests
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.started_at = 0.0
        self._channel: socket.socket | None = None
        self._children: dict[int, ForkedWorker] = {}
        self._replies: list[dict[str, Any]] = []
        self._lock = threading.RLock()

    @property
    def channel(self) -> socket.socket | None:
        return self._channel

    def start(self) -> int:
        """Start the zygote process; returns the read end of its status pipe (it reports
        "ready" there once loaded, or the load's error, as a worker does)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_read, status_write = os.pipe()
        command = [
            self.python, "-m", "rscore.r_scorer.zygote",
            "--bundle", str(self.bundle),
            "--socket", str(self.socket_path),
            "--of", str(self.workers),
            "--max-requests", str(self.max_requests),
            "--supervisor-pid", str(os.getpid()),
            "--status-fd", str(status_write),
            "--control-fd", str(theirs.fileno()),
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=child_stdout(),
                pass_fds=(status_write, theirs.fileno()),
                env={**os.environ, **SINGLE_THREAD_ENV},
            )
        except BaseException:
            os.close(status_read)
            ours.close()
            raise
        finally:
            os.close(status_write)
            theirs.close()
        self._channel = ours
        self.ready = False
        self.started_at = time.monotonic()
        return status_read

    @property
    def alive(self) -> bool:
        return (
            self.process is not None and self.process.poll() is None and self._channel is not None
        )

    def fork(
        self, slot: int, generation: int, status_write: int, timeout_s: float = 30.0
    ) -> ForkedWorker:
        """Ask for a worker; its status pipe's write end goes to the child."""
        with self._lock:
            if not self.alive or self._channel is None:
                raise ZygoteGone("the zygote is not running")
            send(
                self._channel,
                {"op": "fork", "slot": slot, "generation": generation},
                (status_write,),
            )
            deadline = time.monotonic() + timeout_s
            while True:
                for reply in self._replies:
                    if reply.get("op") == "fork_failed":
                        self._replies.remove(reply)
                        raise OSError(f"the zygote could not fork: {reply.get('message')}")
                    if reply.get("slot") == slot and reply.get("generation") == generation:
                        self._replies.remove(reply)
                        return self._children[int(reply["pid"])]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError("the zygote did not answer a fork request")
                self.pump(min(left, 0.1))
                if not self.alive:
                    raise ZygoteGone("the zygote ended")

    def pump(self, timeout_s: float) -> None:
        """Read what the zygote said (waiting at most `timeout_s` for a first packet)."""
        with self._lock:
            channel = self._channel
            if channel is None:
                return
            wait = timeout_s
            while True:
                readable, _, _ = select.select([channel], [], [], wait)
                if not readable:
                    break
                wait = 0.0
                try:
                    message, fds = receive(channel)
                except (ConnectionError, OSError):
                    message, fds = None, []
                for fd in fds:
                    os.close(fd)
                if message is None:
                    self._lost()
                    return
                self._handle(message)
            if self.process is not None and self.process.poll() is not None:
                self._drain_and_lose(channel)

    def _drain_and_lose(self, channel: socket.socket) -> None:
        # What it said before it went (exits of children) still counts.
        while select.select([channel], [], [], 0.0)[0]:
            try:
                message, fds = receive(channel)
            except OSError:
                break
            for fd in fds:
                os.close(fd)
            if message is None:
                break
            self._handle(message)
        self._lost()

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "exit":
            child = self._children.pop(int(message["pid"]), None)
            if child is not None:
                child.returncode = int(message["returncode"])
        elif op == "forked":
            pid = int(message["pid"])
            self._children[pid] = ForkedWorker(self, pid)
            self._replies.append(message)
        elif op == "fork_failed":
            self._replies.append(message)

    def _lost(self) -> None:
        """The zygote is gone: its children die with it (PR_SET_PDEATHSIG)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.ready = False
        for child in self._children.values():
            child.kill()  # in case the parent-death signal has not landed yet
            child.returncode = -signal.SIGKILL
        self._children.clear()

    def stop(self, grace_s: float = 5.0) -> None:
        """End the zygote (after its workers): closing the channel is its signal."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            process = self.process
        if process is None:
            return
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with self._lock:
            self._lost()


def child_stdout() -> int:
    """A child process's stdout: our stderr if it has a file descriptor, else /dev/null
    (also the supervisor's, for its spawned workers)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL
