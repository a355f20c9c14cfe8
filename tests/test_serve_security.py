"""`rscore serve` end to end with its security flags: TLS, keys, tokens, defaults.

Real processes, real TLS handshakes (stdlib ssl and aiohttp clients), real files laid
out like Kubernetes Secret volumes. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from certs import SecretVolume, make_ca, serial_of

pytestmark = [pytest.mark.real_r, pytest.mark.e2e]  # markers: pyproject.toml

RSCORE = [sys.executable, "-m", "rscore.cli"]
ROW = {"data": [{"wt": 2.62, "hp": 110, "qsec": 16.46}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # R's own console output, or click's plain messages
        return records


@asynccontextmanager
async def serving(
    bundle: Path, tmp_path: Path, *flags: str, env: dict[str, str] | None = None,
    ready: Callable[[int], bool] = lambda status: status == 200,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Server]:  # fmt: skip
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    process = await asyncio.create_subprocess_exec(
        *RSCORE, "serve", str(bundle), "--workers", "1", "--port", str(port),
        "--metrics-port", str(free_port()), *flags,
        stderr=log_fd, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip
    os.close(log_fd)
    server = Server(process, port, log)
    try:
        scheme = "https" if ssl_context else "http"
        await _wait_ready(f"{scheme}://127.0.0.1:{port}/readyz", ssl_context, ready, process)
        yield server
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def _wait_ready(
    url: str,
    ssl_context: ssl.SSLContext | None,
    ready: Callable[[int], bool],
    process: asyncio.subprocess.Process,
) -> None:
    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            while process.returncode is None:
                try:
                    async with session.get(url, ssl=ssl_context or False) as response:
                        if ready(response.status):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            raise AssertionError(f"rscore serve exited with {process.returncode}")

    await asyncio.wait_for(poll(), 60)


async def post(
    url: str, key: str | None, ssl_context: ssl.SSLContext | None = None
) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=ROW, headers=headers, ssl=ssl_context or False) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


def first_key(keys_file: Path) -> str:
    return next(
        line.strip()
        for line in keys_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


# --- keys -----------------------------------------------------------------------------


async def test_serve_without_credentials_makes_a_private_key_and_requires_it(
    example_bundles: Path, tmp_path: Path
) -> None:
    config_home = tmp_path / "config"
    bundle = example_bundles / "mtcars-lm"
    async with serving(bundle, tmp_path, env={"XDG_CONFIG_HOME": str(config_home)}) as server:
        keys_file = config_home / "rscore" / "keys"
        assert keys_file.stat().st_mode & 0o777 == 0o600
        assert str(keys_file) in server.log.read_text()  # the path is printed...
        key = first_key(keys_file)
        assert key not in server.log.read_text()  # ...never the key
        url = f"http://127.0.0.1:{server.port}/score"
        status, answer, headers = await post(url, None)
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        status, answer, _ = await post(url, key)
        assert status == 200
        assert len(answer["predictions"]) == 1
        assert key not in server.log.read_text()


async def test_sidecar_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [*RSCORE, "sidecar", "--socket-dir", str(tmp_path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--auth none" in result.stderr


async def test_tokens_minted_by_rscore_token_are_accepted_and_checked(
    example_bundles: Path, tmp_path: Path
) -> None:
    private, public = tmp_path / "signing.jwk", tmp_path / "jwks.json"
    subprocess.run([*RSCORE, "keys", "jwk", str(private), str(public)], check=True, timeout=60)
    assert private.stat().st_mode & 0o777 == 0o600

    def mint(*flags: str) -> str:
        return subprocess.run(
            [*RSCORE, "token", "--jwk-private", str(private), *flags],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip

    flags = ("--token-jwks", str(public), "--token-audience", "scoring", "--token-issuer", "me")
    async with serving(example_bundles / "mtcars-lm", tmp_path, *flags) as server:
        url = f"http://127.0.0.1:{server.port}/score"
        good = mint("--ttl", "600", "--aud", "scoring", "--iss", "me")
        assert (await post(url, good))[0] == 200
        for bad, description in [
            (mint("--ttl", "600", "--aud", "other", "--iss", "me"), "audience"),
            (mint("--ttl", "600", "--aud", "scoring", "--iss", "them"), "issuer"),
        ]:
            status, answer, headers = await post(url, bad)
            assert status == 401
            assert 'error="invalid_token"' in headers["WWW-Authenticate"]
            assert description in headers["WWW-Authenticate"]
            assert bad not in json.dumps(answer)


# --- TLS --------------------------------------------------------------------------------


def handshake(port: int, version: ssl.TLSVersion, ca_file: Path) -> str:
    """The negotiated protocol, or raise if the server refuses."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        context.minimum_version = version
        context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it; the server decides
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version() or ""


async def test_tls_versions_and_an_https_score(example_bundles: Path, tmp_path: Path) -> None:
    ca = make_ca()
    cert, key = ca.issue_server().write(tmp_path / "tls")
    ca_file = ca.write(tmp_path / "ca.crt")
    client = ssl.create_default_context(cafile=str(ca_file))
    flags = ("--tls-cert", str(cert), "--tls-key", str(key), "--auth", "none")
    async with serving(
        example_bundles / "mtcars-lm", tmp_path, *flags, ssl_context=client
    ) as server:
        assert handshake(server.port, ssl.TLSVersion.TLSv1_3, ca_file) == "TLSv1.3"
        assert handshake(server.port, ssl.TLSVersion.TLSv1_2, ca_file) == "TLSv1.2"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(handshake, server.port, ssl.TLSVersion.TLSv1_1, ca_file)
        status, _, _ = await post(f"https://127.0.0.1:{server.port}/score", None, client)
        assert status == 200


async def test_certificate_rotation_like_a_secret_volume_under_load(
    example_bundles: Path, tmp_path: Path
) -> None:
    ca = make_ca()
    first, second = ca.issue_server(), ca.issue_server()
    volume = SecretVolume(
        tmp_path / "secret", {"tls.crt": first.cert_pem, "tls.key": first.key_pem}
    )
    client = ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.crt")))
    flags = ("--tls-cert", str(volume.path("tls.crt")), "--tls-key", str(volume.path("tls.key")),
             "--auth", "none")  # fmt: skip
    async with serving(
        example_bundles / "mtcars-lm", tmp_path, *flags, ssl_context=client
    ) as server:
        url = f"https://127.0.0.1:{server.port}/score"
        stop = asyncio.Event()
        statuses: list[int] = []

        async def client_loop() -> None:
            while not stop.is_set():  # a fresh connection each time: new handshakes
                statuses.append((await post(url, None, client))[0])

        clients = [asyncio.create_task(client_loop()) for _ in range(3)]
        keep_alive = aiohttp.ClientSession()
        try:
            async with keep_alive.post(url, json=ROW, ssl=client) as response:
                assert response.status == 200
            assert await asyncio.to_thread(served_serial, server.port, client) == first.serial
            volume.rotate({"tls.crt": second.cert_pem, "tls.key": second.key_pem})

            async def rotated() -> None:
                while await asyncio.to_thread(served_serial, server.port, client) != second.serial:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(rotated(), 5)  # the contract: within 5 s
            async with keep_alive.post(url, json=ROW, ssl=client) as response:
                assert response.status == 200  # the connection opened before still works
        finally:
            stop.set()
            await asyncio.gather(*clients)
            await keep_alive.close()
        assert statuses
        assert set(statuses) == {200}


def served_serial(port: int, client: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(der)


async def test_plain_http_beyond_loopback_logs_a_warning(
    example_bundles: Path, tmp_path: Path
) -> None:
    async with serving(
        example_bundles / "mtcars-lm", tmp_path, "--host", "0.0.0.0", "--auth", "none"
    ) as server:
        warnings_logged = [r for r in server.log_records() if r.get("level") == "WARNING"]
        assert any("serving plain HTTP on 0.0.0.0" in r["message"] for r in warnings_logged)
