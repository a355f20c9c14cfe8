"""The worker protocol's overhead: a 1-row request's round trip minus its time inside R.

    python -m bench.worker_roundtrip --bundle examples/build/mtcars-lm [--requests 5000]

Starts one real R worker (supervisor, subprocess, Unix socket), sends 1-row requests
one after another from the pool's side (on uvloop, as the sidecar runs), and reports
round trip, time inside R, and their difference (framing, JSON, the socket, R vector
building and result conversion). The same model scored in this process without the
protocol is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from bench.report import machine, summary_ms, write_section
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.pool import WorkerPool
from rscore.r_scorer.prototype import coerce
from rscore.r_scorer.supervisor import Supervisor

ROW = {"wt": 2.62, "hp": 110, "qsec": 16.46}


async def measure_protocol(bundle: Path, requests: int, warmup: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as folder:
        pool = WorkerPool(Path(folder) / "workers.sock")
        await pool.start()
        supervisor = Supervisor(bundle, pool.socket_path, workers=1)
        await asyncio.to_thread(supervisor.start)
        try:
            await asyncio.wait_for(pool.wait_for_workers(1), 60)
            assert pool.model is not None
            frame = coerce(parse_body(orjson.dumps({"data": [ROW]})), pool.model.prototype)
            (link,) = pool.workers
            round_trips, inside_r = [], []
            for index in range(warmup + requests):
                started = time.perf_counter()
                reply = await link.score(frame)
                elapsed = time.perf_counter() - started
                if index >= warmup:
                    round_trips.append(elapsed)
                    inside_r.append(reply.r_seconds)
        finally:
            await pool.close()  # hang up first: the workers then exit at once
            await asyncio.to_thread(supervisor.stop)
    overhead = [rt - r for rt, r in zip(round_trips, inside_r, strict=True)]
    return {"round trip": round_trips, "inside R": inside_r, "overhead": overhead}


def measure_in_process(bundle: Path, requests: int, warmup: int) -> dict[str, list[float]]:
    from rscore.r_scorer.bundle import read_bundle
    from rscore.r_scorer.rmodel import load_model

    model = load_model(read_bundle(bundle))
    frame = coerce(parse_body(orjson.dumps({"data": [ROW]})), model.prototype)
    totals, inside_r = [], []
    for index in range(warmup + requests):
        started = time.perf_counter()
        result = model.score(frame)
        elapsed = time.perf_counter() - started
        if index >= warmup:
            totals.append(elapsed)
            inside_r.append(result.r_seconds)
    conversion = [total - r for total, r in zip(totals, inside_r, strict=True)]
    return {"in-process total": totals, "in-process conversion": conversion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("examples/build/mtcars-lm"))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    args = parser.parse_args()

    results = uvloop.run(measure_protocol(args.bundle, args.requests, args.warmup))
    results |= measure_in_process(args.bundle, args.requests, args.warmup)
    lines = [
        "## Worker protocol round trip (1-row `lm`)",
        "",
        f"`make bench-worker` ({args.requests} sequential requests after {args.warmup} "
        f"warm-up, one worker, bundle `{args.bundle.name}`), on {machine()}.",
        "",
        "| measure | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in results.items():
        stats = summary_ms(values)
        lines.append(
            f"| {name} | {stats['p50']:.3f} | {stats['p90']:.3f} | {stats['p99']:.3f} | "
            f"{stats['mean']:.3f} |"
        )
    lines += [
        "",
        "*overhead* = round trip minus time inside R: framing, orjson, the Unix socket, "
        "building the R data.frame column-wise and converting the result back. "
        "*in-process conversion* is the same model called without the protocol "
        "(R vectors in and out only).",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("worker-roundtrip", report)


if __name__ == "__main__":
    main()
