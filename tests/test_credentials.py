"""rscore.sidecar.credentials: keys files, and JWTs including every attack a verifier must refuse.

Attack tokens are built with PyJWT where PyJWT will sign them, and with plain base64 and
hmac where it will not (alg none, an RSA public key used as an HMAC secret, tampering).
No test reads the clock for a decision: `NOW` is far from the real time on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt_segments import b64, seg, unb64

from rscore.sidecar import credentials
from rscore.sidecar.credentials import (
    CredentialError,
    TokenPolicy,
    TokenRejected,
    VerificationKeys,
    generate_jwk_pair,
    generate_key,
    key_matches,
    load_jwks,
    load_keys,
    load_secret,
    looks_like_jwt,
    mint_token,
    parse_keys,
    verify_token,
    write_keys_file,
)

NOW = 1_900_000_000  # March 2030: not the real time, so a test that passes ignores the clock
AUD = "rscore-test"
ISS = "https://issuer.example"
POLICY = TokenPolicy(issuer=ISS, audience=AUD, leeway_s=30)
NO_CLAIM_POLICY = TokenPolicy(issuer=None, audience=None, leeway_s=30)
SECRET = b"0123456789abcdef" * 4  # 64 bytes: enough for PyJWT to sign HS512 without a warning

KEY_A = "primary-key-0123456789"
KEY_B = "secondary-key-abcdefghij"
KEY_C = "third:key/with.punct#!~"

# ------------------------------------------------------------------------ helpers


def forge(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    return f"{seg(header)}.{seg(payload)}.{b64(signature)}"


def forge_hs256(header: dict[str, Any], payload: Any, secret: bytes) -> str:
    """An HS256 token signed by hand: PyJWT refuses PEM-looking HMAC secrets."""
    signing_input = f"{seg(header)}.{seg(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def sign_hs256_raw(signing_input: str) -> str:
    """`signing_input` (two segments, whatever they hold) with an HS256 signature."""
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def tamper_payload(token: str, **changes: Any) -> str:
    """The token with claims changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    claims.update(changes)
    return f"{header}.{seg(claims)}.{signature}"


def flip_signature_bit(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[len(raw) // 2] ^= 0x01  # a middle byte: the last character may carry only padding bits
    return f"{header}.{payload}.{b64(bytes(raw))}"


DROP = object()


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims at NOW; a change to DROP removes the claim."""
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "client-7",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


@dataclass(frozen=True)
class Env:
    """Keys on disk and loaded, shared by the token tests (RSA key generation is slow)."""

    folder: Path
    rsa_private_path: Path
    ec_private_path: Path
    secret_path: Path
    rsa_public_jwk: dict[str, Any]
    rsa_private: rsa.RSAPrivateKey
    ec_private: ec.EllipticCurvePrivateKey
    impostor_rsa: rsa.RSAPrivateKey  # another key that claims the kid "rsa-1"
    jwks: VerificationKeys  # RSA "rsa-1" and EC "ec-1"
    rsa_only: VerificationKeys  # RSA "rsa-1" alone
    hs: VerificationKeys  # the HMAC secret

    def sign(self, kind: str, payload: dict[str, Any], **header: Any) -> str:
        if kind == "RSA":
            return jwt.encode(
                payload, self.rsa_private, "RS256", headers={"kid": "rsa-1", **header}
            )
        if kind == "EC":
            return jwt.encode(payload, self.ec_private, "ES256", headers={"kid": "ec-1", **header})
        return jwt.encode(payload, SECRET, "HS256", headers=header or None)

    def keys_for(self, kind: str) -> VerificationKeys:
        return self.hs if kind == "HS" else self.jwks

    @property
    def rsa_public_pem(self) -> bytes:
        return self.rsa_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    folder = tmp_path_factory.mktemp("credentials")
    rsa_jwk, rsa_jwks = generate_jwk_pair("RSA", "rsa-1")
    ec_jwk, ec_jwks = generate_jwk_pair("EC", "ec-1")
    impostor_jwk, _ = generate_jwk_pair("RSA", "rsa-1")
    secret_path = folder / "hmac.secret"
    secret_path.write_bytes(SECRET + b"\n")
    both = {"keys": rsa_jwks["keys"] + ec_jwks["keys"]}
    return Env(
        folder=folder,
        rsa_private_path=_write_json(folder / "rsa.jwk", rsa_jwk),
        ec_private_path=_write_json(folder / "ec.jwk", ec_jwk),
        secret_path=secret_path,
        rsa_public_jwk=rsa_jwks["keys"][0],
        rsa_private=RSAAlgorithm.from_jwk(rsa_jwk),
        ec_private=ECAlgorithm.from_jwk(ec_jwk),
        impostor_rsa=RSAAlgorithm.from_jwk(impostor_jwk),
        jwks=load_jwks(_write_json(folder / "both.jwks", both)),
        rsa_only=load_jwks(_write_json(folder / "rsa.jwks", rsa_jwks)),
        hs=load_secret(secret_path),
    )


def assert_safe_rejection(error: TokenRejected, token: str) -> None:
    """A rejection fit for a WWW-Authenticate header that quotes nothing of the token."""
    text = str(error)
    assert token not in text or not token
    for segment in token.split("."):
        if len(segment) >= 8:
            assert segment not in text
    description = error.description
    assert description.isascii()
    assert description.isprintable()
    assert '"' not in description
    assert "\\" not in description
    assert error.reason in credentials.REASONS


# ------------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"{KEY_A}\n", {KEY_A}, id="one-key"),
        pytest.param(f"{KEY_A}", {KEY_A}, id="no-final-newline"),
        pytest.param(
            f"# header\n\n{KEY_A}\n   # indented comment\n\n{KEY_B}\n",
            {KEY_A, KEY_B},
            id="whole-line-comments-and-blanks",
        ),
        pytest.param(f"{KEY_A}\r\n{KEY_B}\r\n", {KEY_A, KEY_B}, id="crlf"),
        pytest.param(f"  {KEY_A} \t\n\t{KEY_B}", {KEY_A, KEY_B}, id="surrounding-whitespace"),
        pytest.param(
            f"{KEY_A} # primary\n{KEY_B}\t# secondary #2\n",
            {KEY_A, KEY_B},
            id="trailing-comments",
        ),
        pytest.param(f"{KEY_C}\n", {KEY_C}, id="hash-glued-to-key-is-part-of-it"),
        pytest.param(f"\ufeff{KEY_A}\n", {KEY_A}, id="utf8-bom"),
        pytest.param(f"{KEY_A}\n{KEY_A}\n", {KEY_A}, id="duplicates-collapse"),
        pytest.param("x" * 16, {"x" * 16}, id="exactly-16-chars"),
        pytest.param("", set(), id="empty"),
        pytest.param("# nothing but comments\n\n", set(), id="only-comments"),
    ],
)
def test_parse_keys(text: str, expected: set[str]) -> None:
    assert parse_keys(text) == frozenset(k.encode() for k in expected)


@pytest.mark.parametrize(
    ("text", "line", "bad", "problem"),
    [
        pytest.param("# c\n\nTooShortKey-15c\n", 3, "TooShortKey-15c", "shorter", id="too-short"),
        pytest.param(
            f"{KEY_A}\ntiny-k3y # a comment after a short key\n",
            2,
            "tiny-k3y",
            "shorter",
            id="too-short-once-comment-removed",
        ),
        pytest.param(
            f"{KEY_A}\nhas a space inside 0123456\n",
            2,
            "has a space",
            "whitespace",
            id="space-inside",
        ),
        pytest.param("tabbed\tkey-0123456789abcdef\n", 1, "tabbed", "whitespace", id="tab-inside"),
        pytest.param(
            f"{KEY_A}\n{KEY_B}\nnon-ascii-k\u00e9y-0123456789\n",
            3,
            "non-ascii-k",
            "visible ASCII",
            id="non-ascii",
        ),
        pytest.param(
            "ctrl\x01key-0123456789abcdef\n", 1, "key-0123456789", "visible ASCII", id="control"
        ),
        pytest.param(
            f"{KEY_A}\r\nshort-crlf\r\n", 2, "short-crlf", "shorter", id="crlf-line-number"
        ),
    ],
)
def test_parse_keys_errors_name_the_line_never_the_key(
    text: str, line: int, bad: str, problem: str
) -> None:
    with pytest.raises(CredentialError) as info:
        parse_keys(text)
    message = str(info.value)
    assert f"line {line}" in message
    assert problem in message
    assert bad not in message
    assert KEY_A not in message
    assert KEY_B not in message


def test_load_keys_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotation pair\n{KEY_A}\n{KEY_B}  # new\n")
    assert load_keys(path) == {KEY_A.encode(), KEY_B.encode()}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(None, "No such file", id="missing"),
        pytest.param(b"# only a comment\n\n", "no key", id="no-key"),
        pytest.param(f"{KEY_A}\nshort-secret\n".encode(), "line 2", id="bad-line"),
        pytest.param(
            f"{KEY_A}\n".encode() + b"\xff\xfe-0123456789abcdef\n", "UTF-8", id="not-utf8"
        ),
    ],
)
def test_load_keys_errors_name_the_path_never_the_contents(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CredentialError) as info:
        load_keys(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    for secret in (KEY_A, "short-secret", "0123456789abcdef"):
        assert secret not in message


KEYS = frozenset(k.encode() for k in (KEY_A, KEY_B, KEY_C))


@pytest.mark.parametrize(
    ("presented", "keys", "expected"),
    [
        pytest.param(KEY_A.encode(), KEYS, True, id="primary"),
        pytest.param(KEY_B.encode(), KEYS, True, id="secondary"),
        pytest.param(KEY_C.encode(), KEYS, True, id="third"),
        pytest.param(b"not-a-key-0123456789", KEYS, False, id="wrong"),
        pytest.param(KEY_A[:-1].encode(), KEYS, False, id="prefix-of-a-key"),
        pytest.param(KEY_A.encode() + b"x", KEYS, False, id="key-plus-suffix"),
        pytest.param(KEY_A.upper().encode(), KEYS, False, id="other-case"),
        pytest.param(b"", KEYS, False, id="empty"),
        pytest.param(KEY_A.encode(), frozenset(), False, id="no-keys"),
    ],
)
def test_key_matches(presented: bytes, keys: frozenset[bytes], expected: bool) -> None:
    assert key_matches(presented, keys) is expected


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param(KEY_A.encode(), id="match"),
        pytest.param(KEY_C.encode(), id="other-match"),
        pytest.param(b"no-match-at-all-000", id="no-match"),
    ],
)
def test_key_matches_compares_every_key(monkeypatch: pytest.MonkeyPatch, presented: bytes) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(b))
        return real(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", counting)
    key_matches(presented, KEYS)
    # One comparison per key, whichever matches; all of the same (digest) length.
    assert calls == [32] * len(KEYS)


def test_generate_key() -> None:
    keys = [generate_key() for _ in range(50)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert len(unb64(key)) >= 32  # 256 bits
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert parse_keys(key) == {key.encode()}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0, so a 0600 file proves the code set the mode, not the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_write_keys_file_round_trip_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    keys = [generate_key(), generate_key()]
    write_keys_file(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keys(path) == {k.encode() for k in keys}
    text = path.read_text()
    header = text.split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert "one key per line" in header
    assert "Rotation" in header
    assert "Replace one" in header
    assert "Roll the clients" in header
    assert sorted(os.listdir(tmp_path)) == ["keys"]  # no temporary file left behind


@pytest.mark.usefixtures("open_umask")
def test_write_keys_file_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY_A}\n")
    path.chmod(0o644)
    write_keys_file(path, [KEY_B, KEY_C])
    assert load_keys(path) == {KEY_B.encode(), KEY_C.encode()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["keys"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param([], "no key", id="none"),
        pytest.param([KEY_A, "tiny-k3y"], "key #2", id="too-short"),
        pytest.param([KEY_A, "with space 0123456789"], "whitespace", id="space"),
        pytest.param([KEY_A, KEY_A], "twice", id="duplicate"),
    ],
)
def test_write_keys_file_refuses_bad_keys(tmp_path: Path, keys: list[str], expected: str) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY_B}\n")
    with pytest.raises(CredentialError) as info:
        write_keys_file(path, keys)
    assert expected in str(info.value)
    assert "tiny-k3y" not in str(info.value)
    assert KEY_A not in str(info.value)
    assert path.read_text() == f"{KEY_B}\n"  # untouched
    assert sorted(os.listdir(tmp_path)) == ["keys"]


# ----------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("source", "alg", "kid"),
    [
        pytest.param("RSA", "RS256", "rsa-1", id="RS256"),
        pytest.param("EC", "ES256", "ec-1", id="ES256"),
        pytest.param("HS", "HS256", None, id="HS256"),
    ],
)
def test_mint_and_verify_round_trip(env: Env, source: str, alg: str, kid: str | None) -> None:
    key_source = {
        "RSA": {"private_jwk_path": env.rsa_private_path},
        "EC": {"private_jwk_path": env.ec_private_path},
        "HS": {"secret_path": env.secret_path},
    }[source]
    token = mint_token(
        **key_source, ttl_s=300, now=NOW + 0.75, audience=AUD, issuer=ISS, subject="client-7"
    )
    assert looks_like_jwt(token)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg
    assert header.get("kid") == kid
    got = verify_token(token, env.keys_for(source), POLICY, NOW)
    assert got == claims()  # iat = nbf = floor(now), exp = iat + ttl, aud/iss/sub
    if source == "RSA":  # also against the JWKS holding this key alone
        assert verify_token(token, env.rsa_only, POLICY, NOW) == claims()


def test_mint_without_optional_claims(env: Env) -> None:
    token = mint_token(secret_path=env.secret_path, ttl_s=60, now=NOW)
    assert verify_token(token, env.hs, NO_CLAIM_POLICY, NOW) == {
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 60,
    }


def test_load_secret_strips_exactly_one_newline(env: Env) -> None:
    # The file holds SECRET + "\n": a token signed with SECRET alone verifies.
    token = jwt.encode(claims(), SECRET, "HS256")
    assert verify_token(token, env.hs, POLICY, NOW)["sub"] == "client-7"
    with pytest.raises(TokenRejected) as info:
        verify_token(jwt.encode(claims(), SECRET + b"\n", "HS256"), env.hs, POLICY, NOW)
    assert info.value.reason == "invalid_signature"


# Each builder returns (token, keys, policy); `now` is NOW.
Build = Callable[[Env], tuple[str, VerificationKeys, TokenPolicy]]


def _rs(payload: dict[str, Any], policy: TokenPolicy = POLICY, **header: Any) -> Build:
    return lambda e: (e.sign("RSA", payload, **header), e.jwks, policy)


def _hs(payload: dict[str, Any], policy: TokenPolicy = POLICY) -> Build:
    return lambda e: (e.sign("HS", payload), e.hs, policy)


def _forged(header: dict[str, Any], payload: Any, keys: str = "jwks") -> Build:
    return lambda e: (forge(header, payload), getattr(e, keys), POLICY)


def _forged_hs(header: dict[str, Any], payload: Any, keys: str = "hs") -> Build:
    return lambda e: (forge_hs256(header, payload, SECRET), getattr(e, keys), POLICY)


def _confusion(secret_of: Callable[[Env], bytes], keys: str, **header: Any) -> Build:
    """HS256 'signed' with public key material as the HMAC secret."""
    return lambda e: (
        forge_hs256({"alg": "HS256", "typ": "JWT", **header}, claims(), secret_of(e)),
        getattr(e, keys),
        POLICY,
    )


def _tampered(kind: str, tamper: Callable[[str], str]) -> Build:
    return lambda e: (tamper(e.sign(kind, claims())), e.keys_for(kind), POLICY)


def _pem(e: Env) -> bytes:
    return e.rsa_public_pem


def _jwk_json(e: Env) -> bytes:
    return json.dumps(e.rsa_public_jwk).encode()


def _jwks_file(e: Env) -> bytes:
    return (e.folder / "rsa.jwks").read_bytes()


ATTACKS = [
    # time
    pytest.param(_rs(claims(iat=NOW - 900, nbf=NOW - 900, exp=NOW - 60)), "expired", id="expired"),
    pytest.param(_hs(claims(exp=NOW - 31)), "expired", id="expired-hs"),
    pytest.param(_rs(claims(nbf=NOW + 600, exp=NOW + 900)), "not_yet_valid", id="not-yet-valid"),
    pytest.param(
        _rs(claims(iat=NOW + 600, nbf=DROP, exp=NOW + 900)), "not_yet_valid", id="iat-in-future"
    ),
    # audience and issuer
    pytest.param(_rs(claims(aud="another-service")), "invalid_audience", id="wrong-aud"),
    pytest.param(_rs(claims(aud=["a", "b"])), "invalid_audience", id="wrong-aud-list"),
    pytest.param(
        _rs(claims(), TokenPolicy(issuer=ISS, audience=None)),
        "invalid_audience",
        id="aud-when-none-configured",
    ),
    pytest.param(_rs(claims(aud=DROP)), "missing_claim", id="missing-aud"),
    pytest.param(_rs(claims(iss="https://evil.example")), "invalid_issuer", id="wrong-iss"),
    pytest.param(_rs(claims(iss=ISS + "/x")), "invalid_issuer", id="iss-with-suffix"),
    pytest.param(_rs(claims(iss=DROP)), "missing_claim", id="missing-iss"),
    # exp is required and must be a number
    pytest.param(_rs(claims(exp=DROP)), "missing_claim", id="missing-exp"),
    pytest.param(_hs(claims(exp=DROP), NO_CLAIM_POLICY), "missing_claim", id="missing-exp-hs"),
    pytest.param(_rs(claims(exp=None)), "missing_claim", id="exp-null"),
    pytest.param(_rs(claims(exp=str(NOW + 300))), "malformed", id="exp-string"),
    pytest.param(_rs(claims(exp=True)), "malformed", id="exp-bool"),
    pytest.param(_rs(claims(exp=float("nan"))), "malformed", id="exp-nan"),
    pytest.param(_rs(claims(nbf="yesterday")), "malformed", id="nbf-string"),
    pytest.param(_rs(claims(iat=[NOW])), "malformed", id="iat-list"),
    # algorithm: none, confusion, other algorithms
    pytest.param(
        _forged({"alg": "none", "typ": "JWT"}, claims()), "disallowed_algorithm", id="alg-none"
    ),
    pytest.param(
        _forged({"alg": "none", "kid": "rsa-1"}, claims()),
        "disallowed_algorithm",
        id="alg-none-kid",
    ),
    pytest.param(
        _forged({"alg": "None"}, claims(), "hs"), "disallowed_algorithm", id="alg-None-hs"
    ),
    pytest.param(_forged({"alg": "NONE"}, claims(), "rsa_only"), "disallowed_algorithm", id="NONE"),
    pytest.param(
        _confusion(_pem, "jwks", kid="rsa-1"), "disallowed_algorithm", id="hs256-rsa-pem-secret"
    ),
    pytest.param(
        _confusion(_pem, "rsa_only"), "disallowed_algorithm", id="hs256-rsa-pem-secret-no-kid"
    ),
    pytest.param(
        _confusion(_jwk_json, "jwks", kid="rsa-1"),
        "disallowed_algorithm",
        id="hs256-rsa-jwk-json-secret",
    ),
    pytest.param(
        _confusion(_jwks_file, "rsa_only"), "disallowed_algorithm", id="hs256-jwks-file-secret"
    ),
    pytest.param(
        lambda e: (e.sign("RSA", claims()), e.hs, POLICY),
        "disallowed_algorithm",
        id="rs256-against-hs256-config",
    ),
    pytest.param(
        lambda e: (e.sign("EC", claims(), kid="rsa-1"), e.jwks, POLICY),
        "disallowed_algorithm",
        id="es256-with-rsa-kid",
    ),
    pytest.param(
        lambda e: (
            jwt.encode(claims(), e.rsa_private, "RS512", headers={"kid": "rsa-1"}),
            e.jwks,
            POLICY,
        ),
        "disallowed_algorithm",
        id="rs512-right-key",
    ),
    pytest.param(
        lambda e: (
            jwt.encode(claims(), e.rsa_private, "PS256", headers={"kid": "rsa-1"}),
            e.jwks,
            POLICY,
        ),
        "disallowed_algorithm",
        id="ps256-right-key",
    ),
    pytest.param(
        lambda e: (jwt.encode(claims(), SECRET, "HS512"), e.hs, POLICY),
        "disallowed_algorithm",
        id="hs512-right-secret",
    ),
    # tampering
    pytest.param(
        _tampered("RSA", lambda t: tamper_payload(t, sub="admin")),
        "invalid_signature",
        id="tampered-payload-rs256",
    ),
    pytest.param(
        _tampered("EC", lambda t: tamper_payload(t, exp=NOW + 10**6)),
        "invalid_signature",
        id="tampered-payload-es256",
    ),
    pytest.param(
        _tampered("HS", lambda t: tamper_payload(t, aud=AUD, sub="root")),
        "invalid_signature",
        id="tampered-payload-hs256",
    ),
    pytest.param(
        _tampered("RSA", flip_signature_bit), "invalid_signature", id="tampered-sig-rs256"
    ),
    pytest.param(_tampered("EC", flip_signature_bit), "invalid_signature", id="tampered-sig-es256"),
    pytest.param(_tampered("HS", flip_signature_bit), "invalid_signature", id="tampered-sig-hs256"),
    pytest.param(
        _tampered("RSA", lambda t: t.rsplit(".", 1)[0] + "."),
        "invalid_signature",
        id="signature-stripped",
    ),
    pytest.param(
        lambda e: (
            jwt.encode(claims(), e.impostor_rsa, "RS256", headers={"kid": "rsa-1"}),
            e.jwks,
            POLICY,
        ),
        "invalid_signature",
        id="other-key-same-kid",
    ),
    pytest.param(
        lambda e: (jwt.encode(claims(), SECRET[:-1] + b"!", "HS256"), e.hs, POLICY),
        "invalid_signature",
        id="wrong-secret",
    ),
    # key selection
    pytest.param(_rs(claims(), kid="rsa-2"), "unknown_key", id="unknown-kid"),
    pytest.param(
        lambda e: (e.sign("RSA", claims(), kid="rsa-2"), e.rsa_only, POLICY),
        "unknown_key",
        id="unknown-kid-single-key",
    ),
    pytest.param(
        lambda e: (jwt.encode(claims(), e.rsa_private, "RS256"), e.jwks, POLICY),
        "unknown_key",
        id="no-kid-several-keys",
    ),
    # garbage
    pytest.param(lambda e: ("", e.jwks, POLICY), "malformed", id="empty"),
    pytest.param(lambda e: ("garbage", e.jwks, POLICY), "malformed", id="garbage"),
    pytest.param(lambda e: ("a.b", e.jwks, POLICY), "malformed", id="two-segments"),
    pytest.param(lambda e: ("a.b.c.d", e.jwks, POLICY), "malformed", id="four-segments"),
    pytest.param(lambda e: ("!!!.###.$$$", e.jwks, POLICY), "malformed", id="not-base64url"),
    pytest.param(lambda e: ("abc.def.ghi", e.jwks, POLICY), "malformed", id="header-not-json"),
    pytest.param(
        lambda e: (f"{b64(b'[1]')}.{seg(claims())}.", e.jwks, POLICY),
        "malformed",
        id="header-json-array",
    ),
    pytest.param(
        _tampered("RSA", lambda t: t.rsplit(".", 1)[0]), "malformed", id="truncated-no-signature"
    ),
    pytest.param(_tampered("RSA", lambda t: t[:40]), "malformed", id="truncated-in-payload"),
    pytest.param(_tampered("RSA", lambda t: t + "\n"), "malformed", id="trailing-newline"),
    pytest.param(_tampered("RSA", lambda t: t + "=="), "malformed", id="padded"),
    pytest.param(_hs(claims(padding="x" * 20_000)), "malformed", id="oversized"),
    pytest.param(
        lambda e: (forge_hs256({"alg": "HS256"}, ["not", "an", "object"], SECRET), e.hs, POLICY),
        "malformed",
        id="payload-json-array-signed",
    ),
    pytest.param(
        lambda e: (sign_hs256_raw(f"{seg({'alg': 'HS256'})}.{b64(b'not json')}"), e.hs, POLICY),
        "malformed",
        id="payload-not-json-signed",
    ),
    pytest.param(_forged_hs({"alg": "HS256", "kid": 7}, claims()), "malformed", id="kid-number"),
    pytest.param(
        _forged_hs({"alg": "HS256", "crit": ["x-policy"], "x-policy": 1}, claims()),
        "malformed",
        id="unknown-crit",
    ),
    pytest.param(
        _forged_hs({"alg": "HS256", "crit": ["b64"], "b64": True}, claims()),
        "malformed",
        id="crit-b64",
    ),
    pytest.param(_forged_hs({"typ": "JWT"}, claims()), "malformed", id="no-alg"),
]


@pytest.mark.parametrize(("build", "reason"), ATTACKS)
def test_attack_refused(env: Env, build: Build, reason: str) -> None:
    token, keys, policy = build(env)
    with pytest.raises(TokenRejected) as info:
        verify_token(token, keys, policy, NOW)
    assert info.value.reason == reason
    assert_safe_rejection(info.value, token)


def test_expired_description_is_exactly_token_expired(env: Env) -> None:
    token = env.sign("RSA", claims(exp=NOW - 3600))
    with pytest.raises(TokenRejected) as info:
        verify_token(token, env.jwks, POLICY, NOW)
    assert (info.value.reason, info.value.description) == ("expired", "token expired")


def test_attack_tokens_are_well_signed_otherwise(env: Env) -> None:
    """Guard for the table: an untampered token built the same way verifies."""
    for kind in ("RSA", "EC", "HS"):
        assert verify_token(env.sign(kind, claims()), env.keys_for(kind), POLICY, NOW)
    assert verify_token(forge_hs256({"alg": "HS256"}, claims(), SECRET), env.hs, POLICY, NOW)


EXP, NBF = NOW + 100, NOW


@pytest.mark.parametrize(
    ("now", "leeway", "reason"),
    [
        pytest.param(EXP + 30, 30, "expired", id="at-exp-plus-leeway"),
        pytest.param(EXP + 29.999, 30, None, id="just-before-exp-plus-leeway"),
        pytest.param(NBF - 30, 30, None, id="at-nbf-minus-leeway"),
        pytest.param(NBF - 30.001, 30, "not_yet_valid", id="just-before-nbf-minus-leeway"),
        pytest.param(EXP, 0, "expired", id="no-leeway-at-exp"),
        pytest.param(EXP - 0.001, 0, None, id="no-leeway-just-before-exp"),
        pytest.param(NBF, 0, None, id="no-leeway-at-nbf"),
        pytest.param(NBF - 0.001, 0, "not_yet_valid", id="no-leeway-just-before-nbf"),
        pytest.param(EXP + 119.5, 120, None, id="large-leeway"),
    ],
)
def test_leeway_boundaries(env: Env, now: float, leeway: float, reason: str | None) -> None:
    token = env.sign("HS", claims(iat=NBF, nbf=NBF, exp=EXP))
    policy = TokenPolicy(issuer=ISS, audience=AUD, leeway_s=leeway)
    if reason is None:
        assert verify_token(token, env.hs, policy, now)["exp"] == EXP
    else:
        with pytest.raises(TokenRejected) as info:
            verify_token(token, env.hs, policy, now)
        assert info.value.reason == reason


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        pytest.param(NOW + 50 - 30, None, id="at-iat-minus-leeway"),
        pytest.param(NOW + 50 - 30.001, "not_yet_valid", id="just-before-iat-minus-leeway"),
    ],
)
def test_iat_leeway_boundary(env: Env, now: float, reason: str | None) -> None:
    token = env.sign("HS", claims(iat=NOW + 50, nbf=DROP, exp=NOW + 1000))
    if reason is None:
        verify_token(token, env.hs, POLICY, now)
    else:
        with pytest.raises(TokenRejected) as info:
            verify_token(token, env.hs, POLICY, now)
        assert info.value.reason == reason
        assert info.value.description == "token issued in the future"


@pytest.mark.parametrize(
    "minted_at",
    [
        pytest.param(100_000.0, id="1970"),
        pytest.param(4_000_000_000.0, id="2096"),
    ],
)
def test_now_is_authoritative_far_from_the_clock(env: Env, minted_at: float) -> None:
    token = mint_token(secret_path=env.secret_path, ttl_s=60, now=minted_at)
    assert verify_token(token, env.hs, NO_CLAIM_POLICY, minted_at + 30)["iat"] == int(minted_at)
    with pytest.raises(TokenRejected) as info:
        verify_token(token, env.hs, NO_CLAIM_POLICY, minted_at + 100)
    assert info.value.reason == "expired"


@pytest.mark.parametrize("now", [float("nan"), float("inf"), float("-inf")])
def test_now_must_be_finite(env: Env, now: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        verify_token(env.sign("HS", claims()), env.hs, POLICY, now)


def test_token_valid_by_the_clock_is_expired_at_a_later_now(env: Env) -> None:
    real = time.time()  # only to build a token the wall clock would accept
    token = mint_token(private_jwk_path=env.rsa_private_path, ttl_s=3600, now=real)
    verify_token(token, env.jwks, NO_CLAIM_POLICY, real)
    with pytest.raises(TokenRejected) as info:
        verify_token(token, env.jwks, NO_CLAIM_POLICY, real + 86_400)
    assert info.value.reason == "expired"
    with pytest.raises(TokenRejected) as info:
        verify_token(token, env.jwks, NO_CLAIM_POLICY, real - 86_400)
    assert info.value.reason == "not_yet_valid"


def test_aud_list_containing_ours_is_accepted(env: Env) -> None:
    token = env.sign("EC", claims(aud=["other", AUD]))
    assert verify_token(token, env.jwks, POLICY, NOW)["aud"] == ["other", AUD]


def test_token_without_aud_or_iss_passes_a_policy_without_them(env: Env) -> None:
    token = env.sign("RSA", claims(aud=DROP, iss=DROP))
    assert "aud" not in verify_token(token, env.jwks, NO_CLAIM_POLICY, NOW)


@pytest.mark.parametrize(
    "token_kid",
    [
        pytest.param(None, id="no-kid"),
        pytest.param("anything", id="any-kid"),
    ],
)
def test_single_key_without_kid_serves_any_kid(
    tmp_path: Path, env: Env, token_kid: str | None
) -> None:
    public = {k: v for k, v in env.rsa_public_jwk.items() if k != "kid"}
    keys = load_jwks(_write_json(tmp_path / "jwks", {"keys": [public]}))
    header = {} if token_kid is None else {"kid": token_kid}
    token = jwt.encode(claims(), env.rsa_private, "RS256", headers=header)
    assert verify_token(token, keys, POLICY, NOW)["sub"] == "client-7"


def test_single_key_with_kid_serves_a_token_without_kid(env: Env) -> None:
    token = jwt.encode(claims(), env.rsa_private, "RS256")
    assert verify_token(token, env.rsa_only, POLICY, NOW)["sub"] == "client-7"


# -------------------------------------------------------- loading and minting errors


def _jwks_case(env: Env, case: str) -> Any:
    rsa_pub = env.rsa_public_jwk
    ec_priv = json.loads(env.ec_private_path.read_text())
    ec_pub = {k: v for k, v in ec_priv.items() if k != "d"}
    small_rsa = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), as_dict=True
    )
    p384 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    return {
        "array": [rsa_pub],
        "no-keys": {"kid": "x"},
        "empty-keys": {"keys": []},
        "kid-missing-among-several": {"keys": [{**rsa_pub, "kid": None}, ec_pub]},
        "duplicate-kid": {"keys": [rsa_pub, {**ec_pub, "kid": "rsa-1"}]},
        "oct-key": {"keys": [{"kty": "oct", "k": b64(SECRET), "kid": "h"}]},
        "rsa-1024": {"keys": [{**small_rsa, "kid": "small"}]},
        "ec-p384": {"keys": [{**p384, "kid": "p384"}]},
        "private-material": {"keys": [ec_priv]},
        "alg-mismatch": {"keys": [{**rsa_pub, "alg": "RS512"}]},
        "use-enc": {"keys": [{**rsa_pub, "use": "enc"}]},
        "kid-number": {"keys": [{**rsa_pub, "kid": 1}]},
        "rsa-without-n": {"keys": [{k: v for k, v in rsa_pub.items() if k != "n"}]},
        "entry-not-object": {"keys": ["rsa"]},
    }[case]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param("not-json", "not valid JSON", id="not-json"),
        pytest.param("missing", "No such file", id="missing"),
        pytest.param("array", "not a JSON object", id="array"),
        pytest.param("no-keys", '"keys"', id="no-keys"),
        pytest.param("empty-keys", '"keys"', id="empty-keys"),
        pytest.param("kid-missing-among-several", "kid", id="kid-missing-among-several"),
        pytest.param("duplicate-kid", "share a kid", id="duplicate-kid"),
        pytest.param("oct-key", "kty", id="oct-key"),
        pytest.param("rsa-1024", "2048", id="rsa-1024"),
        pytest.param("ec-p384", "P-256", id="ec-p384"),
        pytest.param("private-material", "private", id="private-material"),
        pytest.param("alg-mismatch", "RS256 only", id="alg-mismatch"),
        pytest.param("use-enc", "use", id="use-enc"),
        pytest.param("kid-number", "kid", id="kid-number"),
        pytest.param("rsa-without-n", "unusable", id="rsa-without-n"),
        pytest.param("entry-not-object", "key #1", id="entry-not-object"),
    ],
)
def test_load_jwks_errors(tmp_path: Path, env: Env, case: str, expected: str) -> None:
    path = tmp_path / "jwks.json"
    if case == "not-json":
        path.write_text("{keys: oops")
    elif case != "missing":
        _write_json(path, _jwks_case(env, case))
    with pytest.raises(CredentialError) as info:
        load_jwks(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert json.loads(env.ec_private_path.read_text())["d"] not in message


@pytest.mark.parametrize(
    ("content", "ok"),
    [
        pytest.param(b"s" * 32, True, id="32-bytes"),
        pytest.param(b"s" * 32 + b"\n", True, id="32-bytes-newline"),
        pytest.param(b"s" * 32 + b"\r\n", True, id="32-bytes-crlf"),
        pytest.param(b"s" * 31, False, id="31-bytes"),
        pytest.param(b"s" * 31 + b"\n", False, id="31-bytes-newline"),
        pytest.param(b"", False, id="empty"),
        pytest.param(None, False, id="missing"),
    ],
)
def test_load_secret(tmp_path: Path, content: bytes | None, ok: bool) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    if ok:
        keys = load_secret(path)
        assert keys.algorithms == {"HS256"}
        assert b"s" * 32 not in repr(keys).encode()
        assert "sss" not in repr(keys)
        token = jwt.encode(claims(), b"s" * 32, "HS256")
        assert verify_token(token, keys, POLICY, NOW)["sub"] == "client-7"
    else:
        with pytest.raises(CredentialError) as info:
            load_secret(path)
        assert str(path) in str(info.value)
        assert "sss" not in str(info.value)


def test_mint_refuses_bad_arguments(env: Env, tmp_path: Path) -> None:
    public_only = _write_json(tmp_path / "public.jwk", env.rsa_public_jwk)
    jwks_doc = _write_json(tmp_path / "doc.jwks", {"keys": [env.rsa_public_jwk]})
    bad: list[dict[str, Any]] = [
        {"ttl_s": 60},
        {"private_jwk_path": env.rsa_private_path, "secret_path": env.secret_path, "ttl_s": 60},
        {"secret_path": env.secret_path, "ttl_s": 0},
        {"secret_path": env.secret_path, "ttl_s": -5},
        {"private_jwk_path": public_only, "ttl_s": 60},
        {"private_jwk_path": jwks_doc, "ttl_s": 60},
    ]
    for kwargs in bad:
        with pytest.raises(CredentialError):
            mint_token(now=NOW, **kwargs)


def test_generate_jwk_pair_shapes() -> None:
    for kind, alg in (("RSA", "RS256"), ("EC", "ES256")):
        private, jwks = generate_jwk_pair(kind, f"{kind}-k")  # type: ignore[arg-type]
        assert private["kid"] == f"{kind}-k"
        assert private["alg"] == alg
        assert "d" in private
        (public,) = jwks["keys"]
        assert "d" not in public
        assert public["kid"] == f"{kind}-k"
        assert public["use"] == "sig"
    with pytest.raises(CredentialError):
        generate_jwk_pair("RSA", "")


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        pytest.param(forge_hs256({"alg": "HS256"}, claims(), SECRET), True, id="jwt"),
        pytest.param("eyJh.eyJi.", True, id="unsigned-shape"),
        pytest.param(KEY_A, False, id="key"),
        pytest.param(generate_key(), False, id="generated-key"),
        pytest.param("a.b", False, id="two-segments"),
        pytest.param("a.b.c.d", False, id="four-segments"),
        pytest.param("a..c", False, id="empty-payload"),
        pytest.param(".b.c", False, id="empty-header"),
        pytest.param("a.b.c=", False, id="padding"),
        pytest.param("a+/.b.c", False, id="plain-base64"),
        pytest.param("a.b.c\n", False, id="trailing-newline"),
        pytest.param("a .b.c", False, id="space"),
        pytest.param("", False, id="empty"),
    ],
)
def test_looks_like_jwt(credential: str, expected: bool) -> None:
    assert looks_like_jwt(credential) is expected


def test_token_rejected_reasons_are_a_fixed_set() -> None:
    with pytest.raises(ValueError, match="unknown rejection reason"):
        TokenRejected("nope", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"issuer": None, "audience": None, "leeway_s": -1}, id="negative-leeway"),
        pytest.param(
            {"issuer": None, "audience": None, "leeway_s": float("inf")}, id="infinite-leeway"
        ),
        pytest.param({"issuer": "", "audience": None}, id="empty-issuer"),
        pytest.param({"issuer": None, "audience": ""}, id="empty-audience"),
    ],
)
def test_token_policy_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"leeway_s|non-empty"):
        TokenPolicy(**kwargs)
