"""The pods every ScoringAutoscaler reads, kept in memory by a list then a watch (an
informer, as client-go's), so a tick asks the API server nothing about pods.

One watch for all pods (of `--namespace`, else of the cluster; `--pod-selector` narrows
it to the scoring pods' common label), indexed by namespace and by label so that a
`/scale` selector finds its pods without scanning the others. The watch restarts from
the last resourceVersion seen when the server ends it, re-lists on 410 Gone (history
compacted) and after any other failure (with capped exponential backoff). Until a list
is in, and from a failure until the next list, `synced` is unset and the controller
lists pods per tick as before.

The API calls are `rscore.autoscaler.kube_io`'s; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from rscore.autoscaler.kube_io import ApiError, KubeApi
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.observe import PodFacts, pod_facts
from rscore.autoscaler.selector import equalities, parse_selector

__all__ = ["PodCache"]

log = logging.getLogger("rscore.autoscaler")
Key = tuple[str, str]  # namespace, name
Labels = dict[str, str]


@lru_cache(maxsize=4096)
def _compiled(selector: str) -> tuple[Callable[[Labels], bool], tuple[tuple[str, str], ...]]:
    return parse_selector(selector), tuple(equalities(selector))


def _key(pod: dict[str, Any]) -> Key:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _labels(pod: dict[str, Any]) -> Labels:
    return dict((pod.get("metadata") or {}).get("labels") or {})


class PodCache:
    def __init__(
        self,
        api: KubeApi,
        metrics: ControllerMetrics,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        watch_timeout_s: int = 300,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.namespace = namespace
        self.selector = selector
        self.watch_timeout_s = watch_timeout_s
        self.synced = asyncio.Event()
        self._pods: dict[Key, dict[str, Any]] = {}
        self._by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # ns, k, v
        self._by_namespace: dict[str, set[str]] = defaultdict(set)
        # Each pod's facts, read once per pod object (an event brings a new object).
        self._facts: dict[Key, PodFacts] = {}  # dropped whenever the pod is replaced

    def __len__(self) -> int:
        return len(self._pods)

    # --- the cache -------------------------------------------------------------------------

    def _index(self, key: Key, pod: dict[str, Any], add: bool) -> None:
        ns, name = key
        for label, value in _labels(pod).items():
            members = self._by_label[(ns, label, value)]
            if add:
                members.add(name)
            else:
                members.discard(name)
                if not members:
                    del self._by_label[(ns, label, value)]
        if add:
            self._by_namespace[ns].add(name)
        else:
            self._by_namespace[ns].discard(name)

    def _put(self, pod: dict[str, Any]) -> None:
        key = _key(pod)
        old = self._pods.get(key)
        if old is not None:
            self._index(key, old, add=False)
            self._facts.pop(key, None)
        self._pods[key] = pod
        self._index(key, pod, add=True)

    def _drop(self, key: Key) -> None:
        self._facts.pop(key, None)
        old = self._pods.pop(key, None)
        if old is not None:
            self._index(key, old, add=False)

    def _replace_all(self, pods: list[dict[str, Any]]) -> None:
        self._pods.clear()
        self._facts.clear()
        self._by_label.clear()
        self._by_namespace.clear()
        for pod in pods:
            self._put(pod)

    def select(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The cached pods of `namespace` that `selector` matches (SelectorError if it is
        not a selector), in name order as a list would give them."""
        matches, pairs = _compiled(selector)
        if pairs:  # only pods carrying every `key=value` of the selector can match
            candidates = set.intersection(
                *(self._by_label.get((namespace, k, v), set()) for k, v in pairs)
            )
        else:
            candidates = self._by_namespace.get(namespace, set())
        pods = (self._pods[(namespace, name)] for name in sorted(candidates))
        return [pod for pod in pods if matches(_labels(pod))]

    def select_facts(self, namespace: str, selector: str) -> list[PodFacts]:
        """As `select`, each pod as `rscore.autoscaler.observe.pod_facts` reads it: read once
        per pod object, not once per tick (a watch event replaces the object)."""
        out = []
        for pod in self.select(namespace, selector):
            key = _key(pod)
            facts = self._facts.get(key)
            if facts is None:
                facts = self._facts[key] = pod_facts(pod)
            out.append(facts)
        return out

    # --- list, then watch ------------------------------------------------------------------

    def _stale(self) -> None:
        """After a failed watch the cache may miss changes (a watch that is refused for
        good, say without the RBAC verb, would leave it stale forever): ticks list pods
        themselves until a new list is in."""
        self.synced.clear()

    async def run_forever(self) -> None:
        """Keep the cache; never returns (the controller's ScoringAutoscaler watch does the
        same, with the same backoff)."""
        version: str | None = None
        failures = 0
        fresh_list = False  # no event since the last list: a 410 now is a failure
        while True:
            try:
                if version is None:
                    items, version = await self.api.list_pods_versioned(
                        self.namespace, self.selector
                    )
                    self._replace_all(items)
                    self.synced.set()
                    self.metrics.cached_pods.set(len(self._pods))
                    fresh_list = True
                async for kind, pod in self.api.watch_pods(
                    self.namespace, self.selector, version, self.watch_timeout_s
                ):
                    failures, fresh_list = 0, False
                    seen = (pod.get("metadata") or {}).get("resourceVersion")
                    if seen:
                        version = str(seen)
                    if kind == "DELETED":
                        self._drop(_key(pod))
                    elif kind in ("ADDED", "MODIFIED"):
                        self._put(pod)
                    self.metrics.cached_pods.set(len(self._pods))
                self.metrics.watch_restarts.labels("pods_timeout").inc()
            except ApiError as error:
                if error.status == 410:
                    log.info("pod watch: resourceVersion %s expired, re-listing", version)
                    self.metrics.watch_restarts.labels("pods_expired").inc()
                    version = None
                    if fresh_list:
                        failures += 1
                else:
                    failures += 1
                    self.metrics.watch_restarts.labels("pods_failed").inc()
                    log.warning("pod watch failed (%s), listing again", error)
                    self._stale()
                    version = None
            except Exception:  # a malformed line: never let the cache die
                failures += 1
                self.metrics.watch_restarts.labels("pods_error").inc()
                log.exception("pod watch failed unexpectedly, listing again")
                self._stale()
                version = None
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)) if failures else 0)
