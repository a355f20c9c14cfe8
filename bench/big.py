"""`make bench-big`: large requests end to end against R's own predict() on the same rows.

For the example randomForest (iris-rf) and lm (mtcars-lm) bundles, 100,000 and
1,000,000 rows of seeded random inputs are sent as one `dataframe_split` body to
`rscore serve` (1 worker, 2 workers, and all cores' worth when that is more; `--auth
none`, body and timeout limits raised for the 1,000,000-row bodies), and the same rows
are scored by `predict()` in one Rscript process in the same run. Reported: the median
end-to-end latency (body prebuilt; request sent, answer read), R's median predict()
time, their ratio, and our overhead per row (end to end minus R's time, 1 worker).

The "before" is measured in the same run: the rscore of `--baseline COMMIT` (default:
the last commit before issue 20's columnar path and fan-out), exported with `git
archive` into a temporary folder, serves the same bodies with 1 worker, interleaved
with the current code; the report gives both overheads per row and their ratio
(`--no-baseline`: skip it).

Then the throughput of 1-row requests (4 connections, one request after another each)
on 2 workers of iris-rf: alone; while one client sends 100,000-row requests back to
back, with fan-out (`--min-chunk-rows` 10000, the default) and without it; and, as a
control, while another process runs R's predict() on those rows in a loop (a core
taken by R with no rscore work in it: what the machine alone costs the 1-row requests).

`--source DIR` serves the rscore found in DIR instead (a checkout of an older commit).
Prints a markdown report and writes it to docs/benchmarks.md (`--no-write`: not). Loads
only 127.0.0.1, bounds every wait, and ends each server's whole process group on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from bench.http import free_port
from bench.report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "examples" / "build"
HOST = "127.0.0.1"
JSON = {"Content-Type": "application/json"}
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 300.0
SIZES = (100_000, 1_000_000)
# The last commit before issue 20 (columnar path, fan-out): the "before" of the report.
BASELINE = "bae9ee2a0be96519cf80baf55570245abb6ca009"
LIMITS = [
    "--max-body-bytes", str(256 << 20), "--max-body-bytes-in-flight", str(512 << 20),
    "--request-timeout-ms", str(int(REQUEST_TIMEOUT_S * 1000)),
]  # fmt: skip


@dataclass(frozen=True)
class Model:
    bundle: str
    package: str  # the R package predict() needs
    columns: tuple[tuple[str, float, float, int], ...]  # name, low, high, decimals


MODELS = (
    Model(
        "iris-rf",
        "randomForest",
        (
            ("Sepal.Length", 4.3, 7.9, 1),
            ("Sepal.Width", 2.0, 4.4, 1),
            ("Petal.Length", 1.0, 6.9, 1),
            ("Petal.Width", 0.1, 2.5, 1),
        ),
    ),
    Model("mtcars-lm", "stats", (("wt", 1.5, 5.4, 3), ("hp", 52, 335, 0), ("qsec", 14.5, 22.9, 2))),
)

R_PREDICT = r"""
args <- commandArgs(TRUE)
model <- readRDS(file.path(args[1], "model.rds"))
suppressMessages(library(args[2], character.only = TRUE))
nrows <- as.integer(args[4]); columns <- strsplit(args[5], ",")[[1]]
values <- readBin(args[3], "double", n = nrows * length(columns))
data <- as.data.frame(matrix(values, nrow = nrows))
names(data) <- columns
times <- replicate(as.integer(args[6]), system.time(predict(model, newdata = data))[["elapsed"]])
cat(median(times), "\n")
flush(stdout())
if (length(args) >= 7) {  # the control: predict() in a loop until this file is gone
  while (file.exists(args[7])) invisible(predict(model, newdata = data))
}
"""


def inputs(model: Model, rows: int) -> np.ndarray:
    """Seeded random inputs within the training data's ranges, rounded as data is."""
    rng = np.random.default_rng(20)
    columns = [
        np.round(rng.uniform(low, high, rows), decimals) for _, low, high, decimals in model.columns
    ]
    return np.column_stack(columns)


def _r_predict_command(folder: Path, model: Model, data: np.ndarray, repeats: int) -> list[str]:
    values = folder / "inputs.bin"
    values.write_bytes(np.ascontiguousarray(data.T, dtype="<f8").tobytes())
    script = folder / "predict.R"
    script.write_text(R_PREDICT)
    names = ",".join(name for name, *_ in model.columns)
    return [
        "Rscript", str(script), str(BUILD / model.bundle), model.package, str(values),
        str(len(data)), names, str(repeats),
    ]  # fmt: skip


def r_predict_seconds(model: Model, data: np.ndarray, repeats: int) -> float:
    """Median seconds of predict() on `data` in one Rscript process (inputs read first,
    not timed)."""
    with tempfile.TemporaryDirectory() as folder:
        command = _r_predict_command(Path(folder), model, data, repeats)
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return float(result.stdout.strip())


@contextlib.contextmanager
def r_predicting(model: Model, data: np.ndarray) -> Iterator[None]:
    """Another process running predict() on `data` in a loop while the block runs."""
    with tempfile.TemporaryDirectory() as folder:
        running = Path(folder) / "running"
        running.touch()
        command = [*_r_predict_command(Path(folder), model, data, 1), str(running)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert process.stdout is not None
            process.stdout.read(1)  # its first (timed) predict() is done: it is looping
            yield
        finally:
            running.unlink()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@contextlib.contextmanager
def exported(commit: str) -> Iterator[Path]:
    """The tree of `commit` in a temporary folder (`git archive`: the checkout, its
    index and its branches are left alone)."""
    with tempfile.TemporaryDirectory(prefix="rscore-baseline-") as folder:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True, timeout=120)
        yield Path(folder)


def body_of(model: Model, data: np.ndarray) -> bytes:
    names = [name for name, *_ in model.columns]
    document = {"dataframe_split": {"columns": names, "data": data}}
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


@contextlib.asynccontextmanager
async def served(
    bundle: Path,
    workers: int,
    flags: list[str],
    source: Path | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> AsyncIterator[tuple[str, int, aiohttp.ClientSession]]:
    """`rscore serve` of `bundle` (`--auth none`, `workers`, then `flags`), from `source`
    when given, ready: its base URL, pid and a client session."""
    port = free_port()
    if source is None:
        program = [str(Path(sys.executable).parent / "rscore")]
    else:
        # The command as that tree names it (before the move under rscore/: rscore_cli),
        # and refused if it would come from anywhere but that tree (an installed copy).
        entry = "rscore.cli.main" if (source / "rscore" / "cli").is_dir() else "rscore_cli.main"
        program = [
            sys.executable, "-c",
            f"import importlib; m = importlib.import_module({entry!r}); "
            f"assert m.__file__.startswith({str(source)!r}), m.__file__; m.cli()",
        ]  # fmt: skip
    command = [
        *program, "serve", str(bundle), "--auth", "none", "--host", HOST, "--port", str(port),
        "--metrics-port", str(free_port()), "--workers", str(workers), *flags,
    ]  # fmt: skip
    environment = dict(os.environ)
    if source is not None:
        environment["PYTHONPATH"] = str(source)
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=environment,
        cwd=source or ROOT,
    )
    base = f"http://{HOST}:{port}"
    try:
        timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rscore serve did not become ready: {command}")
                await asyncio.sleep(0.2)
            yield base, process.pid, session
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


async def post(session: aiohttp.ClientSession, base: str, body: bytes) -> bytes:
    async with session.post(f"{base}/score", data=body, headers=JSON) as response:
        answer = await response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}: {answer[:300]!r}")
        return answer


async def latency(session: aiohttp.ClientSession, base: str, body: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await post(session, base, body)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def small_throughput(
    session: aiohttp.ClientSession, base: str, seconds: float, big: bytes | None
) -> tuple[float, int]:
    """1-row requests per second over `seconds` on 4 connections, while (if `big`) one
    more client sends `big` back to back; and how many big requests were answered."""
    small = orjson.dumps({"dataframe_split": {"columns": IRIS, "data": [[5.1, 3.5, 1.4, 0.2]]}})
    stop = time.monotonic() + seconds
    counts = [0, 0]

    async def smalls() -> None:
        while time.monotonic() < stop:
            await post(session, base, small)
            counts[0] += 1

    async def bigs() -> None:
        while big is not None and time.monotonic() < stop:
            await post(session, base, big)
            counts[1] += 1

    await asyncio.gather(*(smalls() for _ in range(4)), bigs())
    return counts[0] / seconds, counts[1]


IRIS = [name for name, *_ in MODELS[0].columns]


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    return f"{os.getloadavg()[0]:.1f}"


async def run(args: argparse.Namespace, baseline: Path | None) -> str:
    load_before = load_average()
    cores = len(os.sched_getaffinity(0))
    worker_counts = [
        count for count in sorted({1, 2, cores}) if count in args.workers or not args.workers
    ]
    rows_out = []
    overheads = []  # (bundle, rows, before us/row, after us/row)
    for model in MODELS:
        if args.models and model.bundle not in args.models:
            continue
        for rows in args.sizes or SIZES:
            data = inputs(model, rows)
            body = body_of(model, data)
            repeats = 3 if rows <= 100_000 else 1
            r_seconds = r_predict_seconds(model, data, repeats)
            runs: list[tuple[str, int, Path | None]] = [
                ("", workers, args.source) for workers in worker_counts
            ]
            if baseline is not None and 1 in worker_counts:
                runs.insert(1, ("before: ", 1, baseline))  # right after the current 1 worker
            per_row: dict[str, float] = {}
            for label, workers, source in runs:
                bundle = BUILD / model.bundle
                async with served(bundle, workers, LIMITS, source) as (base, _, session):
                    await post(session, base, body)  # warm: R's first call, the parse thread
                    seconds = await latency(session, base, body, repeats)
                overhead = ""
                if workers == 1:
                    per_row[label] = (seconds - r_seconds) / rows * 1e6
                    overhead = f"{per_row[label]:.2f}"
                line = (
                    f"| {model.bundle} | {rows:,} | {len(body) / 1e6:.1f} | {label}{workers} | "
                    f"{r_seconds:.3f} | {seconds:.3f} | {seconds / r_seconds:.2f}x | {overhead} |"
                )
                print(line, flush=True)
                rows_out.append(line)
            if "before: " in per_row and "" in per_row:
                overheads.append((model.bundle, rows, per_row["before: "], per_row[""]))
    iris = MODELS[0]
    iris_rows = inputs(iris, 100_000)
    big = body_of(iris, iris_rows)
    throughput = []
    for label, flags, load in (
        ()
        if args.no_throughput
        else (
            ("1-row requests alone", [], None),
            ("with 100,000-row requests, fan-out (default)", [], "big"),
            ("with 100,000-row requests, no fan-out", ["--min-chunk-rows", "1000000"], "big"),
            ("control: R's predict() of those rows looping in another process", [], "r"),
        )
    ):
        served_iris = served(BUILD / iris.bundle, 2, [*LIMITS, *flags], args.source)
        async with served_iris as (base, _, session):
            await small_throughput(session, base, 1.0, None)  # warm
            with r_predicting(iris, iris_rows) if load == "r" else contextlib.nullcontext():
                per_second, bigs = await small_throughput(
                    session, base, args.seconds, big if load == "big" else None
                )
        line = f"| {label} | {per_second:.0f} | {bigs if load != 'r' else ''} |"
        print(line, flush=True)
        throughput.append(line)
    source = f" (`--source {args.source}`)" if args.source else ""
    before = ""
    if overheads:
        ratios = "; ".join(
            f"{bundle} {rows:,} rows: {old:.2f} -> {new:.2f} us ({old / new:.1f}x less)"
            for bundle, rows, old, new in overheads
        )
        before = f"""
*before*: the same bodies served by `--baseline {args.baseline[:12]}` (the last commit before
issue 20) with 1 worker, in this run. Overhead per row, before -> now: {ratios}.
"""
    return f"""## Big requests: end to end against R's own predict()

`make bench-big` (`python -m bench.big`){source}, on {machine()}; load average
{load_before} before, {load_average()} after (the machine's other work). One `dataframe_split`
body of seeded random rows (body prebuilt; median of 3 requests for 100,000 rows, 1 for
1,000,000, after one warm-up), against `predict()` on the same rows in one Rscript
process (median of as many calls). *rscore* is end to end; *overhead/row* = (rscore - R) /
rows, 1 worker.

| bundle | rows | body MB | workers | R predict() s | rscore s | ratio | overhead/row us |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows_out)}
{before}
1-row iris-rf requests on 2 workers (4 connections, one request after another each,
{args.seconds:.0f} s), alone and while one more client sends 100,000-row requests back to
back; the control row takes a core with R alone, for what the machine itself costs them:

| load | 1-row requests/s | 100,000-row requests answered |
|---|---:|---:|
{chr(10).join(throughput)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput run")
    parser.add_argument("--source", type=Path, default=None, help="serve rscore from here")
    parser.add_argument("--models", nargs="*", default=[], help="bundles (default: both)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[], help="rows (default: both)")
    parser.add_argument("--workers", nargs="*", type=int, default=[], help="default: 1, 2, all")
    parser.add_argument("--no-throughput", action="store_true", help="latency table only")
    parser.add_argument(
        "--baseline", default=BASELINE, help="the commit whose rscore is the 'before'"
    )
    parser.add_argument("--no-baseline", action="store_true", help="no 'before' runs")
    parser.add_argument("--no-write", action="store_true", help="Keep docs/ as it is.")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        baseline = None if args.no_baseline else stack.enter_context(exported(args.baseline))
        report = asyncio.run(run(args, baseline))
    print(report)
    whole = not (args.models or args.sizes or args.workers or args.no_throughput)
    if not args.no_write and args.source is None and whole and not args.no_baseline:
        write_section("big", report)


if __name__ == "__main__":
    main()
