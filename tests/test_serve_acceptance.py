"""Acceptance: the real commands as subprocesses, driven by real clients.

`rscore serve` (and the pod's two containers, `python -m rscore.r_scorer` and
`python -m rscore.sidecar`) run exactly as an operator starts them, on free ports of
127.0.0.1, logging JSON lines to
stderr (kept in a file per process and shown when a test fails). Clients are the ones users
have: plain HTTP, tritonclient's V2 client, promtool, and the schemathesis CLI. Predictions
are compared with R's own (expected.json from tests/fixtures/build_bundles.R, or Rscript).

One `rscore serve` per bundle is shared by the module's tests; every process is stopped
(SIGTERM, then SIGKILL of its process group) by a fixture finalizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_same_predictions
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.real_r, pytest.mark.e2e]  # markers: pyproject.toml

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = Path("/usr/bin/promtool")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
BODY_FORMATS = ("dataframe_records", "dataframe_split", "data")
HELD_OUT = ("glm-factors", "rf-prob", "gbm-ntrees")
WORKERS = {"glm-factors": 2}  # the others run one R worker: this machine has two cores

# The environment of every command: os.environ as it was when pytest imported this module
# (collection: no test has run yet). A test that embeds R in the pytest process (rpy2, e.g.
# tests/test_rmodel.py) leaves R's LD_LIBRARY_PATH in os.environ; with
# /usr/lib/x86_64-linux-gnu first, a child pyenv Python loads Debian's libpython, and
# `import ssl` (aiohttp, uvloop) fails with "undefined symbol: _PyModule_Add".
CHILD_ENV = {**os.environ, "NO_COLOR": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}

# Every metric name of ARCHITECTURE.md's metrics contract (the autoscaler reads them).
CONTRACT_METRICS = (
    "rscore_requests_total",
    "rscore_request_duration_seconds",
    "rscore_scoring_duration_seconds",
    "rscore_queue_depth",
    "rscore_inflight_requests",
    "rscore_concurrency_seconds_total",
    "rscore_workers",
    "rscore_worker_restarts_total",
    "rscore_batch_rows",
)

# --- processes --------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports of 127.0.0.1 (all held open while picking)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


class Proc:
    """A command run as `python -m ...` in its own session, its output in a log file."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=env or CHILD_ENV,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # its own process group: the R workers go with it
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return f"--- last lines of {self.name}'s log ---\n" + "\n".join(
            self.log().splitlines()[-lines:]
        )

    def kill_group(self) -> None:
        """SIGKILL the whole process group (the leader is not reaped yet: the group is ours)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT_S)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the group if it lingers. Never raises for a dead process."""
        try:
            self.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill_group()
        finally:
            self._log.close()


def wait_until(
    condition: Callable[[], bool], what: str, procs: list[Proc], timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Poll `condition` (bounded); fail at once, with the logs, if a process has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        for proc in procs:
            if proc.popen.poll() is not None:
                pytest.fail(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}\n"
                    + proc.log_tail()
                )
        if time.monotonic() > deadline:
            tails = "\n".join(proc.log_tail() for proc in procs)
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.05)


# --- HTTP -------------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Reply:
    """One request; any status is returned, not raised. Connection errors raise URLError."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, dict(error.headers), error.read())


def answers(url: str, status: int) -> bool:
    """Does GET `url` answer `status` now? (False while nothing listens.)"""
    try:
        return http("GET", url, timeout_s=5).status == status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass
class Server:
    proc: Proc
    port: int
    metrics_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Reply:
        return http("GET", self.url(path))

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return http("POST", self.url(path), body, **kwargs)

    def metrics_text(self) -> str:
        reply = http("GET", f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert reply.status == 200, reply
        assert reply.headers["Content-Type"].startswith("text/plain"), reply.headers
        return reply.body.decode()

    def gauge(self, name: str) -> float:
        """The value of an unlabelled metric, now."""
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise AssertionError(f"no metric {name} on the metrics port")

    def requests_by_code(self) -> Counter[str]:
        """rscore_requests_total by status code, now."""
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == "rscore_requests_total":
                    counts[sample.labels["code"]] += int(sample.value)
        return counts


def sidecar_args(port: int, metrics_port: int, *extra: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), *extra]


def wait_ready(server: Server, procs: list[Proc] | None = None) -> None:
    wait_until(
        lambda: answers(server.url("/readyz"), 200),
        f"{server.url('/readyz')} to answer 200",
        procs or [server.proc],
    )


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def servers(test_bundles: Path, logs_dir: Path) -> Iterator[Callable[[str], Server]]:
    """`servers(case)`: a ready `rscore serve` of test bundle `case`, one per case per module."""
    running: dict[str, Server] = {}

    def serve(case: str) -> Server:
        if case not in running:
            port, metrics_port = free_ports(2)
            proc = Proc(
                f"serve-{case}",
                [
                    "rscore.cli", "serve", str(test_bundles / case),
                    "--workers", str(WORKERS.get(case, 1)),
                    *sidecar_args(port, metrics_port), "--auth", "none",
                ],
                logs_dir,
            )  # fmt: skip
            running[case] = server = Server(proc, port, metrics_port)
            wait_ready(server)
        return running[case]

    try:
        yield serve
    finally:
        for server in running.values():
            server.proc.terminate()
        for server in running.values():
            server.proc.stop()


# --- bundles' rows and R's answers ------------------------------------------------------


def rows_of(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a POST /score body in any of the three formats."""
    if "dataframe_split" in request:
        split = request["dataframe_split"]
        return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
    return request.get("dataframe_records", request.get("data"))


def body_in(body_format: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if body_format == "dataframe_split":
        columns = list(rows[0])
        return {
            "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}
        }
    return {body_format: rows}


def case_of(test_bundles: Path, case: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """(rows, R's own predictions) of a test bundle."""
    request = json.loads((test_bundles / case / "request.json").read_text())
    expected = json.loads((test_bundles / case / "expected.json").read_text())
    return rows_of(request), expected


# --- 1. rscore serve: POST /score in every format, R's answers --------------------------


@pytest.mark.parametrize("body_format", BODY_FORMATS)
@pytest.mark.parametrize("case", HELD_OUT)
def test_serve_answers_score_with_rs_predictions_in_every_body_format(
    servers: Callable[[str], Server], test_bundles: Path, case: str, body_format: str
) -> None:
    server = servers(case)
    rows, expected = case_of(test_bundles, case)
    reply = server.post("/score", body_in(body_format, rows))
    assert reply.status == 200, (reply, server.proc.log_tail())
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers.get("x-request-id"), reply.headers
    assert_same_predictions(reply.json()["predictions"], expected)


# --- 2. the V2 routes through tritonclient ----------------------------------------------


def triton_inputs(rows: list[dict[str, Any]], datatypes: dict[str, str]) -> list[Any]:
    """One JSON (not binary) InferInput per column: BYTES from numpy object arrays."""
    import tritonclient.http as triton

    numpy_types = {"FP64": np.float64, "BYTES": np.object_, "BOOL": np.bool_, "INT32": np.int32}
    inputs = []
    for name, datatype in datatypes.items():
        array = np.array([row[name] for row in rows], dtype=numpy_types[datatype])
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    return inputs


@pytest.fixture
def triton_client(servers: Callable[[str], Server]) -> Iterator[Callable[[str], Any]]:
    import tritonclient.http as triton

    clients: list[Any] = []

    def connect(case: str) -> Any:
        clients.append(triton.InferenceServerClient(f"127.0.0.1:{servers(case).port}"))
        return clients[-1]

    try:
        yield connect
    finally:
        for client in clients:
            client.close()


def test_tritonclient_health_metadata_and_infer_with_factor_inputs(
    triton_client: Callable[[str], Any], test_bundles: Path
) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton_client("glm-factors")
    rows, expected = case_of(test_bundles, "glm-factors")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("glm-factors")
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_model_metadata("glm-factors")
    assert metadata["name"] == "glm-factors"
    assert [(i["name"], i["datatype"], i["parameters"]["levels"]) for i in metadata["inputs"]] == [
        ("wool", "BYTES", ["A", "B"]),
        ("tension", "BYTES", ["L", "M", "H"]),
    ]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404"

    inputs = triton_inputs(rows, {"wool": "BYTES", "tension": "BYTES"})
    result = client.infer(
        "glm-factors",
        inputs=inputs,
        outputs=[triton.InferRequestedOutput("predictions", binary_data=False)],
        request_id="acceptance-1",
    )
    assert result.get_response()["id"] == "acceptance-1"
    predictions = result.as_numpy("predictions")
    assert predictions.dtype == np.float64
    assert predictions.shape == (len(rows),)
    assert_same_predictions(predictions.tolist(), expected)

    # Without `outputs`, tritonclient asks for binary outputs; the JSON answer must do.
    default = client.infer("glm-factors", inputs)
    assert_same_predictions(default.as_numpy("predictions").tolist(), expected)


def test_tritonclient_data_frame_predictions_are_one_output_per_column(
    triton_client: Callable[[str], Any], test_bundles: Path
) -> None:
    import tritonclient.http as triton

    client = triton_client("rf-prob")
    rows, expected = case_of(test_bundles, "rf-prob")
    columns = ("setosa", "versicolor", "virginica")
    assert list(expected[0]) == list(columns)
    inputs = triton_inputs(rows, dict.fromkeys(rows[0], "FP64"))
    asked = [triton.InferRequestedOutput(name, binary_data=False) for name in columns]
    for result in (client.infer("rf-prob", inputs, outputs=asked), client.infer("rf-prob", inputs)):
        assert [o["name"] for o in result.get_response()["outputs"]] == list(columns)
        for name in columns:
            assert result.get_output(name)["datatype"] == "FP64"
            assert_same_predictions(result.as_numpy(name).tolist(), [row[name] for row in expected])


def test_tritonclient_sends_every_datatype_the_metadata_announces(
    triton_client: Callable[[str], Any], test_bundles: Path
) -> None:
    """ptype.rds: numeric, factor, logical, integer; sent as the metadata's datatypes."""
    client = triton_client("ptype")
    rows, expected = case_of(test_bundles, "ptype")
    metadata = client.get_model_metadata("ptype")
    datatypes = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    assert datatypes == {"x": "FP64", "g": "BYTES", "flag": "BOOL", "k": "INT32"}
    result = client.infer("ptype", triton_inputs(rows, datatypes))
    assert_same_predictions(result.as_numpy("predictions").tolist(), expected)


# --- 3. the metrics port passes promtool ------------------------------------------------


def test_metrics_exposition_passes_promtool_check(
    servers: Callable[[str], Server], test_bundles: Path, tmp_path: Path
) -> None:
    if not PROMTOOL.exists():
        pytest.skip(f"{PROMTOOL} is missing (Debian package 'prometheus')")
    server = servers("glm-factors")
    rows, _ = case_of(test_bundles, "glm-factors")
    before = server.requests_by_code()
    assert server.post("/score", {"data": rows}).status == 200
    unknown_level = server.post("/score", {"data": [{"wool": "Q", "tension": "L"}]})
    assert unknown_level.status == 400, unknown_level
    assert unknown_level.json()["error"]["code"] == "schema_mismatch"
    not_json = server.post("/score", raw=b"{not json")
    assert not_json.status == 400, not_json
    assert server.post("/score", raw=b"wool=A", content_type="text/plain").status == 415
    assert server.post("/v2/models/other/infer", {"inputs": []}).status == 404

    text = server.metrics_text()
    after = server.requests_by_code()
    assert after - before == Counter({"400": 2, "200": 1, "415": 1, "404": 1})
    for name in CONTRACT_METRICS:
        assert re.search(rf"^{name}(_count|_bucket|\{{| )", text, re.MULTILINE), name
    exposition = tmp_path / "metrics.txt"
    exposition.write_text(text)
    with exposition.open("rb") as stdin:
        checked = subprocess.run(
            [str(PROMTOOL), "check", "metrics"],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
            env=CHILD_ENV,
        )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), text


# --- 4. schemathesis against /swagger.json ----------------------------------------------


def schemathesis_events(report: Path) -> list[tuple[str, int]]:
    """(operation, status) of every response schemathesis recorded in its ndjson report."""
    seen = []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response")
            if response:
                seen.append((recorder["label"], int(response["status_code"])))
    return seen


@pytest.mark.parametrize("case", ["ptype", "glm-factors"])
@pytest.mark.slow
def test_schemathesis_finds_no_server_error(
    servers: Callable[[str], Server], case: str, tmp_path: Path
) -> None:
    server = servers(case)
    before = server.requests_by_code()
    report = tmp_path / "events.ndjson"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", server.url("/swagger.json"),
        "--checks", "not_a_server_error",
        "--max-examples", "100",
        "--request-timeout", "30",
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]  # fmt: skip
    run = subprocess.run(
        command,
        check=False,
        cwd=tmp_path,  # its .hypothesis and .schemathesis folders stay out of the repository
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        env=CHILD_ENV,
    )
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.out").write_text(output)
    assert run.returncode == 0, output[-6000:] + "\n" + server.proc.log_tail()
    # The last line: "No issues found in 12s", or "1 warning in 12s" (a warning is no failure:
    # the V2 tensor schema is generic, so random infer bodies are mostly refused with 400).
    summary = [line for line in output.splitlines() if line.startswith("=")][-1]
    assert " in " in summary, output[-3000:]
    assert not re.search(r"fail|error", summary, re.IGNORECASE), output[-6000:]
    selected = re.search(r"Selected:\s+(\d+)/(\d+)", output)
    tested = re.search(r"Tested:\s+(\d+)", output)
    assert selected, output[-3000:]
    assert tested, output[-3000:]
    assert int(tested[1]) == int(selected[1]) == int(selected[2]) >= 8, output[-3000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    assert int(generated[1]) >= 100, output[-3000:]

    # Not vacuous: the requests reached the server, and valid rows were scored by R.
    events = schemathesis_events(report)
    by_operation = Counter(label for label, _ in events)
    assert by_operation["POST /score"] >= 20, by_operation
    assert by_operation["POST /v2/models/{name}/infer"] >= 20, by_operation
    assert ("POST /score", 200) in events
    assert ("POST /v2/models/{name}/infer", 200) in events
    assert [event for event in events if event[1] >= 500] == []
    counted = server.requests_by_code() - before
    assert counted["200"] >= 2, counted
    assert sum(counted.values()) >= 50, counted
    assert {code for code in counted if code.startswith("5")} == set(), counted


# Found by schemathesis --checks all (ST204): 405 answers had no Allow header (RFC 9110
# requires one); rscore.sidecar.app.request_context rebuilt aiohttp's error and dropped it.
@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("GET", "/score", "POST"), ("DELETE", "/readyz", "GET")]
)
def test_method_not_allowed_names_the_allowed_methods(
    servers: Callable[[str], Server], method: str, path: str, allowed: str
) -> None:
    reply = http(method, servers("glm-factors").url(path))
    assert reply.status == 405, reply
    assert reply.json()["error"]["code"] == "method_not_allowed"
    assert allowed in reply.headers.get("Allow", "").replace(" ", "").split(","), reply.headers


# --- 5. the pod's two containers --------------------------------------------------------

MTCARS_REQUEST = ROOT / "examples" / "requests" / "mtcars-lm.json"
R_PREDICT = """
args <- commandArgs(trailingOnly = TRUE)
fit <- readRDS(file.path(args[[1]], "model.rds"))
rows <- jsonlite::fromJSON(args[[2]])$dataframe_records
cat(jsonlite::toJSON(unname(predict(fit, newdata = rows)), digits = NA))
"""


@pytest.fixture(scope="module")
def mtcars(example_bundles: Path) -> tuple[Path, dict[str, Any], list[float]]:
    """The example mtcars-lm bundle, its example request, and R's own predictions for it."""
    bundle = example_bundles / "mtcars-lm"
    answer = subprocess.run(
        ["Rscript", "-e", R_PREDICT, str(bundle), str(MTCARS_REQUEST)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=CHILD_ENV,
    )
    return bundle, json.loads(MTCARS_REQUEST.read_text()), json.loads(answer.stdout)


@pytest.fixture
def pod(logs_dir: Path) -> Iterator[Callable[..., Proc]]:
    """start(name, args): a process stopped at teardown; a short socket folder (sun_path)."""
    socket_dir = Path(tempfile.mkdtemp(prefix="rsacc-", dir="/tmp"))
    procs: list[Proc] = []

    def start(name: str, args: list[str]) -> Proc:
        args = [arg.replace("{socket_dir}", str(socket_dir)) for arg in args]
        procs.append(Proc(name, args, logs_dir))
        return procs[-1]

    try:
        yield start
    finally:
        # As Kubernetes does: SIGTERM to both containers at the same moment (the scorer
        # serves until the sidecar has drained and hung up), then wait for each.
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.parametrize("order", ["sidecar-first", "scorer-first"])
def test_pod_scorer_and_sidecar_in_either_order_and_scorer_restart(
    pod: Callable[..., Proc], mtcars: tuple[Path, dict[str, Any], list[float]], order: str
) -> None:
    bundle, request, expected = mtcars
    port, metrics_port = free_ports(2)
    scorer_args = [
        "rscore.r_scorer", "--bundle", str(bundle), "--socket-dir", "{socket_dir}",
        "--workers", "2",
    ]  # fmt: skip
    sidecar_cmd = [
        "rscore.sidecar", "--socket-dir", "{socket_dir}", "--request-timeout-ms", "1500",
        *sidecar_args(port, metrics_port), "--auth", "none",
    ]  # fmt: skip

    def start_scorer(name: str) -> Proc:
        scorer = pod(name, scorer_args)
        wait_until(
            lambda: "2 R worker(s) serving model 'mtcars-lm'" in scorer.log(),
            f"{name} to load the bundle",
            [scorer],
        )
        return scorer

    if order == "scorer-first":
        scorer = start_scorer("scorer")
        sidecar = pod("sidecar", sidecar_cmd)
        server = Server(sidecar, port, metrics_port)
    else:
        sidecar = pod("sidecar", sidecar_cmd)
        server = Server(sidecar, port, metrics_port)
        wait_until(lambda: answers(server.url("/healthz"), 200), "the sidecar", [sidecar])
        not_ready = server.get("/readyz")
        assert not_ready.status == 503, not_ready
        assert not_ready.headers["Retry-After"] == "5"
        early = server.post("/score", request)  # no worker has said which model it is
        assert early.status == 503, early
        assert early.json()["error"]["code"] == "unavailable"
        scorer = start_scorer("scorer")

    wait_ready(server, [sidecar, scorer])
    served = server.post("/score", request)
    assert served.status == 200, (served, sidecar.log_tail())
    assert_same_predictions(served.json()["predictions"], expected)

    # The scorer container dies (all of it: supervisor and R workers).
    scorer.kill_group()
    wait_until(lambda: server.gauge("rscore_workers") == 0, "both workers to be gone", [sidecar])
    not_ready = server.get("/readyz")
    assert not_ready.status == 503, not_ready
    assert not_ready.json()["error"]["code"] == "unavailable"
    assert server.get("/v2/health/ready").status == 503
    # What the code does: the model is known, so /score is admitted and queued for a worker
    # (the queue is sized for the 2 workers the scorer announced, so that requests ride out a
    # worker restart); with no worker coming back it times out: 504 after the request
    # timeout, not an immediate 503.
    started = time.monotonic()
    orphan = server.post("/score", request)
    waited = time.monotonic() - started
    assert orphan.status == 504, orphan
    assert orphan.json()["error"]["code"] == "timeout"
    assert 1.4 <= waited < 10, waited
    assert sidecar.popen.poll() is None  # the sidecar itself serves on

    scorer = start_scorer("scorer-again")
    wait_ready(server, [sidecar, scorer])
    again = server.post("/score", request)
    assert again.status == 200, (again, sidecar.log_tail())
    assert_same_predictions(again.json()["predictions"], expected)


# --- 6. start-up errors and auth --------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m <args> --host 127.0.0.1 --port P --metrics-port M` to its end."""
    port, metrics_port = free_ports(2)
    return subprocess.run(
        [sys.executable, "-m", *args, *sidecar_args(port, metrics_port)],
        check=False,
        cwd=ROOT,
        env=env or CHILD_ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("folder", "named"),
    [
        ("empty-folder", "has neither model.rds nor score.R"),
        ("bad-empty", "has neither model.rds nor score.R"),  # only an rscore.toml
        ("bad-no-predict", "'mystery_model'"),  # R loads it but cannot score it
    ],
)
def test_serve_of_a_folder_that_is_no_bundle_exits_1_with_a_json_error(
    test_bundles: Path, tmp_path: Path, folder: str, named: str
) -> None:
    if folder == "empty-folder":
        bundle = tmp_path / folder
        bundle.mkdir()
    else:
        bundle = test_bundles / folder
    result = run_cli("rscore.cli", "serve", str(bundle), "--workers", "1", "--auth", "none")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    logs = [json.loads(line) for line in lines]  # every stderr line is JSON
    error = logs[-1]["error"]
    assert error["code"] == "bundle_error", error
    assert named in error["message"], error
    assert folder in error["message"], error
    assert result.stdout == ""
    assert not any("serving on" in str(line.get("message")) for line in logs)


def test_serve_auth_keys_without_a_keys_file_makes_one_and_requires_its_key(
    test_bundles: Path, tmp_path: Path, logs_dir: Path
) -> None:
    """ARCHITECTURE.md: never open by accident. `rscore serve` makes a 0600 key file, says
    where, and serves with it; the sidecar alone refuses to start without credentials."""
    env = {**CHILD_ENV, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # never the real home
    refused = run_cli(
        "rscore.sidecar", "--socket-dir", str(tmp_path / "sock"), "--auth", "keys", env=env
    )
    assert refused.returncode == 2, refused.stderr
    assert "--keys-file" in refused.stderr, refused.stderr

    port, metrics_port = free_ports(2)
    bundle = test_bundles / "glm-factors"
    args = ["rscore.cli", "serve", str(bundle), "--workers", "1", "--auth", "keys"]
    proc = Proc("serve-auth-keys", [*args, *sidecar_args(port, metrics_port)], logs_dir, env)
    try:
        server = Server(proc, port, metrics_port)
        wait_ready(server)  # probes need no credential
        keys_file = tmp_path / "config" / "rscore" / "keys"
        assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
        assert str(keys_file) in proc.log()
        lines = [line.strip() for line in keys_file.read_text().splitlines()]
        (key,) = [line for line in lines if line and not line.startswith("#")]
        rows, expected = case_of(test_bundles, "glm-factors")
        anonymous = server.post("/score", {"data": rows})
        assert anonymous.status == 401, anonymous
        assert anonymous.json()["error"]["code"] == "unauthorized"
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer"), anonymous.headers
        wrong = server.post("/score", {"data": rows}, headers={"Authorization": f"Bearer x{key}"})
        assert wrong.status == 401, wrong
        keyed = server.post("/score", {"data": rows}, headers={"Authorization": f"Bearer {key}"})
        assert keyed.status == 200, (keyed, proc.log_tail())
        assert_same_predictions(keyed.json()["predictions"], expected)
        assert key not in proc.log()  # no credential is ever logged
    finally:
        proc.stop()
