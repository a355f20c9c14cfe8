"""Starts N R worker processes, restarts the ones that die, and recycles them.

`Supervisor.start()` starts the workers, waits until each has loaded the bundle, and
raises BundleError with R's message if one cannot: a bad bundle stops start-up instead
of crash-looping. Two ways to start a worker (`worker_start`): "fork" (the default)
starts one zygote (`rscore.r_scorer.zygote`) that loads the bundle once and forks every
worker, so the workers share the model's pages and a restart is a fork, not an R
start-up; "spawn" starts each worker as a fresh interpreter (`python -m
rscore.r_scorer.worker`) that loads the bundle itself. Forked workers are watched through the
zygote (`rscore.r_scorer.zygote_control`); if the zygote dies, its workers die with it and
the monitor starts a new zygote, then forks them again. A
monitor thread then restarts any worker that exits: at once after a recycle or a long
life, with growing back-off (up to 30 s) when a worker keeps dying young. Every restart
is logged with the exit status and counted; a restarted worker reports its load on a
status pipe like the first ones, so a bundle that no longer loads is logged with R's
message. The monitor survives its own errors (EMFILE...) and tries again, and beats: it
records the last moment a worker was up (loaded and running), and, with a
`liveness_file`, writes both for the r-scorer's livenessProbe (`rscore.r_scorer.liveness`).

Every few seconds the monitor also measures each worker's PSS and private memory
(`rscore.r_scorer.memory`) into `worker-memory.json` beside the socket, for the sidecar's
gauges.

Never talks to the workers' socket and never starts R in its own process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from rscore.r_scorer.errors import BundleError
from rscore.r_scorer.liveness import (
    LIVENESS_NAME,
    WRITE_EVERY_S,
    LivenessBounds,
    write_liveness_file,
)
from rscore.r_scorer.memory import (
    MEASURE_EVERY_S,
    MEMORY_NAME,
    WorkerMemory,
    read_worker_memory,
    write_memory_file,
)
from rscore.r_scorer.peer import ensure_socket_dir
from rscore.r_scorer.socket_files import COLD_START_NAME, write_cold_start
from rscore.r_scorer.worker import EXIT_CLEAN, EXIT_LOAD_FAILED
from rscore.r_scorer.zygote_control import ForkedWorker, Zygote, child_stdout

log = logging.getLogger("rscore.supervisor")

QUICK_DEATH_S = 10.0  # a worker that dies younger than this backs off before restarting
MAX_BACKOFF_S = 30.0
WORKER_STARTS = ("fork", "spawn")  # --worker-start; the first is the default
ZYGOTE_SLOT = -1  # the zygote's entry in the memory file


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker after `quick_deaths` young deaths."""
    if quick_deaths <= 0:
        return 0.0
    return min(MAX_BACKOFF_S, 0.5 * 2 ** min(quick_deaths - 1, 16))  # capped: no overflow


def describe_exit(returncode: int) -> str:
    if returncode == -signal.SIGALRM:
        return "ended by its watchdog (a request stayed in R past its deadline)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == EXIT_CLEAN:
        return "exited cleanly (recycled, or drained)"
    if returncode == EXIT_LOAD_FAILED:
        return "failed to load the bundle"
    return f"exited with status {returncode}"


@dataclass
class _Slot:
    index: int
    generation: int = 0
    process: subprocess.Popen[bytes] | ForkedWorker | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0
    spawn_failures: int = 0  # in a row: the monitor backs off, and keeps trying
    status_fd: int | None = None  # a restarted worker's status pipe, until it reports
    status: bytes = b""
    loaded: bool = False  # the running process reported that it loaded the bundle


@dataclass
class SupervisorStats:
    restarts: int = 0
    recycles: int = 0
    spawn_failures: int = 0  # restarts that raised (and were tried again)


class Supervisor:
    """Runs and keeps alive `workers` R worker processes for one bundle."""

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        socket_path: str | os.PathLike[str],
        *,
        workers: int,
        max_requests: int = 0,
        load_timeout_s: float = 600.0,
        python: str = sys.executable,
        liveness_file: Path | None = None,
        liveness: LivenessBounds | None = None,
        worker_start: str = WORKER_STARTS[0],
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if worker_start not in WORKER_STARTS:
            raise ValueError(f"worker_start must be one of {WORKER_STARTS}")
        self.bundle = Path(bundle).resolve()
        self.socket_path = Path(socket_path)
        self.max_requests = max_requests
        self.load_timeout_s = load_timeout_s
        self.python = python
        self.stats = SupervisorStats()
        self.model: dict[str, Any] = {}
        # Each worker's start-up by phase, and the slowest of each with the time until all
        # were ready (seconds; logged once by start()).
        self.start_ups: list[dict[str, float]] = []
        self.cold_start: dict[str, float] = {}
        self._slots = [_Slot(index) for index in range(workers)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # no more restarts
        # The monitor thread must outlive every worker it spawned: a worker asks for
        # SIGKILL when the *thread* that forked it ends (PR_SET_PDEATHSIG), so a thread
        # that ended at begin_stop() killed restarted workers in the middle of a drain.
        self._shut_down = threading.Event()
        self._monitor: threading.Thread | None = None
        self.liveness_file = liveness_file
        self.liveness = liveness or LivenessBounds()
        self.heartbeat_at: float | None = None  # the monitor's last tick
        self.worker_seen_at: float | None = None  # the last tick a worker was up
        self._written_at = float("-inf")
        self._write_failing = False
        self.worker_start = worker_start
        self.zygote: Zygote | None = None
        if worker_start == "fork":
            self.zygote = Zygote(
                self.bundle,
                self.socket_path,
                workers=workers,
                max_requests=max_requests,
                python=python,
            )
        self._zygote_status_fd: int | None = None  # a restarted zygote's, until it reports
        self._zygote_status = b""
        self._zygote_failures = 0
        self._zygote_restart_at = 0.0
        self.memory_file = self.socket_path.parent / MEMORY_NAME
        self._measured_at = float("-inf")

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [
                slot.process.pid
                for slot in self._slots
                if slot.process is not None and slot.process.poll() is None
            ]

    def slot_started_at(self, index: int) -> float:
        """When the slot's current worker was started (time.monotonic())."""
        with self._lock:
            return self._slots[index].started_at

    def start(self) -> dict[str, Any]:
        """Spawn every worker and wait until all have loaded the bundle."""
        if self.liveness_file is not None:  # a previous container's, in a kept emptyDir
            self.liveness_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # so is a cold start: not this one's
            (self.socket_path.parent / COLD_START_NAME).unlink(missing_ok=True)
        pipes: dict[int, int] = {}
        began = time.monotonic()
        try:
            if self.zygote is not None:
                self.zygote.ready = False
                self._await_ready({ZYGOTE_SLOT: self.zygote.start()})
                self.zygote.ready = True
            for slot in self._slots:
                pipes[slot.index] = self._spawn(slot)
            self.model = self._await_ready(pipes)
        except BaseException:
            self.stop()
            raise
        finally:
            for fd in pipes.values():
                os.close(fd)
        now = time.monotonic()
        self._log_cold_start(now - began)
        for slot in self._slots:
            slot.loaded = True
        self._beat(now)
        self._measure(now)
        self._monitor = threading.Thread(target=self._watch, name="rscore-supervisor", daemon=True)
        self._monitor.start()
        return self.model

    def begin_stop(self) -> None:
        """No more restarts: workers that exit from now on (drained) stay down. The
        monitor thread goes on (without restarting) until stop(): see `_shut_down`."""
        self._stopping.set()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop restarting, ask every worker to exit (SIGTERM: each finishes serving until
        the sidecar hangs up), and kill those still there after `grace_s`."""
        self.begin_stop()
        with self._lock:
            processes = [slot.process for slot in self._slots if slot.process is not None]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace_s
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Only now may the thread that spawned restarted workers end (their parent-death
        # signal follows it).
        self._shut_down.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
        if self.zygote is not None:  # last: its workers die with it
            self.zygote.stop()
        self._close_zygote_status()
        for slot in self._slots:
            self._close_status(slot)

    def _spawn(self, slot: _Slot) -> int:
        """Start the slot's next generation; returns the read end of its status pipe. A
        generation counts once its process exists (a failed spawn is tried again)."""
        generation = slot.generation + 1
        if self.zygote is not None:
            status_read, status_write = os.pipe()
            try:
                slot.process = self.zygote.fork(slot.index, generation, status_write)
            except BaseException:
                os.close(status_read)
                raise
            finally:
                os.close(status_write)
            return self._started(slot, generation, status_read, "forked")
        command = [
            self.python, "-m", "rscore.r_scorer.worker",
            "--bundle", str(self.bundle),
            "--socket", str(self.socket_path),
            "--slot", str(slot.index),
            "--of", str(len(self._slots)),
            "--generation", str(generation),
            "--max-requests", str(self.max_requests),
            "--supervisor-pid", str(os.getpid()),
        ]  # fmt: skip
        status_read, status_write = os.pipe()
        command += ["--status-fd", str(status_write)]
        try:
            slot.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=child_stdout(),
                pass_fds=(status_write,),
            )
        except BaseException:
            os.close(status_read)  # a failed spawn (EMFILE) must not leak what it had
            raise
        finally:
            os.close(status_write)
        return self._started(slot, generation, status_read, "started")

    @staticmethod
    def _started(slot: _Slot, generation: int, status_read: int, how: str) -> int:
        """Record a new process in its slot; the pipe its status comes back on."""
        slot.generation = generation
        slot.started_at = time.monotonic()
        slot.loaded = False
        assert slot.process is not None  # just set by the caller
        log.info("worker slot %d %s: pid %d", slot.index, how, slot.process.pid)
        return status_read

    def _await_ready(self, pipes: dict[int, int]) -> dict[str, Any]:
        deadline = time.monotonic() + self.load_timeout_s
        buffers = dict.fromkeys(pipes.values(), b"")
        model: dict[str, Any] = {}
        self.start_ups = []
        while buffers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BundleError(
                    f"workers did not load the bundle within {self.load_timeout_s:.0f} s"
                )
            readable, _, _ = select.select(list(buffers), [], [], remaining)
            for fd in readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    buffers[fd] += chunk
                    continue
                status = _parse_status(buffers.pop(fd))
                if not status.get("ready"):
                    error = status.get("error", {})
                    raise BundleError(str(error.get("message", "worker failed to start")))
                model = status["model"]
                self.start_ups.append(status.get("start_up", {}))
        return model

    def _log_cold_start(self, ready_s: float) -> None:
        """Once, at start: the slowest worker's time in each phase, and until all are ready
        (what the simulator's pod start-up model needs from a real deployment)."""
        phases = {"r_start_s": "R start-up", "packages_s": "packages", "model_s": "model"}
        slowest = {
            key: max((start_up.get(key, 0.0) for start_up in self.start_ups), default=0.0)
            for key in phases
        }
        self.cold_start = {**slowest, "ready_s": ready_s}
        try:  # for the sidecar's rscore_scorer_cold_start_seconds
            write_cold_start(self.socket_path.parent / COLD_START_NAME, self.cold_start)
        except OSError as error:
            log.warning("cold start not written for the sidecar: %s", error)
        log.info(
            "cold start: %s; all %d worker(s) ready after %.2f s",
            ", ".join(f"{name} {slowest[key]:.2f} s" for key, name in phases.items()),
            len(self._slots),
            ready_s,
            extra={"cold_start": self.cold_start},
        )

    def _watch(self) -> None:
        while not self._tick():
            now = time.monotonic()
            with self._lock:
                if self.zygote is not None:
                    try:
                        self._tend_zygote(now)
                    except Exception:  # EMFILE...: as for a worker, retry, never die
                        self._zygote_failures += 1
                        self._zygote_restart_at = now + restart_delay(self._zygote_failures)
                        log.exception("could not restart the zygote; trying again")
                for slot in self._slots:
                    try:
                        self._tend(slot, now)
                    except Exception:  # EMFILE, a vanished interpreter: retry, never die
                        # The thread must survive its own errors: ended, it would never
                        # restart a worker again while the sidecar looks healthy.
                        slot.spawn_failures += 1
                        delay = restart_delay(slot.spawn_failures)
                        slot.restart_at = now + delay
                        self.stats.spawn_failures += 1
                        log.exception(
                            "worker slot %d: could not tend it (failure %d); trying again "
                            "in %.1f s", slot.index, slot.spawn_failures, delay,
                        )  # fmt: skip
                self._beat(now)
                self._measure(now)

    def _tick(self) -> bool:
        """Wait for the next tick (50 ms, or at once when the zygote reports a worker's
        exit: a forked restart takes milliseconds); True once shut down."""
        channel = self.zygote.channel if self.zygote is not None else None
        if channel is not None and not self._shut_down.is_set():
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile: next tick
                select.select([channel], [], [], 0.05)
            return self._shut_down.is_set()
        return self._shut_down.wait(0.05)

    def _tend_zygote(self, now: float) -> None:
        """Notice a dead zygote (its workers are gone with it), start a new one after a
        back-off, and follow its load on its status pipe."""
        zygote = self.zygote
        assert zygote is not None
        zygote.pump(0.0)
        if self._zygote_status_fd is not None:
            self._read_zygote_status(now)
            return
        if zygote.alive or self._stopping.is_set():
            return
        if zygote.process is not None:
            try:  # its channel closed: it is dying, if not yet reaped
                returncode = zygote.process.wait(5.0)
            except subprocess.TimeoutExpired:
                zygote.process.kill()
                returncode = zygote.process.wait()
            lived = now - zygote.started_at
            log.warning(
                "the zygote pid %d %s after %.1f s: its workers are gone with it; starting "
                "a new one", zygote.process.pid, describe_exit(returncode), lived,
            )  # fmt: skip
            zygote.process = None
            self._zygote_failures = self._zygote_failures + 1 if lived < QUICK_DEATH_S else 0
            self._zygote_restart_at = now + restart_delay(self._zygote_failures)
        if now < self._zygote_restart_at:
            return
        self._zygote_status_fd = zygote.start()
        os.set_blocking(self._zygote_status_fd, False)

    def _read_zygote_status(self, now: float) -> None:
        zygote = self.zygote
        assert zygote is not None
        assert self._zygote_status_fd is not None
        while True:
            try:
                chunk = os.read(self._zygote_status_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                break
            self._zygote_status += chunk
        status = _parse_status(self._zygote_status)
        self._close_zygote_status()
        if status.get("ready"):
            zygote.ready = True
            log.info("the new zygote pid %s loaded the bundle", status.get("pid"))
            return
        error = status.get("error", {})
        log.error("the new zygote could not load the bundle: %s", error.get("message", "?"))
        self._zygote_failures += 1
        self._zygote_restart_at = now + restart_delay(self._zygote_failures)
        if zygote.process is not None:
            zygote.process.wait()  # it exits after reporting
        zygote.process = None

    def _close_zygote_status(self) -> None:
        if self._zygote_status_fd is not None:
            os.close(self._zygote_status_fd)
            self._zygote_status_fd = None
        self._zygote_status = b""

    def measure_memory(self) -> list[WorkerMemory]:
        """Each loaded worker's memory now (and the zygote's, as slot -1)."""
        with self._lock:
            running = self._running()
        return _read_memory(running)

    def _running(self) -> list[tuple[int, int, int]]:
        """(slot, pid, generation) of each loaded worker, and of a ready zygote."""
        running = [
            (slot.index, slot.process.pid, slot.generation)
            for slot in self._slots
            if slot.process is not None and slot.loaded
        ]
        zygote = self.zygote
        if zygote is not None and zygote.ready and zygote.process is not None:
            running.append((ZYGOTE_SLOT, zygote.process.pid, 0))
        return running

    def _measure(self, now: float) -> None:
        """Write the workers' memory for the sidecar now and then (under the lock, or
        before the monitor runs); best effort: a file that cannot be written is skipped."""
        if now - self._measured_at < MEASURE_EVERY_S:
            return
        self._measured_at = now
        try:
            write_memory_file(self.memory_file, _read_memory(self._running()))
        except OSError as exc:
            log.debug("cannot write %s: %s", self.memory_file, exc)

    def _beat(self, now: float) -> None:
        """Record this tick (and whether a worker is up), and write the liveness file at
        most once a second. A file that cannot be written is logged once; the probe then
        sees the heartbeat go stale, as it should for a process in that state."""
        self.heartbeat_at = now
        if any(slot.process is not None and slot.loaded for slot in self._slots):
            self.worker_seen_at = now
        if self.liveness_file is None or now - self._written_at < WRITE_EVERY_S:
            return
        try:
            write_liveness_file(
                self.liveness_file,
                heartbeat_at=now,
                worker_seen_at=self.worker_seen_at,
                bounds=self.liveness,
            )
        except OSError as exc:
            if not self._write_failing:
                log.error("cannot write the liveness file %s: %s", self.liveness_file, exc)
            self._write_failing = True
            return
        if self._write_failing:
            log.info("the liveness file %s is written again", self.liveness_file)
        self._write_failing = False
        self._written_at = now

    def _tend(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None:
            self._read_status(slot)
            returncode = process.poll()
            if returncode is None:
                return
            self._read_status(slot)  # what it wrote before it went
            self._close_status(slot)
            slot.process = None
            slot.loaded = False
            lived = now - slot.started_at
            if returncode == EXIT_CLEAN:
                self.stats.recycles += 1
                slot.quick_deaths = 0
            else:
                slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
            slot.restart_at = now + restart_delay(slot.quick_deaths)
            level = logging.INFO if returncode == EXIT_CLEAN else logging.WARNING
            after = (
                "not restarted: stopping"
                if self._stopping.is_set()
                else f"restarting in {slot.restart_at - now:.1f} s"
            )
            log.log(
                level,
                "worker slot %d pid %d %s after %.1f s; %s",
                slot.index, process.pid, describe_exit(returncode), lived, after,
            )  # fmt: skip
        if now >= slot.restart_at and not self._stopping.is_set():
            if self.zygote is not None and not (self.zygote.ready and self.zygote.alive):
                return  # forked once the (new) zygote has loaded the bundle
            slot.status_fd = self._spawn(slot)
            os.set_blocking(slot.status_fd, False)
            self.stats.restarts += 1
            slot.spawn_failures = 0

    def _read_status(self, slot: _Slot) -> None:
        """Read a restarted worker's status pipe as far as it goes, without blocking;
        at its end, note the load (or log R's reason it failed)."""
        while slot.status_fd is not None:
            try:
                chunk = os.read(slot.status_fd, 65536)
            except BlockingIOError:
                return
            if chunk:
                slot.status += chunk
                continue
            status = _parse_status(slot.status)
            self._close_status(slot)
            pid = slot.process.pid if slot.process is not None else "?"
            if status.get("ready"):
                slot.loaded = True
                log.info("worker slot %d pid %s loaded the bundle", slot.index, pid)
            else:
                error = status.get("error", {})
                log.error(
                    "worker slot %d pid %s could not load the bundle: %s",
                    slot.index, pid, error.get("message", "no reason given"),
                )  # fmt: skip

    @staticmethod
    def _close_status(slot: _Slot) -> None:
        if slot.status_fd is not None:
            os.close(slot.status_fd)
            slot.status_fd = None
        slot.status = b""


def serve_workers(
    bundle: str | os.PathLike[str],
    socket_path: Path,
    *,
    workers: int,
    max_requests: int = 0,
    drain_timeout_s: float = 30.0,
    liveness: LivenessBounds | None = None,
    worker_start: str = WORKER_STARTS[0],
) -> None:
    """Run the workers for a sidecar on `socket_path` until SIGTERM or SIGINT (the pod's
    r-scorer container). Raises BundleError if the bundle does not load, and
    ConfigurationError if the socket's folder is not private to this user. The monitor
    writes the liveness file beside the socket (`rscore scorer-live` reads it).

    Kubernetes signals both containers at once: after the signal the workers go on
    serving until the sidecar has drained and hung up, or `drain_timeout_s` passes."""
    ensure_socket_dir(socket_path.parent)  # either container may start first: both check
    supervisor = Supervisor(
        bundle,
        socket_path,
        workers=workers,
        max_requests=max_requests,
        liveness_file=socket_path.parent / LIVENESS_NAME,
        liveness=liveness,
        worker_start=worker_start,
    )
    stop = threading.Event()
    # SIGTERM is caught before the workers start: a worker may connect and serve before
    # start() has seen them all ready, and a SIGTERM then (the default action) would end
    # this process and, with it, workers that hold accepted requests. A SIGTERM during
    # the load is honoured once it is done. Ctrl-C still interrupts a long load at once.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    model = supervisor.start()
    log.info(
        "%d R worker(s) serving model %r, connecting to %s", workers, model["name"], socket_path
    )
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    log.info(
        "signalled: workers serve until the sidecar hangs up (at most %.0f s)", drain_timeout_s
    )
    supervisor.stop(grace_s=drain_timeout_s)


def _parse_status(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {"ready": False, "error": {"message": "worker exited before loading the bundle"}}
    try:
        status = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"ready": False, "error": {"message": f"unreadable worker status {raw[:200]!r}"}}
    return status if isinstance(status, dict) else {"ready": False}


def _read_memory(running: list[tuple[int, int, int]]) -> list[WorkerMemory]:
    """The memory of each (slot, pid, generation) whose process is still there."""
    return [
        memory for memory in (read_worker_memory(*entry) for entry in running) if memory is not None
    ]
