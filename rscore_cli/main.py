"""`rscore`: the command line. Each subcommand parses flags and calls one function."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click
import orjson

from r_scorer.errors import ScoringError


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
        sys.stderr.buffer.write(orjson.dumps(exc.to_json()) + b"\n")
        sys.exit(1)
    sys.stdout.buffer.write(orjson.dumps({"predictions": predictions}) + b"\n")


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--socket",
    "socket_path",
    default="/run/rscore/workers.sock",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The sidecar's worker socket to connect to.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="R worker processes [default: usable cores, from CPU affinity and cgroup quota].",
)
@click.option(
    "--max-requests-per-worker",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Recycle a worker after this many requests (0: never).",
)
def scorer(
    bundle: Path, socket_path: Path, workers: int | None, max_requests_per_worker: int
) -> None:
    """Run BUNDLE's R workers for a sidecar listening on --socket (the pod's r-scorer)."""
    from r_scorer.cores import detect_usable_cores
    from r_scorer.supervisor import Supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    count = workers or detect_usable_cores()
    supervisor = Supervisor(
        bundle, socket_path, workers=count, max_requests=max_requests_per_worker
    )
    try:
        model = supervisor.start()
    except ScoringError as exc:
        sys.stderr.buffer.write(orjson.dumps(exc.to_json()) + b"\n")
        sys.exit(1)
    click.echo(
        f"{count} R worker(s) serving model {model['name']!r}, connecting to {socket_path}",
        err=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    supervisor.stop()
