"""Credential reloads never fail open (issue 13, item 7).

A file that parses replaces what it held completely (no key in it: no key accepted); a
file that does not parse keeps what is in effect, names the line, counts
`rscore_credential_reload_failures_total{file}` and says so in /readyz (which stays 200:
the pod still serves with the last good credentials); a file missing past the watcher's
grace holds nothing and is reported the same way.

First the pure decisions as tables (`parse_keys_file`, `reread`), then the
Authenticator on real files, then a real sidecar with a real R worker and a Secret
volume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from certs import SecretVolume
from prometheus_client import CollectorRegistry
from test_auth import (  # noqa: F401  (bundle and serve are fixtures)
    AUD,
    ISS,
    POLICY,
    Load,
    Served,
    ServeFactory,
    bundle,
    eventually,
    keys_file_bytes,
    serve,
    write_json,
)

from rscore.sidecar.auth import AuthConfig, Authenticator, Unauthorized, reread
from rscore.sidecar.credentials import (
    CredentialError,
    CredentialFileMissing,
    generate_jwk_pair,
    generate_key,
    mint_token,
    parse_keys_file,
)
from rscore.sidecar.watch import ReloadError

KEY_A = "primary-key-0123456789ABCDEF"
KEY_B = "secondary-key-abcdefghijklmn"
KEY_C = "third-key-0123456789abcdefgh"

# ------------------------------------------------------------ 1. parse_keys_file table

KeysOrLine = frozenset[str] | int  # the keys, or the line named by the error


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", frozenset(), id="empty-means-no-key"),
        pytest.param(b"\n\n   \n", frozenset(), id="blank-lines-mean-no-key"),
        pytest.param(b"# revoked everything\n", frozenset(), id="comments-only-mean-no-key"),
        pytest.param(f"{KEY_A}\n{KEY_B}\n".encode(), frozenset({KEY_A, KEY_B}), id="two-keys"),
        pytest.param(f"\ufeff{KEY_A}\r\n".encode(), frozenset({KEY_A}), id="bom-and-crlf"),
        pytest.param(f"# c\n{KEY_A}\nZq7xW\n".encode(), 3, id="short-key-on-line-3"),
        pytest.param(f"{KEY_A}\nhas space 0123456789\n".encode(), 2, id="space-on-line-2"),
        pytest.param(
            f"{KEY_A}\n".encode() + b"\xe9t\xe9-0123456789abcdef\n", 2, id="latin-1-line-2"
        ),
        pytest.param(b"\xff" + KEY_A.encode(), 1, id="not-utf8-line-1"),
        pytest.param(f"{KEY_A}\r\n\r\n{KEY_B}\r\nbad\r\n".encode(), 4, id="crlf-line-numbers"),
    ],
)
def test_parse_keys_file(data: bytes, expected: KeysOrLine) -> None:
    if isinstance(expected, frozenset):
        assert parse_keys_file(data) == frozenset(k.encode() for k in expected)
        return
    with pytest.raises(CredentialError) as info:
        parse_keys_file(data)
    assert info.value.line == expected
    assert str(info.value).startswith(f"line {expected}: ")
    for secret in (KEY_A, KEY_B, "Zq7xW", "0123456789"):
        assert secret not in str(info.value)


# ------------------------------------------------------------------- 2. reread table

HELD = frozenset({b"held-key-0123456789"})
NEW = frozenset({b"new-key-0123456789ab"})


def reads(outcome: Any) -> Callable[[], frozenset[bytes]]:
    def read() -> frozenset[bytes]:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return read


@pytest.mark.parametrize(
    ("outcome", "expected", "problem"),
    [
        pytest.param(NEW, NEW, None, id="parses-replaces"),
        pytest.param(frozenset(), frozenset(), None, id="parses-empty-replaces-with-nothing"),
        pytest.param(HELD, HELD, None, id="parses-same"),
        pytest.param(
            CredentialError("keys file k: line 3: key is shorter than 16 characters", line=3),
            HELD,
            "keys file k: line 3: key is shorter than 16 characters; the credentials read "
            "from it before stay in effect",
            id="unparseable-keeps-what-is-held",
        ),
        pytest.param(
            CredentialFileMissing("keys file k: No such file or directory"),
            frozenset(),
            "keys file k: No such file or directory; nothing in it is accepted until it is back",
            id="missing-holds-nothing",
        ),
    ],
)
def test_reread(outcome: Any, expected: frozenset[bytes], problem: str | None) -> None:
    assert reread(reads(outcome), HELD, frozenset()) == (expected, problem)


# --------------------------------------------------- 3. the Authenticator on real files


def failures(registry: CollectorRegistry, path: Path) -> float | None:
    return registry.get_sample_value("rscore_credential_reload_failures_total", {"file": str(path)})


def refuses(authenticator: Authenticator, key: str) -> str | None:
    """The refusal's reason for `Bearer key`, or None if accepted."""
    try:
        authenticator.check(f"Bearer {key}")
    except Unauthorized as refusal:
        return refusal.reason
    return None


def test_keys_file_reloads_never_fail_open(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY_A}\n{KEY_B}\n")
    registry = CollectorRegistry()
    authenticator = Authenticator(AuthConfig(mode="keys", keys_file=path), registry=registry)
    assert failures(registry, path) == 0  # exported from the start
    assert authenticator.problem is None

    # One bad line: the keys in effect stay, the problem names the file and the line.
    path.write_text(f"{KEY_A}\n{KEY_C}\nZq7xW\n")
    for _ in range(3):  # the watcher retries a failed reload: counted once
        with pytest.raises(ReloadError) as info:
            authenticator.reload()
    assert f"keys file {path}: line 3: key is shorter than 16 characters" in str(info.value)
    assert "Zq7xW" not in str(info.value)
    assert authenticator.problem == str(info.value)
    assert failures(registry, path) == 1
    assert [refuses(authenticator, k) for k in (KEY_A, KEY_B, KEY_C)] == [
        None,
        None,
        "invalid_key",
    ]

    # A file that parses replaces the set completely, and clears the problem.
    path.write_text(f"{KEY_C}\n")
    authenticator.reload()
    assert authenticator.problem is None
    assert [refuses(authenticator, k) for k in (KEY_A, KEY_B, KEY_C)] == [
        "invalid_key",
        "invalid_key",
        None,
    ]

    # Emptied: no key at all is accepted, and that is no failure.
    path.write_text("# every key revoked\n")
    authenticator.reload()
    assert authenticator.problem is None
    assert [refuses(authenticator, k) for k in (KEY_A, KEY_B, KEY_C)] == ["invalid_key"] * 3

    # Deleted: nothing is accepted, and it is reported until the file is back.
    path.write_text(f"{KEY_A}\n")
    authenticator.reload()
    path.unlink()
    with pytest.raises(ReloadError, match="No such file"):
        authenticator.reload()
    assert authenticator.problem is not None
    assert str(path) in authenticator.problem
    assert failures(registry, path) == 2
    assert refuses(authenticator, KEY_A) == "invalid_key"
    path.write_text(f"{KEY_A}\n")
    authenticator.reload()
    assert authenticator.problem is None
    assert refuses(authenticator, KEY_A) is None


def test_a_start_up_keys_file_must_hold_a_key(tmp_path: Path) -> None:
    """At start-up an empty file is a configuration error (fail fast), not a reload."""
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n")
    with pytest.raises(CredentialError, match="no key in it"):
        Authenticator(AuthConfig(mode="keys", keys_file=path), registry=CollectorRegistry())


@pytest.mark.parametrize("source", ["token-jwks", "token-secret-file"])
def test_token_files_reload_the_same_way(tmp_path: Path, source: str) -> None:
    if source == "token-jwks":
        private, public = generate_jwk_pair("EC", "ec-1")
        signer = write_json(tmp_path / "private.jwk", private)
        path = write_json(tmp_path / "jwks.json", public)
        config = AuthConfig(mode="tokens", token_jwks=path, policy=POLICY)
        unparseable, emptied = '{"keys": [\n  {"kty": "EC",\n', json.dumps({"keys": []})
        where = "line 3 column 1"
        mint: dict[str, Any] = {"private_jwk_path": signer}
    else:
        path = tmp_path / "secret"
        path.write_text("s" * 40 + "\n")
        config = AuthConfig(mode="tokens", token_secret_file=path, policy=POLICY)
        unparseable, emptied = "too-short\n", ""
        where = "at least 32 bytes"
        mint = {"secret_path": path}
    token = mint_token(ttl_s=600, now=1_900_000_000, audience=AUD, issuer=ISS, **mint)
    registry = CollectorRegistry()
    authenticator = Authenticator(config, registry=registry, clock=lambda: 1_900_000_000)
    assert refuses(authenticator, token) is None

    path.write_text(unparseable)
    with pytest.raises(ReloadError) as info:
        authenticator.reload()
    assert where in str(info.value)
    assert failures(registry, path) == 1
    assert refuses(authenticator, token) is None  # the verification key in effect stays

    path.write_text(emptied)
    authenticator.reload()
    assert authenticator.problem is None
    assert refuses(authenticator, token) == "token_unknown_key"


# ------------------------------------------ 4. a real sidecar, a real R worker, a volume

GRACE_S = 0.3  # the watcher's grace for a missing file in these tests


async def readyz(served: Served) -> tuple[int, Any]:
    response = await served.client.get("/readyz")
    return response.status, await response.json()


async def test_a_bad_line_keeps_the_keys_and_makes_readyz_say_which(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {name: generate_key() for name in "ABC"}
    vol = SecretVolume(
        tmp_path / "keys-volume", {"keys": keys_file_bytes(tmp_path, [keys["A"], keys["B"]])}
    )
    path = vol.path("keys")
    served = await serve(AuthConfig(mode="keys", keys_file=path), watch=True)
    load = Load(served, keys, using="A")
    assert (await readyz(served))[0] == 200
    async with load.running(2):
        await eventually(load.grows_by(10), "the load is on")
        broken = keys_file_bytes(tmp_path, [keys["A"], keys["C"]]) + b"Zq7xW\n"
        bad_line = broken.count(b"\n")
        vol.rotate({"keys": broken})

        async def warned() -> bool:
            return "warnings" in (await readyz(served))[1]

        await eventually(warned, "/readyz says the reload failed")
        status, answer = await readyz(served)
        assert status == 200  # still serving with the keys in effect
        (message,) = answer["warnings"]
        assert f"keys file {path}: line {bad_line}: key is shorter" in message
        assert served.sample("rscore_credential_reload_failures_total", file=str(path)) == 1
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "rscore.watch" and r.levelno == logging.WARNING
        ]
        assert any(f"line {bad_line}" in w for w in warnings), warnings
        await eventually(load.grows_by(10), "A keeps working")
        assert await served.accepts(keys["B"])  # the keys in effect are the old ones
        assert not await served.accepts(keys["C"])

        vol.rotate({"keys": keys_file_bytes(tmp_path, [keys["A"], keys["C"]])})

        async def clear() -> bool:
            return (await readyz(served)) == (200, {"status": "ready"})

        await eventually(clear, "/readyz without a warning after the fix")
        assert await served.accepts(keys["C"])
        assert not await served.accepts(keys["B"])
    assert load.failures == []
    assert "Zq7xW" not in caplog.text
    for key in keys.values():
        assert key not in caplog.text


async def test_an_emptied_keys_file_refuses_every_key(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    keys = [generate_key(), generate_key()]
    vol = SecretVolume(tmp_path / "keys-volume", {"keys": keys_file_bytes(tmp_path, keys)})
    served = await serve(AuthConfig(mode="keys", keys_file=vol.path("keys")), watch=True)
    assert await served.accepts(keys[0])
    vol.rotate({"keys": b"# all keys revoked\n"})

    async def revoked() -> bool:
        return not await served.accepts(keys[0])

    await eventually(revoked, "the first key refused")
    for key in keys:
        status, answer, headers = await served.score(f"Bearer {key}")
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
        assert headers["WWW-Authenticate"] == 'Bearer realm="rscore", error="invalid_token"'
    response = await served.client.get("/readyz")
    assert response.status == 200  # a file that parses is no failure


@pytest.mark.parametrize("how", ["deleted", "dangling-symlink"])
async def test_a_missing_keys_file_refuses_every_key_and_is_reported(
    serve: ServeFactory,  # noqa: F811
    tmp_path: Path,
    how: str,
) -> None:
    key = generate_key()
    content = keys_file_bytes(tmp_path, [key])
    if how == "deleted":
        path = tmp_path / "keys"
        path.write_bytes(content)
    else:
        vol = SecretVolume(tmp_path / "keys-volume", {"keys": content})
        path = vol.path("keys")
    served = await serve(
        AuthConfig(mode="keys", keys_file=path), watch=True, missing_grace_s=GRACE_S
    )
    assert await served.accepts(key)
    if how == "deleted":
        path.unlink()
    else:  # the generation `..data` points to is gone: the visible symlink dangles
        shutil.rmtree(vol.generation)

    async def refused() -> bool:
        return not await served.accepts(key)

    await eventually(refused, "the key refused once the file is gone past the grace")
    status, answer = await readyz(served)
    assert status == 200
    (message,) = answer["warnings"]
    assert f"keys file {path}: No such file or directory" in message
    assert served.sample("rscore_credential_reload_failures_total", file=str(path)) == 1

    if how == "deleted":
        path.write_bytes(content)
    else:
        generation = vol.folder / os.readlink(vol.folder / SecretVolume.DATA)
        generation.mkdir()
        (generation / "keys").write_bytes(content)
    await eventually(lambda: served.accepts(key), "the key accepted again")

    async def clear() -> bool:
        return (await readyz(served)) == (200, {"status": "ready"})

    await eventually(clear, "/readyz without a warning")
