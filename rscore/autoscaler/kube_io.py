"""Every Kubernetes API call the controller makes, and the scrape of pods' /metrics.

The only module that talks to the network, and the only one of the autoscaler that
imports kubernetes_asyncio (an import-linter contract holds it): the rest of the package
sees plain dicts, `Scale`, `LeaseRecord` and our own `ApiError`, never the library's
types or exceptions. Calls go through the real kubernetes_asyncio client: custom objects
(ScoringAutoscalers, `/scale` of any group, PodMetrics) through `CustomObjectsApi`; core
resources, Leases and discovery through its `ApiClient`. Patches name their content type
(merge patch): the client would send a dict as a JSON patch, which a real API server
rejects. Transient failures (409, 429, 5xx, timeouts, dropped connections) are retried
here with capped exponential backoff, except the Lease calls, whose cadence is the
election's (rscore.autoscaler.leader); what still fails is raised as `ApiError` for the caller
to report. Watches (ScoringAutoscalers; pods, for `rscore.autoscaler.informer`) yield plain
dicts, never the library's models, which would cost more to build than a tick at
thousands of pods. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yarl
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.watch import Watch

from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.observe import PodUsage, pod_usage
from rscore.autoscaler.quantity import cpu_millicores, memory_bytes
from rscore.autoscaler.scrape import PodScrape, ScrapeError, parse_pod_metrics
from rscore.autoscaler.spec import TargetRef
from rscore.autoscaler.unrouted import held_requests

__all__ = [
    "CRD_GROUP",
    "CRD_PLURAL",
    "CRD_VERSION",
    "ApiError",
    "Guard",
    "KubeApi",
    "KubeConfigError",
    "LeaseRecord",
    "MayWrite",
    "NodeAllocatable",
    "NotLeading",
    "Scale",
    "retry_delay",
    "scrape_held_requests",
    "scrape_pod",
]

CRD_GROUP, CRD_VERSION, CRD_PLURAL = "rscore.dev", "v1alpha1", "scoringautoscalers"
MERGE_PATCH = "application/merge-patch+json"
RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})

# Kinds whose resource name is known without asking discovery (as the HPA's REST mapper
# would answer); anything else is looked up in /apis/{group}/{version}.
WELL_KNOWN_RESOURCES = {
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "ReplicaSet"): "replicasets",
    ("", "ReplicationController"): "replicationcontrollers",
    ("cluster.x-k8s.io", "MachineDeployment"): "machinedeployments",
    ("cluster.x-k8s.io", "MachineSet"): "machinesets",
}

log = logging.getLogger("rscore.autoscaler")
T = TypeVar("T")


class ApiError(Exception):
    """An API call failed for good (after retries, or at once when not retryable).

    `status` is the HTTP status the API server answered (410 for an expired watch), or
    None when no answer came (a timeout, a dropped connection); `reason` its reason.
    """

    def __init__(
        self, operation: str, status: int | None, message: str, reason: str | None = None
    ) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.status = status
        self.reason = reason


class NotLeading(ApiError):
    """A write was not sent: this controller no longer holds the Lease."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation, None, "not sent: no longer the leader")


class KubeConfigError(Exception):
    """No client could be configured: no kubeconfig and not in a pod, or a bad file."""


MayWrite = Callable[[], bool]  # "still the leader?": asked before every write attempt
Guard = MayWrite | None  # None: always (no election)


@dataclass(frozen=True)
class LeaseRecord:
    """A coordination.k8s.io/v1 Lease's spec, and the resourceVersion it was read at.

    Times are the API's MicroTime strings; holder None is a released (or new) Lease.
    """

    holder: str | None
    lease_duration_s: int | None
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0
    resource_version: str | None = None  # sent back on replace: a 409 if it moved

    @staticmethod
    def from_object(lease: dict[str, Any]) -> LeaseRecord:
        spec, metadata = lease.get("spec") or {}, lease.get("metadata") or {}
        duration = spec.get("leaseDurationSeconds")
        return LeaseRecord(
            holder=spec.get("holderIdentity") or None,
            lease_duration_s=None if duration is None else int(duration),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=metadata.get("resourceVersion"),
        )

    def to_object(self, namespace: str, name: str) -> dict[str, Any]:
        fields = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_s,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }
        metadata = {"name": name, "namespace": namespace}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {key: value for key, value in fields.items() if value is not None},
        }


@dataclass(frozen=True)
class Scale:
    replicas: int  # spec.replicas: what the controller sets
    status_replicas: int  # status.replicas: what exists
    selector: str | None  # status.selector; None if the resource publishes none


@dataclass(frozen=True)
class NodeAllocatable:
    """What a node offers its pods: status.allocatable, None where it says nothing."""

    cpu_millicores: float | None
    memory_bytes: float | None


def retry_delay(
    attempt: int, base_s: float, cap_s: float, retry_after_s: float | None, jitter: float
) -> float:
    """Delay before retry `attempt` (1-based): exponential times `jitter`, or Retry-After."""
    if retry_after_s is not None and not math.isnan(retry_after_s):
        return min(max(retry_after_s, 0.0), cap_s)
    return min(cap_s, base_s * 2.0 ** (attempt - 1)) * jitter


def _status_of(error: BaseException) -> int | None:
    if isinstance(error, ApiException):
        return error.status or None
    return None


def _message_of(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}".strip()
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"


def _reason_of(error: BaseException) -> str | None:
    if isinstance(error, ApiException):
        return error.reason or None
    return type(error).__name__


def _translated(operation: str, error: BaseException) -> ApiError:
    """The library's or aiohttp's failure as our own: callers never see their types."""
    return ApiError(operation, _status_of(error), _message_of(error), _reason_of(error))


def _retry_after(error: BaseException) -> float | None:
    headers = getattr(error, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _read_environment_once(api_client: ApiClient) -> None:
    """kubernetes_asyncio's session trusts the environment: aiohttp then looks for
    ~/.netrc and reads the proxy variables, each on a thread, for every call (two thread
    hops per call, a tenth of the controller's CPU at 1,000 ScoringAutoscalers). The API
    server's proxy is read from the environment once, here (HTTP_PROXY / HTTPS_PROXY for
    the server's scheme, NO_PROXY by host name and domain suffix, as Python's urllib
    reads them: a CIDR entry in NO_PROXY, which kubectl understands, is not, as it was
    not by aiohttp before), and the session stops looking; netrc was never a way to
    authenticate to an API server."""
    rest = api_client.rest_client
    server = yarl.URL(api_client.configuration.host or "")
    if not rest.proxy and server.host:
        proxy = _environment_proxy(server)
        if proxy is not None:  # its credentials, if any, stay in it: aiohttp sends them
            rest.proxy = str(proxy)
    trusting = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        connector=trusting.connector,
        trust_env=False,
        read_bufsize=trusting._read_bufsize,
    )
    trusting.detach()  # its connector (pool and TLS context) now the new session's


def _environment_proxy(server: yarl.URL) -> yarl.URL | None:
    """The proxy the environment names for `server`, or None (none, or NO_PROXY)."""
    assert server.host is not None
    named = urllib.request.getproxies().get(server.scheme)
    if not named or urllib.request.proxy_bypass(server.host):
        return None
    proxy = yarl.URL(named)
    if proxy.scheme != "http":  # what aiohttp can speak to a proxy
        log.warning("the %s proxy %s is not supported; calling the API server directly",
                    proxy.scheme, proxy.with_user(None))  # fmt: skip
        return None
    return proxy


class KubeApi:
    """The controller's view of the API server. One instance per ApiClient."""

    def __init__(
        self,
        api_client: ApiClient,
        metrics: ControllerMetrics,
        *,
        request_timeout_s: float = 5.0,
        attempts: int = 4,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 2.0,
        rng: random.Random | None = None,
        max_concurrent_calls: int = 64,
    ) -> None:
        self.api_client = api_client
        _read_environment_once(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.attempts = attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()
        self._resources: dict[tuple[str, str, str], str] = {}
        # The reconciles' calls (a thousand at a tick's start) take at most this many of
        # the client's connections (kubernetes_asyncio's pool: 100), so that the Lease's
        # calls, which go around this bound, never queue behind a tick's work.
        self._calls = asyncio.Semaphore(max_concurrent_calls)

    @classmethod
    async def connect(
        cls, kubeconfig: Path | None, metrics: ControllerMetrics, **settings: Any
    ) -> KubeApi:
        """A client from the kubeconfig file, or the pod's service account without one;
        KubeConfigError when neither can be used. `close()` it when done."""
        try:
            if kubeconfig is not None:
                api_client = await config.new_client_from_config(config_file=str(kubeconfig))
            else:
                config.load_incluster_config()
                api_client = ApiClient()
        except ConfigException as error:
            raise KubeConfigError(str(error)) from error
        return cls(api_client, metrics, **settings)

    async def close(self) -> None:
        await self.api_client.close()

    async def _retrying(
        self, operation: str, call: Callable[[], Awaitable[T]], guard: Guard = None
    ) -> T:
        """`call()` with retries; a write's `guard` (still the leader?) is asked before
        every attempt, so that a retry never lands after the Lease is lost."""
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._calls:
                    if guard is not None and not guard():  # asked once a connection is ours
                        raise NotLeading(operation)
                    return await call()
            except (ApiException, TimeoutError, aiohttp.ClientError) as error:
                status = self._count(operation, error)
                retryable = status is None or status in RETRYABLE_STATUS
                if not retryable or attempt == self.attempts:
                    raise _translated(operation, error) from error
                delay = retry_delay(
                    attempt,
                    self.backoff_base_s,
                    self.backoff_cap_s,
                    _retry_after(error),
                    self._rng.uniform(0.5, 1.0),
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _count(self, operation: str, error: BaseException) -> int | None:
        """Count a failed call by its status (or the exception's name); its status."""
        status = _status_of(error)
        code = str(status) if status else type(error).__name__
        self.metrics.api_errors.labels(operation, code).inc()
        return status

    async def _once(self, operation: str, call: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """`call()` once, bounded by `timeout_s`; any failure raised as `ApiError`."""
        try:
            async with asyncio.timeout(timeout_s):
                return await call()
        except (ApiException, TimeoutError, aiohttp.ClientError) as error:
            self._count(operation, error)
            raise _translated(operation, error) from error

    async def _core(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        answer: bool = True,
    ) -> Any:
        """The call's JSON answer as a dict; with `answer=False`, None (the body is read
        but not decoded: a status patch answers with the whole object, demand profile
        included, which no one reads). A non-2xx is raised as the library's
        ApiException either way."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        response = await self.api_client.call_api(
            path,
            method,
            query_params=query or [],
            header_params=headers,
            body=body,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=answer,
            _request_timeout=self.request_timeout_s,
        )
        if answer:
            return response
        data = await response.read()
        if not 200 <= response.status <= 299:  # as the library raises it
            error = ApiException(status=response.status, reason=response.reason)
            error.body, error.headers = data, response.headers
            raise error
        return None

    # --- discovery ---------------------------------------------------------------------

    async def resource_for(self, target: TargetRef) -> str:
        """The plural resource name of `target`'s kind: well-known table, else discovery."""
        key = (target.group, target.version, target.kind)
        if key in self._resources:
            return self._resources[key]
        known = WELL_KNOWN_RESOURCES.get((target.group, target.kind))
        if known is None:
            path = f"/apis/{target.api_version}" if target.group else f"/api/{target.version}"
            listing = await self._retrying("discovery", lambda: self._core("GET", path))
            for resource in listing.get("resources", []):
                if resource.get("kind") == target.kind and "/" not in resource.get("name", "/"):
                    known = resource["name"]
                    break
            if known is None:
                raise ApiError("discovery", 404, f"no resource of kind {target.kind} in {path}")
        self._resources[key] = known
        return known

    # --- /scale --------------------------------------------------------------------------

    async def _scale_path(self, namespace: str, target: TargetRef) -> str:
        plural = await self.resource_for(target)
        group = f"/apis/{target.api_version}" if target.group else f"/api/{target.version}"
        return f"{group}/namespaces/{namespace}/{plural}/{target.name}/scale"

    async def get_scale(self, namespace: str, target: TargetRef) -> Scale:
        path = await self._scale_path(namespace, target)
        scale = await self._retrying("get_scale", lambda: self._core("GET", path))
        spec, status = scale.get("spec") or {}, scale.get("status") or {}
        return Scale(
            replicas=int(spec.get("replicas") or 0),
            status_replicas=int(status.get("replicas") or 0),
            selector=status.get("selector") or None,
        )

    async def patch_scale(
        self, namespace: str, target: TargetRef, replicas: int, *, guard: Guard = None
    ) -> None:
        path = await self._scale_path(namespace, target)
        body = {"spec": {"replicas": replicas}}
        await self._retrying(
            "patch_scale",
            lambda: self._core("PATCH", path, body=body, content_type=MERGE_PATCH),
            guard,
        )

    # --- pods, their metrics, nodes --------------------------------------------------------

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listing = await self._retrying(
            "list_pods",
            lambda: self._core(
                "GET",
                f"/api/v1/namespaces/{namespace}/pods",
                query=[("labelSelector", selector)],
            ),
        )
        return list(listing.get("items") or [])

    @staticmethod
    def _pods_path(namespace: str | None) -> str:
        return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"

    async def list_pods_versioned(
        self, namespace: str | None, selector: str | None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every pod (of `namespace`, else of the cluster; matching `selector`, else all)
        as plain dicts, and the list's resourceVersion to watch from."""
        query = [("labelSelector", selector)] if selector else []
        listing = await self._retrying(
            "list_pods", lambda: self._core("GET", self._pods_path(namespace), query=query)
        )
        version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        return list(listing.get("items") or []), version

    async def watch_pods(
        self, namespace: str | None, selector: str | None, resource_version: str, timeout_s: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, pod) from `resource_version` until the server ends the watch;
        ApiError as `watch_autoscalers`. Pods stay plain dicts (never the library's
        V1Pod models, whose building would cost more than the whole tick)."""
        path = self._pods_path(namespace)

        async def request(**kwargs: Any) -> Any:  # no docstring: Watch keeps the JSON
            query: list[tuple[str, Any]] = [
                ("watch", "true"),
                ("resourceVersion", kwargs["resource_version"]),
                ("timeoutSeconds", kwargs["timeout_seconds"]),
                ("allowWatchBookmarks", "true"),
            ]
            if selector:
                query.append(("labelSelector", selector))
            return await self.api_client.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(
                    sock_connect=self.request_timeout_s, sock_read=timeout_s + 10
                ),
            )

        async for kind, obj in _stream(
            "watch_pods", request, resource_version=resource_version, timeout_seconds=timeout_s
        ):
            yield kind, obj

    async def list_pod_usage(self, namespace: str, selector: str) -> dict[str, PodUsage]:
        """CPU and memory per pod from metrics.k8s.io; {} when the metrics API is absent."""
        try:
            listing = await self._retrying(
                "list_pod_metrics",
                lambda: self.custom.list_namespaced_custom_object(
                    "metrics.k8s.io",
                    "v1beta1",
                    namespace,
                    "pods",
                    label_selector=selector,
                    _request_timeout=self.request_timeout_s,
                ),
            )
        except ApiError as error:
            if error.status in (404, 503):  # no metrics-server: CPU/memory are missing
                return {}
            raise
        usage = {}
        for item in listing.get("items") or []:
            name = (item.get("metadata") or {}).get("name")
            if name:
                usage[name] = pod_usage(item)
        return usage

    async def node_allocatable(self, node_name: str) -> NodeAllocatable:
        node = await self._retrying(
            "get_node", lambda: self._core("GET", f"/api/v1/nodes/{node_name}")
        )
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        cpu, memory = allocatable.get("cpu"), allocatable.get("memory")
        return NodeAllocatable(
            None if cpu is None else cpu_millicores(cpu),
            None if memory is None else memory_bytes(memory),
        )

    # --- the ScoringAutoscaler itself ------------------------------------------------------

    async def list_autoscalers(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        if namespace:
            listing = await self._retrying(
                "list_autoscalers",
                lambda: self.custom.list_namespaced_custom_object(
                    CRD_GROUP,
                    CRD_VERSION,
                    namespace,
                    CRD_PLURAL,
                    _request_timeout=self.request_timeout_s,
                ),
            )
        else:
            listing = await self._retrying(
                "list_autoscalers",
                lambda: self.custom.list_cluster_custom_object(
                    CRD_GROUP, CRD_VERSION, CRD_PLURAL, _request_timeout=self.request_timeout_s
                ),
            )
        version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        return list(listing.get("items") or []), version

    async def watch_autoscalers(
        self, namespace: str | None, resource_version: str, timeout_s: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) until the server ends the watch; ApiError on a failure
        (status 410 when the resourceVersion has expired, None when the stream dropped)."""
        args: dict[str, Any] = {
            "resource_version": resource_version,
            "timeout_seconds": timeout_s,
            "allow_watch_bookmarks": True,
            # the client-side read timeout must outlast the server's own timeout
            "_request_timeout": aiohttp.ClientTimeout(
                sock_connect=self.request_timeout_s, sock_read=timeout_s + 10
            ),
        }
        if namespace:
            function: Callable[..., Any] = self.custom.list_namespaced_custom_object
            positional: tuple[str, ...] = (CRD_GROUP, CRD_VERSION, namespace, CRD_PLURAL)
        else:
            function = self.custom.list_cluster_custom_object
            positional = (CRD_GROUP, CRD_VERSION, CRD_PLURAL)
        async for kind, obj in _stream("watch_autoscalers", function, *positional, **args):
            yield kind, obj

    async def patch_status(
        self, namespace: str, name: str, body: dict[str, Any], *, guard: Guard = None
    ) -> None:
        path = f"/apis/{CRD_GROUP}/{CRD_VERSION}/namespaces/{namespace}/{CRD_PLURAL}/{name}/status"
        await self._retrying(
            "patch_status",
            lambda: self._core("PATCH", path, body=body, content_type=MERGE_PATCH, answer=False),
            guard,
        )

    async def create_event(
        self, namespace: str, body: dict[str, Any], *, guard: Guard = None
    ) -> None:
        await self._retrying(
            "create_event",
            lambda: self._core(
                "POST",
                f"/api/v1/namespaces/{namespace}/events",
                body=body,
                content_type="application/json",
            ),
            guard,
        )

    # --- the Lease of the leader election (rscore.autoscaler.leader) ----------------------------
    # One attempt each, bounded by the caller's timeout: the election retries on its own
    # cadence and must know at once that a renewal failed.

    @staticmethod
    def _lease_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return path if name is None else f"{path}/{name}"

    async def read_lease(
        self, namespace: str, name: str, *, timeout_s: float
    ) -> LeaseRecord | None:
        """The Lease, or None if there is none yet."""
        try:
            lease = await self._once(
                "read_lease",
                lambda: self._core("GET", self._lease_path(namespace, name)),
                timeout_s,
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return LeaseRecord.from_object(lease)

    async def create_lease(
        self, namespace: str, name: str, record: LeaseRecord, *, timeout_s: float
    ) -> LeaseRecord:
        """Create the Lease (a 409 if another candidate created it first); as stored."""
        path = self._lease_path(namespace)
        body = record.to_object(namespace, name)
        return await self._write_lease("create_lease", "POST", path, body, timeout_s)

    async def replace_lease(
        self, namespace: str, name: str, record: LeaseRecord, *, timeout_s: float
    ) -> LeaseRecord:
        """Replace the Lease at `record.resource_version` (a 409 if it moved); as stored."""
        path = self._lease_path(namespace, name)
        body = record.to_object(namespace, name)
        return await self._write_lease("replace_lease", "PUT", path, body, timeout_s)

    async def _write_lease(
        self, operation: str, method: str, path: str, body: dict[str, Any], timeout_s: float
    ) -> LeaseRecord:
        lease = await self._once(
            operation,
            lambda: self._core(method, path, body=body, content_type="application/json"),
            timeout_s,
        )
        return LeaseRecord.from_object(lease)


async def _stream(
    operation: str, function: Callable[..., Any], *positional: Any, **args: Any
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The events of one watch request, as (type, object as a dict)."""

    async def request(*a: Any, **k: Any) -> Any:
        # No docstring: the library reads a call's return type from its docstring, and
        # would turn every event's JSON into that type (for a dict, dumps and loads
        # again): the raw object is all we read.
        return await function(*a, **k)

    try:
        async with Watch() as watch:
            async for event in watch.stream(request, *positional, **args):
                yield event["type"], event["raw_object"]
    except (ApiException, TimeoutError, aiohttp.ClientError) as error:
        raise _translated(operation, error) from error


async def scrape_pod(
    session: aiohttp.ClientSession, url: str, timeout_s: float, clock: Callable[[], float]
) -> PodScrape:
    """GET one pod's /metrics, stamped by `clock` on arrival; ScrapeError on any failure.

    The stamp is taken when the page is in, not when the tick began, so a slow pod's
    counter is divided by the time that really passed.
    """
    return parse_pod_metrics(await _metrics_page(session, url, timeout_s), clock())


async def scrape_held_requests(session: aiohttp.ClientSession, url: str, timeout_s: float) -> float:
    """GET one activator pod's /metrics: the requests it holds; ScrapeError on any failure."""
    return held_requests(await _metrics_page(session, url, timeout_s))


@functools.lru_cache(maxsize=1 << 16)
def _parsed_url(url: str) -> yarl.URL:
    """A pod's metrics URL, parsed once (it is the same every tick)."""
    return yarl.URL(url, encoded=True)


@functools.lru_cache(maxsize=64)
def _timeout(total_s: float) -> aiohttp.ClientTimeout:
    """A scrape's timeout, made once per value (it is the same for every scrape)."""
    return aiohttp.ClientTimeout(total=total_s)


async def _metrics_page(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str:
    """The text of a /metrics page; ScrapeError on a failed request or a non-200."""
    try:
        async with session.get(_parsed_url(url), timeout=_timeout(timeout_s)) as response:
            if response.status != 200:
                raise ScrapeError(f"{url} answered {response.status}")
            return await response.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ScrapeError(f"{url}: {_message_of(error)}") from error
