"""The API client reads its proxy from the environment once, as kubectl does, and then
never looks again (rscore.autoscaler.kube_io._read_environment_once): aiohttp's
`trust_env` would look for ~/.netrc and read the proxy variables on a thread for every
call. Real kubernetes_asyncio client, real HTTP to the API emulator, and a real
forwarding proxy in front of it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kube_emulator import KubeEmulator

from rscore.autoscaler.kube_io import KubeApi
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.spec import TargetRef

DEPLOYMENT = TargetRef("apps/v1", "Deployment", "web")


class ForwardingProxy:
    """An HTTP proxy for plain http: takes absolute-form requests and forwards them to
    the one upstream there is, counting what it forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.forwarded: list[str] = []
        self.authorizations: list[str | None] = []

    async def forward(self, request: web.Request) -> web.Response:
        self.forwarded.append(f"{request.method} {request.path}")
        self.authorizations.append(request.headers.get("Proxy-Authorization"))
        headers = {k: v for k, v in request.headers.items() if not k.lower().startswith("proxy-")}
        headers.pop("Host", None)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, Path, ForwardingProxy, str]]:
    async with KubeEmulator() as emu:
        emu.make_deployment("web", "default", replicas=3)
        proxy = ForwardingProxy(emu.url)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.forward)
        async with TestServer(app, host="127.0.0.1") as server:
            url = f"http://127.0.0.1:{server.port}"
            yield emu, emu.write_kubeconfig(tmp_path / "kubeconfig"), proxy, url


def _clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_without_a_proxy_calls_go_straight_and_the_session_does_not_look_again(
    world: tuple[KubeEmulator, Path, ForwardingProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, kubeconfig, proxy, _ = world
    _clear_proxy_environment(monkeypatch)
    api = await KubeApi.connect(kubeconfig, ControllerMetrics())
    try:
        assert api.api_client.rest_client.pool_manager.trust_env is False
        assert api.api_client.rest_client.proxy is None
        assert (await api.get_scale("default", DEPLOYMENT)).replicas == 3
    finally:
        await api.close()
    assert proxy.forwarded == []


# aiohttp's own path for a proxy URL's credentials builds its deprecated BasicAuth.
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
async def test_the_environments_proxy_is_read_once_and_used_for_every_call(
    world: tuple[KubeEmulator, Path, ForwardingProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, kubeconfig, proxy, proxy_url = world
    _clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://ops:s3cret@"))
    api = await KubeApi.connect(kubeconfig, ControllerMetrics())
    # Read at start: a change of the environment afterwards changes nothing.
    monkeypatch.delenv("HTTP_PROXY")
    try:
        assert api.api_client.rest_client.pool_manager.trust_env is False
        for _ in range(2):
            assert (await api.get_scale("default", DEPLOYMENT)).replicas == 3
    finally:
        await api.close()
    assert proxy.forwarded == ["GET /apis/apps/v1/namespaces/default/deployments/web/scale"] * 2
    expected = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert proxy.authorizations == [expected, expected]


async def test_no_proxy_for_the_api_server_is_honoured(
    world: tuple[KubeEmulator, Path, ForwardingProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, kubeconfig, proxy, proxy_url = world
    _clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    api = await KubeApi.connect(kubeconfig, ControllerMetrics())
    try:
        assert (await api.get_scale("default", DEPLOYMENT)).replicas == 3
    finally:
        await api.close()
    assert proxy.forwarded == []
