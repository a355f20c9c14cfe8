"""`make bench-bodies`: what large request bodies cost the sidecar, in memory and in stalls.

Serves the example lm bundle with `rscore serve` (2 workers, `--auth none`) and sends it
9 MB `dataframe_records` bodies (200,000 rows of wt, hp, qsec):

- memory: the process's resident set (VmRSS) before, at its peak while ten such bodies
  arrive at once, and after they are answered (1 s later, and after 20 small requests
  and 1 s more), with their statuses: under the default `--max-body-bytes-in-flight` and
  with a budget too large to bound anything (200 MiB), to show what the budget does;
- stalls: /healthz latency (one request after another) while one such body is read,
  parsed and scored, three rounds.

Prints a markdown report and writes it to docs/benchmarks.md (`--no-write`: not). Loads
only 127.0.0.1, bounds every wait, and ends the server's whole process group on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
import orjson

from bench import big
from bench.report import machine, percentile, write_section

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "examples" / "build" / "mtcars-lm"
JSON = {"Content-Type": "application/json"}
SMALL = b'{"dataframe_records": [{"wt": 2.62, "hp": 110, "qsec": 16.46}]}'
REQUEST_TIMEOUT_S = 60.0


def big_body(rows: int = 200_000) -> bytes:
    records = [{"wt": 2.62 + i * 1e-6, "hp": 110.0 + i, "qsec": 16.46} for i in range(rows)]
    return orjson.dumps({"dataframe_records": records})


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def served(flags: list[str]) -> AbstractAsyncContextManager[tuple[str, int, aiohttp.ClientSession]]:
    """`rscore serve` of the lm bundle on 2 workers with `flags`, ready; its base URL, pid
    and a client session."""
    return big.served(BUNDLE, 2, flags, request_timeout_s=REQUEST_TIMEOUT_S)


async def post(session: aiohttp.ClientSession, base: str, body: bytes) -> int:
    async with session.post(f"{base}/score", data=body, headers=JSON) as response:
        await response.read()
        return response.status


async def memory(flags: list[str], body: bytes, concurrent: int) -> str:
    """One table row: statuses and RSS before, peak, after."""
    async with served(flags) as (base, pid, session):
        for _ in range(20):
            await post(session, base, SMALL)
        before = peak = rss_mib(pid)
        tasks = [asyncio.ensure_future(post(session, base, body)) for _ in range(concurrent)]
        while not all(task.done() for task in tasks):
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.01)
        statuses = collections.Counter(task.result() for task in tasks)
        await asyncio.sleep(1.0)
        after = rss_mib(pid)
        for _ in range(20):
            await post(session, base, SMALL)
        await asyncio.sleep(1.0)
        settled = rss_mib(pid)
    shown = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    return (
        f"| `{' '.join(flags) or 'defaults'}` | {shown} | {before:.0f} | {peak:.0f} | "
        f"{after:.0f} | {settled:.0f} |"
    )


async def stalls(body: bytes, rounds: int) -> list[str]:
    """Table rows: /healthz latency while one large body is scored."""
    rows = []
    async with served([]) as (base, _, session):
        for round_number in range(1, rounds + 1):
            big = asyncio.ensure_future(post(session, base, body))
            latencies = []
            while not big.done():
                start = time.perf_counter()
                async with session.get(f"{base}/healthz") as response:
                    await response.read()
                latencies.append(time.perf_counter() - start)
            rows.append(
                f"| {round_number} | {big.result()} | {len(latencies)} | "
                f"{percentile(latencies, 0.5) * 1e3:.2f} | {percentile(latencies, 0.99) * 1e3:.1f} "
                f"| {max(latencies) * 1e3:.1f} |"
            )
            print(rows[-1], flush=True)
    return rows


async def run(args: argparse.Namespace) -> str:
    body = big_body()
    memory_rows = []
    for flags in ([], ["--max-body-bytes-in-flight", str(200 * 1024 * 1024)]):
        memory_rows.append(await memory(flags, body, args.concurrent))
        print(memory_rows[-1], flush=True)
    stall_rows = await stalls(body, args.rounds)
    return f"""## Large bodies: memory and stalls

`make bench-bodies` (`python -m bench.bodies`), on {machine()}. `rscore serve` of the
example lm bundle, 2 workers; bodies of {len(body):,} bytes (200,000 records).

{args.concurrent} such bodies at once; resident memory of the serving process, MiB:

| flags | statuses | before | peak | 1 s after | after 20 small + 1 s |
|---|---|---:|---:|---:|---:|
{chr(10).join(memory_rows)}

/healthz, one request after another, while one such body is read, parsed and scored:

| round | its status | /healthz answered | p50 ms | p99 ms | max ms |
|---:|---:|---:|---:|---:|---:|
{chr(10).join(stall_rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="Keep docs/ as it is.")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(report)
    if not args.no_write:
        write_section("bodies", report)


if __name__ == "__main__":
    main()
