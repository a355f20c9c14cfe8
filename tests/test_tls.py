"""rscore.sidecar.tls against real handshakes: an aiohttp server on 127.0.0.1 with the
stdlib `ssl` client, real certificates, real files, a real Secret-volume rotation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from certs import CA, FFDHE2048_PEM, Issued, SecretVolume, make_ca, serial_of

from rscore.sidecar.tls import (
    ReloadingTLS,
    TLSConfigError,
    is_loopback,
    plain_http_warning,
    server_context,
)

HOST = "127.0.0.1"
TIMEOUT_S = 10.0  # bound on any single network step; generous, never expected
ROTATION_DEADLINE_S = 5.0  # the contract: a new certificate is served within 5 s
TICK_S = 0.05


# --- servers and clients ----------------------------------------------------------


async def _hello(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@contextlib.asynccontextmanager
async def serving(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """A trivial aiohttp app over TLS with `ctx`, on a free port of 127.0.0.1."""
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=ctx)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def client_context(
    ca: CA,
    tmp: Path,
    *,
    cert: Issued | None = None,
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A verifying client; `version` pins min = max; `ciphers` its TLS 1.2 offer."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if cert is not None:
        cert_path, key_path = cert.write(tmp, stem=f"client-{cert.serial}")
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def legacy_client(ca: CA) -> ssl.SSLContext:
    """A client that offers TLS 1.0/1.1 only, willing to go through with it."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with warnings.catch_warnings():  # the stdlib rightly deprecates these versions
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3's default security level makes the CLIENT refuse to offer TLS 1.1 at
    # all (NO_CIPHERS_AVAILABLE, nothing sent): lower it so the server must refuse.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def permissive_server(cert: Path, key: Path) -> ssl.SSLContext:
    """The control: a server that accepts legacy versions and suites."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(cert, key)
    dh_params = cert.parent / "ffdhe2048.pem"
    dh_params.write_bytes(FFDHE2048_PEM)
    ctx.load_dh_params(dh_params)  # so that DHE suites are on offer too
    return ctx


@dataclass
class Conn:
    """One HTTPS connection, driven by hand so the test sees exactly what happens."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Conn:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=ctx, ssl_handshake_timeout=TIMEOUT_S
        )
        return cls(reader, writer)

    @property
    def tls(self) -> ssl.SSLObject:
        return self.writer.get_extra_info("ssl_object")

    @property
    def serial(self) -> int:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(der)

    async def get(self, *, keep_alive: bool = True) -> tuple[int, bytes]:
        connection = "keep-alive" if keep_alive else "close"
        self.writer.write(
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: {connection}\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in lines[1:]
            if line.lower().startswith("content-length:")
        )
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        # The peer may already be gone (refused handshakes): nothing left to say.
        with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
            async with asyncio.timeout(TIMEOUT_S):
                await self.writer.wait_closed()


@dataclass(frozen=True)
class Reply:
    status: int
    serial: int  # the server certificate's
    version: str | None
    cipher: str | None


async def https_get(port: int, ctx: ssl.SSLContext) -> Reply:
    """GET / on a fresh connection."""
    async with asyncio.timeout(TIMEOUT_S):
        conn = await Conn.open(port, ctx)
        try:
            status, body = await conn.get(keep_alive=False)
            assert body == b"ok"
            cipher = conn.tls.cipher()
            return Reply(status, conn.serial, conn.tls.version(), cipher and cipher[0])
        finally:
            await conn.close()


async def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    reply = await https_get(port, ctx)
    assert reply.status == 200
    return reply.serial


async def wait_for_serial(port: int, ctx: ssl.SSLContext, serial: int) -> float:
    """Seconds until a fresh connection is served `serial`; fails after 5 s."""
    start = time.monotonic()
    async with asyncio.timeout(ROTATION_DEADLINE_S):
        while await served_serial(port, ctx) != serial:
            await asyncio.sleep(TICK_S / 2)
    return time.monotonic() - start


async def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(TICK_S / 2)


def refused(exc: BaseException) -> bool:
    """A handshake the server refused: an alert from it, or its closing the socket.

    (asyncio servers close the transport on a failed handshake without flushing
    the alert, so the client sees a reset or EOF rather than an alert.)
    """
    return isinstance(exc, ssl.SSLError | ConnectionError | asyncio.IncompleteReadError)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca("rscore-test-ca")


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return make_ca("another-ca")


@pytest.fixture(scope="module")
def server_certs(ca: CA) -> list[Issued]:
    """Distinct server certificates (RSA keygen is slow: made once, up front)."""
    return [ca.issue_server() for _ in range(5)]


@pytest.fixture
def pair(tmp_path: Path, server_certs: list[Issued]) -> tuple[Path, Path]:
    return server_certs[0].write(tmp_path / "server")


# --- the context itself ----------------------------------------------------------------


def test_server_context_settings(pair: tuple[Path, Path]) -> None:
    ctx = server_context(*pair)
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version in {ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3}
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_RENEGOTIATION):
        assert ctx.options & flag == flag
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suites left"
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert not {"CBC", "SHA1", "3DES", "RC4"} & set(cipher["description"].split()), cipher
    tls13 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    assert "TLS_AES_128_GCM_SHA256" in tls13


def test_mutual_tls_requires_client_certificates(
    pair: tuple[Path, Path], ca: CA, tmp_path: Path
) -> None:
    ctx = server_context(*pair, client_ca=ca.write(tmp_path / "ca.crt"))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_errors_name_the_files(tmp_path: Path, server_certs: list[Issued]) -> None:
    cert, key = server_certs[0].write(tmp_path)
    _, other_key = server_certs[1].write(tmp_path, stem="other")
    with pytest.raises(TLSConfigError, match=f"not found: {tmp_path / 'nope.crt'}"):
        server_context(tmp_path / "nope.crt", key)
    with pytest.raises(TLSConfigError, match=f"not found: {tmp_path / 'nope.key'}"):
        server_context(cert, tmp_path / "nope.key")
    with pytest.raises(TLSConfigError) as mismatch:
        server_context(cert, other_key)
    assert str(mismatch.value) == f"private key {other_key} does not match certificate {cert}"
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(TLSConfigError, match="cannot load TLS certificate") as bad:
        server_context(cert, garbage)
    assert str(garbage) in str(bad.value)
    assert "not a key" not in str(bad.value)  # file contents never make it into errors
    with pytest.raises(TLSConfigError, match="client CA bundle"):
        server_context(cert, key, client_ca=garbage)
    with pytest.raises(TLSConfigError, match="not found"):
        ReloadingTLS(cert, key, client_ca=tmp_path / "nope-ca.crt")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.7", False),
        ("192.168.1.1", False),
        ("2001:db8::1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    warning = plain_http_warning(host)
    if loopback:
        assert warning is None
    else:
        assert warning is not None
        assert "plain HTTP" in warning
        assert (host or "all interfaces") in warning


# --- handshakes --------------------------------------------------------------------


async def test_tls12_and_tls13_succeed(pair: tuple[Path, Path], ca: CA, tmp_path: Path) -> None:
    tls = ReloadingTLS(*pair)
    async with serving(tls.context) as port:
        for version, name in [
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ]:
            reply = await https_get(port, client_context(ca, tmp_path, version=version))
            assert (reply.status, reply.version) == (200, name)
            assert reply.cipher is not None
            if name == "TLSv1.2":
                assert reply.cipher.startswith("ECDHE-RSA-"), reply
                assert "GCM" in reply.cipher or "CHACHA20" in reply.cipher, reply


async def test_tls11_refused_by_the_server(pair: tuple[Path, Path], ca: CA) -> None:
    client = legacy_client(ca)
    # The control: this very client does speak TLS 1.1 to a server that allows it,
    # so the refusal below comes from the server's policy, not from the client.
    async with serving(permissive_server(*pair)) as port:
        reply = await https_get(port, client)
        assert (reply.status, reply.version) == (200, "TLSv1.1")
    async with serving(ReloadingTLS(*pair).context) as port:
        with pytest.raises(Exception) as exc:  # noqa: PT011 - checked just below
            await https_get(port, client)
        assert refused(exc.value), repr(exc.value)
        # ... and not the client's own refusal to try:
        assert "NO_CIPHERS_AVAILABLE" not in str(exc.value)
        assert "NO_PROTOCOLS_AVAILABLE" not in str(exc.value)


@pytest.mark.parametrize(
    "offer",
    [
        pytest.param("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384", id="ecdhe-cbc-sha2"),
        pytest.param("ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA", id="ecdhe-cbc-sha1"),
        pytest.param("AES128-GCM-SHA256:AES256-GCM-SHA384", id="rsa-kx-gcm"),
        pytest.param("DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384", id="dhe-gcm"),
        pytest.param("DES-CBC3-SHA:AES128-SHA", id="3des-rsa-cbc"),
    ],
)
async def test_tls12_weak_suites_refused(
    pair: tuple[Path, Path], ca: CA, tmp_path: Path, offer: str
) -> None:
    client = client_context(
        ca, tmp_path, version=ssl.TLSVersion.TLSv1_2, ciphers=f"{offer}:@SECLEVEL=0"
    )
    async with serving(permissive_server(*pair)) as port:  # the control, as above
        reply = await https_get(port, client)
        assert (reply.status, reply.version) == (200, "TLSv1.2")
        assert reply.cipher in offer.split(":")
    async with serving(ReloadingTLS(*pair).context) as port:
        with pytest.raises(Exception) as exc:  # noqa: PT011 - checked just below
            await https_get(port, client)
        assert refused(exc.value), repr(exc.value)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_mutual_tls(
    pair: tuple[Path, Path], ca: CA, other_ca: CA, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    tls = ReloadingTLS(*pair, client_ca=ca.write(tmp_path / "client-ca.crt"))
    async with serving(tls.context) as port:
        good = client_context(ca, tmp_path, cert=ca.issue_client(), version=version)
        assert (await https_get(port, good)).status == 200
        for client in (
            client_context(ca, tmp_path, version=version),  # no certificate at all
            client_context(ca, tmp_path, cert=other_ca.issue_client(), version=version),
        ):
            # In TLS 1.3 the client's handshake completes before the server checks its
            # certificate: the refusal then shows on the first read. Either way: no 200.
            with pytest.raises(Exception) as exc:  # noqa: PT011 - checked just below
                await https_get(port, client)
            assert refused(exc.value), repr(exc.value)
        assert (await https_get(port, good)).status == 200  # the server is none the worse


async def test_client_ca_rotation_trusts_the_new_ca(
    pair: tuple[Path, Path], ca: CA, other_ca: CA, tmp_path: Path
) -> None:
    vol = SecretVolume(tmp_path / "ca", {"ca.crt": ca.cert_pem})
    tls = ReloadingTLS(*pair, client_ca=vol.path("ca.crt"))
    watcher = tls.watcher(interval_s=TICK_S)
    await watcher.start()
    try:
        async with serving(tls.context) as port:
            newcomer = client_context(ca, tmp_path, cert=other_ca.issue_client())
            with pytest.raises(Exception) as exc:  # noqa: PT011 - checked just below
                await https_get(port, newcomer)
            assert refused(exc.value)
            vol.rotate({"ca.crt": ca.cert_pem + other_ca.cert_pem})
            async with asyncio.timeout(ROTATION_DEADLINE_S):
                while True:
                    with contextlib.suppress(
                        ssl.SSLError, ConnectionError, asyncio.IncompleteReadError
                    ):
                        if (await https_get(port, newcomer)).status == 200:
                            break
                    await asyncio.sleep(TICK_S / 2)
            old_client = client_context(ca, tmp_path, cert=ca.issue_client())
            assert (await https_get(port, old_client)).status == 200
    finally:
        await watcher.stop()


# --- rotation ------------------------------------------------------------------------


@dataclass
class Load:
    """Client tasks making HTTPS requests on fresh connections until stopped."""

    port: int
    ctx: ssl.SSLContext
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    serials: set[int] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self) -> None:
        while not self._stop.is_set():
            try:
                reply = await https_get(self.port, self.ctx)
            except Exception as exc:  # every kind of failure counts, none is expected
                self.failures.append(repr(exc))
                continue
            if reply.status == 200:
                self.ok += 1
                self.serials.add(reply.serial)
            else:
                self.failures.append(f"status {reply.status}")

    @contextlib.asynccontextmanager
    async def running(self, clients: int) -> AsyncIterator[Load]:
        tasks = [asyncio.create_task(self.client()) for _ in range(clients)]
        try:
            yield self
        finally:
            self._stop.set()
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.gather(*tasks)


def _pair_files(issued: Issued) -> dict[str, bytes]:
    return {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem}


async def test_secret_volume_rotation_under_load(
    tmp_path: Path, ca: CA, server_certs: list[Issued]
) -> None:
    first, *rotations = server_certs[:4]
    vol = SecretVolume(tmp_path / "tls", _pair_files(first))
    tls = ReloadingTLS(vol.path("tls.crt"), vol.path("tls.key"))
    live = tls.context
    watcher = tls.watcher(interval_s=TICK_S)
    await watcher.start()
    client = client_context(ca, tmp_path)
    try:
        async with serving(tls.context) as port:
            kept = await Conn.open(port, client)  # a keep-alive connection from before
            assert (await kept.get())[0] == 200
            assert kept.serial == first.serial
            load = Load(port, client)
            async with load.running(clients=8):
                await wait_until(lambda: load.ok >= 20)  # the load is really on
                for issued in rotations:
                    old_generation = vol.generation
                    before = load.ok
                    vol.rotate(_pair_files(issued))
                    assert not old_generation.exists()  # the kubelet deleted it
                    await wait_for_serial(port, client, issued.serial)  # within 5 s
                    # ... and the load went on through it
                    await wait_until(lambda before=before: load.ok >= before + 50)
            assert load.failures == []
            assert {c.serial for c in rotations} <= load.serials  # the load got each one
            # The connection opened before the rotations is still served, still with
            # the certificate it was handshaken with.
            assert await kept.get() == (200, b"ok")
            assert kept.serial == first.serial
            await kept.close()
    finally:
        await watcher.stop()
    assert tls.context is live  # the server kept one context all along


async def test_bad_pair_keeps_the_old_one(
    tmp_path: Path, ca: CA, server_certs: list[Issued], caplog: pytest.LogCaptureFixture
) -> None:
    good, new_cert, stray_key, later = server_certs[:4]
    vol = SecretVolume(tmp_path / "tls", _pair_files(good))
    tls = ReloadingTLS(vol.path("tls.crt"), vol.path("tls.key"))
    watcher = tls.watcher(interval_s=TICK_S)
    await watcher.start()
    client = client_context(ca, tmp_path)
    caplog.set_level(logging.DEBUG, logger="rscore.watch")
    try:
        async with serving(tls.context) as port:
            vol.rotate({"tls.crt": new_cert.cert_pem, "tls.key": stray_key.key_pem})
            await wait_until(
                lambda: any(r.levelno == logging.WARNING for r in caplog.records),
                ROTATION_DEADLINE_S,
            )
            warning = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
            assert str(vol.path("tls.crt")) in warning
            assert "does not match" in warning
            # Let the watcher retry a few times: the old pair stays on, every time.
            for _ in range(10):
                assert await served_serial(port, client) == good.serial
                ticked = watcher.ticks
                await wait_until(lambda ticked=ticked: watcher.ticks > ticked, ROTATION_DEADLINE_S)
            vol.rotate(_pair_files(later))
            await wait_for_serial(port, client, later.serial)
    finally:
        await watcher.stop()
    for pem in (new_cert.cert_pem, stray_key.key_pem, later.key_pem):
        body = pem.decode().splitlines()[1]  # a line of base64 from the PEM's body
        assert body not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def test_in_place_rewrite_cert_then_key(
    tmp_path: Path, ca: CA, server_certs: list[Issued]
) -> None:
    """Plain files rewritten one after the other: old pair until both are new."""
    first, second = server_certs[:2]
    cert, key = first.write(tmp_path / "plain")
    tls = ReloadingTLS(cert, key)
    watcher = tls.watcher(interval_s=TICK_S)
    await watcher.start()
    client = client_context(ca, tmp_path)
    try:
        async with serving(tls.context) as port:
            cert.write_bytes(second.cert_pem)  # half-rotated: new cert, old key
            for _ in range(6):
                assert await served_serial(port, client) == first.serial
                await asyncio.sleep(TICK_S)
            key.write_bytes(second.key_pem)
            await wait_for_serial(port, client, second.serial)
    finally:
        await watcher.stop()


async def test_reload_applies_to_the_same_context(
    tmp_path: Path, ca: CA, server_certs: list[Issued]
) -> None:
    first, second, third = server_certs[:3]
    cert, key = first.write(tmp_path)
    tls = ReloadingTLS(cert, key)
    live = tls.context
    client = client_context(ca, tmp_path)
    async with serving(live) as port:
        assert await served_serial(port, client) == first.serial
        second.write(tmp_path)
        tls.reload()
        assert await served_serial(port, client) == second.serial
        key.write_bytes(third.key_pem)  # no matching cert: refused, nothing applied
        with pytest.raises(TLSConfigError, match="does not match"):
            tls.reload()
        assert await served_serial(port, client) == second.serial
    assert tls.context is live
