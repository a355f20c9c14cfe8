"""`rscore`: the command line. Each subcommand parses flags and calls one function."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click
import orjson

from rscore.cli.activator_cmd import activator
from rscore.cli.autoscaler_cmd import autoscaler
from rscore.cli.measure_cmd import measure
from rscore.cli.options import (
    TLS_CERT,
    TLS_KEY,
    client_limit_options,
    client_limits,
    file_option,
)
from rscore.cli.validate_cmd import validate
from rscore.r_scorer.errors import ScoringError
from rscore.r_scorer.logs import configure_json_logging
from rscore.sidecar.config import SidecarConfig
from rscore.sim.cli import sim

if TYPE_CHECKING:
    from rscore.sidecar.auth import AuthConfig
    from rscore.sidecar.serve import Listen

# The flags' defaults are the config's own (one source: rscore/sidecar/config.py).
SIDECAR_DEFAULTS = SidecarConfig()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rscore")
def cli() -> None:
    """Serve R models as fast, secure HTTPS services on Kubernetes."""


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("input_file", metavar="[INPUT.json|-]", default="-", type=click.File("rb"))
def predict(bundle: Path, input_file: BinaryIO) -> None:
    """Score INPUT (a POST /score body; default stdin) with BUNDLE and print predictions.

    On error, exits 1 and prints {"error": {"code", "message"}} on stderr.
    """
    from rscore.r_scorer.offline import predict_offline

    try:
        predictions = predict_offline(bundle, input_file.read())
    except ScoringError as exc:
        _fail(exc)
    sys.stdout.buffer.write(orjson.dumps({"predictions": predictions}) + b"\n")


_SOCKET_DIR = click.option(
    "--socket-dir", default="/run/rscore", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the workers' socket, shared by the scorer and the sidecar: made 0700 "
    "if missing, refused if another user owns it or may write it.",
)  # fmt: skip
_WORKERS = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="R worker processes [default: usable cores, from CPU affinity and cgroup quota].",
)  # fmt: skip
_DRAIN_TIMEOUT = click.option(
    "--drain-timeout-s",
    default=SIDECAR_DEFAULTS.drain_timeout_s, show_default=True, type=click.FloatRange(min=0),
    help="After SIGTERM, how long accepted requests may still take.",
)  # fmt: skip
_MAX_REQUESTS = click.option(
    "--max-requests-per-worker", type=click.IntRange(min=0), default=0, show_default=True,
    help="Recycle a worker after this many requests (0: never).",
)  # fmt: skip
_WORKER_START = click.option(
    "--worker-start", type=click.Choice(["fork", "spawn"]), default="fork", show_default=True,
    help="fork: load the model once in a warmed parent and fork the workers from it (they "
    "share its memory; a restart takes milliseconds); spawn: each worker starts its own R "
    "and loads the model itself (for a score.R that cannot be forked: docs/workers.md).",
)  # fmt: skip
_NO_WORKER_GRACE = click.option(
    "--no-worker-grace-s", default=SIDECAR_DEFAULTS.no_worker_grace_s, show_default=True,
    type=click.FloatRange(min=0),
    help="Liveness fails (/healthz 503, `rscore scorer-live` exit 1) once no R worker has "
    "been up for this long: longer than a model load plus the 30 s restart back-off. "
    "0: never.",
)  # fmt: skip


def _scorer_options(command: Callable[..., None]) -> Callable[..., None]:
    """The flags `rscore scorer` and `python -m rscore.r_scorer` share."""
    for option in reversed(
        [_SOCKET_DIR, _WORKERS, _WORKER_START, _MAX_REQUESTS, _DRAIN_TIMEOUT, _NO_WORKER_GRACE]
    ):
        command = option(command)
    return command


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_scorer_options
def scorer(bundle: Path, **options: Any) -> None:
    """Run BUNDLE's R workers for a sidecar on --socket-dir (the pod's r-scorer)."""
    run_scorer(bundle, **options)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@_scorer_options
def scorer_main(bundle: Path, **options: Any) -> None:
    """The pod's r-scorer container: `python -m rscore.r_scorer --bundle B --socket-dir D`."""
    run_scorer(bundle, **options)


def run_scorer(
    bundle: Path,
    *,
    socket_dir: Path,
    workers: int | None,
    worker_start: str,
    max_requests_per_worker: int,
    drain_timeout_s: float,
    no_worker_grace_s: float,
) -> None:
    from rscore.r_scorer.cores import detect_usable_cores
    from rscore.r_scorer.liveness import LivenessBounds
    from rscore.r_scorer.pool import SOCKET_NAME
    from rscore.r_scorer.supervisor import serve_workers

    configure_json_logging()
    try:
        serve_workers(
            bundle,
            socket_dir / SOCKET_NAME,
            workers=workers or detect_usable_cores(),
            worker_start=worker_start,
            max_requests=max_requests_per_worker,
            drain_timeout_s=drain_timeout_s,
            liveness=LivenessBounds(no_worker_grace_s=no_worker_grace_s),
        )
    except ScoringError as exc:
        _fail(exc)


@cli.command("scorer-live")
@_SOCKET_DIR
def scorer_live(socket_dir: Path) -> None:
    """Exit 0 if the `rscore scorer` on --socket-dir is live, else say why and exit 1.

    The r-scorer container's exec livenessProbe: its monitor thread must have beaten
    within 30 s, and an R worker must have been up within its --no-worker-grace-s.
    """
    from rscore.r_scorer.liveness import LIVENESS_NAME, probe_file

    problem = probe_file(socket_dir / LIVENESS_NAME)
    if problem is not None:
        click.echo(f"not live: {problem}", err=True)
        sys.exit(1)
    click.echo("live")


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
            "--max-queue",
            default=SIDECAR_DEFAULTS.max_queue, show_default=True, type=click.IntRange(min=0),
            help="Requests that may wait per worker; beyond that, 429.",
        ),
        click.option(
            "--request-timeout-ms",
            default=SIDECAR_DEFAULTS.request_timeout_ms,
            show_default=True, type=click.IntRange(min=1),
            help="Queue wait + scoring budget; beyond that, 504.",
        ),
        click.option(
            "--max-body-bytes", default=SIDECAR_DEFAULTS.max_body_bytes, show_default=True,
            type=click.IntRange(min=1), help="Larger bodies get 413.",
        ),
        click.option(
            "--max-body-bytes-in-flight", default=SIDECAR_DEFAULTS.max_body_bytes_in_flight,
            show_default=True,
            type=click.IntRange(min=1),
            help="Bytes of bodies read, parsed, queued or scored at once; a body that does "
            "not fit gets 429 before it is read. At least --max-body-bytes.",
        ),
        click.option(
            "--max-rows",
            default=SIDECAR_DEFAULTS.max_rows, show_default=True, type=click.IntRange(min=1),
            help="Rows per request; more get 413.",
        ),
        click.option(
            "--max-columns",
            default=SIDECAR_DEFAULTS.max_columns, show_default=True, type=click.IntRange(min=1),
            help="Columns per request; more get 413.",
        ),
        click.option(
            "--collect-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
            help="Write sampled inputs and outputs as JSON lines here.",
        ),
        click.option(
            "--collect-sample-rate",
            default=SIDECAR_DEFAULTS.collect_sample_rate, show_default=True,
            type=click.FloatRange(0.0, 1.0), help="Share of requests collected.",
        ),
        click.option(
            "--collect-max-bytes", default=SIDECAR_DEFAULTS.collect_max_bytes, show_default=True,
            type=click.IntRange(min=1),
            help="Cap on all collected files together; the oldest hours are deleted first.",
        ),
        click.option(
            "--collect-max-record-bytes", default=SIDECAR_DEFAULTS.collect_max_record_bytes,
            show_default=True,
            type=click.IntRange(min=1),
            help="A bigger record is written as a marker line (its size, no data).",
        ),
        _DRAIN_TIMEOUT,
        _NO_WORKER_GRACE,
        click.option(
            "--max-batch-rows",
            default=SIDECAR_DEFAULTS.max_batch_rows, show_default=True, type=click.IntRange(min=1),
            help="Rows of waiting requests merged into one R call (batchable bundles).",
        ),
        click.option(
            "--max-batch-delay-ms", default=SIDECAR_DEFAULTS.max_batch_delay_ms, show_default=True,
            type=click.FloatRange(min=0), help="Wait this long for a batch to gather.",
        ),
        click.option(
            "--min-chunk-rows",
            default=SIDECAR_DEFAULTS.min_chunk_rows, show_default=True, type=click.IntRange(min=1),
            help="Fan-out: a request of twice this many rows may be split over idle workers.",
        ),
        click.option(
            "--auth", type=click.Choice(["keys", "tokens", "keys+tokens", "none"]),
            default=None,
            help="Who may score [default: what the credential flags configure; with none, "
            "`rscore serve` generates a key].",
        ),
        file_option("--keys-file", "API keys, one per line (# comments); re-read on change."),
        file_option("--token-jwks", "JWKS of the public keys that sign tokens (RS256, ES256)."),
        file_option("--token-secret-file", "HMAC secret that signs tokens (HS256)."),
        click.option("--token-issuer", default=None, help="Required `iss` of tokens."),
        click.option("--token-audience", default=None, help="Required `aud` of tokens."),
        click.option(
            "--token-leeway-s", default=30.0, show_default=True, type=click.FloatRange(min=0),
            help="Clock skew allowed for exp/nbf/iat.",
        ),
        click.option(
            "--token-max-lifetime-s", default=86400, show_default=True,
            type=click.IntRange(min=1),
            help="Longest token accepted: exp - iat (exp - now without iat); longer is 401.",
        ),
        TLS_CERT,
        TLS_KEY,
        file_option("--tls-client-ca", "PEM CA: require client certificates it signed (mTLS)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return client_limit_options(max_connections=1000)(command)


def _sidecar_config(options: dict[str, Any]) -> SidecarConfig:
    try:
        return SidecarConfig(
            max_queue=options["max_queue"],
            request_timeout_ms=options["request_timeout_ms"],
            max_body_bytes=options["max_body_bytes"],
            max_body_bytes_in_flight=options["max_body_bytes_in_flight"],
            max_rows=options["max_rows"],
            max_columns=options["max_columns"],
            collect_dir=options["collect_dir"],
            collect_sample_rate=options["collect_sample_rate"],
            collect_max_bytes=options["collect_max_bytes"],
            collect_max_record_bytes=options["collect_max_record_bytes"],
            drain_timeout_s=options["drain_timeout_s"],
            no_worker_grace_s=options["no_worker_grace_s"],
            max_batch_rows=options["max_batch_rows"],
            max_batch_delay_ms=options["max_batch_delay_ms"],
            min_chunk_rows=options["min_chunk_rows"],
        )
    except ValueError as exc:  # flags that contradict each other
        raise click.UsageError(str(exc)) from None


def _listen(options: dict[str, Any], socket_path: Path | None) -> Listen:
    from rscore.sidecar.serve import Listen

    return Listen(
        host=options["host"],
        port=options["port"],
        metrics_port=options["metrics_port"],
        socket_path=socket_path,
        tls_cert=options["tls_cert"],
        tls_key=options["tls_key"],
        tls_client_ca=options["tls_client_ca"],
        clients=client_limits(options),
    )


def _auth_config(options: dict[str, Any], *, may_generate_key: bool) -> AuthConfig:
    """The auth flags as an AuthConfig. With no credential configured, `rscore serve`
    makes (or reuses) a key file of its own: never open by accident."""
    from rscore.sidecar.auth import AuthConfig
    from rscore.sidecar.credentials import TokenPolicy

    keys_file = options["keys_file"]
    has_tokens = bool(options["token_jwks"] or options["token_secret_file"])
    mode = options["auth"]
    if mode is None:
        mode = {(True, True): "keys+tokens", (True, False): "keys", (False, True): "tokens"}.get(
            (keys_file is not None, has_tokens), "keys"
        )
    if mode in ("keys", "keys+tokens") and keys_file is None:
        if not may_generate_key:
            raise click.UsageError(
                "no credentials configured: give --keys-file, --token-jwks or "
                "--token-secret-file, or --auth none to serve openly"
            )
        keys_file = _own_keys_file()
    try:
        return AuthConfig(
            mode=mode,
            keys_file=keys_file,
            token_jwks=options["token_jwks"],
            token_secret_file=options["token_secret_file"],
            policy=TokenPolicy(
                issuer=options["token_issuer"],
                audience=options["token_audience"],
                leeway_s=options["token_leeway_s"],
                max_lifetime_s=options["token_max_lifetime_s"],
            ),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _own_keys_file() -> Path:
    """`$XDG_CONFIG_HOME/rscore/keys` (0600), made with a fresh key if it is not there."""
    import os

    from rscore.sidecar.credentials import generate_key, write_keys_file

    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = config_home / "rscore" / "keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_keys_file(path, [generate_key()])
    click.echo(
        f"No credentials given: clients must send a key from {path} "
        f"(Authorization: Bearer <key>). Use --auth none to serve openly.",
        err=True,
    )
    return path


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_WORKERS
@_WORKER_START
@_MAX_REQUESTS
@_sidecar_options
def serve(
    bundle: Path,
    workers: int | None,
    worker_start: str,
    max_requests_per_worker: int,
    **options: Any,
) -> None:
    """Serve BUNDLE over HTTP: R workers and the sidecar in one process group."""
    from rscore.r_scorer.bundle import read_bundle
    from rscore.r_scorer.cores import detect_usable_cores
    from rscore.r_scorer.supervisor import Supervisor
    from rscore.sidecar.serve import run

    configure_json_logging()
    try:
        read_bundle(bundle)  # fail fast on a folder that is no bundle at all
    except ScoringError as exc:
        _fail(exc)
    count = workers or detect_usable_cores()

    def supervisor(socket_path: Path) -> Supervisor:
        return Supervisor(
            bundle,
            socket_path,
            workers=count,
            max_requests=max_requests_per_worker,
            worker_start=worker_start,
        )

    auth = _auth_config(options, may_generate_key=True)
    try:
        run(_sidecar_config(options), _listen(options, None), supervisor, auth)
    except (ScoringError, ValueError, OSError) as exc:
        _fail(exc)


@cli.command()
@_SOCKET_DIR
@_sidecar_options
def sidecar(socket_dir: Path, **options: Any) -> None:
    """Run only the sidecar; `rscore scorer` runs the R workers (the pod's two containers).

    Also `python -m rscore.sidecar --socket-dir D ...`.
    """
    from rscore.r_scorer.pool import SOCKET_NAME
    from rscore.sidecar.serve import run

    configure_json_logging()
    auth = _auth_config(options, may_generate_key=False)
    try:
        run(_sidecar_config(options), _listen(options, socket_dir / SOCKET_NAME), None, auth)
    except (ScoringError, ValueError, OSError) as exc:  # an unsafe --socket-dir, a bad file
        _fail(exc)


def _fail(error: Exception) -> NoReturn:
    if not isinstance(error, ScoringError):  # a bad credential or TLS file, say
        error = ScoringError(str(error))
        error.code = "configuration_error"
    sys.stderr.buffer.write(orjson.dumps(error.to_json()) + b"\n")
    sys.exit(1)


@cli.group()
def keys() -> None:
    """API keys and token signing keys."""


@keys.command("generate")
@click.argument("keys_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--count", default=2, show_default=True, type=click.IntRange(1, 16),
    help="How many keys (primary and secondary: rotate one at a time).",
)  # fmt: skip
def keys_generate(keys_file: Path, count: int) -> None:
    """Write KEYS_FILE (mode 0600) with fresh random keys."""
    from rscore.sidecar.credentials import CredentialError, generate_key, write_keys_file

    try:
        write_keys_file(keys_file, [generate_key() for _ in range(count)])
    except (CredentialError, OSError) as exc:
        _fail(exc)
    click.echo(f"wrote {count} key(s) to {keys_file}", err=True)


@keys.command("jwk")
@click.argument("private_jwk", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("public_jwks", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["RSA", "EC"]), default="EC", show_default=True)
@click.option("--kid", default="rscore-1", show_default=True, help="Key id in token headers.")
def keys_jwk(private_jwk: Path, public_jwks: Path, kind: str, kid: str) -> None:
    """Make a token signing key: PRIVATE_JWK (0600, for `rscore token`) and PUBLIC_JWKS
    (for `--token-jwks`)."""
    import os

    from rscore.sidecar.credentials import generate_jwk_pair

    private, public = generate_jwk_pair(kind, kid)  # type: ignore[arg-type]
    descriptor = os.open(private_jwk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(orjson.dumps(private))
    public_jwks.write_bytes(orjson.dumps(public, option=orjson.OPT_INDENT_2))
    click.echo(f"wrote {private_jwk} (private) and {public_jwks} (public)", err=True)


@cli.command()
@click.option("--jwk-private", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(min=1),
              help="Seconds until the token expires.")  # fmt: skip
@click.option("--aud", default=None, help="Audience (`aud`).")
@click.option("--iss", default=None, help="Issuer (`iss`).")
@click.option("--sub", default=None, help="Subject (`sub`).")
def token(
    *,
    jwk_private: Path | None,
    secret_file: Path | None,
    ttl: int,
    aud: str | None,
    iss: str | None,
    sub: str | None,
) -> None:
    """Mint a JWT signed with a private JWK (RS256/ES256) or an HMAC secret (HS256)."""
    import time

    from rscore.sidecar.credentials import CredentialError, mint_token

    if (jwk_private is None) == (secret_file is None):
        raise click.UsageError("give exactly one of --jwk-private and --secret-file")
    try:
        minted = mint_token(
            private_jwk_path=jwk_private,
            secret_path=secret_file,
            ttl_s=ttl,
            now=time.time(),
            audience=aud,
            issuer=iss,
            subject=sub,
        )
    except (CredentialError, OSError) as exc:
        _fail(exc)
    click.echo(minted)


cli.add_command(activator)
cli.add_command(autoscaler)
sim.add_command(measure)  # runs a real R worker: lives outside sim/
sim.add_command(validate)  # drives a real pod: lives outside sim/
cli.add_command(sim)
