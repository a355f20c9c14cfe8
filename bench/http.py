"""`make bench`: rscore against plumber and a bare aiohttp ceiling over HTTP, with wrk.

    python -m bench.http [--duration 10] [--warmup 2] [--connections 1 8 64]
                         [--rate 1000] [--logs DIR] [--no-write] [--only overhead]

Serves the example lm bundle (examples/build/mtcars-lm) three ways, each on a free
port of 127.0.0.1: `rscore serve` with its default flags (`--auth none`), plumber
(bench/plumber_lm.R, one R process) and bench/echo_server.py (answers without any
work). Checks first that rscore and plumber give the same prediction for the same row,
then drives each with wrk (Debian's) and the same 1-row POST at each connection count,
the three targets back to back in a rotating order so that the machine's drift falls
on all alike; plumber once more at 1 connection with a new connection per request (its
keep-alive answers meet a TCP wait, see `render`). Then measures the sidecar's own
overhead at a fixed rate (open loop): `/score` through the sidecar against the same
requests sent straight to R workers from the pool's side. Prints a markdown report and
writes it to docs/benchmarks.md.

It never loads anything but 127.0.0.1, never runs longer than its flags say (every
wrk run and request is bounded), and never leaves a process behind: each server runs
in its own process group, ended on exit, on errors and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import aiohttp
import uvloop

from bench.report import machine, percentile, write_section
from rscore.cli import processes
from rscore.cli.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the only address this benchmark ever starts servers on or loads
BUNDLE = ROOT / "examples" / "build" / "mtcars-lm"
PLUMBER_SCRIPT = ROOT / "bench" / "plumber_lm.R"
WRK_SCRIPT = ROOT / "bench" / "wrk_report.lua"
BODY = b'{"dataframe_records": [{"wt": 2.62, "hp": 110, "qsec": 16.46}]}'
JSON_HEADERS = {"Content-Type": "application/json"}
AGREEMENT = 1e-9  # rscore and plumber must agree this closely, or nothing is timed
REQUEST_TIMEOUT_S = 10  # per request (wrk's --timeout too): slow answers are measured
START_TIMEOUT_S = 120.0
TARGETS = ("rscore", "plumber", "echo")


# --- processes -----------------------------------------------------------------------


class BenchError(RuntimeError):
    """The benchmark cannot go on (a server failed, answers disagree, wrk failed)."""


class Processes(processes.Processes):
    """The servers this benchmark starts (rscore.cli.processes: each in its own process
    group, all ended by `close()`); one that exits raises BenchError."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir, BenchError, cwd=ROOT)


def run_bounded(
    command: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; kill the group on timeout or interrupt."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _interrupt(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM cleans up exactly like Ctrl-C


# --- the servers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # the /score URL


def http(url: str, body: bytes | None = None, timeout_s: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=JSON_HEADERS if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_answers(
    processes: Processes, name: str, url: str, body: bytes | None = None
) -> None:
    """Poll `url` until it answers 200; fail if the server exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        processes.check_alive()
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            if http(url, body, timeout_s=2.0)[0] == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"{name} did not answer {url} within {START_TIMEOUT_S:.0f} s")


def start_servers(processes: Processes, names: tuple[str, ...] = TARGETS) -> dict[str, Target]:
    """Start the servers named (all three by default) at once (R loads in parallel) and
    wait for each."""
    ports = {name: free_port() for name in TARGETS}
    metrics_port = free_port()
    rscore = [
        str(Path(sys.executable).parent / "rscore"), "serve", str(BUNDLE),
        "--auth", "none", "--port", str(ports["rscore"]),  # --host: 127.0.0.1 by default
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    plumber = [
        "Rscript", "-e",
        f"plumber::pr_run(plumber::pr({json.dumps(str(PLUMBER_SCRIPT))}), "
        f"host = {json.dumps(HOST)}, port = {ports['plumber']}, docs = FALSE, quiet = TRUE)",
    ]  # fmt: skip
    echo = [sys.executable, "-m", "bench.echo_server", "--port", str(ports["echo"])]
    commands = {"rscore": rscore, "plumber": plumber, "echo": echo}
    for name in names:
        env = {"RSCORE_BENCH_MODEL": str(BUNDLE / "model.rds")} if name == "plumber" else None
        processes.start(name, commands[name], env=env)
    targets = {name: Target(name, f"http://{HOST}:{ports[name]}/score") for name in names}
    for name in names:
        if name == "rscore":
            wait_until_answers(processes, name, f"http://{HOST}:{ports[name]}/readyz")
        else:
            wait_until_answers(processes, name, targets[name].url, BODY)
    return targets


def check_agreement(targets: dict[str, Target]) -> float:
    """rscore's and plumber's prediction for BODY; BenchError unless they agree."""
    answers = {}
    for name in ("rscore", "plumber"):
        status, raw = http(targets[name].url, BODY)
        if status != 200:
            raise BenchError(f"{name} answered {status} to the benchmark's request: {raw[:300]!r}")
        answers[name] = [float(value) for value in json.loads(raw)["predictions"]]
    rscore, plumber = answers["rscore"], answers["plumber"]
    if len(rscore) != 1 or len(plumber) != 1 or abs(rscore[0] - plumber[0]) > AGREEMENT:
        raise BenchError(
            f"rscore and plumber disagree on the same row: {rscore} vs {plumber}; "
            "a benchmark of wrong answers is worthless"
        )
    return rscore[0]


# --- wrk: closed-loop throughput ---------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    target: str
    connections: int
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: dict[str, int]  # connect, read, write, timeout
    latency_us: dict[str, float]  # mean, max, p50, p90, p99, p999
    keep_alive: bool = True  # False: `Connection: close`, a new connection per request

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())


def wrk(target: Target, connections: int, duration_s: int, *, keep_alive: bool = True) -> WrkRun:
    threads = 1 if connections == 1 else 2
    command = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s",
        "--timeout", f"{REQUEST_TIMEOUT_S}s", "--latency", "-s", str(WRK_SCRIPT),
        *([] if keep_alive else ["-H", "Connection: close"]), target.url,
    ]  # fmt: skip
    done = run_bounded(
        command, duration_s + REQUEST_TIMEOUT_S + 30, env={"BENCH_BODY": BODY.decode()}
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        raise BenchError(
            f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    report = json.loads(lines[-1].removeprefix("WRK_JSON "))
    errors = report["errors"]
    return WrkRun(
        target=target.name,
        connections=connections,
        requests=int(report["requests"]),
        duration_s=report["duration_us"] / 1e6,
        non_2xx=int(report["non_2xx"]),
        socket_errors={key: int(errors[key]) for key in ("connect", "read", "write", "timeout")},
        latency_us={key: float(value) for key, value in report["latency_us"].items()},
        keep_alive=keep_alive,
    )


def show(run: WrkRun) -> None:
    print(
        f"  {run.connections:>3} connections  {run.target:<8} {run.rps:>9.0f} req/s  "
        f"p50 {run.latency_us['p50'] / 1e3:.2f} ms  p99 {run.latency_us['p99'] / 1e3:.2f} ms  "
        f"non-2xx {run.non_2xx}  socket errors {run.socket_error_count}"
        + ("" if run.keep_alive else "  (Connection: close)"),
        flush=True,
    )


def rotated(names: tuple[str, ...], shift: int) -> list[str]:
    shift %= len(names)
    return list(names[shift:] + names[:shift])


def run_matrix(
    processes: Processes,
    targets: dict[str, Target],
    connection_counts: list[int],
    duration_s: int,
    warmup_s: int,
) -> list[WrkRun]:
    """Every target at every connection count, back to back, in a rotating order."""
    runs = []
    for index, connections in enumerate(connection_counts):
        for name in rotated(TARGETS, index):
            processes.check_alive()
            if warmup_s > 0:
                wrk(targets[name], connections, warmup_s)
            run = wrk(targets[name], connections, duration_s)
            show(run)
            runs.append(run)
    processes.check_alive()
    return runs


def plumber_without_keep_alive(
    processes: Processes, target: Target, duration_s: int, warmup_s: int
) -> WrkRun:
    """plumber at 1 connection with a new connection per request: its own cost per
    request, without the wait its keep-alive answers can meet (see `render`)."""
    if warmup_s > 0:
        wrk(target, 1, warmup_s, keep_alive=False)
    run = wrk(target, 1, duration_s, keep_alive=False)
    show(run)
    processes.check_alive()
    return run


# --- open loop: the sidecar's overhead at a fixed rate -----------------------------------


@dataclass
class OpenLoopRun:
    """Requests sent on a fixed schedule, whatever the answers: latency (from the moment
    each request was actually sent) of those answered correctly, and send lag (actual
    minus scheduled send time) of all, which shows whether the schedule was kept."""

    path: str
    rate: float
    latencies: list[float] = field(default_factory=list)  # seconds
    lags: list[float] = field(default_factory=list)  # seconds
    failed: int = 0

    @property
    def sent(self) -> int:
        return len(self.lags)


async def open_loop(
    run: OpenLoopRun, call: Callable[[], Awaitable[bool]], duration_s: float
) -> None:
    """Send `run.rate` requests a second for `duration_s`, each on its own task at its
    scheduled time (open loop: a slow answer never delays the next send); add each
    request's latency and send lag to `run`. Returns once every request is answered
    (or has failed, at the latest REQUEST_TIMEOUT_S after the last send)."""
    interval = 1.0 / run.rate
    total = round(run.rate * duration_s)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        sent = time.perf_counter()
        run.lags.append(sent - scheduled)
        try:
            ok = await call()
        except Exception:
            ok = False
        if ok:
            run.latencies.append(time.perf_counter() - sent)
        else:
            run.failed += 1

    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.001
    index = 0
    while index < total:
        # The loop's timers tick in milliseconds: send everything due within half a tick.
        horizon = time.perf_counter() + 0.0005
        while index < total and start + index * interval <= horizon:
            task = loop.create_task(one(start + index * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, start + index * interval - time.perf_counter()))
    if tasks:
        _, unfinished = await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT_S)
        for task in unfinished:
            task.cancel()
            run.failed += 1


SIDECAR, DIRECT, ECHO = "through the sidecar", "direct to the workers", "echo server (HTTP floor)"
SIDECAR_HEY = "through the sidecar, `hey` (Go) client"
DIRECT_TIMEOUT = "direct to the workers, with `timeout_s`"
SIDECAR_TIMEOUT_S = 5.0  # what the sidecar sends with a fresh request: its default timeout


def hey_run(target: Target, rate: float, duration_s: int) -> OpenLoopRun:
    """`/score` through the sidecar from `hey` (Debian; Go): one connection, rate-limited
    to `rate` requests a second, each request's time from its CSV output. A lighter
    client than Python's, so less of the client is counted as the sidecar's."""
    command = [
        "hey", "-z", f"{duration_s}s", "-c", "1", "-q", f"{rate:g}", "-m", "POST",
        "-T", "application/json", "-d", BODY.decode(), "-t", str(REQUEST_TIMEOUT_S),
        "-o", "csv", target.url,
    ]  # fmt: skip
    result = run_bounded(command, duration_s + REQUEST_TIMEOUT_S + 30)
    run = OpenLoopRun(SIDECAR_HEY, rate)
    for line in result.stdout.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) < 7:
            continue
        run.lags.append(0.0)  # hey paces itself; it reports no send times
        if fields[6] == "200":
            run.latencies.append(float(fields[0]))
        else:
            run.failed += 1
    if not run.latencies:
        raise BenchError("hey measured no successful request")
    return run


async def measure_overhead(
    targets: dict[str, Target], rate: float, duration_s: int, warmup_s: int, expected: float
) -> list[OpenLoopRun]:
    """`/score` through the sidecar, the same row straight to R workers from the pool's
    side (as many workers as `rscore serve` starts by default; without and with the
    sidecar's `timeout_s`), and the echo server: each at `rate` for `duration_s` in
    1-second slices, all taking turns."""
    from rscore.r_scorer.cores import detect_usable_cores
    from rscore.r_scorer.errors import ScoringError
    from rscore.r_scorer.payload import parse_body
    from rscore.r_scorer.pool import WorkerPool
    from rscore.r_scorer.prototype import coerce
    from rscore.r_scorer.supervisor import Supervisor

    def correct(predictions: list[Any]) -> bool:
        return len(predictions) == 1 and abs(float(predictions[0]) - expected) <= AGREEMENT

    workers = detect_usable_cores()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="rscore-bench-") as folder:
        pool = WorkerPool(Path(folder) / "workers.sock")
        await pool.start()
        supervisor = Supervisor(BUNDLE, pool.socket_path, workers=workers)
        try:
            await asyncio.to_thread(supervisor.start)
            await asyncio.wait_for(pool.wait_for_workers(workers), START_TIMEOUT_S)
            assert pool.model is not None
            frame = coerce(parse_body(BODY), pool.model.prototype)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def post(url: str, check: bool) -> bool:
                    async with session.post(url, data=BODY, headers=JSON_HEADERS) as response:
                        raw = await response.read()
                        if response.status != 200:
                            return False
                        return not check or correct(json.loads(raw)["predictions"])

                async def direct(timeout_s: float | None) -> bool:
                    try:
                        async with pool.acquire() as link:
                            reply = await link.score(frame, timeout_s)
                    except ScoringError:
                        return False
                    return correct(reply.predictions)

                calls: dict[str, Callable[[], Awaitable[bool]]] = {
                    SIDECAR: lambda: post(targets["rscore"].url, True),
                    DIRECT: lambda: direct(None),
                    # The request as the sidecar sends it: with a timeout, which makes the
                    # worker arm its watchdog for the call (worker-side work the sidecar
                    # asks for; shown apart so that it is not mistaken for the sidecar's).
                    DIRECT_TIMEOUT: lambda: direct(SIDECAR_TIMEOUT_S),
                    ECHO: lambda: post(targets["echo"].url, False),
                }
                runs = {path: OpenLoopRun(path, rate) for path in calls}
                for path, call in calls.items():
                    if warmup_s > 0:
                        await open_loop(OpenLoopRun(path, rate), call, warmup_s)
                for second in range(duration_s):
                    for path in rotated(tuple(calls), second):
                        await open_loop(runs[path], calls[path], 1.0)
        finally:
            await pool.close()  # hang up first: the workers then exit at once
            await asyncio.to_thread(supervisor.stop)
    return list(runs.values())


# --- the report ----------------------------------------------------------------------


def tool_versions() -> str:
    wrk_version = run_bounded(["wrk", "-v"], 10).stdout.split("[")[0].strip()
    plumber_version = run_bounded(
        ["Rscript", "-e", 'cat(format(packageVersion("plumber")))'], 60
    ).stdout.strip()
    return (
        f"{wrk_version or 'wrk'} (Debian), plumber {plumber_version}, "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, rscore {version('rscore')}"
    )


def ms(microseconds: float) -> str:
    return f"{microseconds / 1e3:.2f}"


def runs_table(by: dict, connections: list[int], names: tuple[str, ...], label: str) -> list[str]:
    """A markdown table of wrk runs, one row per connection count and `label` (name)."""
    lines = [
        f"| connections | {label} | req/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for count in connections:
        for name in names:
            run = by[(name, count)]
            lines.append(
                f"| {count} | {name} | {run.rps:,.0f} | {ms(run.latency_us['p50'])} | "
                f"{ms(run.latency_us['p99'])} | {run.non_2xx} | {run.socket_error_count} |"
            )
    return lines


def render(
    args: argparse.Namespace,
    *,
    started: datetime.datetime,
    versions: str,
    workers: int,
    runs: list[WrkRun],
    plumber_close: WrkRun,
    overhead: list[OpenLoopRun],
) -> str:
    by = {(run.target, run.connections): run for run in runs}
    command = shlex.join(["python", "-m", "bench.http", *sys.argv[1:]])
    lines = [
        "## HTTP: rscore vs plumber vs a bare aiohttp server (1-row `lm`)",
        "",
        f"`make bench` (`{command}`), {started:%Y-%m-%d %H:%M} UTC, on {machine()}; {versions}.",
        "",
        f"The same model (`{BUNDLE.relative_to(ROOT)}`, `lm(mpg ~ wt + hp + qsec)`) "
        f"served three ways on 127.0.0.1: **rscore** = `rscore serve` with its default "
        f"flags ({workers} R workers) and `--auth none`; **plumber** = "
        "`bench/plumber_lm.R` under `plumber::pr_run()` (one R process); **echo** = "
        "`bench/echo_server.py`, aiohttp on uvloop answering a fixed JSON (the ceiling "
        "of this HTTP stack). Each got the same 1-row POST, "
        f"`{BODY.decode()}`, from wrk (`-t 1` for 1 connection, else `-t 2`; "
        f"`--timeout {REQUEST_TIMEOUT_S}s`; `bench/wrk_report.lua`) for {args.duration} s "
        f"after a {args.warmup} s warm-up at the same connection count; for each "
        "connection count the three ran back to back in a rotating order. rscore's and "
        f"plumber's predictions for the row were checked equal (to {AGREEMENT:g}) first. "
        "wrk runs on the same cores as the servers.",
        "",
        *runs_table(by, args.connections, TARGETS, "server"),
    ]
    lines += [
        "",
        "| connections | rscore/plumber req/s | rscore/echo req/s |",
        "|---:|---:|---:|",
    ]
    for connections in args.connections:
        rscore, plumber, echo = (by[(name, connections)] for name in TARGETS)
        lines.append(
            f"| {connections} | {rscore.rps / plumber.rps:.2f}x | {rscore.rps / echo.rps:.2f}x |"
        )
    top = max(args.connections)
    rscore_p99 = by[("rscore", top)].latency_us["p99"]
    plumber_p50 = by[("plumber", top)].latency_us["p50"]
    verdict = "below" if rscore_p99 < plumber_p50 else "not below"
    lines += [
        "",
        f"At {top} connections rscore's p99 ({ms(rscore_p99)} ms) is **{verdict}** "
        f"plumber's p50 ({ms(plumber_p50)} ms).",
    ]
    close_p50 = plumber_close.latency_us["p50"]
    lines += [
        "",
        f"plumber with a new connection per request (`wrk -H 'Connection: close'`, 1 "
        f"connection, same duration and warm-up): {plumber_close.rps:,.0f} req/s, p50 "
        f"{ms(close_p50)} ms, p99 {ms(plumber_close.latency_us['p99'])} ms.",
    ]
    keep_alive_one = by.get(("plumber", 1))
    if keep_alive_one is not None and keep_alive_one.latency_us["p50"] > 5 * close_p50:
        lines[-1] += (
            f" Its keep-alive p50 at 1 connection ({ms(keep_alive_one.latency_us['p50'])} "
            "ms) is a wait, not work: httpuv writes an answer's headers and body in two "
            "writes without `TCP_NODELAY`, so Nagle's algorithm holds the body until the "
            "client acknowledges the headers, and Linux delays that acknowledgement ~40 ms. Any "
            "keep-alive client of plumber sees it; with many connections busy at once it "
            "is hidden behind the queue."
        )
    troubles = [
        f"{run.target} at {run.connections} connections: {run.non_2xx} non-2xx, socket "
        + ", ".join(f"{key} {count}" for key, count in run.socket_errors.items())
        for run in runs
        if run.non_2xx or run.socket_error_count
    ]
    if troubles:
        lines += ["", "Errors seen: " + "; ".join(troubles) + "."]
    lines += render_overhead(args, workers, overhead)
    return "\n".join(lines)


def render_overhead(args: argparse.Namespace, workers: int, runs: list[OpenLoopRun]) -> list[str]:
    def p(values: list[float], fraction: float) -> float:
        return percentile(values, fraction) * 1e3 if values else float("nan")

    lines = [
        "",
        f"### Sidecar overhead at a fixed {args.rate:,.0f} req/s",
        "",
        f"An open-loop generator in this process (aiohttp client on uvloop) sends "
        f"{args.rate:,.0f} requests a second down each of four paths for {args.duration} "
        f"s in all, in 1-second slices, the paths taking turns in a rotating order so "
        f"that drift falls on all alike (after {args.warmup} s of each at the same rate). "
        "Each request goes out on its own task at its scheduled time, so a slow answer "
        "never delays the next send. Latency runs from the moment a request is actually "
        "sent until its answer is read; *send lag* is actual minus scheduled send time "
        "(the event loop's timers tick in milliseconds), shown so one can see the "
        "schedule was kept. *Through the sidecar*: POST `/score` with the body above to "
        "the running `rscore serve`. *Direct to the workers*: the same row, parsed and "
        "coerced once beforehand, sent over the worker protocol from the pool's side "
        f"(`WorkerPool.acquire()` + `WorkerLink.score()`, as in `bench/worker_roundtrip.py`) "
        f"to {workers} R workers started for it, as many as `rscore serve` starts; *with "
        f"`timeout_s`*: the same, with the `timeout_s` of {SIDECAR_TIMEOUT_S:g} s the sidecar "
        "sends with every request (its default request timeout), for which the worker arms "
        "its watchdog during the call: the same worker request as the sidecar's. *Echo*: the "
        "same client against `bench/echo_server.py`, the cost of the client, loopback "
        "TCP and an aiohttp server doing nothing. Only answers with the right prediction "
        "(or, for echo, a 200) count; anything else is *failed*.",
        "",
        "| path | sent | failed | p50 ms | p99 ms | send lag p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.path} | {run.sent} | {run.failed} | {p(run.latencies, 0.5):.3f} | "
            f"{p(run.latencies, 0.99):.3f} | {p(run.lags, 0.99):.3f} |"
        )
    by_path = {run.path: run for run in runs}
    comparisons = [
        (by_path[SIDECAR], by_path[DIRECT], "aiohttp client: through - direct"),
        (by_path[SIDECAR_HEY], by_path[DIRECT], "hey: through - direct"),
    ]
    if DIRECT_TIMEOUT in by_path:
        comparisons.append(
            (by_path[SIDECAR], by_path[DIRECT_TIMEOUT], "aiohttp client: through - direct "
             "with `timeout_s`")
        )  # fmt: skip
    for through, direct, label in comparisons:
        lines.append(
            f"| **sidecar overhead** ({label}) | | | "
            f"{p(through.latencies, 0.5) - p(direct.latencies, 0.5):.3f} | "
            f"{p(through.latencies, 0.99) - p(direct.latencies, 0.99):.3f} | |"
        )
    lines += [
        "",
        "*Sidecar overhead* is the p50 (and p99) of *through the sidecar* minus the p50 "
        "(and p99) of *direct to the workers*, each path's latencies pooled over its "
        "slices: a difference of percentiles at the same rate, not a per-request "
        "difference, so its p99 is noisier than its p50. It is everything a request adds "
        "on top of the worker protocol: the client's HTTP, loopback TCP, aiohttp's "
        "server, parsing and coercing the body, admission, the JSON answer and the "
        "access log line; the echo row shows how much of it HTTP alone costs here. "
        f"The `hey` row measures the same path with Debian's `hey` (Go), one connection "
        f"rate-limited to {args.rate:,.0f} req/s (`-c 1 -q {args.rate:g}`; a closed loop "
        "paced by a rate limiter, so a slow answer delays the next send), after the "
        "slices above: a lighter client, so less of the client's own cost is counted "
        "as the sidecar's; hey writes times to 0.1 ms, so its percentiles are multiples "
        "of 0.1 ms. Debian has no wrk2. The last overhead row compares with the direct "
        "call that carries `timeout_s` as the sidecar's does: the difference from the "
        "first row is the worker's watchdog, not the sidecar.",
    ]
    return lines


# --- main ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    parser.add_argument(
        "--only",
        choices=("all", "overhead"),
        default="all",
        help="overhead: only the open-loop sidecar overhead (rscore and echo, no wrk, no "
        "plumber); prints its table and never updates docs/",
    )
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or min(args.connections) < 1 or args.rate <= 0:
        parser.error("--duration >= 1, --warmup >= 0, --connections >= 1, --rate > 0")
    if not (BUNDLE / "model.rds").exists():
        parser.error(f"{BUNDLE} is missing: run `make setup` first")

    signal.signal(signal.SIGTERM, _interrupt)
    if args.only == "overhead":
        return overhead_only(args)
    started = datetime.datetime.now(datetime.UTC)
    with _log_dir(args.logs) as log_dir:
        processes = Processes(log_dir)
        try:
            print("starting rscore, plumber and the echo server on 127.0.0.1", flush=True)
            targets = start_servers(processes)
            expected = check_agreement(targets)
            print(f"rscore and plumber agree: {expected!r}", flush=True)
            print(f"wrk: {args.duration} s per run after {args.warmup} s warm-up", flush=True)
            runs = run_matrix(processes, targets, args.connections, args.duration, args.warmup)
            plumber_close = plumber_without_keep_alive(
                processes, targets["plumber"], args.duration, args.warmup
            )
            print(f"open loop at {args.rate:,.0f} req/s for {args.duration} s", flush=True)
            overhead = uvloop.run(
                measure_overhead(targets, args.rate, args.duration, args.warmup, expected)
            )
            overhead.append(hey_run(targets["rscore"], args.rate, args.duration))
            processes.check_alive()
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
            for name in TARGETS:
                print(processes.log_tail(name, 5), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping the servers", file=sys.stderr)
            return 130
        finally:
            processes.close()
    from rscore.r_scorer.cores import detect_usable_cores

    report = render(
        args,
        started=started,
        versions=tool_versions(),
        workers=detect_usable_cores(),
        runs=runs,
        plumber_close=plumber_close,
        overhead=overhead,
    )
    print()
    print(report)
    if not args.no_write:
        write_section("http-benchmark", report)
    return 0


def overhead_only(args: argparse.Namespace) -> int:
    """`--only overhead`: the open-loop part alone, for before/after comparisons of the
    sidecar. Without plumber there is no agreement check: rscore's own answer is the
    expected one (the direct path must still match it)."""
    with _log_dir(args.logs) as log_dir:
        processes = Processes(log_dir)
        try:
            print("starting rscore and the echo server on 127.0.0.1", flush=True)
            targets = start_servers(processes, ("rscore", "echo"))
            status, raw = http(targets["rscore"].url, BODY)
            if status != 200:
                raise BenchError(f"rscore answered {status}: {raw[:300]!r}")
            expected = float(json.loads(raw)["predictions"][0])
            print(f"open loop at {args.rate:,.0f} req/s for {args.duration} s", flush=True)
            overhead = uvloop.run(
                measure_overhead(targets, args.rate, args.duration, args.warmup, expected)
            )
            overhead.append(hey_run(targets["rscore"], args.rate, args.duration))
            processes.check_alive()
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
            for name in ("rscore", "echo"):
                print(processes.log_tail(name, 5), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping the servers", file=sys.stderr)
            return 130
        finally:
            processes.close()
    from rscore.r_scorer.cores import detect_usable_cores

    print("\n".join(render_overhead(args, detect_usable_cores(), overhead)))
    return 0


@contextlib.contextmanager
def _log_dir(keep: Path | None, prefix: str = "rscore-bench-logs-") -> Iterator[Path]:
    """`keep` (made if missing), else a temporary folder removed on exit."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


if __name__ == "__main__":
    sys.exit(main())
