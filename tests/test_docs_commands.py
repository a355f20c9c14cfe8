"""The README and docs/ checked against the commands they show (issue 21).

Every fenced ```sh block of README.md and docs/*.md is classified in BLOCKS, keyed by
its file and its first command: either run here, for real and offline (a scratch
folder that links the repository's .venv, examples, Makefile and scripts, so nothing
is written into the repository), or skipped with the reason. A block added to the
docs fails `test_every_sh_block_is_classified` until it is classified here; an entry
whose block is gone fails it too.

A block that starts `rscore serve` runs it in the background on free ports (its
commands' `127.0.0.1:8000` follow), runs the commands after it once the server is
ready, then stops it. Also checked: every make variable a user may set is in `make
help` and the README with its default, and the README repeats no benchmark figure.
"""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_pods import free_port

pytestmark = [pytest.mark.real_r, pytest.mark.e2e]  # markers: pyproject.toml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What the blocks use from the repository, linked into each scratch folder.
LINKED = (".venv", "examples", "Makefile", "scripts")
FENCE = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TRAILING_COMMENT = re.compile(r"\s{2,}#[^'\"]*$")
SCENARIO = re.compile(r"examples/scenarios/[\w./-]+\.toml")


@dataclass(frozen=True)
class Block:
    """One ```sh block: its commands, continuation lines joined, comments dropped."""

    path: str
    line: int
    commands: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.path, self.commands[0]


def sh_blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            joined = match.group(1).replace("\\\n", " ")
            commands = []
            for raw in joined.splitlines():
                command = TRAILING_COMMENT.sub("", raw).strip()
                if command and not command.startswith("#"):
                    commands.append(re.sub(r"\s+", " ", command))
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(str(doc.relative_to(ROOT)), line, tuple(commands)))
    return found


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Run:
    """Run the block; `leave_out` maps a command prefix to why it is not run here,
    `prepare` is what an earlier block of the same section leaves behind, `shorten`
    replaces text so that it runs in seconds, `expect` must be in the output."""

    leave_out: Mapping[str, str] = field(default_factory=dict)
    prepare: str = ""
    shorten: Mapping[str, str] = field(default_factory=dict)
    expect: str = ""


PREDICTIONS = '{"predictions":[22.638350924442673,21.567150999196148,27.634839435673968]}'
KUBE_LEFT_OUT = {
    "make setup": "set-up, done before any test runs (`make test`)",
    "docker build": "needs Docker, and builds images for minutes",
    "kubectl": "needs a cluster",
}

BLOCKS: dict[tuple[str, str], Skip | Run] = {
    ("README.md", "make demo"): Skip(
        "`make demo` serves until Ctrl-C; `make test` is the whole suite, this file included"
    ),
    ("README.md", ".venv/bin/rscore serve examples/build/mtcars-lm --auth none"): Run(
        expect=PREDICTIONS  # the answer the block shows in its comment
    ),
    ("README.md", "make dev-certs"): Run(expect=PREDICTIONS),  # HTTPS, curl --cacert
    (
        "README.md",
        ".venv/bin/rscore keys jwk secrets/signing.jwk secrets/jwks.json",
    ): Run(
        prepare="mkdir -p secrets && .venv/bin/rscore keys generate secrets/keys",
        expect=PREDICTIONS,
    ),
    (
        "README.md",
        "python -m rscore.r_scorer --bundle /models/my-model --socket-dir /run/rscore/private"
        " --workers 2",
    ): Skip("a pod's two long-running containers: /models/my-model exists only in the image"),
    ("README.md", "make setup"): Run(leave_out=KUBE_LEFT_OUT),  # the credentials it makes
    (
        "README.md",
        "rscore sim run examples/scenarios/poisson.toml --out /tmp/sim-poisson",
    ): Run(
        shorten={" --out /tmp/": " --duration-s 600 --out out/", "--trials 24": "--trials 2"},
        expect="best: trial",
    ),
    ("docs/autoscaler.md", "kubectl get rsa"): Skip("needs a cluster with the CRD installed"),
    ("docs/security.md", "make dev-certs"): Run(
        leave_out={"testssl": "testssl.sh is not installed by set-up; ~25 s per run"}
    ),
}


def test_every_sh_block_is_classified() -> None:
    keys = [block.key for block in sh_blocks()]
    unclassified = [key for key in keys if key not in BLOCKS]
    assert not unclassified, f"classify these ```sh blocks in BLOCKS (run or skip): {unclassified}"
    stale = [key for key in BLOCKS if key not in keys]
    assert not stale, f"BLOCKS entries with no block in the docs any more: {stale}"
    for plan in BLOCKS.values():
        assert not isinstance(plan, Skip) or plan.reason


RUN = [b for b in sh_blocks() if isinstance(BLOCKS.get(b.key), Run)]


@pytest.mark.parametrize("block", RUN, ids=[f"{b.path}:{b.line}" for b in RUN])
def test_sh_block_runs(block: Block, tmp_path: Path) -> None:
    plan = BLOCKS[block.key]
    assert isinstance(plan, Run)
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    commands = []
    for command in block.commands:
        if any(command.startswith(prefix) for prefix in plan.leave_out):
            continue
        shortened = command
        for old, new in plan.shorten.items():
            shortened = shortened.replace(old, new)
        commands.append(shortened)
    served = [i for i, c in enumerate(commands) if re.match(r"(\.venv/bin/)?rscore serve ", c)]
    assert len(served) <= 1, commands
    missing = missing_traces(commands)
    if missing:  # a clone alone: the traces live beside it, in ../shared/traces
        pytest.skip(f"needs {', '.join(missing)}, not beside this clone")
    if plan.prepare:
        run_shell([plan.prepare], tmp_path)
    if not served:
        output = run_shell(commands, tmp_path)
    else:
        (at,) = served
        run_shell(commands[:at], tmp_path)
        with serving(commands[at], tmp_path) as port:
            after = [c.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for c in commands[at + 1 :]]
            output = run_shell(after, tmp_path)
    assert plan.expect in output, output


def missing_traces(commands: list[str]) -> list[str]:
    """The trace files that the scenarios the commands name read and that are not there."""
    missing = []
    for scenario in sorted({m for c in commands for m in SCENARIO.findall(c)}):
        path = ROOT / scenario
        if not path.is_file():
            continue  # the command's own error is the test's to report
        trace = tomllib.loads(path.read_text()).get("workload", {}).get("path")
        if trace is not None and not (path.parent / trace).exists():
            missing.append(str(Path(trace).name))
    return missing


def run_shell(commands: list[str], cwd: Path) -> str:
    if not commands:
        return ""
    env_path = f"{cwd / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": env_path, "HOME": str(cwd), "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert result.returncode == 0, (commands, result.stdout, result.stderr)
    return result.stdout + result.stderr


@contextmanager
def serving(command: str, cwd: Path) -> Iterator[int]:
    """The block's `rscore serve` in the background on free ports, until it is ready."""
    port, metrics_port = free_port(), free_port()
    scheme = "https" if "--tls-cert" in command else "http"
    log = (cwd / "serve.log").open("wb")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {command} --port {port} --metrics-port {metrics_port}"],
        cwd=cwd, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        ready = wait_ready(f"{scheme}://127.0.0.1:{port}/readyz", server)
        assert ready, (cwd / "serve.log").read_text()
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()


def wait_ready(url: str, server: subprocess.Popen[bytes], attempts: int = 600) -> bool:
    # Not verified here: the block's own curl checks the certificate against the CA.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(attempts):
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    return False


def user_variables() -> dict[str, str]:
    """Make variables a user may set (`?=` in the Makefile), and the environment
    variables examples/demo.py reads, with their defaults."""
    makefile = (ROOT / "Makefile").read_text()
    found = {m[1]: m[2].strip() for m in re.finditer(r"^(\w+) \?=(.*)$", makefile, re.M)}
    assigned = set(re.findall(r"^(\w+) [:?+]?=", makefile, re.M))
    for name in set(re.findall(r"\$\((\w+)\)", makefile)) - assigned:
        found.setdefault(name, "")  # used, never assigned: the user's, empty by default
    demo = (ROOT / "examples" / "demo.py").read_text()
    for name, default in re.findall(r"os\.environ\.get\(\"(\w+)\", \"([^\"]*)\"\)", demo):
        assert found.get(name, default) == default, (name, found.get(name), default)
        found[name] = default
    return found


def test_make_variables_are_documented_with_their_defaults() -> None:
    variables = user_variables()
    assert {"PORT", "METRICS_PORT", "BENCH_ARGS", "PYTHON"} <= set(variables)
    help_text = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
        check=True, env={"PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    readme = (ROOT / "README.md").read_text()
    for name, default in variables.items():
        assert re.search(rf"^\s+{name}={re.escape(default)}\s", help_text, re.M), (name, help_text)
        shown = f"`{default}`" if default else "empty"
        assert f"| `{name}` | {shown} |" in readme, name


def test_the_readme_repeats_no_benchmark_figure() -> None:
    """It points to docs/benchmarks.md, which the benchmarks write, for every number."""
    readme = (ROOT / "README.md").read_text()
    ratios = re.findall(r"\b\d+(?:\.\d+)?x\b", readme)  # "29x plumber", "1.30x the oracle"
    assert not ratios, ratios
    # A rate a benchmark is run at is an input, not a result: 1,000 req/s (sidecar overhead).
    rates = set(re.findall(r"(?<![\w.,])(\d(?:[\d,]*\d)?(?:\.\d+)?) ?req/s", readme)) - {"1,000"}
    assert not rates, rates
    assert "docs/benchmarks.md" in readme


def test_the_architecture_page_names_every_import_contract() -> None:
    """docs/architecture.md draws the layers as enforced: each import-linter contract of
    pyproject.toml is listed there by name, and no name there is stale."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = {c["name"] for c in contracts["contracts"]}
    page = (root / "docs" / "architecture.md").read_text()
    table = page.split("## What is enforced", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \|", table, flags=re.MULTILINE)
    listed = {row for row in rows if row not in ("contract (its name in `pyproject.toml`)",)}
    listed = {row for row in listed if not set(row) <= {"-"}}
    assert names == listed
