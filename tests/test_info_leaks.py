"""What the service tells a client it need not (issue 13, item 12).

(a) a 502 names no worker pid (the log does); (b) no response says which aiohttp or
Python it runs on (`Server: rscore`), on the sidecar, its metrics port, the activator
and aiohttp's own refusals; (c) a token valid for longer than `max_lifetime_s` is
refused; (d) an error quotes a client's string cut to MAX_QUOTED_CHARS and names at
most MAX_LISTED of its keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from test_activator import HOST, Upstream, activator
from test_sidecar import ServeFactory, post_score, serve, slow_bundle  # noqa: F401  (fixtures)

from rscore.r_scorer.errors import (
    MAX_LISTED,
    MAX_QUOTED_CHARS,
    BadRequest,
    SchemaMismatch,
    listed,
    quoted,
)
from rscore.r_scorer.payload import Frame, frame_from_document
from rscore.r_scorer.prototype import FACTOR, NUMERIC, Column, Prototype, coerce
from rscore.sidecar import v2
from rscore.sidecar.credentials import (
    DEFAULT_MAX_LIFETIME_S,
    TokenPolicy,
    TokenRejected,
    load_secret,
    verify_token,
)
from rscore.sidecar.http_hardening import SERVER_NAME

WAIT_S = 20.0

# ----------------------------------------------------------- (a) a 502 names no pid


@pytest.mark.real_r
async def test_a_worker_crash_answers_502_without_the_pid_and_logs_it(
    serve: ServeFactory,  # noqa: F811
    slow_bundle: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rscore.pool")
    served = await serve(slow_bundle)
    (victim,) = served.pool.workers
    request = asyncio.create_task(post_score(served, {"data": [{"x": 1, "sleep": 30}]}))
    async with asyncio.timeout(WAIT_S):
        while not victim.busy:  # the request is with the worker
            await asyncio.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    status, answer, _ = await request
    assert (status, answer["error"]["code"]) == (502, "worker_crashed")
    message = answer["error"]["message"]
    assert message == "the R worker died while scoring this request; it is being restarted"
    assert str(victim.pid) not in message
    assert f"pid {victim.pid} died while scoring a request" in caplog.text


# --------------------------------------------------- (b) no aiohttp version anywhere


def assert_server_named(headers: Any, where: str) -> None:
    assert headers.get("Server") == SERVER_NAME, (where, headers.get("Server"))


async def raw_answer(host: str, port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(WAIT_S):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.real_r
async def test_the_sidecar_never_names_aiohttp(serve: ServeFactory) -> None:  # noqa: F811
    served = await serve(None)  # no worker: 503s and 404s are answers too
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),  # 503, no worker yet
        ("POST", "/score"),  # 503
        ("GET", "/no/such/route"),  # 404
        ("DELETE", "/score"),  # 405
    ]:
        response = await served.client.request(method, path)
        assert_server_named(response.headers, f"{method} {path} -> {response.status}")
    response = await served.metrics_client.get("/metrics")
    assert_server_named(response.headers, "metrics")
    # aiohttp's own refusal, before any application runs (a control byte in a header).
    server = served.client.server
    answer = await raw_answer(
        str(server.host),
        int(server.port or 0),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
    )
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert head.split(" ", 2)[1] == "400", head
    assert f"\r\nServer: {SERVER_NAME}\r\n" in head + "\r\n", head
    assert "aiohttp" not in head.lower()
    assert "python" not in head.lower()


async def test_the_activator_never_names_aiohttp() -> None:
    async with (
        Upstream() as upstream,
        activator(f"http://{HOST}:{upstream.port}") as act,
        aiohttp.ClientSession() as client,
    ):
        async with client.post(f"{act.url}/score", data=b"{}") as response:
            assert response.status == 200  # proxied: the upstream's own Server is replaced
            assert_server_named(response.headers, "proxied")
        async with client.get(act.metrics_url) as response:
            assert_server_named(response.headers, "activator metrics")


# --------------------------------------------------- (c) a maximum token lifetime

NOW = 1_900_000_000
SECRET = b"an-hmac-secret-for-the-lifetime-tests-0123456789"


@pytest.fixture(scope="module")
def hs_keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("lifetime") / "secret"
    path.write_bytes(SECRET)
    return load_secret(path)


DAY = DEFAULT_MAX_LIFETIME_S


@pytest.mark.parametrize(
    ("claims", "max_lifetime_s", "reason"),
    [
        pytest.param({"iat": NOW, "exp": NOW + DAY}, DAY, None, id="exactly-a-day"),
        pytest.param({"iat": NOW, "exp": NOW + DAY + 1}, DAY, "lifetime_too_long", id="day+1s"),
        pytest.param({"iat": NOW - DAY, "exp": NOW + 60}, DAY, "lifetime_too_long", id="old-iat"),
        pytest.param({"iat": NOW, "exp": NOW + 10 * 365 * DAY}, DAY, "lifetime_too_long", id="10y"),
        pytest.param({"iat": NOW, "exp": NOW + 7200}, 3600, "lifetime_too_long", id="2h-of-1h"),
        pytest.param({"iat": NOW, "exp": NOW + 3600}, 3600, None, id="1h-of-1h"),
        # Without iat, exp - now counts, with the leeway (30 s): two clocks meet there.
        pytest.param({"exp": NOW + DAY + 30}, DAY, None, id="no-iat-within-leeway"),
        pytest.param({"exp": NOW + DAY + 31}, DAY, "lifetime_too_long", id="no-iat-past-leeway"),
        pytest.param({"exp": 10**400}, DAY, "lifetime_too_long", id="no-iat-exp-beyond-float"),
        pytest.param({"iat": NOW, "exp": 10**400}, DAY, "lifetime_too_long", id="exp-beyond-float"),
        pytest.param(
            {"iat": -(10**400), "exp": NOW + 60}, DAY, "lifetime_too_long", id="iat-beyond-float"
        ),
        # No exp at all was refused before this item, and still is.
        pytest.param({"iat": NOW}, DAY, "missing_claim", id="no-exp"),
    ],
)
def test_token_lifetime(
    hs_keys: Any, claims: dict[str, Any], max_lifetime_s: float, reason: str | None
) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    policy = TokenPolicy(leeway_s=30, max_lifetime_s=max_lifetime_s)
    if reason is None:
        assert verify_token(token, hs_keys, policy, NOW)["exp"] == claims["exp"]
        return
    with pytest.raises(TokenRejected) as info:
        verify_token(token, hs_keys, policy, NOW)
    assert info.value.reason == reason
    if reason == "lifetime_too_long":
        assert info.value.description == "token lifetime exceeds the maximum"


def test_the_default_maximum_lifetime_is_a_day() -> None:
    assert TokenPolicy().max_lifetime_s == 86_400


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_the_maximum_lifetime_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="max_lifetime_s"):
        TokenPolicy(max_lifetime_s=bad)


def test_the_cli_flag_reaches_the_policy(tmp_path: Path) -> None:
    from rscore.cli.main import _auth_config, cli

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    command = cli.commands["sidecar"]
    for flags, expected in [([], 86_400), (["--token-max-lifetime-s", "600"], 600)]:
        with command.make_context("sidecar", ["--token-secret-file", str(secret), *flags]) as ctx:
            config = _auth_config(ctx.params, may_generate_key=False)
        assert config.policy.max_lifetime_s == expected


# ------------------------------------------- (d) errors quote client strings, bounded

LONG = "x" * 100_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("daisy", "'daisy'", id="short-string"),
        pytest.param("", "''", id="empty-string"),
        pytest.param("a'b", '"a\'b"', id="a-quote"),
        pytest.param("line\nbreak\x00", "'line\\nbreak\\x00'", id="control-chars-escaped"),
        pytest.param("y" * MAX_QUOTED_CHARS, repr("y" * MAX_QUOTED_CHARS), id="exactly-the-limit"),
        pytest.param(
            "y" * (MAX_QUOTED_CHARS + 1),
            f"{'y' * MAX_QUOTED_CHARS!r}... ({MAX_QUOTED_CHARS + 1} characters)",
            id="one-over",
        ),
        pytest.param(LONG, f"{'x' * MAX_QUOTED_CHARS!r}... (100000 characters)", id="100k"),
        pytest.param(4, "4", id="int"),
        pytest.param(1.5, "1.5", id="float"),
    ],
)
def test_quoted(value: object, expected: str) -> None:
    assert quoted(value) == expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param([], "", id="none"),
        pytest.param(["inputs", "rows"], "inputs, rows", id="two"),
        pytest.param(
            [f"k{i}" for i in range(MAX_LISTED + 3)],
            ", ".join(f"k{i}" for i in range(MAX_LISTED)) + " and 3 more",
            id="over-the-count",
        ),
        pytest.param(["z" * 1000], "z" * MAX_QUOTED_CHARS + "...", id="one-long-name"),
    ],
)
def test_listed(names: list[str], expected: str) -> None:
    assert listed(names) == expected


FACTOR_PROTOTYPE = Prototype((Column("f", FACTOR, ("a", "b")),), "ptype.rds")
NUMBER_PROTOTYPE = Prototype((Column("x", NUMERIC),), "ptype.rds")
BOUND = 400  # no message below grows with the client's strings past this


def message_of(call: Any) -> str:
    with pytest.raises((BadRequest, SchemaMismatch)) as info:
        call()
    return info.value.message


@pytest.mark.parametrize(
    "case",
    [
        "unknown-level",
        "wrong-type-string",
        "unchecked-column-name",
        "many-unknown-keys",
        "long-unknown-keys",
        "v2-input-name",
        "v2-duplicate-input",
    ],
)
def test_errors_that_quote_the_client_stay_short(case: str) -> None:
    tensor = {"name": LONG, "shape": [1], "datatype": "FP64", "data": [1.0]}
    calls = {
        "unknown-level": lambda: coerce(Frame({"f": [LONG]}, 1), FACTOR_PROTOTYPE),
        "wrong-type-string": lambda: coerce(Frame({"x": [LONG]}, 1), NUMBER_PROTOTYPE),
        "unchecked-column-name": lambda: coerce(Frame({LONG: [1, "a"]}, 2), Prototype()),
        "many-unknown-keys": lambda: frame_from_document({f"key{i}": 1 for i in range(10_000)}),
        "long-unknown-keys": lambda: frame_from_document({LONG + "1": 1, LONG + "2": 2}),
        "v2-input-name": lambda: v2.frame_from_infer({"inputs": [{**tensor, "datatype": "NOPE"}]}),
        "v2-duplicate-input": lambda: v2.frame_from_infer({"inputs": [tensor, tensor]}),
    }
    message = message_of(calls[case])
    assert len(message) < BOUND, message[:500]
    assert LONG[: MAX_QUOTED_CHARS + 1] not in message
    if case == "many-unknown-keys":
        assert f"and {10_000 - MAX_LISTED} more" in message
    elif case != "long-unknown-keys":
        assert "(100000 characters)" in message
