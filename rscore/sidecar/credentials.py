"""Credentials: API keys and JWTs, parsed from files and checked, nothing else.

The auth layer (HTTP statuses, headers, watching files for changes) lives elsewhere and
calls in here. This module holds the decisions:

* keys files: parse, load, match a presented key in constant time, generate, write;
* JWTs: load verification keys (JWKS file or HMAC secret file), verify a token against a
  `TokenPolicy` at a caller-given time, mint a token (for `rscore token` and tests).

Each credential file has a `read_*` function (what a reload uses: a file that parses is
the whole truth, and one with nothing in it means nothing is accepted) and a `load_*`
function (start-up: a file with nothing in it is a configuration error).

What it must never do:

* log, print or put a credential (key, secret, token, private JWK) in any message or
  exception it raises; errors name a path, a line number or a key's position instead;
* read the clock: the time comes in as `now`, so callers and tests decide what "now" is;
* trust the token's header to choose an algorithm: each verification key carries the one
  algorithm it may verify, fixed by its type when it is loaded.

Signatures and JWS/JWT decoding are PyJWT's; no JWT parsing or signature code is written
here. PyJWT only verifies the signature and the `iss`/`aud` claims; the time claims are
checked here against `now` (PyJWT would use the wall clock).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, get_args

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = [
    "MIN_KEY_CHARS",
    "MIN_SECRET_BYTES",
    "Algorithm",
    "Claims",
    "CredentialError",
    "CredentialFileMissing",
    "Reason",
    "TokenPolicy",
    "TokenRejected",
    "VerificationKey",
    "VerificationKeys",
    "generate_jwk_pair",
    "generate_key",
    "key_matches",
    "load_jwks",
    "load_keys",
    "load_secret",
    "looks_like_jwt",
    "mint_token",
    "parse_jwks",
    "parse_keys",
    "parse_keys_file",
    "read_jwks",
    "read_keys",
    "read_secret",
    "verify_token",
    "write_keys_file",
]

MIN_KEY_CHARS: Final = 16
MIN_SECRET_BYTES: Final = 32  # HS256: a secret shorter than the hash output weakens it
MIN_RSA_BITS: Final = 2048
# Bounds on what is read or parsed, so a wrong path (/dev/zero) or a huge header cannot
# eat memory. An HTTP header is limited to 8 KiB by aiohttp anyway.
MAX_FILE_BYTES: Final = 1 << 20
MAX_TOKEN_CHARS: Final = 16 * 1024
# A stolen token is good until it expires: a day bounds that whatever the issuer set.
DEFAULT_MAX_LIFETIME_S: Final = 86_400

Algorithm: TypeAlias = Literal["RS256", "ES256", "HS256"]
Reason: TypeAlias = Literal[
    "expired",
    "not_yet_valid",
    "invalid_signature",
    "invalid_audience",
    "invalid_issuer",
    "missing_claim",
    "unknown_key",
    "disallowed_algorithm",
    "malformed",
    "lifetime_too_long",
]
REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))
Claims: TypeAlias = dict[str, Any]
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CredentialError(ValueError):
    """A credential file or argument is unusable. The message never holds a credential.

    `line` is the 1-based line of a keys file at fault, when one is.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class CredentialFileMissing(CredentialError):
    """The credential file is not there (deleted, or a dangling symlink)."""


class TokenRejected(Exception):
    """A token failed verification.

    `reason` is one of `Reason` (for metrics and logs); `description` is short, plain
    ASCII without quotes or backslashes, so it can go in
    `WWW-Authenticate: Bearer error="invalid_token", error_description="..."` as is.
    Neither ever holds the token or any part of it.
    """

    def __init__(self, reason: Reason, description: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {description}")
        self.reason: Reason = reason
        self.description = description


# --------------------------------------------------------------------------- keys

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
# A trailing comment starts at a '#' preceded by whitespace; a '#' glued to other
# characters is part of the key.
_TRAILING_COMMENT = re.compile(r"\s#")

KEYS_FILE_HEADER: Final = """\
# rscore API keys.
#
# Format: one key per line. Blank lines are ignored, and so is everything from a '#'
# at the start of a line or after whitespace. A key is at least 16 visible ASCII
# characters, without spaces. Every key listed here is accepted, as
# `Authorization: Bearer <key>`. The server re-reads this file when it changes.
#
# Rotation without downtime: keep two keys side by side, a primary and a secondary.
#   1. Replace one of them (say the secondary) with a newly generated key.
#   2. Roll the clients over to the new key.
#   3. Replace the other (the old primary) with a newly generated key; it is the
#      spare for the next rotation.
# Keep this file private (mode 0600); never commit it.
"""


def _key_problem(candidate: str) -> str | None:
    """Why `candidate` is not a usable key, or None. Never quotes the candidate."""
    if any(ch.isspace() for ch in candidate):
        return "key contains whitespace"
    if not _VISIBLE_ASCII.fullmatch(candidate):
        return "key contains characters other than visible ASCII"
    if len(candidate) < MIN_KEY_CHARS:
        return f"key is shorter than {MIN_KEY_CHARS} characters"
    return None


def parse_keys(text: str) -> frozenset[bytes]:
    """The keys in a keys file's text (possibly none). Errors name the line, not the key."""
    text = text.removeprefix("\ufeff")  # a BOM left by a Windows editor
    keys: set[bytes] = set()
    # split("\n"), not splitlines(): the latter also breaks at \v, \f, \x1c..., which
    # would make line numbers disagree with what an editor shows. strip() eats the \r.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        comment = _TRAILING_COMMENT.search(line)
        if comment is not None:
            line = line[: comment.start()].rstrip()
        problem = _key_problem(line)
        if problem is not None:
            raise CredentialError(f"line {number}: {problem}", line=number)
        keys.add(line.encode("ascii"))
    return frozenset(keys)


def parse_keys_file(data: bytes) -> frozenset[bytes]:
    """The keys in a keys file's bytes (possibly none); an unusable file raises a
    CredentialError whose `line` is the first line at fault, text or encoding."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # The decode error's own message quotes a byte of the file: only its position.
        line = data.count(b"\n", 0, e.start) + 1
        raise CredentialError(f"line {line}: not UTF-8 text", line=line) from None
    return parse_keys(text)


def _read_bytes(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as e:  # deleted, or a Secret volume's dangling symlink
        raise CredentialFileMissing(f"{what} {path}: {e.strerror}") from None
    except OSError as e:
        # e.strerror only ("No such file or directory"), never the file's contents.
        raise CredentialError(f"{what} {path}: {e.strerror or type(e).__name__}") from None
    if len(data) > limit:
        raise CredentialError(f"{what} {path}: larger than {limit} bytes")
    return data


def _read_text(path: Path, what: str) -> str:
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # The decode error's message quotes a byte of the file: leave it out.
        raise CredentialError(f"{what} {path}: not UTF-8 text") from None


def read_keys(path: Path | str) -> frozenset[bytes]:
    """The keys in the keys file at `path`, possibly none (a reload: no key, no access)."""
    path = Path(path)
    data = _read_bytes(path, "keys file")
    try:
        return parse_keys_file(data)
    except CredentialError as e:
        raise CredentialError(f"keys file {path}: {e}", line=e.line) from None


def load_keys(path: Path | str) -> frozenset[bytes]:
    """The keys in the keys file at `path`; at start-up a file with no key is an error."""
    keys = read_keys(path)
    if not keys:
        raise CredentialError(f"keys file {path}: no key in it")
    return keys


def key_matches(presented: bytes, keys: frozenset[bytes]) -> bool:
    """Whether `presented` is one of `keys`, in time independent of which or how many match.

    Every key is compared (no early exit). Digests are compared rather than the keys
    themselves because `compare_digest` returns early on a length mismatch, which would
    tell an attacker the keys' lengths.
    """
    presented_digest = hashlib.sha256(presented).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_digest, hashlib.sha256(key).digest())
    return matched


def generate_key() -> str:
    """A new random key: 256 bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def write_keys_file(path: Path | str, keys: list[str]) -> None:
    """Write `keys` to `path` atomically, mode 0600, under a header explaining format
    and rotation. Readers see the old file or the new one, never a partial one."""
    path = Path(path)
    if not keys:
        raise CredentialError(f"keys file {path}: no key to write")
    for position, key in enumerate(keys, start=1):
        problem = _key_problem(key)
        if problem is not None:
            raise CredentialError(f"keys file {path}: key #{position}: {problem}")
    if len(set(keys)) != len(keys):
        raise CredentialError(f"keys file {path}: the same key is given twice")
    text = KEYS_FILE_HEADER + "\n" + "".join(f"{key}\n" for key in keys)
    _write_atomically(path, text.encode("ascii"), mode=0o600)


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # The temporary file sits in the same folder so that the rename is atomic (same
    # filesystem); mkstemp creates it 0600, so the content is never readable by others.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenPolicy:
    """What a token's claims must say, beyond a valid signature and an unexpired `exp`.

    `issuer`: when set, `iss` must be present and equal to it.
    `audience`: when set, `aud` must be present and be it or a list containing it. When
    None, a token that names an audience is refused (RFC 7519 4.1.3: a recipient that
    does not identify itself with the `aud` value must reject the token; a token meant
    for another service must not work here just because no audience is configured).
    `leeway_s`: clock skew allowed on `exp`, `nbf` and `iat`.
    `max_lifetime_s`: the longest a token may be valid: `exp - iat`, or `exp - now`
    (with the leeway) for a token without `iat`.
    """

    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30
    max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.leeway_s) and self.leeway_s >= 0):
            raise ValueError("leeway_s must be a finite number >= 0")
        if not (math.isfinite(self.max_lifetime_s) and self.max_lifetime_s > 0):
            raise ValueError("max_lifetime_s must be a finite number > 0")
        if self.issuer == "" or self.audience == "":
            raise ValueError("issuer and audience must be None or non-empty")


@dataclass(frozen=True)
class VerificationKey:
    """One key and the ONE algorithm it may verify."""

    kid: str | None
    algorithm: Algorithm
    key: PublicKey | bytes = field(repr=False)  # repr=False: an HMAC secret stays out of logs


@dataclass(frozen=True)
class VerificationKeys:
    """The keys tokens are verified against, chosen by the token's `kid`.

    A key without a `kid` is allowed only as the only key; it is then used whatever
    `kid` the token carries (there is nothing to choose between). With one key that has
    a `kid`, a token without `kid` uses it, and a token with another `kid` is refused.
    """

    keys: tuple[VerificationKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise CredentialError("no verification key")
        kids = [k.kid for k in self.keys]
        if len(self.keys) > 1 and None in kids:
            raise CredentialError("a key without kid is allowed only when it is the only key")
        if len(set(kids)) != len(kids):
            raise CredentialError("two keys share a kid")

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(k.algorithm for k in self.keys)

    def select(self, kid: str | None) -> VerificationKey:
        """The key for a token whose header carries `kid`; `TokenRejected` if none."""
        if len(self.keys) == 1 and (self.keys[0].kid is None or kid is None):
            return self.keys[0]
        if kid is None:
            raise TokenRejected("unknown_key", "token has no kid and several keys are configured")
        for key in self.keys:
            if key.kid == kid:
                return key
        raise TokenRejected("unknown_key", "no key matches the token kid")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    text = _read_text(path, what)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        # Its position only: e.msg is fixed text, but the document is key material.
        raise CredentialError(
            f"{what} {path}: not valid JSON at line {e.lineno} column {e.colno}", line=e.lineno
        ) from None
    except (ValueError, RecursionError):
        raise CredentialError(f"{what} {path}: not valid JSON") from None
    if not isinstance(document, dict):
        raise CredentialError(f"{what} {path}: not a JSON object")
    return document


def _jwk_key(jwk: Mapping[str, Any], *, private: bool) -> tuple[Algorithm, Any]:
    """The algorithm and `cryptography` key of one JWK. Raises CredentialError with a
    message fit to follow the key's location (it never quotes key material)."""
    kty = jwk.get("kty")
    parse: Callable[[str | dict[str, Any]], Any]  # the key types differ by kty
    if kty == "RSA":
        algorithm: Algorithm = "RS256"
        parse = RSAAlgorithm.from_jwk
    elif kty == "EC":
        algorithm = "ES256"
        parse = ECAlgorithm.from_jwk
        if jwk.get("crv") != "P-256":
            raise CredentialError("EC keys must be on curve P-256 (ES256)")
    else:
        # An "oct" (symmetric) key in a JWKS would turn a public document into an HMAC
        # secret: refused; HMAC secrets come from their own file.
        raise CredentialError("kty must be RSA or EC")
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        raise CredentialError(f"{kty} keys verify {algorithm} only, not the declared alg")
    if jwk.get("use", "sig") != "sig":
        raise CredentialError('use must be "sig"')
    has_private = "d" in jwk
    if private and not has_private:
        raise CredentialError("not a private key (no d)")
    if not private and has_private:
        raise CredentialError("holds private key material; publish only the public key")
    try:
        key = parse(dict(jwk))
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise CredentialError(f"unusable {kty} key: {type(e).__name__}") from None
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise CredentialError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    return algorithm, key


def _kid_of(jwk: Mapping[str, Any]) -> str | None:
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise CredentialError("kid must be a non-empty string")
    return kid


def parse_jwks(document: Mapping[str, Any]) -> VerificationKeys:
    """The verification keys of a JWKS document (`{"keys": [...]}`) of public keys."""
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise CredentialError('a JWKS needs a non-empty "keys" list')
    keys: list[VerificationKey] = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise CredentialError(f"key #{position}: not a JSON object")
        try:
            algorithm, key = _jwk_key(entry, private=False)
            keys.append(VerificationKey(_kid_of(entry), algorithm, key))
        except CredentialError as e:
            raise CredentialError(f"key #{position}: {e}") from None
    return VerificationKeys(tuple(keys))


def read_jwks(path: Path | str) -> VerificationKeys | None:
    """The verification keys of the JWKS file at `path` (RSA -> RS256, EC P-256 -> ES256);
    None for a JWKS with an empty `keys` list (a reload: no key, no token accepted)."""
    path = Path(path)
    document = _read_json_object(path, "JWKS file")
    if document.get("keys") == []:
        return None
    try:
        return parse_jwks(document)
    except CredentialError as e:
        raise CredentialError(f"JWKS file {path}: {e}") from None


def load_jwks(path: Path | str) -> VerificationKeys:
    """`read_jwks`, where at start-up an empty `keys` list is an error."""
    keys = read_jwks(path)
    if keys is None:
        raise CredentialError(f'JWKS file {path}: a JWKS needs a non-empty "keys" list')
    return keys


def _read_secret(path: Path, *, allow_empty: bool = False) -> bytes:
    secret = _read_bytes(path, "secret file")
    # One trailing newline is what `echo` and editors add; anything else is the secret.
    secret = secret.removesuffix(b"\n").removesuffix(b"\r")
    if allow_empty and not secret:
        return secret
    if len(secret) < MIN_SECRET_BYTES:
        raise CredentialError(
            f"secret file {path}: the secret must be at least {MIN_SECRET_BYTES} bytes"
        )
    return secret


def read_secret(path: Path | str) -> VerificationKeys | None:
    """The HMAC secret in the file at `path` as a key that verifies HS256 only; None for
    an empty file (a reload: no secret, no token accepted)."""
    secret = _read_secret(Path(path), allow_empty=True)
    return VerificationKeys((VerificationKey(None, "HS256", secret),)) if secret else None


def load_secret(path: Path | str) -> VerificationKeys:
    """`read_secret`, where at start-up an empty file is an error."""
    return VerificationKeys((VerificationKey(None, "HS256", _read_secret(Path(path))),))


_B64URL_SEGMENT = r"[A-Za-z0-9_-]"
# Header and payload are never empty; the signature may be (an unsigned token), so that
# such a token is routed to verify_token and refused with a precise reason.
_JWT_SHAPE = re.compile(rf"{_B64URL_SEGMENT}+\.{_B64URL_SEGMENT}+\.{_B64URL_SEGMENT}*")


def looks_like_jwt(credential: str) -> bool:
    """Whether `credential` has a compact JWT's shape: three base64url segments."""
    return _JWT_SHAPE.fullmatch(credential) is not None


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python; a NaN or infinite date compares false both ways.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed", f"claim {name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise TokenRejected("malformed", f"claim {name} is not a number")
    return value


def _check_times(claims: Mapping[str, Any], policy: TokenPolicy, now: float) -> None:
    # Written as "date vs now +/- leeway" (not "date + leeway vs now") so that a huge
    # integer date compares exactly instead of overflowing a float.
    leeway = policy.leeway_s
    exp = _numeric_date(claims, "exp")
    if exp is None:  # PyJWT's `require` already refuses this; kept as a second lock
        raise TokenRejected("missing_claim", "token lacks required claim exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    if exp <= now - leeway:  # exp is the first instant the token is no longer valid
        raise TokenRejected("expired", "token expired")
    if nbf is not None and nbf > now + leeway:
        raise TokenRejected("not_yet_valid", "token not yet valid")
    if iat is not None and iat > now + leeway:
        raise TokenRejected("not_yet_valid", "token issued in the future")
    # exp - iat is the issuer's own arithmetic (no skew); exp - now mixes two clocks.
    start = iat if iat is not None else now + leeway
    try:
        too_long = exp - start > policy.max_lifetime_s
    except OverflowError:  # a date beyond a float's range: exp > now > start, so huge
        too_long = True
    if too_long:
        raise TokenRejected("lifetime_too_long", "token lifetime exceeds the maximum")


_KNOWN_CLAIMS: Final = frozenset({"exp", "iss", "aud"})


def _rejection(error: jwt.PyJWTError, policy: TokenPolicy) -> TokenRejected:
    """A PyJWT error as a TokenRejected. PyJWT's messages may quote token content
    (header values), so none is passed on."""
    # Subclasses before their bases: InvalidSignatureError is a DecodeError.
    if isinstance(error, jwt.InvalidSignatureError):
        return TokenRejected("invalid_signature", "signature verification failed")
    if isinstance(error, jwt.InvalidAlgorithmError):
        return TokenRejected("disallowed_algorithm", "token algorithm not allowed")
    if isinstance(error, jwt.MissingRequiredClaimError):
        claim = error.claim if error.claim in _KNOWN_CLAIMS else "claim"
        return TokenRejected("missing_claim", f"token lacks required claim {claim}")
    if isinstance(error, jwt.InvalidAudienceError):
        if policy.audience is None:
            return TokenRejected("invalid_audience", "token has an audience; none is accepted")
        return TokenRejected("invalid_audience", "token audience not accepted")
    if isinstance(error, jwt.InvalidIssuerError):
        return TokenRejected("invalid_issuer", "token issuer not accepted")
    return TokenRejected("malformed", "malformed token")


def verify_token(token: str, keys: VerificationKeys, policy: TokenPolicy, now: float) -> Claims:
    """The claims of `token` if it is valid at `now` (seconds since the epoch).

    Order: shape, header (`alg` and `kid`), the key for the `kid`, the token's `alg`
    against that key's one algorithm, signature (PyJWT), required claims, `iss`/`aud`
    (PyJWT), then `exp`/`nbf`/`iat` against `now` with `policy.leeway_s`, then the
    lifetime against `policy.max_lifetime_s`.
    Raises `TokenRejected`; `ValueError` for a `now` that is not a finite number (a NaN
    would make every time comparison false, so every token would look current).
    """
    if not math.isfinite(now):
        raise ValueError("now must be a finite number")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
        raise TokenRejected("malformed", "malformed token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRejected("malformed", "malformed token") from None
    # No JWS extension is supported: b64=false (detached payload) or any other critical
    # header changes what is signed, so such a token is refused outright.
    if "crit" in header or "b64" in header:
        raise TokenRejected("malformed", "unsupported critical header")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenRejected("malformed", "token header lacks alg")
    # Refused before key selection too, so that "alg: none" says so whatever its kid.
    if alg not in keys.algorithms:
        raise TokenRejected("disallowed_algorithm", "token algorithm not allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenRejected("malformed", "token kid is not a string")
    key = keys.select(kid)
    # The algorithm comes from the key, never from the token: this refuses alg none and
    # an HS256 token "signed" with an RSA/EC public key used as an HMAC secret.
    if alg != key.algorithm:
        raise TokenRejected("disallowed_algorithm", "token algorithm not allowed for this key")
    try:
        claims: Claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=policy.audience,
            issuer=policy.issuer,
            options={
                "verify_signature": True,
                # Time claims are checked below against `now`; PyJWT would use the clock.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": True,
                "verify_iss": True,
                "require": ["exp"],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.PyJWTError as e:
        raise _rejection(e, policy) from None
    _check_times(claims, policy, now)
    return claims


def _load_private_jwk(path: Path) -> tuple[str | None, Algorithm, PrivateKey]:
    jwk = _read_json_object(path, "private JWK file")
    if "keys" in jwk:
        raise CredentialError(f"private JWK file {path}: expected one JWK, not a JWKS")
    try:
        algorithm, key = _jwk_key(jwk, private=True)
        kid = _kid_of(jwk)
    except CredentialError as e:
        raise CredentialError(f"private JWK file {path}: {e}") from None
    return kid, algorithm, key


def mint_token(
    *,
    private_jwk_path: Path | None = None,
    secret_path: Path | None = None,
    ttl_s: int,
    now: float,
    audience: str | None = None,
    issuer: str | None = None,
    subject: str | None = None,
) -> str:
    """A signed token valid from `now` for `ttl_s` seconds.

    Exactly one key source: a private JWK (RSA -> RS256, EC P-256 -> ES256, its `kid`
    in the header) or an HMAC secret file (HS256). Claims: `iat` = `nbf` = `now` rounded
    down to a whole second, `exp` = `iat` + `ttl_s`, and `aud`/`iss`/`sub` when given.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise CredentialError("ttl_s must be a positive whole number of seconds")
    if not math.isfinite(now):
        raise CredentialError("now must be a finite number")
    issued_at = math.floor(now)  # NumericDate as an integer: what every verifier accepts
    claims: Claims = {"iat": issued_at, "nbf": issued_at, "exp": issued_at + ttl_s}
    for name, value in (("aud", audience), ("iss", issuer), ("sub", subject)):
        if value is not None:
            claims[name] = value
    headers: dict[str, Any] = {}
    signing_key: PrivateKey | bytes
    if private_jwk_path is not None and secret_path is None:
        kid, algorithm, signing_key = _load_private_jwk(Path(private_jwk_path))
        if kid is not None:
            headers["kid"] = kid
    elif secret_path is not None and private_jwk_path is None:
        algorithm, signing_key = "HS256", _read_secret(Path(secret_path))
    else:
        raise CredentialError("give exactly one of a private JWK file and a secret file")
    return jwt.encode(claims, signing_key, algorithm=algorithm, headers=headers or None)


def generate_jwk_pair(
    kind: Literal["RSA", "EC"], kid: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new key pair: (private JWK, public JWKS document `{"keys": [public JWK]}`).

    RSA is 2048 bits (RS256), EC is P-256 (ES256); both JWKs carry `kid`, `alg` and
    `use: sig`. For tests and small deployments; keep the private JWK secret.
    """
    if not kid:
        raise CredentialError("kid must be a non-empty string")
    # Each family's to_jwk takes only its own keys: one branch each.
    if kind == "RSA":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
        algorithm = "RS256"
        jwks = (
            RSAAlgorithm.to_jwk(rsa_key, as_dict=True),
            RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True),
        )
    elif kind == "EC":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        algorithm = "ES256"
        jwks = (
            ECAlgorithm.to_jwk(ec_key, as_dict=True),
            ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True),
        )
    else:
        raise CredentialError('kind must be "RSA" or "EC"')
    extra = {"kid": kid, "alg": algorithm, "use": "sig"}
    private_jwk = {**jwks[0], **extra}
    public_jwk = {**jwks[1], **extra}
    return private_jwk, {"keys": [public_jwk]}
