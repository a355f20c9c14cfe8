"""One R worker process: load the bundle once, then score requests from the sidecar.

Run by the supervisor as `python -m rscore.r_scorer.worker ...` (`--worker-start spawn`: a fresh
interpreter that starts its own R), or forked from the zygote that loaded the bundle
once (`--worker-start fork`, `rscore.r_scorer.zygote`, which calls `serve_loaded()` in each
child). Either way the worker reports "ready" or its
load error on a status pipe, connects to the sidecar's socket (retrying until the
sidecar is there, and again if it goes away), checks with SO_PEERCRED that the listener
runs as its own user (`rscore.r_scorer.peer`: never serves another user's socket), says hello,
and answers one request at a time per `rscore.r_scorer.protocol`. R's console output (print(),
message(), warnings) is logged as JSON lines carrying the bundle's name and the worker
slot (`rscore.r_scorer.rconsole`).

Never raises out of the request loop for a bad request: every request gets an answer.
Exits 0 when recycled, 3 when the bundle fails to load; a request stuck in R past its
deadline makes the watchdog end the process (the supervisor restarts it).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from rscore.r_scorer import protocol
from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.errors import ProtocolError, ScoringError
from rscore.r_scorer.heap_trim import malloc_trim
from rscore.r_scorer.logs import configure_json_logging
from rscore.r_scorer.peer import peer_credentials, peer_problem
from rscore.r_scorer.rconsole import LogConsole

EXIT_CLEAN = 0  # recycled, or drained after SIGTERM
EXIT_LOAD_FAILED = 3
_PR_SET_PDEATHSIG = 1
# No request for this long after one: the worker hands the heap memory its requests
# freed back to the system (glibc's malloc_trim). A forked worker's private memory
# after serving is partly that: iris-rf, 2,000 one-row requests, 45.5 -> 30.7 MB
# (`python -m bench.fork_heap_probe`). Never while busy: a page handed back costs a
# fault when the next request needs it.
IDLE_TRIM_S = 1.0

log = logging.getLogger(f"rscore.worker.{os.getpid()}")
_r_log = logging.getLogger("rscore.r")  # R's console: print(), message(), warnings
_draining = False


class PeerGone(Exception):
    """The sidecar closed the connection."""


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_json_logging()
    _die_with_parent(args.supervisor_pid)
    try:
        console, model, start_up = load_bundle(args.bundle, args.slot)
    except LoadFailed as failed:
        _report_status(args.status_fd, {"ready": False, "error": failed.error})
        return EXIT_LOAD_FAILED
    try:
        return serve_loaded(args, model, start_up)
    finally:
        console.flush()  # a last line R left without its newline


class LoadFailed(Exception):
    """The bundle did not load; `error` is the status pipe's error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


def load_bundle(bundle: str, slot: int) -> tuple[LogConsole, Any, dict[str, float]]:
    """Start R in this process and load the bundle: (its console, the loaded model, the
    seconds of each start-up phase). Raises LoadFailed with R's message. Shared by the
    spawned worker and the zygote (`rscore.r_scorer.zygote`), which loads once for its forks."""
    began = time.perf_counter()  # R start-up counts rpy2's import: it loads libR
    from rscore.r_scorer.rmodel import load_model, route_console, start_r  # R: only in a worker

    console = LogConsole(_r_log, {"bundle": Path(bundle).name, "slot": slot})
    try:
        spec = read_bundle(bundle)
        console = LogConsole(_r_log, {"bundle": spec.name, "slot": slot})
        route_console(console)  # before R starts: its own start-up output is logged too
        # Cold start by phase (the supervisor logs it once): R itself, the bundle's
        # declared packages, then the model (load_model finds R and the packages loaded).
        start_r()
        r_started = time.perf_counter()
        _load_packages(spec.packages)
        packages_loaded = time.perf_counter()
        model = load_model(spec)
    except ScoringError as exc:
        console.flush()
        raise LoadFailed(exc.to_json()["error"]) from exc
    start_up = {
        "r_start_s": r_started - began,
        "packages_s": packages_loaded - r_started,
        "model_s": time.perf_counter() - packages_loaded,
    }
    return console, model, start_up


def _load_packages(packages: tuple[str, ...]) -> None:
    """Load the declared packages' namespaces; one that fails is left to load_model, which
    names it in the bundle's error."""
    import rpy2.rinterface as ri

    for package in packages:
        ri.baseenv["requireNamespace"](
            ri.StrSexpVector([package]), quietly=ri.BoolSexpVector([True])
        )


def serve_loaded(args: argparse.Namespace, model: Any, start_up: dict[str, float]) -> int:
    """Report ready on the status pipe, then serve the sidecar until recycled or drained
    (the exit status). `args` needs socket, slot, of, generation, status_fd and
    max_requests: a forked worker (`rscore.r_scorer.zygote`) builds them itself."""
    # Ctrl-C reaches the whole process group: the supervisor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The watchdog relies on SIGALRM's default action (end the process): make sure no
    # library left a handler in its place.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    # SIGTERM (to the process group, or from the supervisor): keep serving until the
    # sidecar has drained and hangs up, then exit instead of reconnecting.
    signal.signal(signal.SIGTERM, _begin_drain)
    described = model.describe()
    _report_status(
        args.status_fd,
        {"ready": True, "pid": os.getpid(), "model": described, "start_up": start_up},
    )
    greeting = protocol.encode(
        protocol.hello(args.slot, os.getpid(), args.generation, described, of=args.of)
    )
    served = 0
    while True:
        connection = _connect(args.socket)
        if connection is None:  # draining and no sidecar to serve
            return EXIT_CLEAN
        try:
            connection.sendall(greeting)
            served = _serve(connection, model, served, args.max_requests)
        except PeerGone:
            if _draining:
                log.info("sidecar hung up while draining; exiting")
                return EXIT_CLEAN
            log.info("sidecar closed the connection; reconnecting")
            continue
        except ProtocolError as exc:  # the stream is out of step: start it afresh
            log.error("protocol error from the sidecar (%s); reconnecting", exc)
            continue
        finally:
            connection.close()
        return EXIT_CLEAN


def _begin_drain(_signum: int, _frame: object) -> None:
    global _draining  # noqa: PLW0603 - set from a signal handler, read by the loop
    _draining = True


def _serve(connection: socket.socket, model: Any, served: int, max_requests: int) -> int:
    """Answer requests until the sidecar leaves (PeerGone) or the worker is due to recycle."""
    trim = malloc_trim()
    trim_due = trim is not None  # once per idle spell: after a request, until it is done
    arrival = select.poll()  # not select(): it refuses descriptors past 1023
    arrival.register(connection.fileno(), select.POLLIN)
    while True:
        # One poll when a request (or the sidecar's hang-up) is already waiting: what a
        # busy worker pays per request.
        if trim_due and not arrival.poll(IDLE_TRIM_S * 1000):
            assert trim is not None
            trim()  # idle: what the last requests freed goes back (see IDLE_TRIM_S)
            trim_due = False
        length = protocol.frame_length(_receive(connection, protocol.HEADER.size))
        message = protocol.decode(_receive(connection, length))
        served += 1
        last = 0 < max_requests <= served
        connection.sendall(protocol.encode(_answer(message, model, last=last)))
        trim_due = trim is not None
        if last:
            log.info("recycling after %d requests", served)
            return served


def _answer(message: dict[str, Any], model: Any, *, last: bool) -> dict[str, Any]:
    request_id = message.get("id", -1)
    try:
        if message.get("op") != "score":
            raise ProtocolError(f"unknown op {message.get('op')!r}")
        frame = protocol.frame_of_request(message)
        timeout_s = message.get("timeout_s")
        if timeout_s is not None:
            # The watchdog: SIGALRM's default action ends the process, even inside R's C
            # code (a Python handler would wait for R to return). One system call each
            # way, where faulthandler's timer started and joined a thread per request.
            signal.setitimer(signal.ITIMER_REAL, float(timeout_s) + protocol.WATCHDOG_GRACE_S)
        try:
            result = model.score(frame, as_json=frame.nrows >= protocol.JSON_REPLY_ROWS)
        finally:
            if timeout_s is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except ScoringError as exc:
        return protocol.error_reply(request_id, exc.code, exc.message, last=last)
    except Exception as exc:  # a bug must cost one answer, never the worker
        log.exception("internal error scoring request %s", request_id)
        return protocol.error_reply(request_id, "internal_error", repr(exc), last=last)
    return protocol.ok_reply(request_id, result.predictions, result.r_seconds, last=last)


def _receive(connection: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = connection.recv_into(view[got:])
        if count == 0:
            raise PeerGone
        got += count
    return bytes(buffer)


def _connect(path: str) -> socket.socket | None:
    """Connect to the sidecar's socket, waiting (with backoff) until a listener of our
    own user is there; None if the worker is draining meanwhile. A listener of another
    user is refused before a byte is sent (logged once per listener process)."""
    delay = 0.02
    refused: int | None = None  # the pid of the last listener refused, logged once
    while not _draining:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            connection.close()
        else:
            peer = peer_credentials(connection)
            problem = peer_problem(peer, os.geteuid(), peer_role="sidecar")
            if problem is None:
                return connection
            connection.close()
            if peer.pid != refused:
                log.error("not serving the socket %s: %s", path, problem)
                refused = peer.pid
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    return None


def _report_status(status_fd: int | None, status: dict[str, Any]) -> None:
    if status_fd is None:
        if not status.get("ready"):
            sys.stderr.write(orjson.dumps(status).decode() + "\n")
        return
    with os.fdopen(status_fd, "wb") as pipe:
        pipe.write(orjson.dumps(status) + b"\n")


def _die_with_parent(supervisor_pid: int | None) -> None:
    """Ask Linux to end this worker when its supervisor dies, so no R is orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    # Re-parented: the supervisor died before prctl took effect. Compared with the pid the
    # supervisor gave, not with 1: in a container the supervisor *is* pid 1.
    parent = os.getppid()
    if (parent != supervisor_pid) if supervisor_pid is not None else (parent == 1):
        sys.exit(1)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    # argparse, not click: this is an internal entry point with a fixed caller.
    parser = argparse.ArgumentParser(prog="python -m rscore.r_scorer.worker")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--of", type=int, default=1, help="how many workers the supervisor runs")
    parser.add_argument("--generation", type=int, default=1)
    parser.add_argument("--status-fd", type=int, default=None)
    parser.add_argument("--supervisor-pid", type=int, default=None)
    parser.add_argument("--max-requests", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
