"""`make pod-test`: the scoring pod of manifests/base/deployment.yaml, run in podman.

Reads the Deployment (commands, args, flags from the base's ConfigMap, user, read-only
root, capabilities, CPU and memory limits, volumes, probes, grace period) and runs its two
containers in a podman pod from the images `make images` built, then checks, printing one
line per result and a JSON summary (docs/deploy.md shows one):

1. each example bundle is scored over HTTPS with a key, as `rscore predict` scores it;
2. keys and certificate rotate by swapping the Secret volumes' `..data` symlink, as
   kubelet does: the new key and certificate are served, the old key refused, no restart;
3. `kill -9` of the R worker scoring one request answers that request 502 only;
4. `podman pod stop` (SIGTERM, the manifest's grace period) under load: every request
   whose connection was accepted is answered.

What differs from a cluster, on purpose: host networking (this kernel's hybrid cgroups
rule out a pod network for podman), so the ports are free ones, not 8000 and 9090; kubelet's
probes are run by this script with the manifest's timings; the preStop pause (it only
delays SIGTERM) is not run. Never touches containers or volumes it did not create
(all named `rscore-pod-test-*`), and removes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
# This machine's hard limits are below podman's defaults.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
NAME = "rscore-pod-test"
EXAMPLES = ("mtcars-lm", "iris-rf", "warpbreaks-glm")
# A model whose R call blocks when asked, writing its worker's pid first: the request a
# test kills the worker under. Not batchable, so no other request shares its R call.
SLOW_SCORE_R = """
init <- function(model_dir) list()
score <- function(state, data) {
  if (!is.null(data$pidfile)) {
    writeLines(as.character(Sys.getpid()), data$pidfile[1])
    repeat Sys.sleep(0.05)
  }
  if (!is.null(data$sleep)) Sys.sleep(max(data$sleep, na.rm = TRUE))
  data$x * 2
}
"""


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the manifest ------------------------------------------------------------------------


@dataclass
class Probe:
    path: str | None  # httpGet path; None: exec
    command: list[str] | None
    initial_delay_s: float
    period_s: float
    timeout_s: float
    failure_threshold: int

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Probe:
        return cls(
            path=spec.get("httpGet", {}).get("path"),
            command=spec.get("exec", {}).get("command"),
            initial_delay_s=spec.get("initialDelaySeconds", 0),
            period_s=spec.get("periodSeconds", 10),
            timeout_s=spec.get("timeoutSeconds", 1),
            failure_threshold=spec.get("failureThreshold", 3),
        )


@dataclass
class Pod:
    """What podman needs from manifests/base/deployment.yaml and its ConfigMap."""

    spec: dict[str, Any]
    flags: dict[str, str]
    grace_s: int = field(init=False)

    def __post_init__(self) -> None:
        self.grace_s = self.spec["terminationGracePeriodSeconds"]

    @classmethod
    def from_manifests(cls) -> Pod:
        deployment = yaml.safe_load((ROOT / "manifests/base/deployment.yaml").read_text())
        kustomization = yaml.safe_load((ROOT / "manifests/base/kustomization.yaml").read_text())
        (generator,) = [
            g for g in kustomization["configMapGenerator"] if g["name"] == "scorer-flags"
        ]
        flags = dict(literal.split("=", 1) for literal in generator["literals"])
        return cls(deployment["spec"]["template"]["spec"], flags)

    def container(self, name: str) -> dict[str, Any]:
        (container,) = [c for c in self.spec["containers"] if c["name"] == name]
        return container

    def user(self) -> str:
        context = self.spec["securityContext"]
        return f"{context['runAsUser']}:{context['runAsGroup']}"

    def args(self, name: str, overrides: dict[str, str]) -> list[str]:
        """The container's command and args with $(VAR) expanded as kubelet does."""
        container = self.container(name)
        env = dict(self.flags)
        env["RSCORE_WORKERS"] = str(self.workers())
        out = []
        for written in [*container["command"], *container.get("args", [])]:
            arg = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], written)
            flag = arg.split("=", 1)[0]
            out.append(f"{flag}={overrides[flag]}" if flag in overrides else arg)
        return out

    def workers(self) -> int:
        """RSCORE_WORKERS: the downward API's limits.cpu of the r-scorer, rounded up."""
        return math.ceil(cpu_cores(self.container("r-scorer")["resources"]["limits"]["cpu"]))

    def limits(self, name: str) -> list[str]:
        limits = self.container(name)["resources"]["limits"]
        memory = limits["memory"].replace("Gi", "g").replace("Mi", "m")
        return ["--cpus", str(cpu_cores(limits["cpu"])), "--memory", memory]

    def hardening(self, name: str) -> list[str]:
        context = self.container(name)["securityContext"]
        flags = ["--user", self.user(), "--group-add", str(self.spec["securityContext"]["fsGroup"])]
        if context.get("readOnlyRootFilesystem"):
            # Only the manifest's volumes are writable: no tmpfs that podman adds itself.
            flags += ["--read-only", "--read-only-tmpfs=false"]
        if not context.get("allowPrivilegeEscalation", True):
            flags += ["--security-opt", "no-new-privileges"]
        flags += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
        return flags

    def probe(self, container: str, kind: str) -> Probe:
        return Probe.of(self.container(container)[kind])


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- Secret volumes, as kubelet writes them ----------------------------------------------


class SecretVolume:
    """A folder laid out as kubelet's AtomicWriter does: the files live in a timestamped
    folder, `..data` links to it, and each name links through `..data`. An update writes a
    new folder and renames a new `..data` over the old: one atomic swap."""

    def __init__(self, path: Path, gid: int, mode: int) -> None:
        self.path, self.gid, self.mode = path, gid, mode
        path.mkdir(parents=True)
        path.chmod(0o755)

    def write(self, files: dict[str, bytes]) -> None:
        stamp = self.path / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        stamp.mkdir()
        stamp.chmod(0o755)
        for name, content in files.items():
            (stamp / name).write_bytes(content)
            os.chown(stamp / name, 0, self.gid)
            (stamp / name).chmod(self.mode)
        old = (self.path / "..data").resolve() if (self.path / "..data").exists() else None
        (self.path / "..data_tmp").symlink_to(stamp.name)
        (self.path / "..data_tmp").rename(self.path / "..data")
        for name in files:
            link = self.path / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(old)


def make_keys(folder: Path) -> tuple[bytes, str]:
    keys = folder / f"keys-{time.monotonic_ns()}"
    subprocess.run(
        [str(ROOT / ".venv/bin/rscore"), "keys", "generate", str(keys), "--count", "1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    text = keys.read_text()
    (key,) = [line for line in text.splitlines() if line and not line.startswith("#")]
    return text.encode(), key


def make_certs(folder: Path) -> Path:
    subprocess.run(
        [str(ROOT / "scripts/dev-certs"), str(folder)], check=True, capture_output=True, timeout=60
    )
    return folder


def make_jwks(folder: Path) -> bytes:
    subprocess.run(
        [
            str(ROOT / ".venv/bin/rscore"),
            "keys",
            "jwk",
            str(folder / "signing.jwk"),
            str(folder / "jwks.json"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (folder / "jwks.json").read_bytes()


# --- the pod -----------------------------------------------------------------------------


@dataclass
class RunningPod:
    name: str
    port: int
    metrics_port: int
    ssl: ssl.SSLContext
    key: str
    started: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class PodRunner:
    def __init__(self, pod: Pod, work: Path, scorer_image: str, sidecar_image: str) -> None:
        self.pod, self.work = pod, work
        self.scorer_image, self.sidecar_image = scorer_image, sidecar_image
        self.gid = pod.spec["securityContext"]["fsGroup"]
        mode = pod.spec["volumes"][2]["secret"]["defaultMode"]
        self.keys = SecretVolume(work / "keys", self.gid, mode)
        self.jwks = SecretVolume(work / "jwks", self.gid, mode)
        self.tls = SecretVolume(work / "tls", self.gid, mode)
        self.cas: list[Path] = []

    def credentials(self, generation: int) -> str:
        """Write (or rotate to) a fresh key, JWKS, and a certificate from a fresh CA."""
        folder = self.work / f"gen{generation}"
        folder.mkdir()
        keys, key = make_keys(folder)
        certs = make_certs(folder / "certs")
        self.cas.append(certs / "ca.crt")
        self.keys.write({"keys": keys})
        self.jwks.write({"jwks.json": make_jwks(folder)})
        self.tls.write(
            {
                "tls.crt": (certs / "tls.crt").read_bytes(),
                "tls.key": (certs / "tls.key").read_bytes(),
            }
        )
        return key

    def client_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for ca in self.cas:
            context.load_verify_locations(ca)
        return context

    def start(self, name: str, bundle: Path | None, key: str) -> RunningPod:
        pod = self.pod
        port, metrics_port = free_port(), free_port()
        podman("pod", "create", "--name", name, "--network", "host")
        # The socket emptyDir (medium: Memory, world-writable as kubelet makes it): a tmpfs
        # of the manifest's size, bind-mounted into both containers.
        limit = pod.spec["volumes"][0]["emptyDir"]["sizeLimit"].replace("Mi", "m")
        socket_dir = self.work / f"{name}-socket"
        socket_dir.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={limit},mode=0777", "tmpfs", str(socket_dir)],
            check=True,
            timeout=30,
        )
        socket_mount = ["-v", f"{socket_dir}:/run/rscore"]

        def run_container(container: str, image: str, args: list[str], *options: str) -> None:
            """One of the pod's containers, as the manifest says, with `options` (its
            volumes) besides the socket's; the first two of `args` are its entrypoint."""
            podman(
                "run", "-d", "--pod", name, "--name", f"{name}-{container}", *ULIMITS,
                *pod.hardening(container), *pod.limits(container), *socket_mount, *options,
                "--entrypoint", json.dumps(args[:2]), image, *args[2:],
            )  # fmt: skip

        started = time.monotonic()
        model = ["-v", f"{bundle}:/models/model:ro"] if bundle is not None else []
        tmp_limit = pod.spec["volumes"][1]["emptyDir"]["sizeLimit"].replace("Gi", "g")
        run_container(
            "r-scorer", self.scorer_image, pod.args("r-scorer", {}), *model,
            "--tmpfs", f"/tmp:rw,size={tmp_limit},mode=1777",
        )  # fmt: skip
        sidecar_args = pod.args(
            "sidecar", {"--port": str(port), "--metrics-port": str(metrics_port)}
        )
        secrets = []
        for volume, mount in ((self.keys, "keys"), (self.jwks, "jwks"), (self.tls, "tls")):
            secrets += ["-v", f"{volume.path}:/etc/rscore/{mount}:ro"]
        run_container("sidecar", self.sidecar_image, sidecar_args, *secrets)
        return RunningPod(name, port, metrics_port, self.client_ssl(), key, started)

    def remove(self, name: str) -> None:
        podman("pod", "rm", "--force", "--time", "0", name, check=False)
        socket_dir = self.work / f"{name}-socket"
        if socket_dir.is_mount():
            subprocess.run(["umount", str(socket_dir)], check=True, timeout=30)


# --- probes and requests -----------------------------------------------------------------


async def http_probe(session: aiohttp.ClientSession, pod: RunningPod, probe: Probe) -> bool:
    try:
        async with session.get(
            f"{pod.url}{probe.path}", ssl=pod.ssl, timeout=aiohttp.ClientTimeout(probe.timeout_s)
        ) as response:
            return 200 <= response.status < 400
    except (aiohttp.ClientError, TimeoutError):
        return False


def exec_probe(pod: RunningPod, container: str, probe: Probe) -> bool:
    assert probe.command is not None
    result = subprocess.run(
        [*PODMAN, "exec", f"{pod.name}-{container}", *probe.command],
        capture_output=True,
        timeout=probe.timeout_s + 10,
        check=False,
    )
    return result.returncode == 0


async def wait_started(session: aiohttp.ClientSession, pod: RunningPod, spec: Pod) -> float:
    """The r-scorer's startupProbe with the manifest's timing; also a fine-grained poll of
    /readyz for the start time. Returns seconds to ready."""
    probe = spec.probe("r-scorer", "startupProbe")
    fine_ready = None
    deadline = pod.started + probe.initial_delay_s + probe.period_s * probe.failure_threshold
    while time.monotonic() < deadline:
        if await http_probe(session, pod, probe):
            fine_ready = time.monotonic() - pod.started
            break
        state = podman("inspect", "--format", "{{.State.Status}}", f"{pod.name}-r-scorer")
        if state == "exited":  # kubelet would restart it; here that is a failure
            raise RuntimeError(f"{pod.name}: the r-scorer exited before it was ready")
        await asyncio.sleep(0.1)  # a poll interval, not sequencing: the loop checks state
    if fine_ready is None:
        raise RuntimeError(f"{pod.name}: not ready within the startup probe's budget")
    # kubelet would first see it at the next probe period after the initial delay.
    return fine_ready


async def score(
    session: aiohttp.ClientSession, pod: RunningPod, body: Any, key: str | None = None
) -> tuple[int, Any]:
    async with session.post(
        f"{pod.url}/score",
        json=body,
        ssl=pod.ssl,
        headers={"Authorization": f"Bearer {key or pod.key}"},
        timeout=aiohttp.ClientTimeout(total=60),
    ) as response:
        return response.status, await response.json(content_type=None)


async def metrics(session: aiohttp.ClientSession, pod: RunningPod) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{pod.metrics_port}/metrics") as response:
        text = await response.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def served_cert(pod: RunningPod) -> bytes:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", pod.port, ssl=pod.ssl, server_hostname="localhost"
    )
    cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()
    return cert


async def eventually(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)  # poll interval
    raise RuntimeError(f"not within {timeout_s} s: {what}")


def predict_offline(bundle: Path, request: Path) -> Any:
    result = subprocess.run(
        [str(ROOT / ".venv/bin/rscore"), "predict", str(bundle), str(request)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)


# --- the checks --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    runner: PodRunner, spec: Pod, name: str, bundle: Path | None, key: str
) -> AsyncIterator[tuple[RunningPod, aiohttp.ClientSession]]:
    runner.remove(name)
    try:
        pod = runner.start(name, bundle, key)
        connector = aiohttp.TCPConnector(force_close=True, limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            pod.timings["ready_s"] = await wait_started(session, pod, spec)
            pod.timings.update(cold_start(name))
            # Once started, the other probes pass as kubelet would run them.
            for kind in ("readinessProbe", "livenessProbe"):
                assert await http_probe(session, pod, spec.probe("sidecar", kind)), kind
            scorer_live = spec.probe("r-scorer", "livenessProbe")
            assert await asyncio.to_thread(exec_probe, pod, "r-scorer", scorer_live)
            yield pod, session
    except BaseException:
        for container in ("r-scorer", "sidecar"):
            logs = subprocess.run(
                [*PODMAN, "logs", "--tail", "20", f"{name}-{container}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            print(f"--- {name}-{container}:\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        raise
    finally:
        runner.remove(name)


def cold_start(name: str) -> dict[str, float]:
    """The supervisor's one "cold start" log line: seconds per phase (slowest worker)."""
    # The container's stderr comes back on podman's stderr.
    logs = subprocess.run(
        [*PODMAN, "logs", f"{name}-r-scorer"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stderr
    for line in logs.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "cold_start" in record:
                phases = {key: round(value, 2) for key, value in record["cold_start"].items()}
                phases["workers_ready_s"] = phases.pop("ready_s")  # after the supervisor began
                return phases
    raise RuntimeError(f"{name}: the r-scorer logged no cold start")


async def check_examples(runner: PodRunner, spec: Pod, key: str, results: dict) -> None:
    for example in EXAMPLES:
        bundle = ROOT / "examples/build" / example
        request = ROOT / "examples/requests" / f"{example}.json"
        async with running(runner, spec, f"{NAME}-{example}", bundle, key) as (pod, session):
            status, body = await score(session, pod, json.loads(request.read_text()))
            expected = predict_offline(bundle, request)
            assert status == 200, (example, status, body)
            assert body["predictions"] == expected["predictions"], (example, body, expected)
            status, _ = await score(session, pod, json.loads(request.read_text()), key="x" * 32)
            assert status == 401, (example, status)
            timings = pod.timings
            results["examples"][example] = {
                "status": 200,
                "pod_ready_s": round(timings["ready_s"], 2),
                "cold_start_s": {k: v for k, v in timings.items() if k != "ready_s"},
            }
            report(
                f"{example}: 200, same predictions as rscore predict; wrong key 401; "
                f"pod ready in {timings['ready_s']:.1f} s (R start-up {timings['r_start_s']} s, "
                f"packages {timings['packages_s']} s, model {timings['model_s']} s, "
                f"all workers ready {timings['workers_ready_s']} s)"
            )


async def check_rotation(runner: PodRunner, spec: Pod, key: str, results: dict) -> str:
    bundle = ROOT / "examples/build/mtcars-lm"
    body = json.loads((ROOT / "examples/requests/mtcars-lm.json").read_text())
    async with running(runner, spec, f"{NAME}-rotate", bundle, key) as (pod, session):
        old_cert = await served_cert(pod)
        new_key = runner.credentials(generation=1)
        pod.ssl = runner.client_ssl()  # trusts both CAs, as clients do during a rotation

        async def rotated() -> bool:
            status, _ = await score(session, pod, body, key=new_key)
            return status == 200 and await served_cert(pod) != old_cert

        began = time.monotonic()
        await eventually(rotated, 60, "the new key and certificate served")
        took = time.monotonic() - began
        status, _ = await score(session, pod, body, key=key)
        assert status == 401, f"the old key still works after rotation: {status}"
        restarts = podman("inspect", "--format", "{{.RestartCount}}", f"{pod.name}-sidecar")
        assert restarts == "0", restarts
        results["rotation"] = {"seconds_to_new_credentials": round(took, 1), "old_key": 401}
        report(
            f"rotation by ..data swap: new key and certificate served after {took:.1f} s, "
            "old key 401, no restart"
        )
    return new_key


def slow_bundle(work: Path) -> Path:
    bundle = work / "slow"
    bundle.mkdir()
    (bundle / "score.R").write_text(SLOW_SCORE_R)
    (bundle / "rscore.toml").write_text("[serving]\nbatchable = false\n")
    bundle.chmod(0o755)
    for path in bundle.iterdir():
        path.chmod(0o644)
    return bundle


async def check_kill_and_stop(runner: PodRunner, spec: Pod, key: str, results: dict) -> None:
    bundle = slow_bundle(runner.work)
    async with running(runner, spec, f"{NAME}-faults", bundle, key) as (pod, session):
        # kill -9 of the worker scoring one request: that request 502, the others 200.
        victim = asyncio.create_task(
            score(session, pod, {"dataframe_records": [{"x": 1, "pidfile": "/tmp/victim.pid"}]})
        )

        async def pid_written() -> bool:
            out = podman("exec", f"{pod.name}-r-scorer", "cat", "/tmp/victim.pid", check=False)
            return out.strip().isdigit()

        await eventually(pid_written, 30, "the victim's worker wrote its pid")
        pid = podman("exec", f"{pod.name}-r-scorer", "cat", "/tmp/victim.pid")
        others = [
            asyncio.create_task(
                score(session, pod, {"dataframe_records": [{"x": i, "sleep": 0.2}]})
            )
            for i in range(20)
        ]
        podman("exec", f"{pod.name}-r-scorer", "sh", "-c", f"kill -9 {int(pid)}")
        status, body = await victim
        assert status == 502, (status, body)
        other_statuses = Counter(status for status, _ in await asyncio.gather(*others))
        assert other_statuses == Counter({200: 20}), other_statuses

        async def workers_back() -> bool:
            samples = await metrics(session, pod)
            return samples.get("rscore_worker_restarts_total") == 1 and samples.get(
                "rscore_workers"
            ) == float(spec.workers())

        await eventually(workers_back, 60, "the killed worker replaced")
        results["kill_9"] = {"victim": status, "others": dict(other_statuses)}
        report(
            f"kill -9 worker {pid}: its request {status} ({body.get('error')}), "
            f"the other 20 all 200, worker replaced"
        )

        # SIGTERM with requests in flight and queued: each answered 200. As in a cluster,
        # new requests stop coming once the pod is terminating (its endpoint is removed
        # during the preStop pause), except a few sent during the drain: answered 503.
        in_flight = 2 * spec.workers()  # half queued: all within the request timeout
        accepted = [
            asyncio.create_task(
                score(session, pod, {"dataframe_records": [{"x": i, "sleep": 1.5}]})
            )
            for i in range(in_flight)
        ]

        async def all_admitted() -> bool:
            samples = await metrics(session, pod)
            admitted = samples.get("rscore_inflight_requests", 0) + samples.get(
                "rscore_queue_depth", 0
            )
            return admitted == in_flight

        await eventually(all_admitted, 30, f"{in_flight} requests admitted")
        began = time.monotonic()
        stop = asyncio.create_task(
            asyncio.to_thread(
                podman,
                "pod",
                "stop",
                "--time",
                str(spec.grace_s),
                pod.name,
                timeout=spec.grace_s + 30,
            )
        )
        readiness = spec.probe("sidecar", "readinessProbe")

        async def draining() -> bool:
            return not await http_probe(session, pod, readiness)

        await eventually(draining, 30, "the sidecar not ready after SIGTERM")
        during_drain = Counter(
            status
            for status, _ in await asyncio.gather(
                *(score(session, pod, {"dataframe_records": [{"x": 1}]}) for _ in range(5))
            )
        )
        answered = Counter(status for status, _ in await asyncio.gather(*accepted))
        await stop
        stopped_s = time.monotonic() - began
        exit_codes = {
            container: podman(
                "inspect", "--format", "{{.State.ExitCode}}", f"{pod.name}-{container}"
            )
            for container in ("r-scorer", "sidecar")
        }
        results["sigterm"] = {
            "in_flight_or_queued_at_sigterm": dict(answered),
            "sent_during_drain": dict(during_drain),
            "stop_s": round(stopped_s, 1),
            "exit_codes": exit_codes,
        }
        report(
            f"pod stop (grace {spec.grace_s} s) with {in_flight} requests in flight or "
            f"queued: {dict(answered)}; sent during the drain: {dict(during_drain)}; "
            f"stopped in {stopped_s:.1f} s; exit codes {exit_codes}"
        )
        assert answered == Counter({200: in_flight}), answered
        assert during_drain == Counter({503: 5}), during_drain
        assert set(exit_codes.values()) == {"0"}, exit_codes


def report(line: str) -> None:
    print(f"pod-test: {line}", flush=True)


def image_sizes(images: list[str]) -> dict[str, int]:
    return {
        image: int(podman("image", "inspect", "--format", "{{.Size}}", image)) for image in images
    }


async def main(args: argparse.Namespace) -> int:
    spec = Pod.from_manifests()
    results: dict[str, Any] = {"examples": {}}
    with tempfile.TemporaryDirectory(prefix="rscore-pod-test-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        # The pod's infra container takes podman's default limits, above this machine's
        # hard limits: give every container of ours the limits ULIMITS names.
        (work / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        )
        os.environ["CONTAINERS_CONF"] = str(work / "containers.conf")
        runner = PodRunner(spec, work, args.scorer_image, args.sidecar_image)
        key = runner.credentials(generation=0)
        await check_examples(runner, spec, key, results)
        key = await check_rotation(runner, spec, key, results)
        await check_kill_and_stop(runner, spec, key, results)
        results["image_bytes"] = image_sizes([args.scorer_image, args.sidecar_image])
    print(json.dumps(results, indent=2))
    return 0


def _cli() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scorer-image", default="localhost/rscore-scorer:dev")
    parser.add_argument("--sidecar-image", default="localhost/rscore-sidecar:dev")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_cli())))
