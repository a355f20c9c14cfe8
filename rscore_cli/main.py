"""`rscore`: the command line. Each subcommand parses flags and calls one function."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import orjson

from r_scorer.errors import ScoringError
from r_scorer.logs import configure_json_logging

if TYPE_CHECKING:
    from sidecar.app import SidecarConfig
    from sidecar.serve import Listen


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rscore")
def cli() -> None:
    """Serve R models as fast, secure HTTPS services on Kubernetes."""


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("input_file", metavar="[INPUT.json|-]", default="-", type=click.File("rb"))
def predict(bundle: Path, input_file: click.utils.LazyFile) -> None:
    """Score INPUT (a POST /score body; default stdin) with BUNDLE and print predictions.

    On error, exits 1 and prints {"error": {"code", "message"}} on stderr.
    """
    from r_scorer.offline import predict_offline

    try:
        predictions = predict_offline(bundle, input_file.read())
    except ScoringError as exc:
        _fail(exc)
    sys.stdout.buffer.write(orjson.dumps({"predictions": predictions}) + b"\n")


_SOCKET_DIR = click.option(
    "--socket-dir", default="/run/rscore", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the workers' socket, shared by the scorer and the sidecar.",
)  # fmt: skip
_WORKERS = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="R worker processes [default: usable cores, from CPU affinity and cgroup quota].",
)  # fmt: skip
_DRAIN_TIMEOUT = click.option(
    "--drain-timeout-s", default=30.0, show_default=True, type=click.FloatRange(min=0),
    help="After SIGTERM, how long accepted requests may still take.",
)  # fmt: skip
_MAX_REQUESTS = click.option(
    "--max-requests-per-worker", type=click.IntRange(min=0), default=0, show_default=True,
    help="Recycle a worker after this many requests (0: never).",
)  # fmt: skip


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_SOCKET_DIR
@_WORKERS
@_MAX_REQUESTS
@_DRAIN_TIMEOUT
def scorer(
    bundle: Path,
    socket_dir: Path,
    workers: int | None,
    max_requests_per_worker: int,
    drain_timeout_s: float,
) -> None:
    """Run BUNDLE's R workers for a sidecar on --socket-dir (the pod's r-scorer)."""
    run_scorer(bundle, socket_dir, workers, max_requests_per_worker, drain_timeout_s)


def run_scorer(
    bundle: Path,
    socket_dir: Path,
    workers: int | None,
    max_requests_per_worker: int,
    drain_timeout_s: float,
) -> None:
    from r_scorer.cores import detect_usable_cores
    from r_scorer.pool import SOCKET_NAME
    from r_scorer.supervisor import serve_workers

    configure_json_logging()
    try:
        serve_workers(
            bundle,
            socket_dir / SOCKET_NAME,
            workers=workers or detect_usable_cores(),
            max_requests=max_requests_per_worker,
            drain_timeout_s=drain_timeout_s,
        )
    except ScoringError as exc:
        _fail(exc)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@_SOCKET_DIR
@_WORKERS
@_MAX_REQUESTS
@_DRAIN_TIMEOUT
def scorer_main(
    bundle: Path,
    socket_dir: Path,
    workers: int | None,
    max_requests_per_worker: int,
    drain_timeout_s: float,
) -> None:
    """The pod's r-scorer container: `python -m r_scorer --bundle B --socket-dir D`."""
    run_scorer(bundle, socket_dir, workers, max_requests_per_worker, drain_timeout_s)


def _sidecar_options(command: Callable[..., None]) -> Callable[..., None]:
    """The flags `rscore serve` and `rscore sidecar` share."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
        click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535)),
        click.option(
            "--metrics-port", default=9090, show_default=True, type=click.IntRange(0, 65535),
            help="Port of /metrics (Prometheus).",
        ),
        click.option(
            "--max-queue", default=128, show_default=True, type=click.IntRange(min=0),
            help="Requests that may wait per worker; beyond that, 429.",
        ),
        click.option(
            "--request-timeout-ms", default=5000, show_default=True, type=click.IntRange(min=1),
            help="Queue wait + scoring budget; beyond that, 504.",
        ),
        click.option(
            "--max-body-bytes", default=10 * 1024 * 1024, show_default=True,
            type=click.IntRange(min=1), help="Larger bodies get 413.",
        ),
        click.option(
            "--collect-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
            help="Write sampled inputs and outputs as JSON lines here.",
        ),
        click.option(
            "--collect-sample-rate", default=0.1, show_default=True,
            type=click.FloatRange(0.0, 1.0), help="Share of requests collected.",
        ),
        _DRAIN_TIMEOUT,
        click.option(
            "--auth", type=click.Choice(["none"]), default="none", show_default=True,
            help="Client authentication (keys and tokens are coming).",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _sidecar_config(options: dict[str, Any]) -> SidecarConfig:
    from sidecar.app import SidecarConfig

    return SidecarConfig(
        max_queue=options["max_queue"],
        request_timeout_ms=options["request_timeout_ms"],
        max_body_bytes=options["max_body_bytes"],
        collect_dir=options["collect_dir"],
        collect_sample_rate=options["collect_sample_rate"],
        drain_timeout_s=options["drain_timeout_s"],
    )


def _listen(options: dict[str, Any], socket_path: Path | None) -> Listen:
    from sidecar.serve import Listen

    return Listen(options["host"], options["port"], options["metrics_port"], socket_path)


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_WORKERS
@_MAX_REQUESTS
@_sidecar_options
def serve(bundle: Path, workers: int | None, max_requests_per_worker: int, **options: Any) -> None:
    """Serve BUNDLE over HTTP: R workers and the sidecar in one process group."""
    from r_scorer.bundle import read_bundle
    from r_scorer.cores import detect_usable_cores
    from r_scorer.supervisor import Supervisor
    from sidecar.serve import run

    configure_json_logging()
    try:
        read_bundle(bundle)  # fail fast on a folder that is no bundle at all
    except ScoringError as exc:
        _fail(exc)
    count = workers or detect_usable_cores()

    def supervisor(socket_path: Path) -> Supervisor:
        return Supervisor(bundle, socket_path, workers=count, max_requests=max_requests_per_worker)

    try:
        run(_sidecar_config(options), _listen(options, None), supervisor)
    except ScoringError as exc:
        _fail(exc)


@cli.command()
@_SOCKET_DIR
@_sidecar_options
def sidecar(socket_dir: Path, **options: Any) -> None:
    """Run only the sidecar; `rscore scorer` runs the R workers (the pod's two containers).

    Also `python -m sidecar --socket-dir D ...`.
    """
    from r_scorer.pool import SOCKET_NAME
    from sidecar.serve import run

    configure_json_logging()
    run(_sidecar_config(options), _listen(options, socket_dir / SOCKET_NAME), None)


def _fail(error: ScoringError) -> NoReturn:
    sys.stderr.buffer.write(orjson.dumps(error.to_json()) + b"\n")
    sys.exit(1)
