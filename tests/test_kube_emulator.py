"""The Kubernetes API emulator, driven by the real kubernetes_asyncio client."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import eventually
from kube_emulator import KubeEmulator, parse_label_selector
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

NS = "default"
SA = ("rscore.dev", "v1alpha1")
MERGE = "application/merge-patch+json"


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator() as emulator:
        yield emulator


async def _client(emu: KubeEmulator, path: Path) -> client.ApiClient:
    return await config.new_client_from_config(config_file=str(emu.write_kubeconfig(path)))


@pytest.fixture
async def api(emu: KubeEmulator, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    async with await _client(emu, tmp_path / "kubeconfig") as api_client:
        yield api_client


def _status(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def _autoscaler(name: str, target: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "rscore.dev/v1alpha1",
        "kind": "ScoringAutoscaler",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {"targetRef": {"kind": "Deployment", "name": target}, "maxReplicas": 4},
    }


async def test_discovery(api: client.ApiClient) -> None:
    versions = await client.CoreApi(api).get_api_versions()
    assert versions.versions == ["v1"]
    core = await client.CoreV1Api(api).get_api_resources()
    by_name = {r.name: r for r in core.resources}
    assert by_name["nodes"].namespaced is False
    assert by_name["pods"].namespaced is True
    assert "pods/status" in by_name
    groups = await client.ApisApi(api).get_api_versions()
    names = {g.name for g in groups.groups}
    assert {"apps", "rscore.dev", "cluster.x-k8s.io", "metrics.k8s.io"} <= names
    apps = await client.AppsV1Api(api).get_api_resources()
    scale = next(r for r in apps.resources if r.name == "deployments/scale")
    assert (scale.kind, scale.group, scale.version) == ("Scale", "autoscaling", "v1")
    capi = await api.call_api(
        "/apis/cluster.x-k8s.io/v1beta1",
        "GET",
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )
    names = {r["name"]: r for r in capi["resources"]}
    assert names["machinedeployments"]["kind"] == "MachineDeployment"
    assert names["machinedeployments/scale"]["group"] == "autoscaling"
    assert (await client.VersionApi(api).get_code()).major == "1"


async def test_deployment_crud_conflicts_and_status_bodies(
    emu: KubeEmulator, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
        },
    }
    created = await apps.create_namespaced_deployment(NS, body)
    assert created.metadata.generation == 1
    assert created.metadata.uid
    assert emu.requests[-1].status == 201
    with pytest.raises(ApiException) as exc:
        await apps.create_namespaced_deployment(NS, body)
    assert exc.value.status == 409
    assert _status(exc.value)["reason"] == "AlreadyExists"

    stale = await apps.read_namespaced_deployment("web", NS)
    patched = await apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 3}})
    assert emu.requests[-1].content_type == "application/strategic-merge-patch+json"
    assert patched.spec.replicas == 3
    assert patched.metadata.generation == 2
    assert int(patched.metadata.resource_version) > int(stale.metadata.resource_version)
    stale.spec.replicas = 7
    with pytest.raises(ApiException) as exc:
        await apps.replace_namespaced_deployment("web", NS, stale)
    assert _status(exc.value)["reason"] == "Conflict"
    # A label-only change does not bump the generation; a no-op keeps the resourceVersion.
    again = await apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"x": "1"}}})
    assert again.metadata.generation == 2
    same = await apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"x": "1"}}})
    assert same.metadata.resource_version == again.metadata.resource_version
    # The main resource ignores status; /status ignores spec.
    emu.put_object(
        {**emu.get_object("apps/v1", "Deployment", NS, "web"), "status": {"replicas": 3}}
    )
    await apps.patch_namespaced_deployment("web", NS, {"status": {"replicas": 99}})
    st = await apps.patch_namespaced_deployment_status(
        "web", NS, {"spec": {"replicas": 50}, "status": {"readyReplicas": 3}}
    )
    assert (st.spec.replicas, st.status.replicas, st.status.ready_replicas) == (3, 3, 3)

    await apps.delete_namespaced_deployment("web", NS)
    with pytest.raises(ApiException) as exc:
        await apps.read_namespaced_deployment("web", NS)
    status = _status(exc.value)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'deployments.apps "web" not found'
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    writes = [(r.method, r.status) for r in emu.writes("/deployments/web")]
    assert writes == [("PATCH", 200), ("PUT", 409)] + [("PATCH", 200)] * 4 + [("DELETE", 200)]


async def test_deployment_scale_subresource(emu: KubeEmulator, api: client.ApiClient) -> None:
    emu.make_deployment("web", replicas=2, match_labels={"app": "web", "tier": "r"})
    apps = client.AppsV1Api(api)
    scale = await apps.read_namespaced_deployment_scale("web", NS)
    assert scale.spec.replicas == 2
    assert scale.status.selector == "app=web,tier=r"
    before = emu.get_object("apps/v1", "Deployment", NS, "web")
    scaled = await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 5}})
    assert scaled.spec.replicas == 5
    after = emu.get_object("apps/v1", "Deployment", NS, "web")
    assert after["spec"]["replicas"] == 5
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert scaled.metadata.resource_version == after["metadata"]["resourceVersion"]
    await apps.patch_namespaced_deployment_scale(
        "web", NS, [{"op": "replace", "path": "/spec/replicas", "value": 4}]
    )
    assert emu.requests[-1].content_type == "application/json-patch+json"
    scale = await apps.read_namespaced_deployment_scale("web", NS)
    scale.spec.replicas = 1
    await apps.replace_namespaced_deployment_scale("web", NS, scale)
    with pytest.raises(ApiException) as exc:  # the Scale's resourceVersion is now stale
        await apps.replace_namespaced_deployment_scale("web", NS, scale)
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": -1}})
    assert exc.value.status == 422
    assert emu.get_object("apps/v1", "Deployment", NS, "web")["spec"]["replicas"] == 1


async def test_custom_resource_scale_and_patch_content_types(
    emu: KubeEmulator, api: client.ApiClient
) -> None:
    emu.put_object(
        {
            "apiVersion": "cluster.x-k8s.io/v1beta1",
            "kind": "MachineDeployment",
            "metadata": {"name": "workers", "namespace": NS},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"pool": "w"}}},
            "status": {"replicas": 2},
        }
    )
    co = client.CustomObjectsApi(api)
    args = ("cluster.x-k8s.io", "v1beta1", NS, "machinedeployments", "workers")
    scale = await co.get_namespaced_custom_object_scale(*args)
    assert scale["kind"] == "Scale"
    assert scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 2, "selector": "pool=w"}
    # Quirk: for a dict body CustomObjectsApi's patch sends application/json-patch+json,
    # which the API server rejects with 400; say merge-patch explicitly.
    with pytest.raises(ApiException) as exc:
        await co.patch_namespaced_custom_object_scale(*args, {"spec": {"replicas": 6}})
    assert exc.value.status == 400
    assert emu.requests[-1].content_type == "application/json-patch+json"
    scaled = await co.patch_namespaced_custom_object_scale(
        *args, {"spec": {"replicas": 6}}, _content_type=MERGE
    )
    assert scaled["spec"]["replicas"] == 6
    md = await co.get_namespaced_custom_object(*args)
    assert md["spec"]["replicas"] == 6
    assert md["metadata"]["generation"] == 2
    await co.patch_namespaced_custom_object_scale(
        *args, [{"op": "replace", "path": "/spec/replicas", "value": 7}]
    )
    scale = await co.get_namespaced_custom_object_scale(*args)
    scale["spec"]["replicas"] = 8
    await co.replace_namespaced_custom_object_scale(*args, scale)
    assert (
        emu.get_object("cluster.x-k8s.io/v1beta1", "MachineDeployment", NS, "workers")["spec"][
            "replicas"
        ]
        == 8
    )
    # Custom resources take no strategic merge patch; nothing takes an unknown type.
    for content_type in ("application/strategic-merge-patch+json", "application/json"):
        with pytest.raises(ApiException) as exc:
            await co.patch_namespaced_custom_object(
                *args, {"spec": {"replicas": 1}}, _content_type=content_type
            )
        assert _status(exc.value)["reason"] == "UnsupportedMediaType"
        assert exc.value.status == 415


async def test_custom_resource_status_and_replace(emu: KubeEmulator, api: client.ApiClient) -> None:
    co = client.CustomObjectsApi(api)
    created = await co.create_namespaced_custom_object(
        *SA, NS, "scoringautoscalers", _autoscaler("a")
    )
    assert created["metadata"]["generation"] == 1
    args = (*SA, NS, "scoringautoscalers", "a")
    status = {"status": {"desiredReplicas": 3}, "spec": {"maxReplicas": 100}}
    out = await co.patch_namespaced_custom_object_status(*args, status, _content_type=MERGE)
    assert out["status"] == {"desiredReplicas": 3}
    assert out["spec"]["maxReplicas"] == 4
    assert out["metadata"]["generation"] == 1
    out["status"]["desiredReplicas"] = 2
    replaced = await co.replace_namespaced_custom_object_status(*args, out)
    with pytest.raises(ApiException) as exc:  # stale resourceVersion
        await co.replace_namespaced_custom_object_status(*args, out)
    assert exc.value.status == 409
    patch = [{"op": "test", "path": "/status/desiredReplicas", "value": 2}]
    patch.append({"op": "replace", "path": "/status/desiredReplicas", "value": 1})
    out = await co.patch_namespaced_custom_object_status(*args, patch)
    assert out["status"]["desiredReplicas"] == 1
    with pytest.raises(ApiException) as exc:  # the test operation fails
        await co.patch_namespaced_custom_object_status(*args, patch)
    assert exc.value.status == 422
    # A custom resource's update must carry a resourceVersion; the main resource keeps status.
    body = _autoscaler("a")
    with pytest.raises(ApiException) as exc:
        await co.replace_namespaced_custom_object(*args, body)
    assert exc.value.status == 422
    body["metadata"]["resourceVersion"] = out["metadata"]["resourceVersion"]
    body["spec"]["maxReplicas"] = 9
    body["status"] = {"desiredReplicas": 77}
    new = await co.replace_namespaced_custom_object(*args, body)
    assert new["metadata"]["generation"] == 2
    assert new["status"] == {"desiredReplicas": 1}
    assert int(replaced["metadata"]["resourceVersion"]) < int(new["metadata"]["resourceVersion"])
    emu.put_object({**_autoscaler("b"), "metadata": {"name": "b", "namespace": "other"}})
    everywhere = await co.list_cluster_custom_object(*SA, "scoringautoscalers")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere["items"]] == [
        ("default", "a"),
        ("other", "b"),
    ]
    assert everywhere["metadata"]["resourceVersion"] == emu.resource_version
    await co.delete_namespaced_custom_object(*args)
    assert emu.get_object("rscore.dev/v1alpha1", "ScoringAutoscaler", NS, "a") is None


async def test_selectors_and_metrics(emu: KubeEmulator, api: client.ApiClient) -> None:
    for i, (app, tier) in enumerate([("web", "a"), ("web", "b"), ("db", "a"), ("web", None)]):
        labels = {"app": app} | ({"tier": tier} if tier else {})
        emu.make_pod(f"p{i}", labels=labels)
        emu.make_pod_metrics(f"p{i}", labels=labels, containers={"main": (f"{i}00m", "200Mi")})
    core = client.CoreV1Api(api)
    cases = {
        "app=web": ["p0", "p1", "p3"],
        "app==web,tier!=b": ["p0", "p3"],
        "tier in (a, b),app notin (db)": ["p0", "p1"],
        "tier": ["p0", "p1", "p2"],
        "!tier": ["p3"],
        "": ["p0", "p1", "p2", "p3"],
    }
    for selector, names in cases.items():
        pods = await core.list_namespaced_pod(NS, label_selector=selector)
        assert [p.metadata.name for p in pods.items] == names, selector
    pods = await core.list_namespaced_pod(NS, field_selector="metadata.name=p2")
    assert [p.metadata.name for p in pods.items] == ["p2"]
    with pytest.raises(ApiException) as exc:
        await core.list_namespaced_pod(NS, label_selector="app in web")
    assert exc.value.status == 400
    page = await core.list_namespaced_pod(NS, limit=3)
    rest = await core.list_namespaced_pod(NS, limit=3, _continue=page.metadata._continue)
    assert len(page.items) + len(rest.items) == 4

    co = client.CustomObjectsApi(api)
    metrics = await co.list_namespaced_custom_object(
        "metrics.k8s.io", "v1beta1", NS, "pods", label_selector="app=web,tier in (b)"
    )
    assert metrics["kind"] == "PodMetricsList"
    assert [m["containers"][0]["usage"]["cpu"] for m in metrics["items"]] == ["100m"]
    with pytest.raises(ApiException) as exc:
        await co.create_namespaced_custom_object("metrics.k8s.io", "v1beta1", NS, "pods", {})
    assert exc.value.status == 405
    assert parse_label_selector("a in (x,y),!b")({"a": "y"})


async def test_pods_events_and_nodes(emu: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name="web-", labels={"app": "web"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="x")]),
    )
    created = await core.create_namespaced_pod(NS, pod)
    assert created.metadata.name.startswith("web-")
    assert created.status.phase == "Pending"
    emu.set_pod_ready(NS, created.metadata.name, True, "10.1.2.3")
    got = await core.read_namespaced_pod(created.metadata.name, NS)
    assert got.status.pod_ip == "10.1.2.3"
    assert {c.type: c.status for c in got.status.conditions}["Ready"] == "True"
    emu.set_pod_ready(NS, created.metadata.name, False, "10.1.2.3")
    got = await core.read_namespaced_pod_status(created.metadata.name, NS)
    assert {c.type: c.status for c in got.status.conditions}["Ready"] == "False"

    ref = client.V1ObjectReference(kind="Deployment", name="web", namespace=NS)
    core_event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="web."),
        involved_object=ref,
        reason="Scaled",
        message="2 -> 3",
        type="Normal",
    )
    await core.create_namespaced_event(NS, core_event)
    new_event = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="web.1"),
        event_time=datetime.datetime.now(datetime.UTC),
        regarding=ref,
        reason="Scaled",
        action="Scale",
        note="2 -> 3",
        type="Normal",
        reporting_controller="rscore.dev/autoscaler",
        reporting_instance="a",
    )
    await client.EventsV1Api(api).create_namespaced_event(NS, new_event)
    assert [r.path for r in emu.writes("/events")] == [
        "/api/v1/namespaces/default/events",
        "/apis/events.k8s.io/v1/namespaces/default/events",
    ]
    assert emu.writes("/events")[1].body["reason"] == "Scaled"
    await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n1")))
    assert [n.metadata.name for n in (await core.list_node()).items] == ["n1"]
    namespaces = await core.list_namespace()
    assert {n.metadata.name for n in namespaces.items} == {"default", "kube-system"}


@pytest.mark.slow
async def test_watch_stream_resume_and_selectors(emu: KubeEmulator, api: client.ApiClient) -> None:
    emu.make_pod("old", labels={"app": "web"})
    core = client.CoreV1Api(api)
    seen: list[tuple[str, str]] = []
    async with watch.Watch() as w:
        async for event in w.stream(
            core.list_namespaced_pod, NS, label_selector="app=web", timeout_seconds=1
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 1:
                emu.make_pod("other", labels={"app": "db"})
                emu.make_pod("new", labels={"app": "web"})
                emu.set_pod_ready(NS, "new", True)
                emu.put_object({**emu.get_object("v1", "Pod", NS, "old"), "metadata": {
                    "name": "old", "namespace": NS, "labels": {"app": "moved"}}})  # fmt: skip
                emu.delete_object("v1", "Pod", NS, "new")
    assert seen == [
        ("ADDED", "old"),
        ("ADDED", "new"),
        ("MODIFIED", "new"),
        ("DELETED", "old"),  # left the selector
        ("DELETED", "new"),
    ]
    assert emu.requests[-1].query["watch"] == "True"
    # Resume from a resourceVersion: only what happened since, custom objects as dicts.
    co = client.CustomObjectsApi(api)
    await co.create_namespaced_custom_object(*SA, NS, "scoringautoscalers", _autoscaler("a"))
    mark = emu.resource_version
    await co.create_namespaced_custom_object(*SA, NS, "scoringautoscalers", _autoscaler("b"))
    async with watch.Watch() as w:
        events = [
            (e["type"], e["object"]["metadata"]["name"])
            async for e in w.stream(
                co.list_namespaced_custom_object,
                *SA,
                NS,
                "scoringautoscalers",
                resource_version=mark,
                timeout_seconds=1,
            )
        ]
    assert events == [("ADDED", "b")]


async def test_watch_too_old_resource_version(emu: KubeEmulator, api: client.ApiClient) -> None:
    emu.make_pod("a")
    old = emu.resource_version
    emu.make_pod("b")
    emu.compact()
    core = client.CoreV1Api(api)
    # The real server answers 200 and sends an ERROR event; Watch raises it as ApiException.
    async with watch.Watch() as w:
        stream = w.stream(core.list_namespaced_pod, NS, resource_version=old, timeout_seconds=2)
        with pytest.raises(ApiException) as exc:
            await stream.__anext__()
    assert exc.value.status == 410
    assert emu.requests[-1].status == 200
    async with aiohttp.ClientSession() as session:
        url = f"{emu.url}/api/v1/namespaces/default/pods?watch=true&resourceVersion={old}"
        async with session.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"
            lines = (await resp.read()).splitlines()
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"
    assert "too old resource version" in event["object"]["message"]
    # The current resourceVersion is still fine; history windows compact themselves.
    small = KubeEmulator(history_window=2)
    for name in "abc":
        small.make_pod(name)
    assert small._compacted_rv > 0


async def test_watch_bookmarks_and_dropped_connections(
    emu: KubeEmulator, api: client.ApiClient
) -> None:
    emu.bookmark_interval = 0.1
    core = client.CoreV1Api(api)
    async with watch.Watch() as w:
        stream = w.stream(
            core.list_namespaced_pod, NS, allow_watch_bookmarks=True, timeout_seconds=5
        )
        event = await stream.__anext__()
        assert event["type"] == "BOOKMARK"
        assert event["raw_object"]["metadata"]["resourceVersion"] == emu.resource_version
        assert emu.open_watches == 1
        assert await emu.drop_watches() == 1
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()


async def test_watch_forever_reconnects_after_clean_drop(
    emu: KubeEmulator, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    emu.make_pod("a")
    seen: list[tuple[str, str]] = []

    async def consume() -> None:  # no timeout_seconds: Watch reconnects on end of stream
        async with watch.Watch() as w:
            async for event in w.stream(core.list_namespaced_pod, NS):
                seen.append((event["type"], event["object"].metadata.name))
                if len(seen) == 2:
                    return

    task = asyncio.create_task(consume())
    while not seen:
        await asyncio.sleep(0.01)
    mark = emu.resource_version
    assert await emu.drop_watches() == 1
    while emu.open_watches == 0:
        await asyncio.sleep(0.01)
    emu.make_pod("b")
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "a"), ("ADDED", "b")]
    watches = [r for r in emu.requests if r.watch]
    assert [r.query.get("resourceVersion") for r in watches] == [None, mark]


async def test_watch_abrupt_drop(emu: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    emu.make_pod("a")

    async def consume() -> None:
        async with watch.Watch() as w:
            async for _ in w.stream(core.list_namespaced_pod, NS, timeout_seconds=5):
                pass

    task = asyncio.create_task(consume())
    while emu.open_watches == 0:
        await asyncio.sleep(0.01)
    await emu.drop_watches(abrupt=True)
    with pytest.raises(aiohttp.ClientPayloadError):
        await task


async def test_fault_injection(emu: KubeEmulator, api: client.ApiClient) -> None:
    emu.make_deployment("web")
    apps = client.AppsV1Api(api)
    emu.fail("GET", r"/deployments/web$", 500)
    with pytest.raises(ApiException) as exc:
        await apps.read_namespaced_deployment("web", NS)
    assert _status(exc.value)["reason"] == "InternalError"
    assert (await apps.read_namespaced_deployment("web", NS)).metadata.name == "web"
    emu.fail("PATCH", r"/scale$", 429, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 2}})
        assert exc.value.status == 429
        assert exc.value.headers["Retry-After"] == "1"
        assert _status(exc.value)["details"]["retryAfterSeconds"] == 1
    await apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 2}})
    emu.fail("*", "/deployments", 409, reason="Conflict", message="busy")
    with pytest.raises(ApiException) as exc:
        await apps.replace_namespaced_deployment_scale(
            "web", NS, {"spec": {"replicas": 3}, "metadata": {"name": "web"}}
        )
    assert _status(exc.value)["message"] == "busy"
    assert [r.status for r in emu.writes("/scale")] == [429, 429, 200, 409]
    emu.delay("GET", r"/deployments/web$", 2.0)
    with pytest.raises(asyncio.TimeoutError):
        await apps.read_namespaced_deployment("web", NS, _request_timeout=0.2)
    assert (await apps.read_namespaced_deployment("web", NS)).spec.replicas == 2


async def test_token_auth(tmp_path: Path) -> None:
    async with KubeEmulator(token="s3cret") as emu:
        async with await _client(emu, tmp_path / "kc") as api:
            pods = await client.CoreV1Api(api).list_namespaced_pod(NS)
            assert pods.items == []
        url = f"{emu.url}/api/v1/namespaces/default/pods"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 401
            assert (await resp.json())["reason"] == "Unauthorized"


@pytest.mark.slow
async def test_leases_and_leader_election(emu: KubeEmulator, tmp_path: Path) -> None:
    clients = [await _client(emu, tmp_path / f"kc{i}") for i in range(2)]
    try:
        coord = client.CoordinationV1Api(clients[0])
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name="probe"),
            spec=client.V1LeaseSpec(holder_identity="x", lease_duration_seconds=5),
        )
        first = await coord.create_namespaced_lease(NS, lease)
        first.spec.holder_identity = "y"
        await coord.replace_namespaced_lease("probe", NS, first)
        with pytest.raises(ApiException) as exc:
            await coord.replace_namespaced_lease("probe", NS, first)
        assert exc.value.status == 409

        leading: list[str] = []
        stop = asyncio.Event()

        def candidate(i: int) -> leaderelection.LeaderElection:
            async def lead() -> None:
                leading.append(f"c{i}")
                await stop.wait()

            lock = LeaseLock("rscore-autoscaler", NS, f"c{i}", clients[i])
            cfg = electionconfig.Config(lock, 2, 1.5, 1, lead, None)
            return leaderelection.LeaderElection(cfg)

        def lease_reads() -> int:
            return sum(1 for r in emu.requests if r.method == "GET" and "/leases/" in r.path)

        tasks = [asyncio.create_task(candidate(i).run()) for i in range(2)]
        # one leads, and both have read the Lease again since: the other only follows
        await eventually(lambda: bool(leading) and lease_reads() >= 6)
        assert len(leading) == 1
        stored = emu.get_object("coordination.k8s.io/v1", "Lease", NS, "rscore-autoscaler")
        assert stored["spec"]["holderIdentity"] == leading[0]
        winner = int(leading[0][1])
        tasks[winner].cancel()  # the leader dies without releasing
        await eventually(lambda: len(leading) == 2, timeout_s=10)
        assert leading == [f"c{winner}", f"c{1 - winner}"]
        tasks[1 - winner].cancel()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for api_client in clients:
            await api_client.close()


async def test_core_events_are_validated_as_the_api_server_does(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    elsewhere = client.V1ObjectReference(kind="Deployment", name="web", namespace="other")
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="web."),
        involved_object=elsewhere,
        reason="Scaled",
        message="2 -> 3",
        type="Normal",
    )
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_event(NS, event)
    body = _status(caught.value)
    assert (body["code"], body["reason"]) == (422, "Invalid")
    assert "does not match event.namespace" in body["message"]
    # an eventTime makes it a "new" Event: the reporting fields and action are required
    event.involved_object = client.V1ObjectReference(kind="Deployment", name="web", namespace=NS)
    event.event_time = datetime.datetime.now(datetime.UTC)
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_event(NS, event)
    message = _status(caught.value)["message"]
    assert "reportingComponent: Required value" in message
    assert "action: Required value" in message
    event.event_time = None
    created = await core.create_namespaced_event(NS, event)
    assert created.metadata.name.startswith("web.")
