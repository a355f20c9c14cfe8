"""TLS for the public site: a hardened server context, and certificate rotation
without a restart and without dropping connections.

`ReloadingTLS` keeps ONE `ssl.SSLContext` that the server keeps using; a reload loads
the new certificate and key into that same object, so new handshakes get the new
certificate while open connections (each has its own copy, made at accept time) are
untouched. A new pair is validated on a scratch context first, so a half-rotated pair
(a new certificate next to the old key) never reaches the live context.

It must never log key material or file contents (errors name files and OpenSSL's
reason code only), and never block the event loop for long: a reload parses a few
small PEM files.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

from rscore.sidecar.watch import FileWatcher, ReloadError

# TLS 1.2 suites: forward-secret (ECDHE) AEAD only, so no CBC, no RSA key exchange,
# no SHA1 MACs, no 3DES/RC4. The exclusions are belt and braces (anonymous, null and
# pre-shared-key variants that some OpenSSL builds file under the same groups).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"
# TLS 1.3 suites are all AEAD and forward-secret; OpenSSL's defaults stay.

_PROC_FD = Path("/proc/self/fd")


class TLSConfigError(ReloadError):
    """The certificate, key or client CA cannot be used; the message names the files."""


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # Client-initiated renegotiation is a DoS lever and TLS 1.3 has none anyway.
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


@contextlib.contextmanager
def _pinned(paths: Sequence[Path]) -> Iterator[list[str]]:
    """Names for exactly the files open now, whatever happens to the paths meanwhile.

    The scratch validation and the live load must read the same bytes: otherwise a
    rotation landing between the two could put an unvalidated pair on the live
    context (and a failed `load_cert_chain` leaves a context without a key). On Linux
    each file is opened once and OpenSSL reopens it through /proc/self/fd, which
    keeps even a deleted Secret-volume generation readable. Elsewhere: plain paths.
    """
    fds: list[int] = []
    try:
        for path in paths:
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError as exc:
                raise TLSConfigError(f"TLS file not found: {path}") from exc
            except OSError as exc:
                raise TLSConfigError(f"cannot open TLS file {path}: {exc.strerror}") from exc
        if _PROC_FD.is_dir():
            yield [str(_PROC_FD / str(fd)) for fd in fds]
        else:
            yield [str(p) for p in paths]
    finally:
        for fd in fds:
            os.close(fd)


def _load(
    ctx: ssl.SSLContext,
    names: Sequence[str],
    cert: Path,
    key: Path,
    client_ca: Path | None,
) -> None:
    """Load the pair (and CA) named by `names` into `ctx`; errors name the real files."""
    try:
        ctx.load_cert_chain(names[0], names[1])
    except ssl.SSLError as exc:
        # `reason` is OpenSSL's code (e.g. KEY_VALUES_MISMATCH): never file contents.
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"private key {key} does not match certificate {cert}") from exc
        raise TLSConfigError(
            f"cannot load TLS certificate {cert} with key {key} ({exc.reason or 'invalid PEM'})"
        ) from exc
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=names[2])
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or "no usable certificate"
            raise TLSConfigError(f"cannot load client CA bundle {client_ca} ({reason})") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no entry


def _files(cert: Path, key: Path, client_ca: Path | None) -> list[Path]:
    return [cert, key] if client_ca is None else [cert, key, client_ca]


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A hardened server context for `cert`/`key`; with `client_ca`, mutual TLS.

    TLS 1.2 and 1.3 only, forward-secret AEAD suites only, no compression, no
    renegotiation, the server's cipher order. Raises `TLSConfigError` naming the files
    when one is missing or unreadable or the key does not match the certificate.
    """
    cert, key = Path(cert), Path(key)
    client_ca = None if client_ca is None else Path(client_ca)
    ctx = _base_context()
    with _pinned(_files(cert, key, client_ca)) as names:
        _load(ctx, names, cert, key, client_ca)
    return ctx


class ReloadingTLS:
    """One live `SSLContext` for the server, reloaded in place when the files change.

    Hand `context` to the server once (`web.TCPSite(..., ssl_context=tls.context)`),
    then run `watcher()`. Note: `load_verify_locations` adds to the trust store, so a
    client CA removed from the bundle stays trusted until the process restarts.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert = Path(cert)
        self.key = Path(key)
        self.client_ca = None if client_ca is None else Path(client_ca)
        self._context = server_context(self.cert, self.key, self.client_ca)

    @classmethod
    def from_flags(
        cls, cert: Path | None, key: Path | None, client_ca: Path | None = None
    ) -> ReloadingTLS | None:
        """From --tls-cert and --tls-key (and --tls-client-ca): None when neither of the
        first two is given (plain HTTP); TLSConfigError when only one is."""
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise TLSConfigError("give both --tls-cert and --tls-key")
        return cls(cert, key, client_ca)

    @property
    def context(self) -> ssl.SSLContext:
        """The live context: the same object for the life of this instance."""
        return self._context

    @property
    def paths(self) -> list[Path]:
        return _files(self.cert, self.key, self.client_ca)

    def reload(self) -> None:
        """Load the files again into the live context; on error it is left untouched.

        Raises `TLSConfigError` (naming the files) for a missing file, an unreadable
        PEM, or a key that does not match the certificate.
        """
        with _pinned(self.paths) as names:
            # Validate on a scratch context: a bad pair must never touch the live one.
            _load(_base_context(), names, self.cert, self.key, self.client_ca)
            # Same open files, so the same bytes: this cannot fail where the check passed.
            _load(self._context, names, self.cert, self.key, self.client_ca)

    def watcher(self, interval_s: float = 1.0) -> FileWatcher:
        """A `FileWatcher` that calls `reload` when the certificate, key or CA changes."""
        return FileWatcher(self.paths, self.reload, interval_s=interval_s)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False  # another host name: resolving it here would block; assume exposed
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def plain_http_warning(host: str) -> str | None:
    """The warning to log when serving plain HTTP on `host`; None on loopback."""
    if is_loopback(host):
        return None
    shown = host or "all interfaces"
    return (
        f"serving plain HTTP on {shown}: bearer credentials and scoring data cross the "
        "network unencrypted; configure a TLS certificate and key, or terminate TLS in "
        "front of rscore (ingress or service mesh), or listen on 127.0.0.1"
    )
