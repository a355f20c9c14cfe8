"""`make soak`: `rscore serve` under faults and hostile clients, for a bounded time.

    python -m bench.soak [--duration-s 600] [--load 0.8] [--kill-every-s 30]
                         [--rotate-every-s 60] [--logs DIR] [--no-write]

Serves the example lm bundle (examples/build/mtcars-lm) with TLS and API keys on
127.0.0.1, measures its capacity (closed loop, 2 s), then sends an open-loop Poisson
stream at `--load` of that capacity for `--duration-s`: mostly valid requests (1-3
rows whose answers were taken before any fault), and malformed JSON, a column the model
does not know, bodies over `--max-body-bytes` (declared and chunked), a wrong key, and
slow clients that trickle their body. Meanwhile it SIGKILLs one R worker every
`--kill-every-s` and rotates the API key every `--rotate-every-s` (the new key is added,
clients move to it, the old key is removed), and samples the RSS of the server process
(sidecar and supervisor) and of each worker every 5 s.

The verdict (`judge`): every valid request answered 200 with the answer taken before the
faults, or refused with 429 (not accepted); the only 5xx a 502 within a few seconds of a
worker kill (the killed worker's requests in flight); every hostile request refused with
its own status; and, for runs of 3 minutes or more, RSS growth from minute 2 to the end
under 5 %. Prints a report; writes it to docs/benchmarks.md unless `--no-write`.

Loads only 127.0.0.1, stops by itself, and leaves no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.http import HOST, ROOT, BenchError, Processes, _log_dir, free_port
from bench.report import machine, percentile, write_section
from rscore.cli.processes import children

BUNDLE = ROOT / "examples" / "build" / "mtcars-lm"
MAX_BODY_BYTES = 262_144  # the server's --max-body-bytes here: oversized bodies stay cheap
REQUEST_TIMEOUT_S = 15.0
SLOW_BODY_TIMEOUT_S = 4.0  # the server's --body-timeout-s: slow clients are cut here
KILL_502_WINDOW_S = 5.0  # a 502 this long after a kill is that kill's request in flight
RSS_SAMPLE_S = 5.0
RSS_GROWTH_LIMIT = 0.05
RSS_JUDGED_FROM_S = 120.0  # growth is judged from minute 2 (after warm-up) ...
RSS_MIN_RUN_S = 180.0  # ... on runs long enough to show any
REFERENCE_ROWS = 64

# Request kinds and their share of the stream.
VALID, BAD_JSON, UNKNOWN_COLUMN, OVERSIZED, CHUNKED_OVERSIZED, WRONG_KEY, SLOW = (
    "valid", "bad_json", "unknown_column", "oversized", "chunked_oversized", "wrong_key",
    "slow",
)  # fmt: skip
MIX: dict[str, float] = {
    VALID: 0.88,
    BAD_JSON: 0.03,
    UNKNOWN_COLUMN: 0.03,
    OVERSIZED: 0.015,
    CHUNKED_OVERSIZED: 0.015,
    WRONG_KEY: 0.02,
    SLOW: 0.01,
}
# What the server must answer each hostile kind (a slow client may also be cut off).
EXPECTED: dict[str, frozenset[int | str]] = {
    BAD_JSON: frozenset({400}),
    UNKNOWN_COLUMN: frozenset({400}),
    OVERSIZED: frozenset({413}),
    CHUNKED_OVERSIZED: frozenset({413}),
    WRONG_KEY: frozenset({401}),
    SLOW: frozenset({408, "closed"}),
}


# --- the verdict (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request: its kind, when it was sent and answered (monotonic s), its status
    (or "closed"/"error: ..." when no status came back) and, for a valid 200, whether
    the answer was the reference."""

    kind: str
    sent_s: float
    done_s: float
    status: int | str
    correct: bool | None = None


def classify(outcome: Outcome, kills: list[float]) -> str:
    """ "ok", "refused" (429: not accepted), "killed" (a 502 of a worker kill), or a
    failure named "fail: ..."."""
    status = outcome.status
    if outcome.kind != VALID:
        if status in EXPECTED[outcome.kind]:
            return "ok"
        return f"fail: {outcome.kind} got {status}"
    if status == 200:
        return "ok" if outcome.correct else "fail: valid got a wrong answer"
    if status == 429:
        return "refused"
    if status == 502 and any(k <= outcome.done_s <= k + KILL_502_WINDOW_S for k in kills):
        return "killed"
    return f"fail: valid got {status}"


def rss_growth(samples: list[tuple[float, float]], from_s: float) -> float | None:
    """Growth of a series of (seconds into the run, bytes) from the mean of its first
    minute after `from_s` to the mean of its last minute; None when too short."""
    late = [(t, v) for t, v in samples if t >= from_s]
    if len(late) < 2 or late[-1][0] - late[0][0] < 120.0:
        return None
    first = [v for t, v in late if t < late[0][0] + 60.0]
    last = [v for t, v in late if t > late[-1][0] - 60.0]
    return statistics.fmean(last) / statistics.fmean(first) - 1.0


@dataclass
class Verdict:
    counts: Counter[str]
    failures: Counter[str]
    server_growth: float | None
    worker_growth: float | None

    @property
    def passed(self) -> bool:
        grown = [g for g in (self.server_growth, self.worker_growth) if g is not None]
        return not self.failures and all(g < RSS_GROWTH_LIMIT for g in grown)


def judge(
    outcomes: list[Outcome],
    kills: list[float],
    server_rss: list[tuple[float, float]],
    worker_rss: list[tuple[float, float]],
    duration_s: float,
) -> Verdict:
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for outcome in outcomes:
        verdict = classify(outcome, kills)
        counts[f"{outcome.kind}: {verdict}"] += 1
        if verdict.startswith("fail"):
            failures[verdict] += 1
    judged = duration_s >= RSS_MIN_RUN_S
    return Verdict(
        counts,
        failures,
        rss_growth(server_rss, RSS_JUDGED_FROM_S) if judged else None,
        rss_growth(worker_rss, RSS_JUDGED_FROM_S) if judged else None,
    )


# --- the server ----------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    ssl_context: ssl.SSLContext
    keys_file: Path
    key: str

    def write_keys(self, keys: list[str]) -> None:
        staged = self.keys_file.with_suffix(".new")
        staged.write_text("".join(f"{k}\n" for k in keys))
        os.replace(staged, self.keys_file)  # atomic, as a Secret volume swaps

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)


def rss_bytes(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    return None


def start_server(processes: Processes, folder: Path) -> Server:
    certs = folder / "certs"
    subprocess.run([str(ROOT / "scripts" / "dev-certs"), str(certs)], check=True,
                   capture_output=True)  # fmt: skip
    keys_file = folder / "keys"
    key = secrets.token_urlsafe(24)
    keys_file.write_text(f"{key}\n")
    port, metrics_port = free_port(), free_port()
    command = [
        str(Path(sys.executable).parent / "rscore"), "serve", str(BUNDLE),
        "--host", HOST, "--port", str(port), "--metrics-port", str(metrics_port),
        "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"),
        "--keys-file", str(keys_file), "--max-body-bytes", str(MAX_BODY_BYTES),
        "--body-timeout-s", str(SLOW_BODY_TIMEOUT_S), "--request-timeout-ms", "10000",
    ]  # fmt: skip
    process = processes.start("rscore", command)
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    return Server(process, f"https://{HOST}:{port}", context, keys_file, key)


async def wait_ready(server: Server, processes: Processes, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            processes.check_alive()
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{server.url}/readyz", ssl=server.ssl_context) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise BenchError(f"rscore did not become ready within {timeout_s:.0f} s")


# --- the clients ---------------------------------------------------------------------


def reference_rows(rng: random.Random) -> list[dict[str, float]]:
    return [
        {
            "wt": round(rng.uniform(1.5, 5.5), 3),
            "hp": float(rng.randint(50, 330)),
            "qsec": round(rng.uniform(14.5, 23.0), 2),
        }
        for _ in range(REFERENCE_ROWS)
    ]


class Client:
    """Sends one request of a kind and records its outcome."""

    def __init__(
        self, server: Server, session: aiohttp.ClientSession, rows: list, answers: list
    ) -> None:
        self.server = server
        self.session = session
        self.rows = rows
        self.answers = answers
        self.started = time.monotonic()

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key or self.server.key}",
        }

    async def send(self, kind: str, rng: random.Random) -> Outcome:
        sent = time.monotonic() - self.started
        correct = None
        try:
            if kind == SLOW:
                status = await self._slow()
            else:
                body, headers, picks = self._request(kind, rng)
                async with self.session.post(
                    f"{self.server.url}/score",
                    data=body,
                    headers=headers,
                    ssl=self.server.ssl_context,
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                ) as response:
                    status = response.status
                    payload = await response.read()
                if kind == VALID and status == 200:
                    got = orjson.loads(payload)["predictions"]
                    want = [self.answers[i] for i in picks]
                    correct = len(got) == len(want) and all(
                        abs(g - w) <= 1e-9 * max(1.0, abs(w))
                        for g, w in zip(got, want, strict=True)
                    )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            status = f"error: {type(error).__name__}"
        return Outcome(kind, sent, time.monotonic() - self.started, status, correct)

    def _request(self, kind: str, rng: random.Random) -> tuple[object, dict, list[int]]:
        picks = [rng.randrange(len(self.rows)) for _ in range(rng.randint(1, 3))]
        records = [self.rows[i] for i in picks]
        if kind == VALID:
            return orjson.dumps({"dataframe_records": records}), self.headers(), picks
        if kind == BAD_JSON:
            return b'{"dataframe_records": [{"wt": 2.6,', self.headers(), []
        if kind == UNKNOWN_COLUMN:
            return orjson.dumps({"dataframe_records": [{"weight": 2.6}]}), self.headers(), []
        if kind == WRONG_KEY:
            return orjson.dumps({"dataframe_records": records}), self.headers("nope"), []
        padding = b" " * (MAX_BODY_BYTES + 1)
        body = b'{"dataframe_records": []' + padding + b"}"
        if kind == OVERSIZED:
            return body, self.headers(), []

        async def chunks() -> AsyncIterator[bytes]:
            # No Content-Length: the server must count the bytes as it reads them.
            for start in range(0, len(body), 65_536):
                yield body[start : start + 65_536]

        return chunks(), self.headers(), []

    async def _slow(self) -> int | str:
        """A valid header, then a body at one byte a second: the server's body deadline
        must answer 408 or close the connection."""
        body = orjson.dumps({"dataframe_records": [self.rows[0]]})
        host, port = self.server.url.removeprefix("https://").split(":")
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=self.server.ssl_context, server_hostname="localhost"
        )
        try:
            writer.write(
                (
                    f"POST /score HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {self.server.key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
            )
            deadline = time.monotonic() + SLOW_BODY_TIMEOUT_S * 3
            for byte in body:
                if time.monotonic() > deadline or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                    if line.startswith(b"HTTP/1.1 "):
                        return int(line.split()[1])
                    if not line:
                        return "closed"
            return "closed" if reader.at_eof() else "still open"
        except ConnectionError:
            return "closed"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def capacity_rps(client: Client, seconds: float = 2.0, concurrency: int = 16) -> float:
    """Valid requests answered per second by a closed loop of `concurrency` clients."""
    rng = random.Random(1)
    answered = 0
    stop = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal answered
        while time.monotonic() < stop:
            if (await client.send(VALID, rng)).status == 200:
                answered += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return answered / seconds


# --- the run -------------------------------------------------------------------------


@dataclass
class SoakRun:
    duration_s: float
    load: float
    capacity_rps: float
    rate_rps: float
    outcomes: list[Outcome]
    kills: list[float]
    rotations: int
    server_rss: list[tuple[float, float]]
    worker_rss: list[tuple[float, float]]
    verdict: Verdict


class Faults:
    """What happens to the server during the run: a worker SIGKILLed every `kill_every_s`,
    the key rotated every `rotate_every_s`, RSS sampled every RSS_SAMPLE_S."""

    def __init__(
        self, server: Server, rng: random.Random, kill_every_s: float, rotate_every_s: float
    ) -> None:
        self.server = server
        self.rng = rng
        self.kill_every_s = kill_every_s
        self.rotate_every_s = rotate_every_s
        self.kills: list[float] = []
        self.rotations = 0
        self.server_rss: list[tuple[float, float]] = []
        self.worker_rss: list[tuple[float, float]] = []

    async def run(self, started: float, end: float) -> None:
        next_kill, next_rotation = started + self.kill_every_s, started + self.rotate_every_s
        next_sample = started
        retire_at: float | None = None
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                self.sample(now - started)
                next_sample += RSS_SAMPLE_S
            if now >= next_kill:
                self.kill_one(now - started)
                next_kill += self.kill_every_s
            if now >= next_rotation:
                await self.add_key()
                retire_at = time.monotonic() + REQUEST_TIMEOUT_S + 1  # the old key's last use
                next_rotation += self.rotate_every_s
            if retire_at is not None and time.monotonic() >= retire_at:
                self.server.write_keys([self.server.key])  # the old key is gone
                retire_at = None
            await asyncio.sleep(0.1)

    def sample(self, at: float) -> None:
        server_value = rss_bytes(self.server.process.pid)
        if server_value is not None:
            self.server_rss.append((at, server_value))
        values = [v for p in self.server.worker_pids() if (v := rss_bytes(p)) is not None]
        if values:
            self.worker_rss.append((at, statistics.median(values)))

    def kill_one(self, at: float) -> None:
        pids = self.server.worker_pids()
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(pids), signal.SIGKILL)
            self.kills.append(at)

    async def add_key(self) -> None:
        """The new key joins the old one; once the server has reloaded, clients move."""
        new = secrets.token_urlsafe(24)
        self.server.write_keys([self.server.key, new])
        await asyncio.sleep(3.0)
        self.server.key = new
        self.rotations += 1


async def reference_answers(client: Client) -> list[float]:
    """The model's answers for the client's rows, taken before any fault."""
    async with client.session.post(
        f"{client.server.url}/score",
        data=orjson.dumps({"dataframe_records": client.rows}),
        headers=client.headers(),
        ssl=client.server.ssl_context,
    ) as response:
        if response.status != 200:
            raise BenchError(f"reference request got {response.status}")
        return orjson.loads(await response.read())["predictions"]


async def open_loop(client: Client, rng: random.Random, rate: float, end: float) -> list[Outcome]:
    """Poisson arrivals at `rate` until `end`, each of a kind drawn from MIX."""
    kinds, weights = zip(*MIX.items(), strict=True)
    tasks: list[asyncio.Task[Outcome]] = []
    at = time.monotonic()
    while True:
        at += rng.expovariate(rate)
        if at >= end:
            break
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        kind = rng.choices(kinds, weights)[0]
        tasks.append(asyncio.create_task(client.send(kind, random.Random(rng.random()))))
    return list(await asyncio.gather(*tasks))


async def soak(
    server: Server,
    processes: Processes,
    *,
    duration_s: float,
    load: float,
    kill_every_s: float,
    rotate_every_s: float,
    seed: int = 7,
) -> SoakRun:
    rng = random.Random(seed)
    await wait_ready(server, processes)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        client = Client(server, session, reference_rows(rng), answers=[])
        client.answers = await reference_answers(client)
        capacity = await capacity_rps(client)
        rate = load * capacity
        faults = Faults(server, rng, kill_every_s, rotate_every_s)
        client.started = time.monotonic()
        end = client.started + duration_s
        outcomes, _ = await asyncio.gather(
            open_loop(client, rng, rate, end), faults.run(client.started, end)
        )
    verdict = judge(outcomes, faults.kills, faults.server_rss, faults.worker_rss, duration_s)
    return SoakRun(
        duration_s, load, capacity, rate, outcomes, faults.kills, faults.rotations,
        faults.server_rss, faults.worker_rss, verdict,
    )  # fmt: skip


def run_soak(
    log_dir: Path, *, duration_s: float, load: float, kill_every_s: float, rotate_every_s: float
) -> SoakRun:
    processes = Processes(log_dir)
    try:
        server = start_server(processes, log_dir)
        return asyncio.run(
            soak(
                server,
                processes,
                duration_s=duration_s,
                load=load,
                kill_every_s=kill_every_s,
                rotate_every_s=rotate_every_s,
            )
        )
    finally:
        processes.close()


# --- the report ----------------------------------------------------------------------


def _mib(samples: list[tuple[float, float]], at: float) -> str:
    near = [v for t, v in samples if t >= at]
    return f"{near[0] / 2**20:.1f}" if near else "-"


def render(run: SoakRun) -> str:
    verdict = run.verdict
    valid = [o for o in run.outcomes if o.kind == VALID and o.status == 200]
    latencies = [o.done_s - o.sent_s for o in valid]
    growth = {
        "server": verdict.server_growth,
        "worker": verdict.worker_growth,
    }
    lines = [
        "## Soak: faults and hostile clients under load",
        "",
        f"`make soak` (`python -m bench.soak`), on {machine()}. `rscore serve` of "
        f"examples/build/mtcars-lm (TLS, API keys, 2 workers) for {run.duration_s:.0f} s "
        f"at {run.load:.0%} of its measured capacity ({run.capacity_rps:.0f} valid req/s "
        f"closed-loop, so {run.rate_rps:.0f} req/s open-loop), {len(run.kills)} worker "
        f"kills (SIGKILL), {run.rotations} key rotations. Verdict: "
        f"**{'passed' if verdict.passed else 'FAILED'}**.",
        "",
        "| kind | verdict | requests |",
        "|---|---|---:|",
        *(
            f"| {k.split(': ', 1)[0]} | {k.split(': ', 1)[1]} | {n} |"
            for k, n in sorted(verdict.counts.items())
        ),
        "",
        f"Valid requests answered 200: p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1e3:.1f} ms."
        if latencies
        else "No valid request was answered.",
        "",
        "| RSS, MiB | at 2 min | at the end | growth (minute 2 to the end) |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {_mib(series, RSS_JUDGED_FROM_S)} | "
            f"{series[-1][1] / 2**20:.1f} | "
            f"{'n/a (run under 3 min)' if growth[name] is None else f'{growth[name]:+.1%}'} |"
            for name, series in (("server", run.server_rss), ("worker", run.worker_rss))
            if series
        ),
        "",
        '"server" is the `rscore serve` process (sidecar and supervisor); "worker" the '
        "median over the live R workers (each kill starts a fresh one).",
    ]
    if verdict.failures:
        lines += ["", "Failures:", *(f"- {k}: {n}" for k, n in verdict.failures.items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--kill-every-s", type=float, default=30.0)
    parser.add_argument("--rotate-every-s", type=float, default=60.0)
    parser.add_argument("--logs", type=Path, default=None, help="keep the server log here")
    parser.add_argument("--no-write", action="store_true", help="leave docs/ alone")
    args = parser.parse_args()
    if not 0 < args.load <= 1.5:
        parser.error("--load must be in (0, 1.5]")
    with _log_dir(args.logs, "rscore-soak-") as log_dir:
        run = run_soak(
            log_dir,
            duration_s=args.duration_s,
            load=args.load,
            kill_every_s=args.kill_every_s,
            rotate_every_s=args.rotate_every_s,
        )
    report = render(run)
    print(report)
    if not args.no_write:
        write_section("soak", report)
    return 0 if run.verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
