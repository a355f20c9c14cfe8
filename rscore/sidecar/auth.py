"""Who may score: the `Authorization: Bearer` credential, a key or a JWT.

`authenticate()` is the decision, a plain function over the header, the mode and the
current credentials; `reread()` is the decision of a reload, per file; `Authenticator`
holds the credentials (re-read from their files when they change, as a Kubernetes
Secret volume updates them) and `auth_middleware` is the HTTP shell that turns a
refusal into a 401 with `WWW-Authenticate`.

A reload never fails open: a file that parses replaces what it held completely (one
with no key in it means no key is accepted); a file that does not parse keeps what is
in effect, and a missing one (past the watcher's grace) takes its credentials away;
both are reported (`problem`, for /readyz, and `rscore_credential_reload_failures_total`).

Never logs, returns or counts a credential: refusals carry a reason and a fixed
description only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter

from rscore.r_scorer.errors import ScoringError
from rscore.sidecar.credentials import (
    CredentialError,
    CredentialFileMissing,
    TokenPolicy,
    TokenRejected,
    VerificationKeys,
    key_matches,
    load_jwks,
    load_keys,
    load_secret,
    looks_like_jwt,
    read_jwks,
    read_keys,
    read_secret,
    verify_token,
)
from rscore.sidecar.watch import MISSING_GRACE_S, FileWatcher, ReloadError

log = logging.getLogger("rscore.auth")

MODES = ("keys", "tokens", "keys+tokens", "none")
REALM = 'Bearer realm="rscore"'


class Unauthorized(ScoringError):
    """No, a wrong or an expired credential; `www_authenticate` tells the client why."""

    code = "unauthorized"

    def __init__(self, message: str, *, reason: str, www_authenticate: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.www_authenticate = www_authenticate


@dataclass(frozen=True)
class Credentials:
    """What is valid right now."""

    keys: frozenset[bytes] = frozenset()
    token_keys: VerificationKeys | None = None


def authenticate(
    header: str | None,
    *,
    mode: str,
    credentials: Credentials,
    policy: TokenPolicy,
    now: float,
) -> None:
    """Accept, or raise Unauthorized with a reason for the metrics and a header for the
    client. Keys are tried before tokens in `keys+tokens` mode (a key may contain dots)."""
    if mode == "none":
        return
    if not header:
        raise Unauthorized(
            "missing credential: send 'Authorization: Bearer <key or token>'",
            reason="missing",
            www_authenticate=REALM,
        )
    if not header.isascii():
        # A key or token is ASCII (RFC 6750's b64token); other bytes reach us as
        # surrogate escapes that no comparison could encode.
        raise Unauthorized(
            "the Authorization header must be ASCII: 'Bearer <key or token>'",
            reason="malformed_header",
            www_authenticate=f'{REALM}, error="invalid_request"',
        )
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthorized(
            "the Authorization header must be 'Bearer <key or token>'",
            reason="malformed_header",
            www_authenticate=f'{REALM}, error="invalid_request"',
        )
    if mode in ("keys", "keys+tokens") and key_matches(credential.encode(), credentials.keys):
        return
    if mode in ("tokens", "keys+tokens") and (mode == "tokens" or looks_like_jwt(credential)):
        token_keys = credentials.token_keys
        if token_keys is None:
            # The JWKS or secret file was emptied or is missing: no token is accepted.
            raise Unauthorized(
                "invalid token: no token verification key is configured",
                reason="token_unknown_key",
                www_authenticate=(
                    f'{REALM}, error="invalid_token", error_description="no verification key"'
                ),
            )
        try:
            verify_token(credential, token_keys, policy, now)
        except TokenRejected as rejected:
            raise Unauthorized(
                f"invalid token: {rejected.description}",
                reason=f"token_{rejected.reason}",
                www_authenticate=(
                    f'{REALM}, error="invalid_token", error_description="{rejected.description}"'
                ),
            ) from None
        return
    raise Unauthorized(
        "invalid credential",
        reason="invalid_key",
        www_authenticate=f'{REALM}, error="invalid_token"',
    )


@dataclass
class AuthConfig:
    """The auth flags of `rscore serve` / `rscore sidecar`."""

    mode: str = "none"
    keys_file: Path | None = None
    token_jwks: Path | None = None
    token_secret_file: Path | None = None
    policy: TokenPolicy = field(default_factory=TokenPolicy)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--auth must be one of {', '.join(MODES)}")
        if self.token_jwks and self.token_secret_file:
            raise ValueError("give --token-jwks or --token-secret-file, not both")
        if self.mode in ("keys", "keys+tokens") and self.keys_file is None:
            raise ValueError(f"--auth {self.mode} needs --keys-file")
        if self.mode in ("tokens", "keys+tokens") and not self.token_source:
            raise ValueError(f"--auth {self.mode} needs --token-jwks or --token-secret-file")

    @property
    def token_source(self) -> Path | None:
        return self.token_jwks or self.token_secret_file

    @property
    def files(self) -> list[Path]:
        uses_keys = self.mode in ("keys", "keys+tokens")
        uses_tokens = self.mode in ("tokens", "keys+tokens")
        return [
            path
            for path, used in ((self.keys_file, uses_keys), (self.token_source, uses_tokens))
            if path is not None and used
        ]


Held = TypeVar("Held")


def reread(read: Callable[[], Held], held: Held, nothing: Held) -> tuple[Held, str | None]:
    """What a credential file holds after a reload, and the problem to report (or None).

    `read()` reads the file (raising CredentialError); `held` is what is in effect;
    `nothing` what an empty file holds. A file that reads replaces `held` completely,
    whatever it holds; a missing one holds `nothing`; one that does not read keeps
    `held`. CredentialError messages name the file and line, never a credential.
    """
    try:
        return read(), None
    except CredentialFileMissing as missing:
        return nothing, f"{missing}; nothing in it is accepted until it is back"
    except CredentialError as unusable:
        return held, f"{unusable}; the credentials read from it before stay in effect"


class Authenticator:
    """The live credentials of one sidecar, re-read when their files change."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self.failures = Counter(
            "rscore_auth_failures",
            "Requests refused by authentication, by reason.",
            ["reason"],
            registry=registry,
        )
        self.reload_failures = Counter(
            "rscore_credential_reload_failures",
            "Reloads of a credential file that failed (unparseable or missing), by file.",
            ["file"],
            registry=registry,
        )
        for path in config.files:  # exported from zero, so increase() sees the first one
            self.reload_failures.labels(str(path))
        self._problems: dict[Path, str] = {}
        self.credentials = self._load()  # a bad file at start-up is an error, at once

    @property
    def problem(self) -> str | None:
        """Why the last reload of some credential file failed (for /readyz), or None."""
        return "; ".join(self._problems.values()) or None

    def reload(self) -> None:
        """Re-read every file: each one that parses replaces what it held, one that does
        not keeps it, a missing one holds nothing. Raises ReloadError (its message is
        safe to log) if any failed, so that the watcher logs and retries."""
        config = self.config
        keys, token_keys = self.credentials.keys, self.credentials.token_keys
        problems: dict[Path, str | None] = {}
        if config.mode in ("keys", "keys+tokens") and config.keys_file is not None:
            path = config.keys_file
            keys, problems[path] = reread(lambda: read_keys(path), keys, frozenset())
            if not keys and problems[path] is None:
                log.warning("keys file %s has no key: every key is refused", path)
        source = config.token_source
        if config.mode in ("tokens", "keys+tokens") and source is not None:
            read = read_jwks if source == config.token_jwks else read_secret
            token_keys, problems[source] = reread(lambda: read(source), token_keys, None)
            if token_keys is None and problems[source] is None:
                log.warning("%s holds no verification key: every token is refused", source)
        self.credentials = Credentials(keys, token_keys)
        failed = {path: problem for path, problem in problems.items() if problem is not None}
        for path, problem in failed.items():
            if self._problems.get(path) != problem:  # once per failure, not per retry
                self.reload_failures.labels(str(path)).inc()
        self._problems = failed
        if failed:
            raise ReloadError("; ".join(failed.values()))
        log.info("credentials reloaded")

    def _load(self) -> Credentials:
        config = self.config
        keys: frozenset[bytes] = frozenset()
        token_keys = None
        if config.mode in ("keys", "keys+tokens") and config.keys_file is not None:
            keys = load_keys(config.keys_file)
        if config.mode in ("tokens", "keys+tokens"):
            if config.token_jwks is not None:
                token_keys = load_jwks(config.token_jwks)
            elif config.token_secret_file is not None:
                token_keys = load_secret(config.token_secret_file)
        return Credentials(keys, token_keys)

    def check(self, header: str | None) -> None:
        try:
            authenticate(
                header,
                mode=self.config.mode,
                credentials=self.credentials,
                policy=self.config.policy,
                now=self._clock(),
            )
        except Unauthorized as refusal:
            self.failures.labels(refusal.reason).inc()
            raise

    def watcher(
        self, interval_s: float = 1.0, missing_grace_s: float = MISSING_GRACE_S
    ) -> FileWatcher | None:
        files = self.config.files
        if not files:
            return None
        return FileWatcher(
            files, self.reload, interval_s=interval_s, missing_grace_s=missing_grace_s
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(authenticator: Authenticator, protected_routes: frozenset[str]) -> Middleware:
    """Check the credential on the protected routes; probes and metadata stay open."""

    @web.middleware
    async def check_credential(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.name in protected_routes:
            authenticator.check(request.headers.get("Authorization"))
        return await handler(request)

    return check_credential
