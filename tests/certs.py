"""Certificates for tests, made with `cryptography`, and a Kubernetes Secret volume
laid out and rotated exactly as the kubelet does it.

A CA, server certificates for 127.0.0.1/localhost (RSA keys, so that RSA key exchange
and DHE suites would be possible if the server allowed them; each with its own serial
and CN so a rotation can be observed from the client side), client certificates.
Test-only: keys are unencrypted and live in tmp_path.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_counter = itertools.count(1)

# RFC 7919's ffdhe2048 group (public, standard): lets a control server offer DHE
# suites without minutes of parameter generation.
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM."""

    cert_pem: bytes
    key_pem: bytes
    serial: int
    common_name: str

    def write(self, folder: Path, stem: str = "tls") -> tuple[Path, Path]:
        """`folder/<stem>.crt` and `folder/<stem>.key`."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


@dataclass(frozen=True)
class CA:
    """A self-signed CA that issues server and client certificates."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert_pem)
        return path

    def issue_server(
        self, common_name: str | None = None, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> Issued:
        """A server certificate (RSA 2048) for `hosts`, with a fresh serial."""
        n = next(_counter)
        cn = common_name or f"{self.name}-server-{n}"
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._issue(key, cn, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, common_name: str | None = None) -> Issued:
        """A client certificate (EC P-256) for mutual TLS."""
        cn = common_name or f"{self.name}-client-{next(_counter)}"
        key = ec.generate_private_key(ec.SECP256R1())
        return self._issue(key, cn, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self,
        key: PrivateKey,
        cn: str,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> Issued:
        now = dt.datetime.now(dt.UTC)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key),
            serial=serial,
            common_name=cn,
        )


def make_ca(name: str = "test-ca") -> CA:
    """A fresh self-signed CA (EC P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return CA(name=name, cert=cert, key=key)


def serial_of(der: bytes) -> int:
    """The serial of a DER certificate (what `getpeercert(binary_form=True)` returns)."""
    return x509.load_der_x509_certificate(der).serial_number


class SecretVolume:
    """A folder laid out like a mounted Kubernetes Secret, rotated like the kubelet does.

    folder/..2026_11_26_01_02_03.123456789/tls.crt   the current generation
    folder/..data -> ..2026_11_26_01_02_03.123456789
    folder/tls.crt -> ..data/tls.crt                  the visible files

    `rotate` writes a new generation folder, points a temporary symlink at it, renames
    that over `..data` (the atomic step), then deletes the old generation.
    """

    DATA = "..data"

    def __init__(self, folder: Path, files: Mapping[str, bytes]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.names = tuple(files)
        generation = self._write_generation(files)
        os.symlink(generation, folder / self.DATA)
        for name in self.names:
            os.symlink(f"{self.DATA}/{name}", folder / name)

    def path(self, name: str) -> Path:
        """The visible path (`folder/name`), which a server is configured with."""
        return self.folder / name

    @property
    def generation(self) -> Path:
        """The generation folder `..data` points to now."""
        return self.folder / os.readlink(self.folder / self.DATA)

    def rotate(self, files: Mapping[str, bytes]) -> None:
        """Swap in new contents for the same file names, as the kubelet does."""
        if set(files) != set(self.names):
            raise ValueError(f"a rotation keeps the same names: {self.names}")
        old = self.generation
        new = self._write_generation(files)
        tmp = self.folder / "..data_tmp"
        os.symlink(new, tmp)
        os.rename(tmp, self.folder / self.DATA)  # atomic: readers see old or new, never none
        shutil.rmtree(old)

    def _write_generation(self, files: Mapping[str, bytes]) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y_%m_%d_%H_%M_%S")
        name = f"..{stamp}.{next(_counter):09d}"
        generation = self.folder / name
        generation.mkdir(mode=0o755)
        for file, content in files.items():
            (generation / file).write_bytes(content)
            (generation / file).chmod(0o644)
        return name  # relative, as the kubelet's symlinks are
