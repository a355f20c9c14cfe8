"""An emulated Kubernetes API server for end-to-end tests of the autoscaler controller.

A real aiohttp HTTP server that the real kubernetes_asyncio client talks to (through a
kubeconfig written by `KubeEmulator.write_kubeconfig`). It emulates only what the
controller uses, faithfully as to paths, verbs, content types, status codes and `Status`
bodies:

- discovery: /api, /api/v1, /apis, /apis/{group}, /apis/{group}/{version}, /version;
- apps/v1 deployments and statefulsets (+ /status, /scale), rscore.dev/v1alpha1
  scoringautoscalers (+ /status), cluster.x-k8s.io/v1beta1 machinedeployments (+ /status,
  /scale), metrics.k8s.io/v1beta1 pods and nodes (read-only, seeded by tests),
  coordination.k8s.io/v1 leases, events.k8s.io/v1 events, core v1 pods, nodes, events,
  namespaces;
- get, list (labelSelector, fieldSelector, limit/continue), create, replace (optimistic
  concurrency), patch (merge, strategic-merge for built-in groups, JSON patch), delete,
  and watch (history window, 410 Expired, bookmarks, timeoutSeconds);
- fault injection (`fail`, `delay`), a record of every request (`requests`, `writes`).

No controllers run inside it: changing a Deployment's replicas creates no pods, nothing
is garbage-collected, namespaces need not exist, admission is absent.

This is test scaffolding. It has no real authentication, authorization or persistence
and must never be used as, or in place of, an API server outside tests (never in
production, never reachable from a network).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from aiohttp import web

JSON = dict[str, Any]
Key = tuple[str, str, str, str, str]  # group, version, resource, namespace, name

READ_ONLY_VERBS = ["get", "list"]
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SUB_VERBS = ["get", "patch", "update"]
BUILTIN_GROUPS = {"", "apps", "coordination.k8s.io", "events.k8s.io", "metrics.k8s.io"}
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
NO_RESOURCE = "the server could not find the requested resource"
NOT_ALLOWED = "the server does not allow this method on the requested resource"
VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-emulated",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    read_only: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def singular(self) -> str:
        return "" if self.read_only else self.kind.lower()


_R, _SCALE = ResourceType, ("scale", "status")
RESOURCES = [
    _R("", "v1", "pods", "Pod", subresources=("status",)),
    _R("", "v1", "nodes", "Node", namespaced=False, subresources=("status",)),
    _R("", "v1", "events", "Event"),
    _R("", "v1", "namespaces", "Namespace", namespaced=False),
    _R("apps", "v1", "deployments", "Deployment", subresources=_SCALE),
    _R("apps", "v1", "statefulsets", "StatefulSet", subresources=_SCALE),
    _R("rscore.dev", "v1alpha1", "scoringautoscalers", "ScoringAutoscaler", True, ("status",)),
    _R("cluster.x-k8s.io", "v1beta1", "machinedeployments", "MachineDeployment", True, _SCALE),
    _R("metrics.k8s.io", "v1beta1", "pods", "PodMetrics", read_only=True),
    _R("metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", namespaced=False, read_only=True),
    _R("coordination.k8s.io", "v1", "leases", "Lease"),
    _R("events.k8s.io", "v1", "events", "Event"),
]
BY_PATH = {(r.group, r.version, r.resource): r for r in RESOURCES}
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}


class ApiError(Exception):
    """Answered as a `Status` body with this code."""

    def __init__(self, code: int, message: str, reason: str | None = None, **details: Any):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers: dict[str, str] = {}


class _Reset(Exception):
    """A fault rule drops the connection instead of answering."""


def status_body(code: int, message: str, reason: str, details: JSON | None = None) -> JSON:
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, f'{rt.group_resource} "{name}" not found', name=name, group=rt.group, kind=rt.resource
    )


def _conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {rt.group_resource} "{name}": the '
        "object has been modified; please apply your changes to the latest version "
        "and try again",
        name=name,
        group=rt.group,
        kind=rt.resource,
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- selectors and patches

_REQ = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=|\s+in\s+|\s+notin\s+)\s*(.*?))?\s*$")


def parse_label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Equality- and set-based label selectors (`a=b,c!=d,e in (f,g),h notin (i),j,!k`)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in (t for t in terms if t.strip()):
        m = _REQ.match(term)
        if not m or (m.group(1) and m.group(3)):
            raise ApiError(400, f"unable to parse requirement: invalid label selector {term!r}")
        neg, key, op, value = m.group(1), m.group(2), (m.group(3) or "").strip(), m.group(4)
        if op in ("in", "notin"):
            if not (value.startswith("(") and value.endswith(")")):
                raise ApiError(400, f"unable to parse requirement: {term!r}: expected ( values )")
            vals = {v.strip() for v in value[1:-1].split(",")}
            inside = op == "in"
            checks.append(lambda labels, k=key, vs=vals, i=inside: (labels.get(k) in vs) == i)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        else:
            checks.append(lambda labels, k=key, n=bool(neg): (k in labels) != n)
    return lambda labels: all(check(labels) for check in checks)


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def parse_field_selector(text: str) -> Callable[[JSON], bool]:
    checks: list[Callable[[JSON], bool]] = []
    for term in (t.strip() for t in text.split(",") if t.strip()):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ApiError(400, f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        want = op != "!="
        checks.append(lambda o, p=path, v=value, w=want: (str(_dig(o, p) or "") == v) == w)
    return lambda obj: all(check(obj) for check in checks)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (lists are replaced, null deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key == "$patch":
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(doc: Any, pointer: str) -> tuple[Any, str | int]:
    """The container and key a JSON pointer names (RFC 6901)."""
    if not pointer.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {pointer!r}")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    last = parts[-1]
    if isinstance(doc, list):
        return doc, (len(doc) if last == "-" else int(last))
    if not isinstance(doc, dict):
        raise KeyError(pointer)
    return doc, last


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list) or not all(isinstance(o, dict) and "op" in o for o in ops):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    try:
        for op in ops:
            kind, path = op["op"], op.get("path", "")
            if kind in ("move", "copy"):
                src, skey = _pointer(doc, op["from"])
                value = copy.deepcopy(src[skey])
                if kind == "move":
                    del src[skey]
                kind = "add"
            else:
                value = op.get("value")
            container, key = _pointer(doc, path)
            if kind == "add":
                if isinstance(container, list):
                    container.insert(key, copy.deepcopy(value))  # type: ignore[arg-type]
                else:
                    container[key] = copy.deepcopy(value)
            elif kind == "remove":
                del container[key]
            elif kind == "replace":
                if isinstance(container, dict) and key not in container:
                    raise KeyError(path)
                container[key] = copy.deepcopy(value)
            elif kind == "test":
                if container[key] != value:
                    raise ApiError(422, f"testing value {path} failed: test failed")
            else:
                raise ApiError(400, f"Unexpected kind: {kind}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, f"json patch failed: missing path or bad index: {exc}") from exc
    return doc


def selector_string(selector: Any) -> str:
    """A LabelSelector (matchLabels/matchExpressions) as its string form."""
    if isinstance(selector, str):
        return selector
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op in ("In", "NotIn"):
            parts.append(f"{key} {op.lower()} ({','.join(sorted(values))})")
        else:
            parts.append(key if op == "Exists" else f"!{key}")
    return ",".join(parts)


def _validate_core_event(body: JSON, ns: str) -> None:
    """kube-apiserver's checks of a core/v1 Event on create (legacyValidateEvent)."""
    meta = body.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or ""
    involved_ns = (body.get("involvedObject") or {}).get("namespace") or ""
    errors: list[str] = []
    if not body.get("eventTime"):
        if (involved_ns != ns) if involved_ns else (ns not in ("", "default")):
            errors.append(
                f'involvedObject.namespace: Invalid value: "{involved_ns}": '
                "does not match event.namespace"
            )
    else:
        if not involved_ns and ns not in ("default", "kube-system"):
            errors.append(
                f'involvedObject.namespace: Invalid value: "{involved_ns}": '
                "does not match event.namespace"
            )
        for required in ("reportingComponent", "reportingInstance", "action", "reason"):
            if not body.get(required):
                errors.append(f"{required}: Required value")
    if errors:
        raise ApiError(422, f'Event "{name}" is invalid: [{", ".join(errors)}]', kind="Event")


# ---------------------------------------------------------------- records


class _Route(NamedTuple):
    rt: ResourceType | None = None
    ns: str | None = None
    name: str | None = None
    sub: str | None = None
    answer: JSON | None = None  # a discovery document


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any
    status: int = 0
    watch: bool = False
    user: str | None = None  # the bearer token, to tell clients apart
    at: float = 0.0  # when it came in, on the event loop's clock (fake time in some tests)


@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    times: int | None
    status: int = 0
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    seconds: float = 0.0
    watch: bool | None = None
    reset: bool = False  # drop the connection without an answer

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (
            self.times != 0
            and self.method in ("*", method)
            and self.path.search(path) is not None
            and self.watch in (None, watch)
        )

    def consume(self) -> None:
        if self.times is not None:
            self.times -= 1


@dataclass
class _Event:
    rv: int
    type: str
    rt: ResourceType
    obj: JSON | None  # the new state (None for DELETED)
    old: JSON | None  # the previous state (None for ADDED)


@dataclass(eq=False)
class _Watcher:
    queue: asyncio.Queue[_Event | bool | bytes] = field(default_factory=asyncio.Queue)


# ---------------------------------------------------------------- the emulator


class KubeEmulator:
    """`async with KubeEmulator() as emu:` serves on 127.0.0.1:<ephemeral port>."""

    def __init__(
        self,
        *,
        token: str | None = None,
        history_window: int = 10_000,
        bookmark_interval: float = 1.0,
        default_watch_timeout: float = 1800.0,
        namespaces: Iterable[str] = ("default", "kube-system"),
    ) -> None:
        self.token = token
        self.history_window = history_window
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._store: dict[Key, JSON] = {}
        self._rv = 0
        self._compacted_rv = 0
        self._history: deque[_Event] = deque()
        self._watchers: dict[_Watcher, web.BaseRequest] = {}
        self._rules: list[_Rule] = []
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        for ns in namespaces:
            self.put_object(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                }
            )

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> KubeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self._closing.set()
        await self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(
        self, path: str | Path, namespace: str = "default", token: str | None = None
    ) -> Path:
        """A kubeconfig for `kubernetes_asyncio.config.load_kube_config(config_file=...)`.

        `token` (without a server token, accepted as any) tells clients apart in
        `requests` (their `user`)."""
        token = token or self.token
        user: JSON = {"token": token} if token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        return path

    # ------------------------------------------------------------ test controls

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int | None = 1,
        reason: str | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        watch: bool | None = None,
    ) -> None:
        """Answer the next `times` (None: all) matching requests with a Status of `status`.

        `method` is an HTTP method or "*"; `path_regex` is searched in the URL path;
        `watch` restricts the rule to watch (True) or non-watch (False) requests.
        429 and 503 carry Retry-After (`retry_after`, default 1 s).
        """
        if retry_after is None and status in (429, 503):
            retry_after = 1
        self._rules.append(
            _Rule(
                method.upper(),
                re.compile(path_regex),
                times,
                status,
                reason,
                message,
                retry_after,
                watch=watch,
            )
        )

    def delay(
        self,
        method: str,
        path_regex: str,
        seconds: float,
        times: int | None = 1,
        watch: bool | None = None,
    ) -> None:
        """Hold the next `times` matching requests for `seconds` before answering."""
        self._rules.append(
            _Rule(method.upper(), re.compile(path_regex), times, seconds=seconds, watch=watch)
        )

    def reset(
        self, method: str, path_regex: str, times: int | None = 1, watch: bool | None = None
    ) -> None:
        """Drop the connection of the next `times` matching requests, answering nothing."""
        self._rules.append(
            _Rule(method.upper(), re.compile(path_regex), times, watch=watch, reset=True)
        )

    def clear_faults(self) -> None:
        self._rules.clear()

    def writes(self, path_regex: str = "") -> list[RecordedRequest]:
        """The recorded POST/PUT/PATCH/DELETE requests whose path matches."""
        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and pattern.search(r.path)
        ]

    def compact(self) -> None:
        """Drop the watch history: a watch from any resourceVersion older than now gets 410."""
        self._history.clear()
        self._compacted_rv = self._rv

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    async def drop_watches(self, abrupt: bool = False) -> int:
        """Close every open watch: cleanly (end of stream) or abruptly (connection reset)."""
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.queue.put_nowait(abrupt)
        for _ in range(100):
            if not any(w in self._watchers for w in watchers):
                break
            await asyncio.sleep(0.01)
        return len(watchers)

    def open_watches_on(self, path_regex: str) -> int:
        """Open watches whose path matches `path_regex` (say, of one resource)."""
        return sum(1 for r in self._watchers.values() if re.search(path_regex, r.path))

    def send_raw_watch_line(self, line: bytes) -> int:
        """Write `line` as is to every open watch (a corrupted or truncated stream)."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(line)
        return len(self._watchers)

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # ------------------------------------------------------------ seeding

    def put_object(self, obj: JSON) -> JSON:
        """Store a full object as is (status included), creating or overwriting it."""
        rt = self._type_of(obj)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = self._key(rt, meta.get("namespace", ""), meta["name"])
        old = self._store.get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault(
            "creationTimestamp", old["metadata"]["creationTimestamp"] if old else _now()
        )
        if not rt.read_only:
            meta.setdefault("generation", 1)
        self._commit(rt, key, obj, old)
        return copy.deepcopy(obj)

    def get_object(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> JSON | None:
        rt = BY_KIND[(api_version, kind)]
        obj = self._store.get(self._key(rt, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JSON]:
        rt = BY_KIND[(api_version, kind)]
        return [
            copy.deepcopy(o)
            for k, o in sorted(self._store.items())
            if k[:3] == self._key(rt, "", "")[:3] and namespace in (None, k[3])
        ]

    def delete_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        rt = BY_KIND[(api_version, kind)]
        key = self._key(rt, namespace or "", name)
        if key not in self._store:
            return False
        self._remove(rt, key)
        return True

    def set_pod_ready(
        self, ns: str, name: str, ready: bool = True, pod_ip: str = "10.0.0.1"
    ) -> JSON:
        """Mark a stored Pod Running with `pod_ip`, its Ready condition `ready`."""
        pod = self.get_object("v1", "Pod", ns, name)
        if pod is None:
            raise KeyError(f"pod {ns}/{name} not stored")
        flag = "True" if ready else "False"
        status = pod.setdefault("status", {})
        status.update(phase="Running", podIP=pod_ip, podIPs=[{"ip": pod_ip}])
        status["conditions"] = [
            {
                "type": t,
                "status": flag if t != "PodScheduled" else "True",
                "lastTransitionTime": _now(),
            }
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        return self.put_object(pod)

    def make_pod(
        self,
        name: str,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        ready: bool | None = None,
        pod_ip: str = "10.0.0.1",
    ) -> JSON:
        """A Pending Pod; Running and Ready/unready too when `ready` is given."""
        self.put_object(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                "spec": {"containers": [{"name": "main", "image": "rscore:test"}]},
                "status": {"phase": "Pending"},
            }
        )
        if ready is None:
            return self.get_object("v1", "Pod", namespace, name) or {}
        return self.set_pod_ready(namespace, name, ready, pod_ip)

    def make_scoring_autoscaler(self, name: str, namespace: str = "default", **spec: Any) -> JSON:
        """A ScoringAutoscaler of the Deployment `name`, with these spec fields."""
        return self.put_object(
            {
                "apiVersion": "rscore.dev/v1alpha1",
                "kind": "ScoringAutoscaler",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    **spec,
                },
            }
        )

    def make_deployment(
        self,
        name: str,
        namespace: str = "default",
        replicas: int = 1,
        match_labels: dict[str, str] | None = None,
        ready_replicas: int | None = None,
    ) -> JSON:
        """A Deployment selecting `match_labels` (default app=<name>), status settled."""
        labels = match_labels or {"app": name}
        ready = replicas if ready_replicas is None else ready_replicas
        return self.put_object(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": dict(labels)},
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {"containers": [{"name": "main", "image": "rscore:test"}]},
                    },
                },
                "status": {
                    "observedGeneration": 1,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                },
            }
        )

    def make_pod_metrics(
        self,
        name: str,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        containers: dict[str, tuple[str, str]] | None = None,
    ) -> JSON:
        """A PodMetrics; `containers`: container name -> (cpu, memory), e.g. ("250m", "200Mi")."""
        containers = containers or {"main": ("250m", "200Mi")}
        return self.put_object(
            {
                "apiVersion": "metrics.k8s.io/v1beta1",
                "kind": "PodMetrics",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                "timestamp": _now(),
                "window": "15s",
                "containers": [
                    {"name": c, "usage": {"cpu": cpu, "memory": mem}}
                    for c, (cpu, mem) in containers.items()
                ],
            }
        )

    # ------------------------------------------------------------ store internals

    @staticmethod
    def _type_of(obj: JSON) -> ResourceType:
        try:
            return BY_KIND[(obj["apiVersion"], obj["kind"])]
        except KeyError:
            raise ValueError(
                f"unknown apiVersion/kind in {obj.get('apiVersion')}/{obj.get('kind')}"
            ) from None

    @staticmethod
    def _key(rt: ResourceType, namespace: str, name: str) -> Key:
        return (rt.group, rt.version, rt.resource, namespace if rt.namespaced else "", name)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, event: _Event) -> None:
        self._history.append(event)
        while len(self._history) > self.history_window:
            self._compacted_rv = self._history.popleft().rv
        for watcher in self._watchers:
            watcher.queue.put_nowait(event)

    def _commit(self, rt: ResourceType, key: Key, obj: JSON, old: JSON | None) -> JSON:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        self._store[key] = obj
        self._emit(_Event(rv, "MODIFIED" if old else "ADDED", rt, copy.deepcopy(obj), old))
        return copy.deepcopy(obj)

    def _remove(self, rt: ResourceType, key: Key) -> JSON:
        old = self._store.pop(key)
        rv = self._next_rv()
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(_Event(rv, "DELETED", rt, None, gone))
        return gone

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        watch = query.get("watch") in ("true", "1", "True")
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None if not raw else raw.decode("utf-8", "replace")
        content_type = request.headers.get("Content-Type")
        authorization = request.headers.get("Authorization", "")
        user = (
            authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        )
        record = RecordedRequest(
            request.method,
            request.path,
            query,
            content_type,
            body,
            0,
            watch,
            user,
            at=asyncio.get_running_loop().time(),
        )
        self.requests.append(record)
        try:
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized")
            try:
                await self._apply_rules(request.method, request.path, watch)
            except _Reset:
                record.status = -1  # no answer
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
            if watch:
                record.status = 200
                return await self._watch(request, query)
            code, answer = self._dispatch(request.method, request.path, query, content_type, raw)
        except ApiError as err:
            record.status = err.code
            details = {k: v for k, v in err.details.items() if v is not None}
            return web.json_response(
                status_body(err.code, err.message, err.reason, details),
                status=err.code,
                headers=err.headers,
            )
        record.status = code
        return web.json_response(answer, status=code)

    async def _apply_rules(self, method: str, path: str, watch: bool) -> None:
        for rule in list(self._rules):
            if not rule.matches(method, path, watch):
                continue
            rule.consume()
            if rule.reset:
                raise _Reset
            if rule.seconds:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), rule.seconds)
                continue
            err = ApiError(
                rule.status, rule.message or f"injected failure ({rule.status})", rule.reason
            )
            if rule.retry_after is not None:
                err.headers["Retry-After"] = str(rule.retry_after)
                err.details["retryAfterSeconds"] = rule.retry_after
            raise err

    def _route(self, path: str) -> _Route:
        segs = [s for s in path.split("/") if s]
        if segs == ["version"]:
            return _Route(answer=VERSION)
        if segs[:1] == ["api"]:
            group, version, rest = "", (segs[1] if len(segs) > 1 else None), segs[2:]
            if version is None:
                versions = {"kind": "APIVersions", "versions": ["v1"]}
                return _Route(answer={**versions, "serverAddressByClientCIDRs": []})
        elif segs[:1] == ["apis"]:
            if len(segs) == 1:
                return _Route(
                    answer={"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()}
                )
            group, version, rest = segs[1], (segs[2] if len(segs) > 2 else None), segs[3:]
            if version is None:
                found = [g for g in self._groups() if g["name"] == group]
                if not found:
                    raise ApiError(404, NO_RESOURCE)
                return _Route(answer={"kind": "APIGroup", "apiVersion": "v1", **found[0]})
        else:
            raise ApiError(404, NO_RESOURCE)
        types = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
        if not types:
            raise ApiError(404, NO_RESOURCE)
        if not rest:
            return _Route(answer=self._resource_list(group, version, types))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rt = BY_PATH.get((group, version, rest[0]))
        if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
            raise ApiError(404, NO_RESOURCE)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, NO_RESOURCE)
        if rt.namespaced and namespace is None and name is not None:
            raise ApiError(404, NO_RESOURCE)
        return _Route(rt, namespace, name, sub)

    def _groups(self) -> list[JSON]:
        groups: dict[str, list[str]] = {}
        for r in RESOURCES:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        return [
            {
                "name": g,
                "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
            }
            for g, vs in groups.items()
        ]

    @staticmethod
    def _resource_list(group: str, version: str, types: list[ResourceType]) -> JSON:
        resources: list[JSON] = []
        for r in types:
            resources.append(
                {
                    "name": r.resource,
                    "singularName": r.singular,
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": READ_ONLY_VERBS if r.read_only else VERBS,
                }
            )
            for sub in r.subresources:
                entry = {
                    "name": f"{r.resource}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": SUB_VERBS,
                }
                if sub == "scale":
                    entry.update(kind="Scale", group="autoscaling", version="v1")
                resources.append(entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], content_type: str | None, raw: bytes
    ) -> tuple[int, JSON]:
        rt, ns, name, sub, answer = self._route(path)
        if rt is None or answer is not None:
            if method != "GET":
                raise ApiError(405, NOT_ALLOWED)
            return 200, answer or {}
        if rt.read_only and method != "GET":
            raise ApiError(405, NOT_ALLOWED)
        dry_run = query.get("dryRun") == "All"
        if name is None:
            if method == "GET":
                return 200, self._list(rt, ns, query)
            if method == "POST" and (ns is not None or not rt.namespaced):
                return self._create(rt, ns or "", self._json(raw), dry_run)
            raise ApiError(405, NOT_ALLOWED)
        key = self._key(rt, ns or "", name)
        current = self._store.get(key)
        if current is None:
            raise _not_found(rt, name)
        if method == "GET":
            return 200, self._scale_of(rt, current) if sub == "scale" else copy.deepcopy(current)
        if method == "DELETE" and sub is None:
            return self._delete(rt, key, current, self._json(raw) if raw else {}, dry_run)
        if method == "PUT":
            return 200, self._update(rt, key, current, sub, self._json(raw), dry_run)
        if method == "PATCH":
            mime = (content_type or "").split(";")[0].strip().lower()
            base = self._scale_of(rt, current) if sub == "scale" else current
            patched = self._patch(rt, base, mime, raw)
            return 200, self._update(rt, key, current, sub, patched, dry_run, from_patch=True)
        raise ApiError(405, NOT_ALLOWED)

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"couldn't get version/kind; json parse error: {exc}") from exc

    def _list(self, rt: ResourceType, ns: str | None, query: dict[str, str]) -> JSON:
        matches = self._matcher(rt, ns, query)
        items = [
            copy.deepcopy(o)
            for k, o in sorted(self._store.items())
            if k[:3] == (rt.group, rt.version, rt.resource) and matches(o)
        ]
        meta: JSON = {"resourceVersion": str(self._rv)}
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        if limit:
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
                meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    @staticmethod
    def _matcher(rt: ResourceType, ns: str | None, query: dict[str, str]) -> Callable[[JSON], bool]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        return lambda o: (
            (ns is None or o["metadata"].get("namespace") == ns)
            and labels(o["metadata"].get("labels") or {})
            and fields(o)
        )

    def _create(self, rt: ResourceType, ns: str, body: Any, dry_run: bool) -> tuple[int, JSON]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was in an unknown format")
        if rt.group not in BUILTIN_GROUPS and not (body.get("apiVersion") and body.get("kind")):
            raise ApiError(400, "Object 'Kind' is missing in the body of the request")
        if (body.get("apiVersion") or rt.api_version, body.get("kind") or rt.kind) != (
            rt.api_version,
            rt.kind,
        ):
            raise ApiError(
                400,
                f"the API version in the data ({body.get('apiVersion')}) does not match "
                f"the expected API version ({rt.api_version})",
            )
        if (rt.group, rt.kind) == ("", "Event"):
            _validate_core_event(body, ns)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace", ns) != ns:
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request",
                )
            meta["namespace"] = ns
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    f'{rt.kind} "" is invalid: metadata.name: Required value: '
                    "name or generateName is required",
                    kind=rt.kind,
                )
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = self._key(rt, ns, meta["name"])
        if key in self._store:
            raise ApiError(
                409,
                f'{rt.group_resource} "{meta["name"]}" already exists',
                "AlreadyExists",
                name=meta["name"],
                group=rt.group,
                kind=rt.resource,
            )
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if "status" in rt.subresources:
            obj.pop("status", None)
            if rt.kind == "Pod":
                obj["status"] = {"phase": "Pending"}
        if rt.kind in ("Deployment", "StatefulSet"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)
        if dry_run:
            return 201, obj
        return 201, self._commit(rt, key, obj, None)

    def _update(
        self,
        rt: ResourceType,
        key: Key,
        current: JSON,
        sub: str | None,
        body: Any,
        dry_run: bool,
        from_patch: bool = False,
    ) -> JSON:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was in an unknown format")
        name = current["metadata"]["name"]
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sub != "scale" and sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        if sub == "scale":
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise _conflict(rt, name)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ApiError(
                    422,
                    f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid '
                    f"value: {replicas!r}: must be greater than or equal to 0",
                )
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["replicas"] = replicas
        elif sub == "status":
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            if not from_patch and not sent_rv and rt.group not in BUILTIN_GROUPS:
                raise ApiError(
                    422,
                    f'{rt.kind}.{rt.group} "{name}" is invalid: metadata.resourceVersion: '
                    "Invalid value: 0x0: must be specified for an update",
                )
            if (body.get("metadata") or {}).get("name", name) != name:
                raise ApiError(400, "the name of the object does not match the name on the URL")
            new = copy.deepcopy(body)
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
            meta = new.setdefault("metadata", {})
            for immutable in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if immutable in current["metadata"]:
                    meta[immutable] = current["metadata"][immutable]
                else:
                    meta.pop(immutable, None)
            if "status" in rt.subresources:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:  # a no-op write keeps the resourceVersion
            return self._scale_of(rt, current) if sub == "scale" else copy.deepcopy(current)
        if new.get("spec") != current.get("spec") and "generation" in new["metadata"]:
            new["metadata"]["generation"] += 1
        if dry_run:
            return self._scale_of(rt, new) if sub == "scale" else new
        stored = self._commit(rt, key, new, current)
        return self._scale_of(rt, stored) if sub == "scale" else stored

    def _patch(self, rt: ResourceType, base: JSON, mime: str, raw: bytes) -> JSON:
        allowed = [JSON_PATCH, MERGE, APPLY] + ([STRATEGIC] if rt.group in BUILTIN_GROUPS else [])
        if mime not in allowed or mime == APPLY:
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media "
                f"types include: {', '.join(allowed)}",
            )
        patch = self._json(raw)
        if mime == JSON_PATCH:
            return json_patch(base, patch)
        if not isinstance(patch, dict):
            raise ApiError(
                400, "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        return merge_patch(base, patch)

    def _delete(
        self, rt: ResourceType, key: Key, current: JSON, options: Any, dry_run: bool
    ) -> tuple[int, JSON]:
        wanted = ((options or {}).get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _conflict(rt, current["metadata"]["name"])
        gone = copy.deepcopy(current) if dry_run else self._remove(rt, key)
        if rt.kind == "Pod" or rt.group not in BUILTIN_GROUPS:
            return 200, gone
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": current["metadata"]["name"],
                "group": rt.group,
                "kind": rt.resource,
                "uid": current["metadata"]["uid"],
            },
        }

    @staticmethod
    def _scale_of(rt: ResourceType, obj: JSON) -> JSON:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        selector = status.get("selector") if rt.group not in BUILTIN_GROUPS else None
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": spec.get("replicas", 0)},
            "status": {
                "replicas": status.get("replicas", 0),
                "selector": selector or selector_string(spec.get("selector")),
            },
        }

    # ------------------------------------------------------------ watch

    async def _watch(self, request: web.Request, query: dict[str, str]) -> web.StreamResponse:
        rt, ns, name, sub, _ = self._route(request.path)
        if rt is None or name is not None or sub is not None:
            raise ApiError(405, NOT_ALLOWED)
        matches = self._matcher(rt, ns, query)
        rv_text = query.get("resourceVersion") or "0"
        if not rv_text.isdigit():
            raise ApiError(400, f"invalid resource version: {rv_text!r}", "BadRequest")
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1", "True")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        watcher = _Watcher()
        self._watchers[watcher] = request
        since = int(rv_text)
        backlog: list[tuple[str, JSON]] = []
        expired = since and since < self._compacted_rv
        if since == 0:
            backlog = [
                ("ADDED", copy.deepcopy(o))
                for k, o in sorted(self._store.items())
                if k[:3] == (rt.group, rt.version, rt.resource) and matches(o)
            ]
        elif not expired:
            backlog = [
                e for ev in self._history if ev.rv > since for e in self._translate(ev, rt, matches)
            ]
        try:
            if expired:
                msg = f"too old resource version: {since} ({self._compacted_rv + 1})"
                await self._send(resp, "ERROR", status_body(410, msg, "Expired"))
                return resp
            for kind, obj in backlog:
                await self._send(resp, kind, obj)
            # the loop's clock, on which its timeouts run (a test may run it on fake time)
            clock = asyncio.get_running_loop().time
            deadline = clock() + timeout
            next_bookmark = clock() + self.bookmark_interval
            while (left := deadline - clock()) > 0:
                wait = min(left, next_bookmark - clock()) if bookmarks else left
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), max(wait, 0))
                except TimeoutError:
                    if bookmarks and clock() >= next_bookmark:
                        next_bookmark = clock() + self.bookmark_interval
                        await self._send(
                            resp,
                            "BOOKMARK",
                            {
                                "kind": rt.kind,
                                "apiVersion": rt.api_version,
                                "metadata": {"resourceVersion": str(self._rv)},
                            },
                        )
                    continue
                if isinstance(item, bool):
                    if item and request.transport is not None:
                        request.transport.abort()
                        return resp
                    break
                await self._deliver(resp, item, rt, matches)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._watchers.pop(watcher, None)
        return resp

    async def _deliver(
        self,
        resp: web.StreamResponse,
        item: _Event | bytes,
        rt: ResourceType,
        matches: Callable[[JSON], bool],
    ) -> None:
        if isinstance(item, bytes):  # a raw line (send_raw_watch_line)
            await resp.write(item)
            return
        for kind, obj in self._translate(item, rt, matches):
            await self._send(resp, kind, obj)

    @staticmethod
    def _translate(
        ev: _Event, rt: ResourceType, matches: Callable[[JSON], bool]
    ) -> list[tuple[str, JSON]]:
        if ev.rt != rt:
            return []
        new_ok = ev.obj is not None and matches(ev.obj)
        old_ok = ev.old is not None and matches(ev.old)
        if new_ok:
            return [("MODIFIED" if old_ok else "ADDED", copy.deepcopy(ev.obj))]  # type: ignore[list-item]
        if old_ok:
            gone = copy.deepcopy(ev.old)
            gone["metadata"]["resourceVersion"] = str(ev.rv)  # type: ignore[index]
            return [("DELETED", gone)]  # type: ignore[list-item]
        return []

    @staticmethod
    async def _send(resp: web.StreamResponse, kind: str, obj: JSON) -> None:
        await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
