"""The zygote: one warmed R process that forks the workers (`--worker-start fork`).

Run by the supervisor as `python -m rscore.r_scorer.zygote ...`. It pins BLAS and OpenMP to
one thread before R starts (a thread pool that exists at fork() is not in the child,
and the child's first BLAS call can wait forever on its lock), loads the bundle as a
worker does (`rscore.r_scorer.worker.load_bundle`: R, packages, score.R, init()), scores one
made-up row to warm the code paths, and collects garbage in R and Python so the model
sits in their oldest generations and the children's collectors leave its pages shared.
Then it checks that it may be forked (`fork_safety_problems()`) and reports "ready",
or the problem, on its status pipe, like a worker.

From then on it only forks. The supervisor asks over a SOCK_SEQPACKET control socket
(`rscore.r_scorer.zygote_control`): "fork slot S generation G", with the write end of that
worker's status pipe attached (SCM_RIGHTS). The child becomes an ordinary worker
(`rscore.r_scorer.worker.serve_loaded`): its own slot and generation in the hello, its own
watchdog, status pipe and socket to the sidecar; it dies with the zygote
(PR_SET_PDEATHSIG). The zygote reaps its children and reports each exit status back,
so the supervisor restarts them as it restarts spawned workers. The zygote ignores
SIGTERM and SIGINT (the workers drain; the supervisor ends the zygote last, by closing
the control socket) and dies with the supervisor.

Never scores a request, never starts a thread, never connects to the sidecar; a child
never returns into the zygote's loop (it leaves with os._exit).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rscore.r_scorer import worker, zygote_control
from rscore.r_scorer.errors import BundleError, ScoringError
from rscore.r_scorer.logs import configure_json_logging
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.prototype import (
    CHARACTER,
    DATE,
    DATETIME,
    FACTOR,
    INTEGER,
    LOGICAL,
    NUMERIC,
    ORDERED,
    Prototype,
    coerce,
)
from rscore.r_scorer.zygote_control import SINGLE_THREAD_ENV

log = logging.getLogger("rscore.zygote")

# Packages known to run a harmless thread from the moment they load, stopped before the
# fork-safety check and started again in each worker: cli's progress-bar ticker (a
# loop that sleeps and sets a flag, holding no lock; most of the tidyverse loads cli).
_PAUSE_THREADS_R = """
if ("cli" %in% loadedNamespaces()) tryCatch(
  invisible(.Call(asNamespace("cli")$clic_stop_thread)),
  error = function(e) NULL
)
"""
_RESUME_THREADS_R = """
if ("cli" %in% loadedNamespaces()) tryCatch(local({
  ns <- asNamespace("cli")
  invisible(.Call(ns$clic_start_thread, ns, ns$clienv$tick_time, ns$clienv$speed_time))
}), error = function(e) NULL)
"""


def pin_threads(environ: dict[str, str] | os._Environ[str]) -> None:
    """Set the single-thread knobs in `environ` (before R starts: they are read once).
    The supervisor already starts the zygote with them (numpy, imported before this
    runs, starts its own BLAS); this is for a zygote started by hand."""
    environ.update(SINGLE_THREAD_ENV)


def warm_up_row(prototype: Prototype) -> dict[str, Any] | None:
    """A made-up input row of the prototype's types, to score once before forking; None
    when the inputs are unknown (no prototype) and nothing can be made up."""
    if not prototype.checked or not prototype.columns:
        return None
    made_up = {
        NUMERIC: 1.0,
        INTEGER: 1,
        LOGICAL: True,
        CHARACTER: "a",
        DATE: "2000-01-01",
        DATETIME: "2000-01-01T00:00:00Z",
    }
    row: dict[str, Any] = {}
    for column in prototype.columns:
        if column.kind in (FACTOR, ORDERED):
            if not column.levels:
                return None
            row[column.name] = column.levels[0]
        elif column.kind in made_up:
            row[column.name] = made_up[column.kind]
        else:
            return None
    return row


def fork_safety_problems(*, threads: int, connections: list[str], sockets: int) -> list[str]:
    """Why this process may not be forked (pure): what init() left behind that a child
    would share or lose. Empty when it is safe."""
    problems = []
    if threads > 1:
        problems.append(
            f"{threads} threads run in the loaded process: a thread does not survive "
            f"fork(), and a lock it holds then stays locked in every worker (a package "
            f"started a thread pool, or init() started threads)"
        )
    if connections:
        problems.append(
            f"init() left {len(connections)} R connection(s) open "
            f"({', '.join(connections)}): forked workers would share them; close them "
            f"in init(), or open them lazily in score()"
        )
    if sockets:
        problems.append(
            f"init() left {sockets} network socket(s) open (a database or HTTP "
            f"connection): forked workers would share one stream; open them lazily in "
            f"score()"
        )
    return problems


def process_title(words: list[str], room: int) -> bytes:
    """`words` as /proc/PID/cmdline holds them (NUL after each), cut to `room` bytes and
    padded with NULs: what a forked worker writes over the zygote's command line."""
    title = b"".join(word.encode() + b"\0" for word in words)[: max(0, room - 1)]
    return title.ljust(room, b"\0")


def retitle(words: list[str]) -> None:
    """Show this process as `words` in ps and /proc/PID/cmdline (as setproctitle does:
    write over the argument strings the kernel points at). A forked worker then reads
    as `python -m rscore.r_scorer.worker --slot N ...`, not as the zygote. Best effort."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 48 and 49 of stat (arg_start, arg_end); fields[0] here is field 3.
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):
        return
    if end <= start:
        return
    ctypes.memmove(start, process_title(words, end - start), end - start)


def count_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def count_sockets(exclude: set[int]) -> int:
    """Open sockets of this process, other than the `exclude` file descriptors."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in exclude:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
    return count


def r_connections() -> list[str]:
    """R's user connections still open (showConnections(all = FALSE)), described."""
    import rpy2.rinterface as ri

    table = ri.baseenv["showConnections"](all=ri.BoolSexpVector([False]))
    rows = int(ri.baseenv["nrow"](table)[0])
    if rows == 0:
        return []
    descriptions = ri.baseenv["["](table, ri.MissingArg, "description")
    return [str(description) for description in descriptions]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    pin_threads(os.environ)  # before rpy2 loads libR and its BLAS
    configure_json_logging()
    worker._die_with_parent(args.supervisor_pid)
    try:
        # Its R console is logged as slot 0's, the first worker this load serves.
        console, model, start_up = worker.load_bundle(args.bundle, slot=0)
        _warm(model)
        _pause_package_threads()
        # stdin, stdout and stderr may be sockets (journald): the supervisor's, not init()'s
        _check_fork_safety(exclude={0, 1, 2, args.control_fd, args.status_fd})
    except worker.LoadFailed as failed:
        worker._report_status(args.status_fd, {"ready": False, "error": failed.error})
        return worker.EXIT_LOAD_FAILED
    except ScoringError as exc:
        worker._report_status(args.status_fd, {"ready": False, "error": exc.to_json()["error"]})
        return worker.EXIT_LOAD_FAILED
    console.flush()
    described = model.describe()
    worker._report_status(
        args.status_fd,
        {"ready": True, "pid": os.getpid(), "model": described, "start_up": start_up},
    )
    control = socket.socket(fileno=args.control_fd)
    return _ForkServer(control, args, model, start_up).loop()


def _warm(model: Any) -> None:
    """Score one made-up row (best effort: a model that refuses it is still served), then
    collect garbage so the model is old in R and every Python object is frozen: the
    children's collectors then leave the model's pages alone (shared)."""
    import rpy2.rinterface as ri

    row = warm_up_row(model.prototype)
    if row is not None:
        try:
            model.score(coerce(parse_body(orjson.dumps({"data": [row]})), model.prototype))
        except Exception as exc:  # a model that refuses a made-up row is still served
            log.info("warm-up prediction refused (%s); serving anyway", exc)
    ri.baseenv["gc"](full=ri.BoolSexpVector([True]))
    gc.collect()
    gc.freeze()


def _pause_package_threads() -> None:
    """Stop the known harmless package threads (see _PAUSE_THREADS_R), and give them a
    moment to end: pthread_cancel is asynchronous."""
    import rpy2.rinterface as ri

    ri.baseenv["eval"](ri.parse(_PAUSE_THREADS_R), ri.globalenv)
    for _ in range(100):
        if count_threads() == 1:
            return
        time.sleep(0.01)


def _resume_package_threads() -> None:
    import rpy2.rinterface as ri

    ri.baseenv["eval"](ri.parse(_RESUME_THREADS_R), ri.globalenv)


def _check_fork_safety(exclude: set[int]) -> None:
    problems = fork_safety_problems(
        threads=count_threads(),
        connections=r_connections(),
        sockets=count_sockets(exclude),
    )
    if problems:
        raise BundleError(
            "the bundle cannot be forked safely (--worker-start fork): "
            + "; ".join(problems)
            + ". Fix score.R, or serve with --worker-start spawn"
        )


@dataclass
class _ForkServer:
    """The zygote after its load: the channel, what every child inherits, its children."""

    control: socket.socket
    args: argparse.Namespace
    model: Any
    start_up: dict[str, float]
    children: dict[int, int] = field(default_factory=dict)  # pid -> slot
    wake: tuple[int, int] = (-1, -1)

    def loop(self) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the workers drain; we end last
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        self.wake = (wake_read, wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler: the wake-up fd is written
        signal.set_wakeup_fd(wake_write)
        while True:
            readable, _, _ = select.select([self.control.fileno(), wake_read], [], [])
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 4096)
                self.report_exits()
            if self.control.fileno() in readable:
                try:
                    message, fds = zygote_control.receive(self.control)
                except ConnectionError:
                    message, fds = None, []
                if message is None:  # the supervisor closed the channel, or died
                    return 0
                if message.get("op") != "fork" or len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    self.answer({"op": "fork_failed", "message": "bad request"})
                    continue
                self.fork(int(message["slot"]), int(message["generation"]), fds[0])

    def answer(self, message: dict[str, Any]) -> None:
        zygote_control.send(self.control, message)

    def fork(self, slot: int, generation: int, status_fd: int) -> None:
        threads = count_threads()
        if threads > 1:  # something started a thread since the check: a fork could hang
            os.close(status_fd)
            self.answer(
                {"op": "fork_failed", "slot": slot, "message": f"{threads} threads in the zygote"}
            )
            return
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(status_fd)
            self.answer({"op": "fork_failed", "slot": slot, "message": str(exc)})
            return
        if pid == 0:
            code = 1
            try:
                code = self.become_worker(slot, generation, status_fd)
            except BaseException:  # a child must never return into the zygote's loop
                with contextlib.suppress(Exception):
                    log.exception("forked worker slot %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(status_fd)
        self.children[pid] = slot
        self.answer({"op": "forked", "slot": slot, "generation": generation, "pid": pid})

    def become_worker(self, slot: int, generation: int, status_fd: int) -> int:
        """The child's side of a fork: shed the zygote's channels and handlers, take this
        slot's identity, and serve as a worker."""
        zygote_pid = os.getppid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.control.close()
        for fd in self.wake:
            os.close(fd)
        worker._die_with_parent(zygote_pid)  # dies with the zygote: it restarts everything
        worker.log = logging.getLogger(f"rscore.worker.{os.getpid()}")
        retitle([
            sys.executable, "-m", "rscore.r_scorer.worker", "--slot", str(slot),
            "--generation", str(generation), "--forked",
        ])  # fmt: skip
        from rscore.r_scorer.rconsole import LogConsole
        from rscore.r_scorer.rmodel import route_console

        console = LogConsole(worker._r_log, {"bundle": self.model.spec.name, "slot": slot})
        route_console(console)
        _reseed_r()
        _resume_package_threads()
        served = argparse.Namespace(
            socket=self.args.socket,
            slot=slot,
            of=self.args.of,
            generation=generation,
            status_fd=status_fd,
            max_requests=self.args.max_requests,
        )
        try:
            return worker.serve_loaded(served, self.model, self.start_up)
        finally:
            console.flush()

    def report_exits(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, -1)
            self.answer({"op": "exit", "pid": pid, "slot": slot, "returncode": _returncode(status)})


def _reseed_r() -> None:
    """Forget the zygote's random seed: every child would draw the same numbers. R seeds
    itself afresh (from the time and the process id) at its next draw."""
    import rpy2.rinterface as ri

    ri.baseenv["eval"](
        ri.parse('if (exists(".Random.seed", envir = globalenv())) '
                 'rm(".Random.seed", envir = globalenv())'),
        ri.globalenv,
    )  # fmt: skip


def _returncode(status: int) -> int:
    """A wait status as subprocess.Popen.returncode reads it: -N for signal N."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rscore.r_scorer.zygote")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=0)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--supervisor-pid", type=int, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
