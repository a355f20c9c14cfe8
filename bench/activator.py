"""`make bench-activator`: what `rscore activator` adds to a request, with wrk.

    python -m bench.activator [--duration 10] [--warmup 2] [--connections 1 8 64]
                              [--logs DIR] [--no-write]

Serves the example lm bundle (examples/build/mtcars-lm) with `rscore serve` (its default
flags, `--auth none`) and puts `rscore activator` (its default flags, access log on, as
deployed) in front of it, both on free ports of 127.0.0.1. Checks first that the answer
through the activator is byte for byte the direct one, then drives both with wrk
(Debian's) and the same 1-row POST at each connection count, direct and through the
activator back to back in a rotating order, in the same run. Reports req/s, p50 and p99
of each and the differences, prints a markdown section and writes it to
docs/benchmarks.md (section `activator-overhead`).

It never loads anything but 127.0.0.1, never runs longer than its flags say (every wrk
run is bounded) and never leaves a process behind (bench.http's Processes: each server
in its own process group, ended on exit, on errors, on Ctrl-C and on SIGTERM).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path

from bench.http import (
    BODY,
    BUNDLE,
    HOST,
    BenchError,
    Processes,
    Target,
    WrkRun,
    _interrupt,
    _log_dir,
    free_port,
    http,
    rotated,
    run_bounded,
    runs_table,
    show,
    wait_until_answers,
    wrk,
)
from bench.report import machine, write_section

NAMES = ("direct", "activator")
SECTION = "activator-overhead"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(processes: Processes) -> tuple[dict[str, Target], int]:
    """Both servers, ready; and the activator's pid (its CPU time is measured)."""
    rscore = str(Path(sys.executable).parent / "rscore")
    port, metrics_port, act_port, act_metrics = (free_port() for _ in range(4))
    processes.start(
        "direct",
        [rscore, "serve", str(BUNDLE), "--auth", "none", "--port", str(port),
         "--metrics-port", str(metrics_port)],
    )  # fmt: skip
    activator = processes.start(
        "activator",
        [rscore, "activator", "--upstream", f"http://{HOST}:{port}", "--port", str(act_port),
         "--metrics-port", str(act_metrics)],
    )  # fmt: skip
    wait_until_answers(processes, "direct", f"http://{HOST}:{port}/readyz")
    wait_until_answers(processes, "activator", f"http://{HOST}:{act_metrics}/healthz")
    targets = {
        "direct": Target("direct", f"http://{HOST}:{port}/score"),
        "activator": Target("activator", f"http://{HOST}:{act_port}/score"),
    }
    return targets, activator.pid


def check_same_answer(targets: dict[str, Target]) -> bytes:
    answers = {name: http(target.url, BODY) for name, target in targets.items()}
    for name, (status, raw) in answers.items():
        if status != 200:
            raise BenchError(f"{name} answered {status}: {raw[:300]!r}")
    if answers["direct"][1] != answers["activator"][1]:
        raise BenchError(f"the activator changed the answer: {answers}")
    return answers["direct"][1]


def run_matrix(
    processes: Processes,
    targets: dict[str, Target],
    activator_pid: int,
    connection_counts: list[int],
    *,
    duration_s: int,
    warmup_s: int,
) -> tuple[list[WrkRun], dict[int, float]]:
    """Every (path, connection count) once; and the activator's CPU seconds per request
    at each connection count (from its own process accounting: unlike latency, hardly
    moved by whatever else the machine runs)."""
    runs, cpu_per_request = [], {}
    for index, connections in enumerate(connection_counts):
        for name in rotated(NAMES, index):
            processes.check_alive()
            if warmup_s > 0:
                wrk(targets[name], connections, warmup_s)
            before = cpu_seconds(activator_pid)
            run = wrk(targets[name], connections, duration_s)
            if name == "activator":
                cpu_per_request[connections] = (cpu_seconds(activator_pid) - before) / max(
                    1, run.requests
                )
            show(run)
            runs.append(run)
    processes.check_alive()
    return runs, cpu_per_request


def render(
    args: argparse.Namespace,
    started: datetime.datetime,
    answer: bytes,
    runs: list[WrkRun],
    cpu_per_request: dict[int, float],
) -> str:
    wrk_version = run_bounded(["wrk", "-v"], 10).stdout.split("[")[0].strip() or "wrk"
    by = {(r.target, r.connections): r for r in runs}
    lines = [
        "## Activator: what it adds to a request (1-row `lm`)",
        "",
        f"`make bench-activator` (`python -m bench.activator`), "
        f"{started:%Y-%m-%d %H:%M} UTC, on {machine()}; {wrk_version} (Debian), "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, rscore {version('rscore')}.",
        "",
        "The same `rscore serve` of `examples/build/mtcars-lm` (default flags, "
        "`--auth none`) asked directly and through `rscore activator --upstream "
        "http://127.0.0.1:PORT` (default flags, access log on), both on 127.0.0.1, with the "
        f"same 1-row POST (answer `{answer.decode()}`, the same byte for byte both ways) from "
        f"wrk (`-t 1` for 1 connection, else `-t 2`; `bench/wrk_report.lua`) for "
        f"{args.duration} s after a {args.warmup} s warm-up; for each connection count the "
        "two ran back to back in a rotating order. wrk, the activator, the sidecar and the "
        "R workers share the same cores, so at high concurrency the activator's CPU is "
        "taken from the model's. Load average (1 min) when the runs began and ended: "
        f"{args.load[0]:.1f} and {args.load[1]:.1f} on {os.cpu_count()} CPUs: the higher it "
        "is, the more the latency columns measure the machine rather than the activator; "
        "its CPU per request (its own process accounting) is the steadier figure.",
        "",
        *runs_table(by, args.connections, NAMES, "path"),
    ]
    lines += [
        "",
        "| connections | added p50 ms | added p99 ms | throughput through the activator | "
        "activator CPU per request |",
        "|---:|---:|---:|---:|---:|",
    ]
    for connections in args.connections:
        direct, through = by[("direct", connections)], by[("activator", connections)]
        p50 = through.latency_us["p50"] - direct.latency_us["p50"]
        p99 = through.latency_us["p99"] - direct.latency_us["p99"]
        lines.append(
            f"| {connections} | {p50 / 1e3:+.2f} | {p99 / 1e3:+.2f} | "
            f"{through.rps / direct.rps:.0%} of direct | "
            f"{cpu_per_request[connections] * 1e6:,.0f} µs |"
        )
    lines += [
        "",
        "What the activator does per request on this path: read the whole body (so that a "
        "held request can be sent again), copy the headers minus hop-by-hop ones plus "
        "X-Forwarded-For/-Proto/-Host and an `x-request-id`, send it on a pooled keep-alive "
        "connection, read the answer (whole, up to 256 KiB; streamed beyond) and write it "
        "back, and one JSON access line. Holding costs nothing here: the pod is ready.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or min(args.connections) < 1:
        parser.error("--duration >= 1, --warmup >= 0, --connections >= 1")
    if not (BUNDLE / "model.rds").exists():
        parser.error(f"{BUNDLE} is missing: run `make setup` first")
    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.datetime.now(datetime.UTC)
    with _log_dir(args.logs, "rscore-bench-activator-") as log_dir:
        processes = Processes(log_dir)
        try:
            print("starting rscore serve and rscore activator on 127.0.0.1", flush=True)
            targets, activator_pid = start(processes)
            answer = check_same_answer(targets)
            print(f"same answer both ways: {answer.decode()}", flush=True)
            print(f"wrk: {args.duration} s per run after {args.warmup} s warm-up", flush=True)
            load_before = os.getloadavg()[0]
            runs, cpu = run_matrix(
                processes,
                targets,
                activator_pid,
                args.connections,
                duration_s=args.duration,
                warmup_s=args.warmup,
            )
            args.load = (load_before, os.getloadavg()[0])
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
            for name in NAMES:
                print(processes.log_tail(name, 5), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping the servers", file=sys.stderr)
            return 130
        finally:
            processes.close()
    report = render(args, started, answer, runs, cpu)
    print()
    print(report)
    if not args.no_write:
        write_section(SECTION, report)
        print(f"\nwrote the {SECTION} section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
