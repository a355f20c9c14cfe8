"""Every Kubernetes API call the controller makes, and the scrape of pods' /metrics.

The only module that talks to the network. Calls go through the real kubernetes_asyncio
client: custom objects (ScoringAutoscalers, `/scale` of any group, PodMetrics) through
`CustomObjectsApi`, core resources and discovery through its `ApiClient`. Patches name
their content type (merge patch): the client would send a dict as a JSON patch, which
a real API server rejects. Transient failures (409, 429, 5xx, timeouts, dropped
connections) are retried here with capped exponential backoff; what still fails is
raised as `ApiError` for the caller to report. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from autoscaler.metrics import ControllerMetrics
from autoscaler.observe import PodUsage, pod_usage
from autoscaler.quantity import cpu_millicores
from autoscaler.scrape import PodScrape, ScrapeError, parse_pod_metrics
from autoscaler.spec import TargetRef
from autoscaler.unrouted import held_requests

__all__ = [
    "CRD_GROUP",
    "CRD_PLURAL",
    "CRD_VERSION",
    "ApiError",
    "KubeApi",
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

T = TypeVar("T")


class ApiError(Exception):
    """An API call failed for good (after retries, or at once when not retryable)."""

    def __init__(self, operation: str, status: int | None, message: str) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.status = status


class NotLeading(ApiError):
    """A write was not sent: this controller no longer holds the Lease."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation, None, "not sent: no longer the leader")


Guard = Callable[[], bool] | None


@dataclass(frozen=True)
class Scale:
    replicas: int  # spec.replicas: what the controller sets
    status_replicas: int  # status.replicas: what exists
    selector: str | None  # status.selector; None if the resource publishes none


def retry_delay(
    attempt: int, base_s: float, cap_s: float, retry_after_s: float | None, jitter: float
) -> float:
    """Delay before retry `attempt` (1-based): exponential times `jitter`, or Retry-After."""
    if retry_after_s is not None and not math.isnan(retry_after_s):
        return min(max(retry_after_s, 0.0), cap_s)
    return min(cap_s, base_s * 2 ** (attempt - 1)) * jitter


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


def _retry_after(error: BaseException) -> float | None:
    headers = getattr(error, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


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
    ) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.attempts = attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()
        self._resources: dict[tuple[str, str, str], str] = {}

    async def _retrying(
        self, operation: str, call: Callable[[], Awaitable[T]], guard: Guard = None
    ) -> T:
        """`call()` with retries; a write's `guard` (still the leader?) is asked before
        every attempt, so that a retry never lands after the Lease is lost."""
        for attempt in range(1, self.attempts + 1):
            if guard is not None and not guard():
                raise NotLeading(operation)
            try:
                return await call()
            except (ApiException, TimeoutError, aiohttp.ClientError) as error:
                status = _status_of(error)
                code = str(status) if status else type(error).__name__
                self.metrics.api_errors.labels(operation, code).inc()
                retryable = status is None or status in RETRYABLE_STATUS
                if not retryable or attempt == self.attempts:
                    raise ApiError(operation, status, _message_of(error)) from error
                delay = retry_delay(
                    attempt,
                    self.backoff_base_s,
                    self.backoff_cap_s,
                    _retry_after(error),
                    self._rng.uniform(0.5, 1.0),
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _core(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return await self.api_client.call_api(
            path,
            method,
            query_params=query or [],
            header_params=headers,
            body=body,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _request_timeout=self.request_timeout_s,
        )

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

    async def _scale_path(self, namespace: str, target: TargetRef) -> tuple[str, str]:
        plural = await self.resource_for(target)
        return plural, f"/api/v1/namespaces/{namespace}/{plural}/{target.name}/scale"

    async def get_scale(self, namespace: str, target: TargetRef) -> Scale:
        plural, core_path = await self._scale_path(namespace, target)
        if target.group:
            scale = await self._retrying(
                "get_scale",
                lambda: self.custom.get_namespaced_custom_object_scale(
                    target.group,
                    target.version,
                    namespace,
                    plural,
                    target.name,
                    _request_timeout=self.request_timeout_s,
                ),
            )
        else:
            scale = await self._retrying("get_scale", lambda: self._core("GET", core_path))
        spec, status = scale.get("spec") or {}, scale.get("status") or {}
        return Scale(
            replicas=int(spec.get("replicas") or 0),
            status_replicas=int(status.get("replicas") or 0),
            selector=status.get("selector") or None,
        )

    async def patch_scale(
        self, namespace: str, target: TargetRef, replicas: int, *, guard: Guard = None
    ) -> None:
        plural, core_path = await self._scale_path(namespace, target)
        body = {"spec": {"replicas": replicas}}
        if target.group:
            await self._retrying(
                "patch_scale",
                lambda: self.custom.patch_namespaced_custom_object_scale(
                    target.group,
                    target.version,
                    namespace,
                    plural,
                    target.name,
                    body,
                    _content_type=MERGE_PATCH,
                    _request_timeout=self.request_timeout_s,
                ),
                guard,
            )
        else:
            await self._retrying(
                "patch_scale",
                lambda: self._core("PATCH", core_path, body=body, content_type=MERGE_PATCH),
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

    async def node_allocatable_cpu(self, node_name: str) -> float | None:
        node = await self._retrying(
            "get_node", lambda: self._core("GET", f"/api/v1/nodes/{node_name}")
        )
        cpu = ((node.get("status") or {}).get("allocatable") or {}).get("cpu")
        return None if cpu is None else cpu_millicores(cpu)

    # --- the ScoringAutoscaler itself ------------------------------------------------------

    async def list_autoscalers(self, namespace: str | None) -> tuple[list[dict], str]:
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
        """(event type, object) until the server ends the watch; raises ApiException (410)."""
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
        async with Watch() as watch:
            async for event in watch.stream(function, *positional, **args):
                yield event["type"], event["raw_object"]

    async def patch_status(
        self, namespace: str, name: str, body: dict[str, Any], *, guard: Guard = None
    ) -> None:
        await self._retrying(
            "patch_status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                CRD_GROUP,
                CRD_VERSION,
                namespace,
                CRD_PLURAL,
                name,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=self.request_timeout_s,
            ),
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


async def _metrics_page(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str:
    """The text of a /metrics page; ScrapeError on a failed request or a non-200."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                raise ScrapeError(f"{url} answered {response.status}")
            return await response.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ScrapeError(f"{url}: {_message_of(error)}") from error
