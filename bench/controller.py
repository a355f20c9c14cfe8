"""`make bench-controller`: the real `rscore autoscaler` at cluster scale.

`python -m bench.controller --autoscalers N --pods P --shards S --ticks T --out DIR`
starts the emulated API server (tests/kube_emulator.py, the one the tests use), puts N
Deployments with their ScoringAutoscalers and P ready pods in it (P / N per Deployment),
and serves every pod's `/metrics` from ONE aiohttp server bound to 0.0.0.0, in a
process of its own (uvloop; apart from the emulator's event loop): each pod's IP is its
own loopback address (127.x.y.z; all of 127.0.0.0/8 reaches a server bound to 0.0.0.0).
Every pod serves the same steady load, as a sidecar's page would show it (counters
growing, histograms with their buckets); replicas are pinned (minReplicas =
maxReplicas), so every decision runs but the world never moves.

It then runs S `rscore autoscaler` processes (one per shard, `--shards S --shard-index
i`, each electing on its shard's Lease), lets them warm up (the informer's list, the
first round of every ScoringAutoscaler: `first_round_s`), and measures T ticks: tick
p50 and p99 (read from the controllers' own `rscore_autoscaler_tick_duration_seconds`
histogram), overruns, CPU seconds per tick
(/proc/<pid>/stat), API requests per tick (the emulator's request log, watches
excluded) and pod scrapes per tick. It writes DIR/controller.json and stops by itself
(bounded by --timeout-s). The machine's load moves every figure: say what else ran.

Two smaller measurements of issue 19: `python -m bench.controller parse` (the parse
time of that page, before and after) and `python -m bench.controller sim-sampling
[SCENARIO...]` (rscore in the simulator with sampling off and on; by default two
scenarios at fleet scale, written out from `LARGE_SCENARIOS`).

Bench scaffolding: never a server outside this process's lifetime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client.parser import text_string_to_metric_families

from rscore.sidecar.metrics_stream import STREAM_PATH, MetricStreams, serve_stream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the API emulator is test scaffolding

from kube_emulator import KubeEmulator  # noqa: E402

NS = "bench"
PER_POD_RATE = 12.0  # requests per second per pod ...
SERVICE_S = 0.1  # ... of 0.1 s each: 1.2 busy workers of 2 (about the policy's target)
PORT0 = 19100  # the controllers' /metrics: shard i on PORT0 + i
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def pod_ip(k: int) -> str:
    """The k-th pod's loopback address, from 127.1.0.1 on (never 127.0.0.1)."""
    n = (1 << 16) + 1 + k
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def sidecar_page(elapsed_s: float) -> str:
    """A sidecar's /metrics page at a steady load, `elapsed_s` after the pod started:
    the contract's series and the histograms and counters around them."""
    requests = PER_POD_RATE * elapsed_s
    lines = [
        "# HELP rscore_requests_total Finished requests by status code.",
        "# TYPE rscore_requests_total counter",
        f'rscore_requests_total{{code="200"}} {requests:.1f}',
        'rscore_requests_total{code="429"} 0.0',
        'rscore_requests_created{code="200"} 1.7e9',
        "# HELP rscore_request_duration_seconds Time from arrival to answer.",
        "# TYPE rscore_request_duration_seconds histogram",
    ]
    for name in ("rscore_request_duration_seconds", "rscore_scoring_duration_seconds"):
        if name == "rscore_scoring_duration_seconds":
            lines += [f"# HELP {name} Seconds inside R.", f"# TYPE {name} histogram"]
        lines += [
            f'{name}_bucket{{le="{b}"}} {requests if b >= SERVICE_S else 0.0:.1f}' for b in BUCKETS
        ]
        lines += [
            f'{name}_bucket{{le="+Inf"}} {requests:.1f}',
            f"{name}_count {requests:.1f}",
            f"{name}_sum {requests * SERVICE_S:.3f}",
            f"{name}_created 1.7e9",
        ]
    lines += [
        "# HELP rscore_batch_rows Rows per R call.",
        "# TYPE rscore_batch_rows histogram",
        *(f'rscore_batch_rows_bucket{{le="{b}"}} {requests:.1f}' for b in (1, 2, 4, 8, 16, 32)),
        f'rscore_batch_rows_bucket{{le="+Inf"}} {requests:.1f}',
        f"rscore_batch_rows_count {requests:.1f}",
        f"rscore_batch_rows_sum {requests:.1f}",
        "# TYPE rscore_batch_max_rows gauge",
        "rscore_batch_max_rows 0.0",
        "# HELP rscore_queue_depth Requests waiting for a worker.",
        "# TYPE rscore_queue_depth gauge",
        "rscore_queue_depth 0.0",
        "# HELP rscore_inflight_requests Requests being scored.",
        "# TYPE rscore_inflight_requests gauge",
        "rscore_inflight_requests 1.0",
        "# HELP rscore_concurrency_seconds Integral of queued + in-flight requests.",
        "# TYPE rscore_concurrency_seconds counter",
        f"rscore_concurrency_seconds_total {PER_POD_RATE * SERVICE_S * elapsed_s:.3f}",
        "# HELP rscore_workers R worker slots ready.",
        "# TYPE rscore_workers gauge",
        "rscore_workers 2.0",
        "# TYPE rscore_worker_restarts_total counter",
        "rscore_worker_restarts_total 0.0",
        *(f'rscore_worker_pss_bytes{{slot="{s}"}} 5.2e7' for s in ("zygote", "0", "1")),
    ]
    return "\n".join(lines) + "\n"


def restricted(page: str, names: Sequence[str]) -> str:
    """The page's samples named in `names`, with their families' HELP and TYPE lines
    (what prometheus_client's `name[]` gives)."""
    wanted = set(names)
    lines = [line for line in page.splitlines() if line]

    def sample_name(line: str) -> str:
        return re.split(r"[{ ]", line, maxsplit=1)[0]

    heads = {sample_name(line) for line in lines if line[0] != "#"} & wanted
    out = []
    for line in lines:
        if line[0] == "#":
            parts = line.split(" ")
            family = parts[2] if len(parts) > 2 else ""
            keep = any(h == family or h.startswith(family + "_") for h in heads)
        else:
            keep = sample_name(line) in wanted
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


class Pods:
    """One server for every pod's /metrics: the pod is the local address connected to."""

    PAGE_EVERY_S = 0.01  # the page is rendered afresh at most this often (all pods share it)

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.scrapes = 0
        self.readings = 0  # streamed
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._pages: dict[tuple[str, ...], bytes] = {}
        self._page_at = -1.0
        # Every pod's stream is served here: no per-server bound (a sidecar's is 16).
        self.streams = MetricStreams(limit=1 << 30)

    def page(self, names: Sequence[str]) -> bytes:
        """The page restricted to `names` (all when empty), as a sidecar answers it."""
        now = time.monotonic()
        if now - self._page_at >= self.PAGE_EVERY_S:  # a real pod renders on its own CPU
            self._pages.clear()
            self._page_at = now
        key = tuple(names)
        page = self._pages.get(key)
        if page is None:
            text = sidecar_page(now - self.started)
            page = self._pages[key] = (restricted(text, key) if key else text).encode()
        return page

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        body = self.page(request.query.getall("name[]", []))
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    def _reading(self, names: Sequence[str]) -> bytes:
        self.readings += 1
        return self.page(names)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        return await serve_stream(request, self.streams, self._reading)

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"scrapes": self.scrapes, "readings": self.readings})

    async def start(self) -> None:
        app = web.Application()
        app.on_shutdown.append(self.streams.close_all)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get(STREAM_PATH, self._stream)
        app.router.add_get("/scrapes", self._count)  # the bench's own question
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=75)
        await self.runner.setup()
        # 0.0.0.0: every address of 127.0.0.0/8 reaches it, one per pod
        site = web.TCPSite(self.runner, "0.0.0.0", 0, backlog=4096)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _serve_pods() -> None:
    """The pods' server as a process of its own (`_pods`): its port on stdout, then
    serve until SIGTERM. Apart from the emulator, so that 10,000 scrapes a tick do not
    queue the controllers' API calls behind them in one event loop (in a cluster, the
    pods and the API server do not share a CPU either)."""
    import uvloop

    async def serve() -> None:
        pods = Pods()
        await pods.start()
        print(pods.port, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await pods.stop()

    uvloop.run(serve())


class PodsProcess:
    """`Pods` in a child process: its port, its scrapes and its CPU seconds."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.controller", "_pods", cwd=ROOT,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int((await self.proc.stdout.readline()).decode())

    async def scrapes(self, session: ClientSession) -> int:
        async with session.get(f"http://127.0.0.1:{self.port}/scrapes") as response:
            served = await response.json()
            return int(served["scrapes"]) + int(served["readings"])  # GETs and streamed

    def cpu_s(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is not None:
            await _stop_controllers([self.proc])


def populate(emu: KubeEmulator, autoscalers: int, pods: int, metrics_port: int) -> None:
    emu.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    per = [pods // autoscalers + (1 if i < pods % autoscalers else 0) for i in range(autoscalers)]
    k = 0
    for i, count in enumerate(per):
        name = f"model-{i}"
        emu.make_deployment(name, NS, replicas=count)
        for j in range(count):
            emu.make_pod(f"{name}-{j}", NS, labels={"app": name}, ready=True, pod_ip=pod_ip(k))
            k += 1
        # Pinned: no controller here makes pods follow a new replica count, so the
        # decisions run in full but never move the world.
        emu.make_scoring_autoscaler(
            name, NS, minReplicas=count, maxReplicas=count, metricsPort=metrics_port
        )


def cli_has(flag: str) -> bool:
    rscore = Path(sys.executable).with_name("rscore")
    help_text = subprocess.run(
        [str(rscore), "autoscaler", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return flag in help_text


def controller_command(kubeconfig: Path, port: int, args: argparse.Namespace, i: int) -> list[str]:
    flags = [
        "--kubeconfig", str(kubeconfig), "--interval-s", str(args.interval_s),
        "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
        "--lease-namespace", "default", "--lease-duration-s", "15",
    ]  # fmt: skip
    scale = ["--shards", str(args.shards), "--shard-index", str(i)]
    scale += [] if args.sample else ["--no-sample"]
    scale += [] if args.metric_streams else ["--no-metric-streams"]
    if args.max_concurrent_scrapes is not None:
        scale += ["--max-concurrent-scrapes", str(args.max_concurrent_scrapes)]
    if args.profile:  # cProfile of the controller, written to DIR/controller-<i>.prof
        profile = ["-m", "cProfile", "-o", str(Path(args.out) / f"controller-{i}.prof")]
        return [sys.executable, *profile, "-m", "bench.controller", "_controller", *flags, *scale]
    if cli_has("--shards"):
        rscore = Path(sys.executable).with_name("rscore")
        return [str(rscore), "autoscaler", *flags, *scale]
    # The flags of the scale options are not on `rscore autoscaler` yet: run the same
    # `rscore.autoscaler.serve.run` through this module (same Options, same process model).
    return [sys.executable, "-m", "bench.controller", "_controller", *flags, *scale]


def _run_controller(argv: list[str]) -> None:
    """`rscore autoscaler`'s body, for the options its CLI does not offer yet."""
    import uvloop

    from rscore.autoscaler.serve import Options, run
    from rscore.r_scorer.logs import configure_json_logging

    parser = argparse.ArgumentParser()
    for flag in ("--kubeconfig", "--metrics-host", "--lease-namespace"):
        parser.add_argument(flag)
    for flag in ("--interval-s",):
        parser.add_argument(flag, type=float)
    for flag in ("--metrics-port", "--lease-duration-s", "--shards", "--shard-index"):
        parser.add_argument(flag, type=int)
    parser.add_argument(
        "--max-concurrent-scrapes", type=int, default=Options().max_concurrent_scrapes
    )
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("--no-metric-streams", action="store_true")
    a = parser.parse_args(argv)
    configure_json_logging()
    options = Options(
        kubeconfig=Path(a.kubeconfig),
        interval_s=a.interval_s,
        metrics_host=a.metrics_host,
        metrics_port=a.metrics_port,
        lease_namespace=a.lease_namespace,
        lease_duration_s=a.lease_duration_s,
        shards=a.shards,
        shard_index=a.shard_index,
        sample=not a.no_sample,
        metric_streams=not a.no_metric_streams,
        max_concurrent_scrapes=a.max_concurrent_scrapes,
        freeze_heap=True,  # as the `rscore autoscaler` process does
    )
    uvloop.run(run(options))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The controller's series the bench reads; its page has thousands more (a few per
# ScoringAutoscaler), which are dropped before parsing: this process serves the API too.
READ_SERIES = (
    "rscore_autoscaler_tick_duration_seconds_bucket",
    "rscore_autoscaler_ticks_total",
    "rscore_autoscaler_tick_overruns_total",
    "rscore_autoscaler_pod_scrapes_total",
    "rscore_autoscaler_stream_readings_total",
    "rscore_autoscaler_live_streams",
    "rscore_autoscaler_owned",
    "rscore_autoscaler_leader",
    "rscore_autoscaler_cached_pods",
)


DECIDED = "rscore_autoscaler_desired_replicas{"
# Per ScoringAutoscaler: ticks that skipped it, its reconcile still running from before.
SKIPPED = "rscore_autoscaler_overruns_total{"


async def scrape_controller(session: ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    out: dict[str, Any] = {"buckets": {}}
    every = text.splitlines()
    # ScoringAutoscalers decided for at least once (a series each, set after the policy).
    out["decided"] = sum(1 for line in every if line.startswith(DECIDED))
    out["skipped"] = sum(
        float(line.rsplit(" ", 1)[1]) for line in every if line.startswith(SKIPPED)
    )
    lines = [line for line in every if line.startswith(READ_SERIES)]
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for s in family.samples:
            if s.name == "rscore_autoscaler_tick_duration_seconds_bucket":
                out["buckets"][float(s.labels["le"])] = s.value
            elif s.name in READ_SERIES:
                out[s.name] = s.value
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """`histogram_quantile` over the buckets' increase (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width else 1.0)
        lower, below = bound, count
    return lower


async def _start_controllers(
    kubeconfig: Path, args: argparse.Namespace, out_dir: Path
) -> list[asyncio.subprocess.Process]:
    procs = []
    for i in range(args.shards):
        with (out_dir / f"controller-{i}.log").open("w") as log:  # the child keeps its fd
            command = controller_command(kubeconfig, PORT0 + i, args, i)
            procs.append(
                await asyncio.create_subprocess_exec(
                    *command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                )
            )
    return procs


async def _stop_controllers(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()


async def _states(session: ClientSession, shards: int) -> list[dict[str, Any]]:
    return [await scrape_controller(session, PORT0 + i) for i in range(shards)]


async def _warm(session: ClientSession, shards: int, bound_s: float, streams: int = 0) -> None:
    """Until each shard leads, has synced its caches, ticked twice and decided for every
    ScoringAutoscaler it owns once, and `streams` pods' metric streams are live: the
    steady state is measured, not a term's first round (every status written afresh,
    each with its demand profile, every pod's stream opened), which is reported on its
    own (`first_round_s`)."""
    deadline = time.monotonic() + bound_s
    while True:
        states: list[dict[str, Any]] = []
        with contextlib.suppress(Exception):  # not listening yet
            states = await _states(session, shards)
        if (
            states
            and all(
                s.get("rscore_autoscaler_ticks_total", 0) >= 2
                and s.get("rscore_autoscaler_owned", 0) > 0
                and s["decided"] >= s["rscore_autoscaler_owned"]
                for s in states
            )
            and sum(s.get("rscore_autoscaler_live_streams", 0) for s in states) >= streams
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the controllers did not start ticking: {states}")
        await asyncio.sleep(1.0)


def _ticks(before: dict[str, Any], after: dict[str, Any]) -> float:
    return float(after["rscore_autoscaler_ticks_total"] - before["rscore_autoscaler_ticks_total"])


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pods = PodsProcess()
    await pods.start()
    try:  # the pods' process goes whatever fails once it runs
        async with KubeEmulator(history_window=max(10_000, 3 * args.pods)) as emu:
            populate(emu, args.autoscalers, args.pods, pods.port)
            kubeconfig = emu.write_kubeconfig(out_dir / "kubeconfig")
            procs = await _start_controllers(kubeconfig, args, out_dir)
            try:
                async with ClientSession(timeout=ClientTimeout(total=10)) as session:
                    started = time.monotonic()
                    streams = args.pods if args.metric_streams else 0
                    await _warm(session, args.shards, args.timeout_s / 2, streams)
                    first_round_s = time.monotonic() - started
                    before = await _states(session, args.shards)
                    cpu0 = [cpu_seconds(p.pid) for p in procs]
                    own0, requests0 = time.process_time() + pods.cpu_s(), len(emu.requests)
                    scrapes0, wall0 = await pods.scrapes(session), time.monotonic()
                    # Not too often: each look renders the controllers' whole /metrics
                    # (Prometheus would scrape it every 15 s or so): none before the ticks
                    # asked for are due, then every 4 s.
                    await asyncio.sleep(args.ticks * args.interval_s)
                    while True:
                        after = await _states(session, args.shards)
                        done = min(_ticks(b, a) for b, a in zip(before, after, strict=True))
                        if done >= args.ticks or time.monotonic() > wall0 + args.timeout_s / 2:
                            break
                        await asyncio.sleep(max(args.interval_s, 4.0))
                    wall = time.monotonic() - wall0
                    cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
                    own = time.process_time() + pods.cpu_s() - own0
                    scraped = await pods.scrapes(session) - scrapes0
                    api = [r for r in emu.requests[requests0:] if not r.watch]
            finally:
                await _stop_controllers(procs)
    finally:
        await pods.stop()
    with (out_dir / "api-requests.jsonl").open("w") as dump:
        for r in api:
            dump.write(json.dumps({"at": r.at, "method": r.method, "path": r.path}) + "\n")
    shards = [_shard(i, b, a, cpu[i]) for i, (b, a) in enumerate(zip(before, after, strict=True))]
    ticks_per_shard = max(1.0, sum(s["ticks"] for s in shards) / len(shards))
    p50s = [s["tick_p50_s"] for s in shards if s["tick_p50_s"] is not None]
    p99s = [s["tick_p99_s"] for s in shards if s["tick_p99_s"] is not None]
    return {
        "autoscalers": args.autoscalers,
        "pods": args.pods,
        "shards": args.shards,
        "interval_s": args.interval_s,
        "tick_p50_s": max(p50s) if p50s else None,
        "tick_p99_s": max(p99s) if p99s else None,
        "overruns": sum(s["overruns"] for s in shards),
        # Reconciles a tick could not start, the object's last one still running (a tick
        # waits for its reconciles up to 80 % of the interval, then lets them finish
        # in the background): the share of ScoringAutoscalers decided each tick is
        # 1 - skipped / autoscalers.
        "skipped_per_tick": sum(s["skipped_per_tick"] for s in shards),
        "cpu_s_per_tick": sum(s["cpu_s_per_tick"] for s in shards),
        "api_requests_per_tick": len(api) / ticks_per_shard,
        "scrapes_per_tick": sum(s["scrapes_per_tick"] for s in shards),
        "gets_per_tick": sum(s["gets_per_tick"] for s in shards),
        "stream_readings_per_tick": sum(s["stream_readings_per_tick"] for s in shards),
        "sampling": args.sample,
        "metric_streams": args.metric_streams,
        "wall_s": wall,
        # From the controllers' start to every ScoringAutoscaler decided for once (and
        # two ticks): the first round, not measured in the figures above.
        "first_round_s": first_round_s,
        "pod_server_scrapes_per_s": scraped / wall,
        # The emulator (this process) and the pods' server (a child process): when the
        # machine is busy, the controllers wait on them, and their ticks look longer than
        # their own work.
        "bench_cpu_s_per_tick": own / ticks_per_shard,
        "api_requests_by_kind": _by_kind(api, ticks_per_shard),
        "per_shard": shards,
    }


def _shard(i: int, before: dict[str, Any], after: dict[str, Any], cpu: float) -> dict[str, Any]:
    ticks = _ticks(before, after)

    def increase(name: str) -> float:
        return float(after.get(name, 0) - before.get(name, 0))

    gets = increase("rscore_autoscaler_pod_scrapes_total")
    streamed = increase("rscore_autoscaler_stream_readings_total")

    return {
        "shard": i,
        "autoscalers": int(after.get("rscore_autoscaler_owned", 0)),
        "ticks": int(ticks),
        "tick_p50_s": quantile(before["buckets"], after["buckets"], 0.5),
        "tick_p99_s": quantile(before["buckets"], after["buckets"], 0.99),
        "overruns": int(increase("rscore_autoscaler_tick_overruns_total")),
        "skipped_per_tick": increase("skipped") / max(ticks, 1),
        "cpu_s_per_tick": cpu / max(ticks, 1),
        # Pods read a tick: by a GET each, or from their streams.
        "scrapes_per_tick": (gets + streamed) / max(ticks, 1),
        "gets_per_tick": gets / max(ticks, 1),
        "stream_readings_per_tick": streamed / max(ticks, 1),
        "cached_pods": int(after.get("rscore_autoscaler_cached_pods", 0)),
    }


def _by_kind(requests: list[Any], ticks: float) -> dict[str, float]:
    kinds: dict[str, float] = {}
    for r in requests:
        tail = r.path.rstrip("/").split("/")
        kind = f"{r.method} {tail[-1] if tail[-1] in ('scale', 'status') else tail[-2]}"
        kinds[kind] = kinds.get(kind, 0.0) + 1 / ticks
    return dict(sorted(kinds.items()))


# --- the two smaller measurements of issue 19 -------------------------------------------

# What the two fleet-scale scenarios share: a 50 ms model on 4-worker pods, one a node,
# kept between 40 and 400 pods, a 0.5-s SLO.
_LARGE_REST = """[service]
kind = "lognormal"
mean_s = 0.05
cv = 1.0
[pods]
workers = 4
initial = {initial}
max_queue = 256
request_timeout_s = 5.0
max_batch_rows = 1
[nodes]
kind = "cpu"
pods_per_node = 1
max_nodes = 400
[policy]
kind = "rscore"
minReplicas = 40
maxReplicas = 400
[slo]
latency_p99_s = 0.5
"""

LARGE_SCENARIOS = {
    # A compressed diurnal day at fleet scale: 1,000 to 5,000 req/s on up to 100 pods.
    "diurnal-large": """seed = 3
duration_s = 1800
[workload]
kind = "diurnal"
rate = 3000.0
amplitude = 0.67
period_s = 1800
noise = 0.1
"""
    + _LARGE_REST.format(initial=100),
    # 1,000 req/s with 3x bursts of two minutes, on 40 to 60 pods.
    "mmpp-large": """seed = 4
duration_s = 1800
[workload]
kind = "mmpp"
rates = [1000.0, 3000.0]
mean_dwell_s = [300.0, 120.0]
"""
    + _LARGE_REST.format(initial=60),
}


def _simulate(job: tuple[str, bool]) -> dict[str, Any]:
    from rscore.autoscaler.sampling import SamplingPolicy
    from rscore.sim.engine import engine_for
    from rscore.sim.metrics import summarize
    from rscore.sim.policies import RscoreController
    from rscore.sim.scenario import load_scenario, scaling_spec

    path, sampling = job
    scenario = load_scenario(Path(path)).with_policy("rscore")
    controller = RscoreController(
        scaling_spec(scenario),
        scenario.controller.interval_s,
        scenario.controller.wall_start_s,
        sampling=SamplingPolicy(enabled=sampling),
    )
    result = engine_for(scenario, controller).run()
    summary = summarize(
        result, price_per_hour=scenario.nodes.price_per_hour, slo_p99_s=scenario.slo_p99_s
    )
    keep = ("cost_usd", "latency_p99_all_s", "slo_met", "max_ready_pods")
    return {"scenario": Path(path).stem, "sampling": sampling} | {k: summary[k] for k in keep}


def sim_sampling(paths: list[str], jobs: int) -> None:
    """rscore in the simulator with sampling off and on (the defaults), per scenario;
    without paths, the two fleet-scale scenarios above (issue 12's never exceed 50 ready
    pods, below which sampling reads every pod)."""
    from concurrent.futures import ProcessPoolExecutor
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as tmp:
        if not paths:
            for name, text in LARGE_SCENARIOS.items():
                (Path(tmp) / f"{name}.toml").write_text(text)
                paths.append(str(Path(tmp) / f"{name}.toml"))
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for row in pool.map(_simulate, [(p, s) for p in paths for s in (False, True)]):
                print(json.dumps(row), flush=True)


def parse_time() -> None:
    """Per page: prometheus_client's parser over the whole page (before issue 19), over
    the used lines only, and `parse_pod_metrics` now (one pass), on the bench's page."""
    import timeit

    from prometheus_client.parser import text_string_to_metric_families

    from rscore.autoscaler.scrape import READ, parse_pod_metrics, used_lines

    def full(text: str) -> list[tuple[str, float]]:
        families = text_string_to_metric_families(text)
        return [(s.name, s.value) for f in families for s in f.samples if s.name in READ]

    text = sidecar_page(1000.0)
    ways = {
        "full": lambda: full(text),
        "used lines": lambda: full(used_lines(text)),
        "one pass": lambda: parse_pod_metrics(text, 0.0),
    }
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(7):  # interleaved, best of 7: the least disturbed by other load
        for name, way in ways.items():
            best[name] = min(best[name], timeit.timeit(way, number=500) / 500)
    lines = len(text.splitlines())
    print(f"{lines} lines: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in best.items()))


def read_cost(argv: list[str]) -> None:
    """`python -m bench.controller read-cost [--pods N]`: the reader's CPU per keep-alive
    GET of N pods' pages and per streamed reading of N pods' streams (best of the
    rounds), against the pods' server (`Pods`) in a child process. Prints one JSON
    object."""
    import uvloop

    parser = argparse.ArgumentParser(prog="bench.controller read-cost")
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    async def gets(session: ClientSession, port: int) -> float:
        slots = asyncio.Semaphore(256)

        async def one(k: int) -> None:
            async with slots, session.get(f"http://{pod_ip(k)}:{port}/metrics") as r:
                await r.read()

        await asyncio.gather(*(one(k) for k in range(args.pods)))  # connections warm
        best = math.inf
        for _ in range(args.rounds):
            cpu = time.process_time()
            await asyncio.gather(*(one(k) for k in range(args.pods)))
            best = min(best, (time.process_time() - cpu) / args.pods)
        return best

    async def streamed(session: ClientSession, port: int) -> float:
        readings = [0]

        async def follow(k: int) -> None:
            url = f"http://{pod_ip(k)}:{port}{STREAM_PATH}?interval_s=2"
            async with session.get(url, timeout=ClientTimeout(total=None)) as r:
                while True:
                    await r.content.readuntil(b"# EOF\n")
                    readings[0] += 1

        tasks = [asyncio.create_task(follow(k)) for k in range(args.pods)]
        await asyncio.sleep(6)  # every stream open
        best = math.inf
        for _ in range(args.rounds):
            cpu, count = time.process_time(), readings[0]
            await asyncio.sleep(4)
            best = min(best, (time.process_time() - cpu) / max(1, readings[0] - count))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return best

    async def measure() -> dict[str, float]:
        pods = PodsProcess()
        await pods.start()
        try:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=4, keepalive_timeout=60)
            async with ClientSession(connector=connector) as session:
                return {
                    "pods": args.pods,
                    "get_us": 1e6 * await gets(session, pods.port),
                    "streamed_reading_us": 1e6 * await streamed(session, pods.port),
                }
        finally:
            await pods.stop()

    print(json.dumps(uvloop.run(measure()), indent=2))


def main() -> None:
    if sys.argv[1:2] == ["_controller"]:
        _run_controller(sys.argv[2:])
        return
    if sys.argv[1:2] == ["_pods"]:
        _serve_pods()
        return
    if sys.argv[1:2] == ["parse"]:
        parse_time()
        return
    if sys.argv[1:2] == ["read-cost"]:
        read_cost(sys.argv[2:])
        return
    if sys.argv[1:2] == ["sim-sampling"]:
        sim_sampling(sys.argv[2:], jobs=2)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--autoscalers", type=int, default=100)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--no-sample", dest="sample", action="store_false")
    parser.add_argument(
        "--no-metric-streams",
        dest="metric_streams",
        action="store_false",
        help="The controllers GET each pod's /metrics every tick (no /metrics/stream).",
    )
    parser.add_argument(
        "--max-concurrent-scrapes",
        type=int,
        default=None,
        help="Passed to each controller (its default when not given: 256).",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile each controller.")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="Bound on the whole run.")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "controller"))
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="As every bench takes it; this one never writes docs/.",
    )
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    path = Path(args.out) / "controller.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_shard"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
