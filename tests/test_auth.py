"""Authentication: the decision table of `authenticate()`, the 401s over real HTTP in
front of a real R worker, and credential rotation through a Kubernetes Secret volume
while clients keep scoring.

The table uses tokens minted at a fixed `NOW` far from the real time (a test that passes
ignores the clock). The HTTP tests use the Authenticator's own clock (the wall clock)
and mint tokens relative to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from certs import SecretVolume
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt_segments import b64, seg, unb64
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry, generate_latest
from pythonjsonlogger.json import JsonFormatter

from rscore.r_scorer.logs import LOG_FORMAT
from rscore.r_scorer.pool import WorkerPool
from rscore.r_scorer.supervisor import Supervisor
from rscore.sidecar.access_log import JsonAccessLogger
from rscore.sidecar.app import SidecarConfig, create_app
from rscore.sidecar.auth import AuthConfig, Authenticator, Credentials, Unauthorized, authenticate
from rscore.sidecar.credentials import (
    TokenPolicy,
    VerificationKeys,
    generate_jwk_pair,
    generate_key,
    load_jwks,
    load_keys,
    load_secret,
    mint_token,
    write_keys_file,
)
from rscore.sidecar.watch import MISSING_GRACE_S, RETRIES_AFTER_FAILURE, FileWatcher

NOW = 1_900_000_000  # March 2030: not the real time
AUD = "rscore-test"
ISS = "https://issuer.example"
POLICY = TokenPolicy(issuer=ISS, audience=AUD, leeway_s=30)
ROTATION_DEADLINE_S = 5.0  # a rotated credential is honoured within this
TICK_S = 0.05  # the watcher's polling interval in these tests

# --------------------------------------------------------------------------- helpers


def claims_at(now: float, **changes: Any) -> dict[str, Any]:
    base = {"iss": ISS, "aud": AUD, "sub": "client-7", "iat": now, "nbf": now, "exp": now + 600}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def tamper(token: str, **changes: Any) -> str:
    """`token` with its claims changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = {**json.loads(unb64(payload)), **changes}
    return f"{header}.{seg(claims)}.{signature}"


def keys_file_bytes(folder: Path, keys: list[str]) -> bytes:
    """A keys file as `write_keys_file` writes it (header comments and all)."""
    staging = folder / f"staging-{secrets.token_hex(4)}.keys"
    write_keys_file(staging, keys)
    return staging.read_bytes()


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


LEAK_WINDOW = 12  # this many characters of a random credential in a row is a leak


def leaks(credential: str, text: str) -> bool:
    """Whether `text` holds `credential` or any LEAK_WINDOW characters of it in a row."""
    last = max(1, len(credential) - LEAK_WINDOW + 1)
    return any(credential[i : i + LEAK_WINDOW] in text for i in range(last))


def secret_part(header: str | None) -> str | None:
    """What in an Authorization header is worth keeping secret (None if nothing is)."""
    if not header:
        return None
    credential = header.partition(" ")[2].strip() or header.strip()
    return credential if len(credential) >= 8 else None


# ------------------------------------------------------------- 1. authenticate() table


@dataclass(frozen=True)
class Material:
    """Key material on disk and loaded, minted once per module (RSA generation is slow)."""

    keys: frozenset[bytes]
    jwks: VerificationKeys  # RSA "rsa-1" and EC "ec-1"
    secret: VerificationKeys  # the HMAC secret (HS256)
    tokens: dict[str, str]

    def setup(self, column: str) -> tuple[str, Credentials]:
        mode, _, source = column.partition("/")
        token_keys = {"jwks": self.jwks, "secret": self.secret, "": None}[source]
        keys = self.keys if mode in ("keys", "keys+tokens") else frozenset()
        return mode, Credentials(keys, token_keys)


KEY_PRIMARY = "primary-key-0123456789ABCDEF"
KEY_SECONDARY = "secondary-key-abcdefghijklmn"
KEY_DOTTED = "dotted.key.with-three_segments"  # has a compact JWT's shape
KEY_UNKNOWN = "unknown-key-zyxwvutsrqponm"
KEY_UNKNOWN_DOTTED = "unknown.dotted.key-0123456789"


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    folder = tmp_path_factory.mktemp("auth-material")
    keys_path = folder / "keys"
    write_keys_file(keys_path, [KEY_PRIMARY, KEY_SECONDARY, KEY_DOTTED])
    rsa_private, rsa_jwks = generate_jwk_pair("RSA", "rsa-1")
    ec_private, ec_jwks = generate_jwk_pair("EC", "ec-1")
    rsa_path = write_json(folder / "rsa.jwk", rsa_private)
    ec_path = write_json(folder / "ec.jwk", ec_private)
    jwks_path = write_json(folder / "jwks.json", {"keys": rsa_jwks["keys"] + ec_jwks["keys"]})
    secret_path = folder / "secret"
    secret_path.write_bytes(b"hs256-secret-of-the-auth-tests/0123456789")

    def rs(**kw: Any) -> str:
        return mint_token(private_jwk_path=rsa_path, **{"ttl_s": 600, "now": NOW, **kw})

    def es(**kw: Any) -> str:
        return mint_token(private_jwk_path=ec_path, **{"ttl_s": 600, "now": NOW, **kw})

    def hs(**kw: Any) -> str:
        return mint_token(secret_path=secret_path, **{"ttl_s": 600, "now": NOW, **kw})

    good = {"audience": AUD, "issuer": ISS, "subject": "client-7"}
    rsa_key = RSAAlgorithm.from_jwk(rsa_private)
    ec_key = ECAlgorithm.from_jwk(ec_private)
    rsa_public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused_input = f"{seg({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{seg(claims_at(NOW))}"
    confused_signature = hmac.new(rsa_public_pem, confused_input.encode(), hashlib.sha256)
    tokens = {
        "rs256": rs(**good),
        "es256": es(**good),
        "hs256": hs(**good),
        # exp = NOW - 10: past, but within the 30 s leeway
        "rs256-exp-in-leeway": rs(**good, now=NOW - 610),
        "rs256-expired": rs(**good, now=NOW - 3600),
        "hs256-expired": hs(**good, now=NOW - 3600),
        "rs256-not-yet-valid": rs(**good, now=NOW + 600),
        "es256-wrong-aud": es(**{**good, "audience": "another-service"}),
        "hs256-wrong-aud": hs(**{**good, "audience": "another-service"}),
        "rs256-wrong-iss": rs(**{**good, "issuer": "https://evil.example"}),
        "hs256-wrong-iss": hs(**{**good, "issuer": "https://evil.example"}),
        "rs256-no-exp": jwt.encode(
            claims_at(NOW, exp=None), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "rs256-no-kid": jwt.encode(claims_at(NOW), rsa_key, algorithm="RS256"),
        "es256-unknown-kid": jwt.encode(
            claims_at(NOW), ec_key, algorithm="ES256", headers={"kid": "retired-key"}
        ),
        "alg-none": f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(claims_at(NOW))}.",
        "hs256-rsa-public-pem": f"{confused_input}.{b64(confused_signature.digest())}",
        "rs256-tampered": tamper(rs(**good), sub="admin", exp=NOW + 10**6),
        "hs256-tampered": tamper(hs(**good), sub="admin", exp=NOW + 10**6),
    }
    return Material(load_keys(keys_path), load_jwks(jwks_path), load_secret(secret_path), tokens)


Outcome = tuple[str, str] | None
OK: Outcome = None
MISSING = ("missing", 'Bearer realm="rscore"')
BAD_HEADER = ("malformed_header", 'Bearer realm="rscore", error="invalid_request"')
BAD_KEY = ("invalid_key", 'Bearer realm="rscore", error="invalid_token"')
EXPIRED = (
    "token_expired",
    'Bearer realm="rscore", error="invalid_token", error_description="token expired"',
)


def refused(reason: str, description: str) -> tuple[str, str]:
    www = f'Bearer realm="rscore", error="invalid_token", error_description="{description}"'
    return f"token_{reason}", www


MALFORMED = refused("malformed", "malformed token")
ALG = refused("disallowed_algorithm", "token algorithm not allowed")
SIGNATURE = refused("invalid_signature", "signature verification failed")
AUDIENCE = refused("invalid_audience", "token audience not accepted")
ISSUER = refused("invalid_issuer", "token issuer not accepted")
NOT_YET = refused("not_yet_valid", "token not yet valid")
NO_EXP = refused("missing_claim", "token lacks required claim exp")
NO_KID = refused("unknown_key", "token has no kid and several keys are configured")
UNKNOWN_KID = refused("unknown_key", "no key matches the token kid")

TOKEN_CASES = (
    "rs256",
    "es256",
    "hs256",
    "rs256-exp-in-leeway",
    "rs256-expired",
    "hs256-expired",
    "rs256-not-yet-valid",
    "es256-wrong-aud",
    "hs256-wrong-aud",
    "rs256-wrong-iss",
    "hs256-wrong-iss",
    "rs256-no-exp",
    "rs256-no-kid",
    "es256-unknown-kid",
    "alg-none",
    "hs256-rsa-public-pem",
    "rs256-tampered",
    "hs256-tampered",
)
# The credential as sent in `Authorization`, from the module's material.
HEADERS: dict[str, Callable[[Material], str | None]] = {
    "no-header": lambda m: None,
    "empty-header": lambda m: "",
    "basic": lambda m: "Basic dXNlcjpwYXNzd29yZC1mb3ItYmFzaWM=",
    "bearer-nothing": lambda m: "Bearer",
    "bearer-blank": lambda m: "Bearer    ",
    "key-without-scheme": lambda m: KEY_PRIMARY,
    "key-primary": lambda m: f"Bearer {KEY_PRIMARY}",
    "key-secondary": lambda m: f"Bearer {KEY_SECONDARY}",
    "key-lowercase-scheme": lambda m: f"bearer {KEY_PRIMARY}",
    "key-dotted": lambda m: f"Bearer {KEY_DOTTED}",
    "key-unknown": lambda m: f"Bearer {KEY_UNKNOWN}",
    "key-unknown-dotted": lambda m: f"Bearer {KEY_UNKNOWN_DOTTED}",
    "key-too-short": lambda m: "Bearer abcde",
    # Latin-1 bytes after a valid key, as aiohttp hands them on: surrogate escapes.
    "key-then-latin-1": lambda m: f"Bearer {KEY_PRIMARY}\udce9\udcff",
    **{name: (lambda m, name=name: f"Bearer {m.tokens[name]}") for name in TOKEN_CASES},
}

COLUMNS = ("none", "keys", "tokens/jwks", "tokens/secret", "keys+tokens/jwks", "keys+tokens/secret")
# fmt: off
TABLE: dict[str, tuple[Outcome, ...]] = {
    # columns:               none keys        tokens/jwks  tokens/secret keys+tokens/...
    #                                                                       /jwks        /secret
    "no-header":             (OK, MISSING,    MISSING,     MISSING,      MISSING,     MISSING),
    "empty-header":          (OK, MISSING,    MISSING,     MISSING,      MISSING,     MISSING),
    "basic":                 (OK, BAD_HEADER, BAD_HEADER,  BAD_HEADER,   BAD_HEADER,  BAD_HEADER),
    "bearer-nothing":        (OK, BAD_HEADER, BAD_HEADER,  BAD_HEADER,   BAD_HEADER,  BAD_HEADER),
    "bearer-blank":          (OK, BAD_HEADER, BAD_HEADER,  BAD_HEADER,   BAD_HEADER,  BAD_HEADER),
    "key-without-scheme":    (OK, BAD_HEADER, BAD_HEADER,  BAD_HEADER,   BAD_HEADER,  BAD_HEADER),
    "key-primary":           (OK, OK,         MALFORMED,   MALFORMED,    OK,          OK),
    "key-secondary":         (OK, OK,         MALFORMED,   MALFORMED,    OK,          OK),
    "key-lowercase-scheme":  (OK, OK,         MALFORMED,   MALFORMED,    OK,          OK),
    "key-dotted":            (OK, OK,         MALFORMED,   MALFORMED,    OK,          OK),
    "key-unknown":           (OK, BAD_KEY,    MALFORMED,   MALFORMED,    BAD_KEY,     BAD_KEY),
    "key-unknown-dotted":    (OK, BAD_KEY,    MALFORMED,   MALFORMED,    MALFORMED,   MALFORMED),
    "key-too-short":         (OK, BAD_KEY,    MALFORMED,   MALFORMED,    BAD_KEY,     BAD_KEY),
    "key-then-latin-1":      (OK, BAD_HEADER, BAD_HEADER,  BAD_HEADER,   BAD_HEADER,  BAD_HEADER),
    "rs256":                 (OK, BAD_KEY,    OK,          ALG,          OK,          ALG),
    "es256":                 (OK, BAD_KEY,    OK,          ALG,          OK,          ALG),
    "hs256":                 (OK, BAD_KEY,    ALG,         OK,           ALG,         OK),
    "rs256-exp-in-leeway":   (OK, BAD_KEY,    OK,          ALG,          OK,          ALG),
    "rs256-expired":         (OK, BAD_KEY,    EXPIRED,     ALG,          EXPIRED,     ALG),
    "hs256-expired":         (OK, BAD_KEY,    ALG,         EXPIRED,      ALG,         EXPIRED),
    "rs256-not-yet-valid":   (OK, BAD_KEY,    NOT_YET,     ALG,          NOT_YET,     ALG),
    "es256-wrong-aud":       (OK, BAD_KEY,    AUDIENCE,    ALG,          AUDIENCE,    ALG),
    "hs256-wrong-aud":       (OK, BAD_KEY,    ALG,         AUDIENCE,     ALG,         AUDIENCE),
    "rs256-wrong-iss":       (OK, BAD_KEY,    ISSUER,      ALG,          ISSUER,      ALG),
    "hs256-wrong-iss":       (OK, BAD_KEY,    ALG,         ISSUER,       ALG,         ISSUER),
    "rs256-no-exp":          (OK, BAD_KEY,    NO_EXP,      ALG,          NO_EXP,      ALG),
    "rs256-no-kid":          (OK, BAD_KEY,    NO_KID,      ALG,          NO_KID,      ALG),
    "es256-unknown-kid":     (OK, BAD_KEY,    UNKNOWN_KID, ALG,          UNKNOWN_KID, ALG),
    "alg-none":              (OK, BAD_KEY,    ALG,         ALG,          ALG,         ALG),
    "hs256-rsa-public-pem":  (OK, BAD_KEY,    ALG,         SIGNATURE,    ALG,         SIGNATURE),
    "rs256-tampered":        (OK, BAD_KEY,    SIGNATURE,   ALG,          SIGNATURE,   ALG),
    "hs256-tampered":        (OK, BAD_KEY,    ALG,         SIGNATURE,    ALG,         SIGNATURE),
}
# fmt: on
CASES = [
    pytest.param(column, credential, outcomes[i], id=f"{column}:{credential}")
    for credential, outcomes in TABLE.items()
    for i, column in enumerate(COLUMNS)
]


def test_table_covers_every_credential_in_every_mode() -> None:
    assert set(TABLE) == set(HEADERS)
    assert all(len(outcomes) == len(COLUMNS) for outcomes in TABLE.values())


@pytest.mark.parametrize(("column", "credential", "outcome"), CASES)
def test_authenticate(material: Material, column: str, credential: str, outcome: Outcome) -> None:
    mode, credentials = material.setup(column)
    header = HEADERS[credential](material)

    def decide() -> None:
        authenticate(header, mode=mode, credentials=credentials, policy=POLICY, now=NOW)

    if outcome is OK:
        decide()
        return
    with pytest.raises(Unauthorized) as refusal:
        decide()
    assert (refusal.value.reason, refusal.value.www_authenticate) == outcome
    assert refusal.value.code == "unauthorized"
    secret = secret_part(header)
    if secret is not None:  # the refusal never carries the credential
        for text in (str(refusal.value), refusal.value.message, refusal.value.www_authenticate):
            assert secret not in text


# ------------------------------------------------------------ 2. over real HTTP, real R

TOY_SCORE_R = """
init <- function(model_dir) list(factor = 2)
score <- function(state, data) data$x * state$factor
"""
MODEL = "toy"  # the bundle folder's name


@dataclass
class Served:
    client: TestClient
    registry: CollectorRegistry
    authenticator: Authenticator

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def failures(self, reason: str) -> float:
        return self.sample("rscore_auth_failures_total", reason=reason)

    def all_failures(self) -> float:
        return sum(
            s.value
            for metric in self.registry.collect()
            for s in metric.samples
            if s.name == "rscore_auth_failures_total"
        )

    def scored(self) -> float:
        """R calls made so far."""
        return self.sample("rscore_scoring_duration_seconds_count")

    def requests(self, code: int) -> float:
        return self.sample("rscore_requests_total", code=str(code))

    async def score(
        self, header: str | None, x: float = 1.0
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        headers = {} if header is None else {"Authorization": header}
        response = await self.client.post("/score", json={"data": [{"x": x}]}, headers=headers)
        return response.status, await response.json(), response.headers

    async def accepts(self, credential: str) -> bool:
        return (await self.score(f"Bearer {credential}"))[0] == 200


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    folder = tmp_path / MODEL
    folder.mkdir()
    (folder / "score.R").write_text(TOY_SCORE_R)
    return folder


@pytest.fixture
async def serve(aiohttp_client, tmp_path: Path, bundle: Path) -> AsyncIterator[ServeFactory]:
    """Start the app with an Authenticator for `auth`, the JSON access log, 1 R worker."""
    supervisors: list[Supervisor] = []
    pools: list[WorkerPool] = []
    watchers: list[FileWatcher] = []

    async def start(
        auth: AuthConfig, *, watch: bool = False, missing_grace_s: float = MISSING_GRACE_S
    ) -> Served:
        registry = CollectorRegistry()
        authenticator = Authenticator(auth, registry=registry)
        pool = WorkerPool(tmp_path / f"sock{len(pools)}" / "workers.sock")
        pools.append(pool)
        app = create_app(SidecarConfig(), pool=pool, registry=registry, authenticator=authenticator)
        server = TestServer(app)
        await server.start_server(access_log_class=JsonAccessLogger)
        client = await aiohttp_client(server)
        supervisor = Supervisor(bundle, pool.socket_path, workers=1)
        supervisors.append(supervisor)
        await asyncio.to_thread(supervisor.start)
        await asyncio.wait_for(pool.wait_for_workers(1), 60)
        if watch:
            watcher = authenticator.watcher(interval_s=TICK_S, missing_grace_s=missing_grace_s)
            assert watcher is not None
            watchers.append(watcher)
            await watcher.start()
        return Served(client, registry, authenticator)

    yield start
    for watcher in watchers:
        await watcher.stop()
    for pool in pools:  # the sidecar hangs up first: drained workers then exit at once
        await pool.close()
    for supervisor in supervisors:
        await asyncio.to_thread(supervisor.stop)


@dataclass
class HttpAuth:
    """A keys+tokens configuration with random keys and an RSA JWKS, on disk."""

    config: AuthConfig
    key_a: str
    key_b: str
    private_jwk: Path

    def token(self, *, age_s: float = 0, ttl_s: int = 600, **claims: Any) -> str:
        claims = {"audience": AUD, "issuer": ISS, "subject": "client-7", **claims}
        now = time.time() - age_s
        return mint_token(private_jwk_path=self.private_jwk, ttl_s=ttl_s, now=now, **claims)


@pytest.fixture
def http_auth(tmp_path: Path) -> HttpAuth:
    key_a, key_b = generate_key(), generate_key()
    keys = tmp_path / "api.keys"
    write_keys_file(keys, [key_a, key_b])
    private, public = generate_jwk_pair("RSA", "http-rsa")
    private_path = write_json(tmp_path / "private.jwk", private)
    jwks = write_json(tmp_path / "jwks.json", public)
    config = AuthConfig(mode="keys+tokens", keys_file=keys, token_jwks=jwks, policy=POLICY)
    return HttpAuth(config, key_a, key_b, private_path)


X_TENSOR = {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5]}
ROUTES = {
    "score": ("POST", "/score", {"data": [{"x": 1.5}]}),
    "v2-infer": ("POST", f"/v2/models/{MODEL}/infer", {"inputs": [X_TENSOR]}),
    "v2-model": ("GET", f"/v2/models/{MODEL}", None),
}
SCORING = {"score", "v2-infer"}


async def call(
    served: Served, route: str, header: str | None, body: Any = None
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    method, path, default_body = ROUTES[route]
    headers = {} if header is None else {"Authorization": header}
    payload = default_body if body is None else body
    if isinstance(payload, bytes):
        response = await served.client.request(
            method, path, data=payload, headers={**headers, "Content-Type": "application/json"}
        )
    else:
        response = await served.client.request(method, path, json=payload, headers=headers)
    return response.status, await response.json(), response.headers


def check_answer(route: str, answer: Any) -> None:
    if route == "score":
        assert answer == {"predictions": [3.0]}
    elif route == "v2-infer":
        assert answer["model_name"] == MODEL
        assert answer["outputs"][0]["data"] == [3.0]
    else:
        assert answer["name"] == MODEL


@pytest.mark.parametrize("route", list(ROUTES))
async def test_protected_route_refuses_with_401_and_never_reaches_a_worker(
    serve: ServeFactory, http_auth: HttpAuth, route: str
) -> None:
    served = await serve(http_auth.config)
    refusals = [
        (None, "missing", 'Bearer realm="rscore"'),
        (
            "Basic dXNlcjpwYXNz",
            "malformed_header",
            'Bearer realm="rscore", error="invalid_request"',
        ),
        ("Bearer", "malformed_header", 'Bearer realm="rscore", error="invalid_request"'),
        (f"Bearer {generate_key()}", "invalid_key", 'Bearer realm="rscore", error="invalid_token"'),
        (f"Bearer {http_auth.token(age_s=3600)}", *EXPIRED),
        (f"Bearer {http_auth.token(audience='other')}", *AUDIENCE),
    ]
    for header, reason, www in refusals:
        status, answer, headers = await call(served, route, header)
        assert status == 401, (reason, answer)
        assert headers["WWW-Authenticate"] == www
        assert headers["Content-Type"].startswith("application/json")
        assert headers["x-request-id"]
        if route.startswith("v2-"):  # the Open Inference Protocol's error shape
            assert isinstance(answer["error"], str)
            assert answer["error"]
        else:
            assert answer["error"]["code"] == "unauthorized"
            assert answer["error"]["message"]
    if ROUTES[route][0] == "POST":
        # Authentication comes before the body is even read: not JSON, still a 401.
        status, answer, headers = await call(served, route, None, body=b"{not json")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="rscore"'
    else:
        # HEAD is served by the GET route: protected just the same.
        response = await served.client.head(ROUTES[route][1])
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="rscore"'
    refused_total = len(refusals) + 1
    assert served.failures("missing") == 2
    assert served.failures("malformed_header") == 2
    assert served.failures("invalid_key") == 1
    assert served.failures("token_expired") == 1
    assert served.failures("token_invalid_audience") == 1
    assert served.all_failures() == refused_total
    if route in SCORING:
        assert served.requests(401) == refused_total  # counted as finished requests
    assert served.scored() == 0  # ... and none of them reached R
    assert served.sample("rscore_batch_rows_count") == 0

    # The same route with a key is served, and that one does reach R.
    status, answer, _ = await call(served, route, f"Bearer {http_auth.key_a}")
    assert status == 200, answer
    check_answer(route, answer)
    assert served.scored() == (1 if route in SCORING else 0)
    assert served.all_failures() == refused_total


@pytest.mark.parametrize("route", list(ROUTES))
async def test_protected_route_serves_a_valid_key_or_token(
    serve: ServeFactory, http_auth: HttpAuth, route: str
) -> None:
    served = await serve(http_auth.config)
    good = [
        f"Bearer {http_auth.key_a}",
        f"Bearer {http_auth.key_b}",
        f"bearer {http_auth.key_a}",  # the scheme is case-insensitive (RFC 7235)
        f"Bearer {http_auth.token()}",
        f"Bearer {http_auth.token(age_s=605)}",  # expired 5 s ago: within the leeway
    ]
    for header in good:
        status, answer, headers = await call(served, route, header)
        assert status == 200, answer
        assert "WWW-Authenticate" not in headers
        check_answer(route, answer)
    assert served.all_failures() == 0
    if route in SCORING:
        assert served.requests(200) == len(good)
        assert served.scored() == len(good)


OPEN_PATHS = [
    "/healthz",
    "/readyz",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    f"/v2/models/{MODEL}/ready",
    "/swagger.json",
]


async def test_open_routes_answer_without_any_credential(
    serve: ServeFactory, http_auth: HttpAuth
) -> None:
    served = await serve(http_auth.config)
    for path in OPEN_PATHS:
        for headers in ({}, {"Authorization": "Bearer not-a-valid-key-at-all"}):
            response = await served.client.get(path, headers=headers)
            assert response.status == 200, (path, headers, await response.text())
            assert "WWW-Authenticate" not in response.headers
    assert served.all_failures() == 0


async def test_no_credential_ever_appears_in_responses_metrics_or_logs(
    serve: ServeFactory,
    http_auth: HttpAuth,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve(http_auth.config)
    presented = {
        "valid key": http_auth.key_a,
        "unknown key": generate_key(),
        "unknown dotted key": f"{generate_key()}.{generate_key()}.{generate_key()}",
        "valid token": http_auth.token(),
        "expired token": http_auth.token(age_s=3600),
        "wrong-audience token": http_auth.token(audience="other"),
        "tampered token": tamper(http_auth.token(), sub="admin"),
        "basic credential": base64.b64encode(f"user:{generate_key()}".encode()).decode(),
    }
    headers_sent = [
        f"Basic {value}" if name == "basic credential" else f"Bearer {value}"
        for name, value in presented.items()
    ]
    seen: list[str] = []
    requests = 0
    for method, path, body in ROUTES.values():
        for header in headers_sent:
            response = await served.client.request(
                method, path, json=body, headers={"Authorization": header}
            )
            requests += 1
            seen.append(await response.text())
            seen.extend(f"{name}: {value}" for name, value in response.headers.items())
    assert served.all_failures() == requests - 2 * len(ROUTES)  # key and token pass

    access_lines: list[dict] = []

    def access_records() -> list[dict]:  # JSON lines the access logger wrote to stderr
        access_lines.extend(
            record for record in json_lines(capsys.readouterr().err)
            if record.get("logger") == "aiohttp.access"
        )  # fmt: skip
        return access_lines

    # The access line is written after the response is sent: wait for the last one.
    async with asyncio.timeout(5):
        while len(access_records()) < requests:
            await asyncio.sleep(0.01)
    statuses = sorted({r["status"] for r in access_lines})
    assert statuses == [200, 401]
    seen.extend(json.dumps(record) for record in access_lines)
    formatter = JsonFormatter(
        LOG_FORMAT, rename_fields={"levelname": "level", "name": "logger"}, timestamp="time"
    )
    seen.extend(formatter.format(record) for record in caplog.records)
    seen.append(caplog.text)
    seen.append(generate_latest(served.registry).decode())
    everything = "\n".join(seen)
    for name, value in presented.items():
        assert not leaks(value, everything), f"(part of) the {name} leaked"


async def test_unknown_model_name_is_refused_before_it_is_looked_up(
    serve: ServeFactory, http_auth: HttpAuth
) -> None:
    """Without a credential the V2 routes say 401 for any name: no probing of names."""
    served = await serve(http_auth.config)
    infer = {"inputs": [X_TENSOR]}
    for method, path in (("GET", "/v2/models/other"), ("POST", "/v2/models/other/infer")):
        body = infer if method == "POST" else None
        response = await served.client.request(method, path, json=body)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="rscore"'
        auth = {"Authorization": f"Bearer {http_auth.key_a}"}
        response = await served.client.request(method, path, json=body, headers=auth)
        assert response.status == 404
    assert served.failures("missing") == 2


def json_lines(text: str) -> list[dict]:
    """The JSON objects among lines of captured output."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


async def raw_request(served: Served, head: bytes, body: bytes) -> bytes:
    """Send bytes no HTTP client would send; the whole answer (the server closes)."""
    reader, writer = await asyncio.open_connection(served.client.host, served.client.port)
    try:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    "shape", ["control-char-after-key", "oversized-header"], ids=lambda shape: shape
)
async def test_unparseable_authorization_header_is_neither_echoed_nor_logged(
    serve: ServeFactory,
    http_auth: HttpAuth,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    shape: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve(http_auth.config)
    key = http_auth.key_a  # a VALID key, with a typo after it or padded past 8 KiB
    value = (
        f"Bearer {key}\x01" if shape == "control-char-after-key" else f"Bearer {key}{'A' * 9000}"
    )
    head = (
        b"POST /score HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: " + value.encode() + b"\r\n"
    )
    answer = await raw_request(served, head, b'{"data": [{"x": 1}]}')
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"401", b"431"), status_line
    assert served.scored() == 0

    stderr: list[str] = []

    def access_logged() -> bool:  # the last thing the server logs about a request
        stderr.append(capsys.readouterr().err)
        return any(record.get("status") == 400 for record in json_lines("".join(stderr)))

    async with asyncio.timeout(5):
        while not access_logged():
            await asyncio.sleep(0.01)
    formatter = JsonFormatter(LOG_FORMAT, rename_fields={"levelname": "level", "name": "logger"})
    logs = "\n".join([caplog.text, *(formatter.format(r) for r in caplog.records), *stderr])
    assert not leaks(key, answer.decode("latin-1")), "the key is echoed in the response"
    assert not leaks(key, logs), "the key is in the logs"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"Bearer caf\xe9-0123456789abcdef", id="latin-1-key"),
        pytest.param(b"Bearer \x80\x81\xfe\xff", id="high-bytes-only"),
        pytest.param(b"Basic \xe9t\xe9", id="latin-1-basic"),
        pytest.param(b"Bearer <valid key>\xe9", id="valid-key-then-latin-1"),
    ],
)
async def test_a_non_utf8_authorization_header_is_a_counted_401(
    serve: ServeFactory, http_auth: HttpAuth, value: bytes
) -> None:
    served = await serve(http_auth.config)
    value = value.replace(b"<valid key>", http_auth.key_a.encode())
    head = b"POST /score HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    head += b"Authorization: " + value + b"\r\nConnection: close\r\n"
    answer = await raw_request(served, head, b'{"data": [{"x": 1}]}')
    headers, _, body = answer.partition(b"\r\n\r\n")
    assert headers.split(b"\r\n", 1)[0] == b"HTTP/1.1 401 Unauthorized", answer[:200]
    assert b'WWW-Authenticate: Bearer realm="rscore", error="invalid_request"' in headers
    error = json.loads(body)["error"]
    assert error["code"] == "unauthorized"
    assert "ASCII" in error["message"]
    assert served.failures("malformed_header") == 1
    assert served.requests(401) == 1
    assert served.scored() == 0
    # The connection-level answer was no accident: the next request is served as usual.
    assert await served.accepts(http_auth.key_a)


# ------------------------------------------------------------- 3. key rotation, no restart


async def eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) until `probe()` is true."""
    try:
        async with asyncio.timeout(ROTATION_DEADLINE_S):
            while not await probe():
                await asyncio.sleep(TICK_S / 2)
    except TimeoutError:
        raise AssertionError(f"not within {ROTATION_DEADLINE_S} s: {what}") from None


@dataclass
class Load:
    """Client tasks scoring continuously with whichever key `use()` last set."""

    served: Served
    keys: dict[str, str]  # name -> key: failures name the key, never quote it
    using: str
    ok: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    last_used: dict[int, str] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def use(self, name: str) -> None:
        self.using = name

    def total(self) -> int:
        return sum(self.ok.values())

    async def client(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            name = self.using
            x = float(index * 1_000_000 + n)
            n += 1
            try:
                status, answer, _ = await self.served.score(f"Bearer {self.keys[name]}", x)
            except Exception as exc:  # every kind of failure counts, none is expected
                self.failures.append(f"client {index}, key {name}: {exc!r}")
                await asyncio.sleep(0.01)
                continue
            if status == 200 and answer == {"predictions": [2 * x]}:
                self.ok[name] = self.ok.get(name, 0) + 1
                self.last_used[index] = name
            else:
                self.failures.append(f"client {index}, key {name}: {status} {answer}")
                await asyncio.sleep(0.01)

    async def all_clients_on(self, name: str, clients: int) -> bool:
        return len(self.last_used) == clients and set(self.last_used.values()) == {name}

    def grows_by(self, count: int) -> Callable[[], Awaitable[bool]]:
        """A probe: `count` more successes, failing at once on any failure."""
        target = self.total() + count

        async def probe() -> bool:
            assert self.failures == [], self.failures[:5]
            return self.total() >= target

        return probe

    @contextlib.asynccontextmanager
    async def running(self, clients: int) -> AsyncIterator[Load]:
        tasks = [asyncio.create_task(self.client(i)) for i in range(clients)]
        try:
            yield self
        finally:
            self._stop.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks)


CLIENTS = 4


async def test_key_rotation_through_a_secret_volume_under_load(
    serve: ServeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {name: generate_key() for name in "ABCD"}
    vol = SecretVolume(
        tmp_path / "keys-volume", {"keys": keys_file_bytes(tmp_path, [keys["A"], keys["B"]])}
    )
    served = await serve(AuthConfig(mode="keys", keys_file=vol.path("keys")), watch=True)
    load = Load(served, keys, using="A")
    async with load.running(CLIENTS):
        await eventually(load.grows_by(20), "the load is on")

        # 1. (A, B) -> (A, C): C is accepted within the deadline; A goes on working.
        old_generation = vol.generation
        vol.rotate({"keys": keys_file_bytes(tmp_path, [keys["A"], keys["C"]])})
        assert not old_generation.exists()  # the kubelet deleted the old generation
        await eventually(lambda: served.accepts(keys["C"]), "C accepted after (A, C)")
        assert not await served.accepts(keys["B"])  # B left with that rotation

        # 2. The clients roll over to C; once every one of them has been served with C...
        load.use("C")
        await eventually(lambda: load.all_clients_on("C", CLIENTS), "every client on C")

        # 3. ... (A, C) -> (D, C): D is accepted and A refused; C never stops working.
        old_generation = vol.generation
        vol.rotate({"keys": keys_file_bytes(tmp_path, [keys["D"], keys["C"]])})
        assert not old_generation.exists()
        await eventually(lambda: served.accepts(keys["D"]), "D accepted after (D, C)")
        status, answer, headers = await served.score(f"Bearer {keys['A']}")
        assert status == 401
        assert answer["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"] == 'Bearer realm="rscore", error="invalid_token"'
        await eventually(load.grows_by(20), "the load goes on after the rotations")
    assert load.failures == []
    assert load.ok["A"] > 0
    assert load.ok["C"] > 0
    assert served.requests(200) >= load.total()
    for name, key in keys.items():
        assert key not in caplog.text, f"key {name} logged"


def watch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rscore.watch" and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize(
    ("bad_file", "line"),
    [(b"Zq7xW\n", 1), (b"# latin-1, not UTF-8:\nk\xe9y-Zq7xW-0123456789\n", 2)],
    ids=["five-char-key", "not-utf8"],
)
async def test_invalid_keys_file_keeps_the_previous_keys(
    serve: ServeFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad_file: bytes,
    line: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {name: generate_key() for name in "ABE"}
    vol = SecretVolume(
        tmp_path / "keys-volume", {"keys": keys_file_bytes(tmp_path, [keys["A"], keys["B"]])}
    )
    served = await serve(AuthConfig(mode="keys", keys_file=vol.path("keys")), watch=True)
    load = Load(served, keys, using="A")
    async with load.running(CLIENTS):
        await eventually(load.grows_by(20), "the load is on")
        vol.rotate({"keys": bad_file})

        async def warned() -> bool:
            return len(watch_warnings(caplog)) > 0

        await eventually(warned, "a warning about the unusable keys file")
        assert f"keys file {vol.path('keys')}: line {line}: " in watch_warnings(caplog)[0]

        async def retried() -> bool:  # the watcher re-reads a failed file a few times
            again = [r for r in caplog.records if "failed again" in r.getMessage()]
            return len(again) >= RETRIES_AFTER_FAILURE

        await eventually(retried, "the watcher's retries of the unusable file")
        # Past the retries too: A and B are still the keys.
        await eventually(load.grows_by(20), "the load goes on with A")
        assert await served.accepts(keys["B"])

        # A valid file after the bad one is picked up.
        vol.rotate({"keys": keys_file_bytes(tmp_path, [keys["A"], keys["E"]])})
        await eventually(lambda: served.accepts(keys["E"]), "E accepted after the fix")
        assert not await served.accepts(keys["B"])
        await eventually(load.grows_by(20), "the load goes on after the fix")
    assert load.failures == []
    for text in [caplog.text, *watch_warnings(caplog)]:
        assert "Zq7xW" not in text
        for key in keys.values():
            assert key not in text


# ------------------------------------------------------------ 4. token key rotation


@pytest.mark.parametrize("source", ["token-secret-file", "token-jwks"])
async def test_token_verification_key_rotation_through_a_secret_volume(
    serve: ServeFactory, tmp_path: Path, source: str
) -> None:
    def minter(generation: str) -> Callable[[], str]:
        """The file a volume generation holds, and how to mint a token it verifies."""
        if source == "token-secret-file":
            secret = tmp_path / f"mint-{generation}.secret"
            secret.write_bytes(secrets.token_urlsafe(48).encode())
            files[generation] = secret.read_bytes()
            return lambda: mint_token(
                secret_path=secret, ttl_s=600, now=time.time(), audience=AUD, issuer=ISS
            )
        private, public = generate_jwk_pair("EC", f"kid-{generation}")
        private_path = write_json(tmp_path / f"mint-{generation}.jwk", private)
        files[generation] = json.dumps(public).encode()
        return lambda: mint_token(
            private_jwk_path=private_path, ttl_s=600, now=time.time(), audience=AUD, issuer=ISS
        )

    files: dict[str, bytes] = {}
    old, new = minter("old"), minter("new")
    name = "secret" if source == "token-secret-file" else "jwks.json"
    vol = SecretVolume(tmp_path / "token-volume", {name: files["old"]})
    if source == "token-secret-file":
        config = AuthConfig(mode="tokens", token_secret_file=vol.path(name), policy=POLICY)
        old_refused = SIGNATURE
    else:
        config = AuthConfig(mode="tokens", token_jwks=vol.path(name), policy=POLICY)
        old_refused = UNKNOWN_KID
    served = await serve(config, watch=True)
    old_token, new_token = old(), new()
    assert await served.accepts(old_token)
    assert not await served.accepts(new_token)

    old_generation = vol.generation
    vol.rotate({name: files["new"]})
    assert not old_generation.exists()
    await eventually(lambda: served.accepts(new_token), "a new token accepted")
    assert await served.accepts(new())  # and tokens minted from now on
    status, answer, headers = await served.score(f"Bearer {old_token}")
    assert status == 401
    assert answer["error"]["code"] == "unauthorized"
    assert headers["WWW-Authenticate"] == old_refused[1]
    assert served.failures(old_refused[0]) >= 1
