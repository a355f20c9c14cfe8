"""One tick for one ScoringAutoscaler: observe, call the policy, act, report.

A thin shell: what to observe is `rscore.autoscaler.observe`, what to decide is
`rscore.autoscaler.policy.decide`, what to write is `rscore.autoscaler.status`; this
module sequences the calls in `rscore.autoscaler.kube_io` and keeps the little memory a
tick needs from the last
(policy state, last scrape per pod, the sample's rotation: `rscore.autoscaler.sampling`
decides which ready pods a tick scrapes). The forecast's demand profile, part of the policy
state, is the one memory that outlives a term: it is saved in the status once a slot and
restored from it when a term starts. It must never raise out of `reconcile` for an API
or scrape failure: those become conditions, Warning events and metrics, and the next
tick tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from rscore.autoscaler.forecast import DemandProfile
from rscore.autoscaler.informer import PodCache
from rscore.autoscaler.kube_io import (
    ApiError,
    Guard,
    KubeApi,
    NodeAllocatable,
    NotLeading,
    Scale,
    scrape_held_requests,
    scrape_pod,
)
from rscore.autoscaler.metric_streams import MetricStreams, compact_url
from rscore.autoscaler.metrics import ControllerMetrics
from rscore.autoscaler.observe import (
    SCALE_REREAD_S,
    PodFacts,
    PodUsage,
    build_observation,
    pod_facts,
    scale_read_due,
)
from rscore.autoscaler.policy import MODE_PANIC, Observation, PolicyState, Recommendation, decide
from rscore.autoscaler.sampling import Rotation, SamplingPolicy, sampled_demand
from rscore.autoscaler.scrape import DemandTracker, PodDemand, PodScrape, ScrapeError, metrics_url
from rscore.autoscaler.selector import SelectorError
from rscore.autoscaler.spec import AutoscalerSettings, SpecError, TargetRef, settings_from_object
from rscore.autoscaler.status import (
    READINGS_ONLY,
    UNCHANGED,
    Condition,
    event_body,
    heartbeat_due,
    limit_condition,
    merge_conditions,
    profile_from_status,
    status_body,
    status_change,
)

__all__ = ["Memory", "TickContext", "reconcile"]

log = logging.getLogger("rscore.autoscaler")
COMPONENT = "rscore-autoscaler"
ALLOCATABLE_REREAD_S = 300.0  # a resized or re-registered node is seen within this


@dataclass
class Memory:
    """What one ScoringAutoscaler's ticks remember; dropped when leadership changes."""

    policy_state: PolicyState = field(default_factory=PolicyState)
    demand: DemandTracker = field(default_factory=DemandTracker)  # last scrape per pod
    workers_per_pod: int = 1
    last_scale_time: str | None = None
    failing: set[str] = field(default_factory=set)  # reasons already announced by an Event
    unrouted_unknown: str | None = None  # this tick: why the activators went unread
    restored: bool = False  # the demand profile was read back from the status
    profile_saved: bool = False  # and the status holds the profile of this slot:
    profile_saved_slot: float | None = None  # the start of the slot occurrence it was in
    rotation: Rotation = field(default_factory=Rotation)  # which pods to scrape (sampling)
    status_written_at: float | None = None  # this term's last status write (ctx.now)
    scale: Scale | None = None  # the target's /scale as last read (or written) this term
    scale_of: TargetRef | None = None  # the target it was read from (a spec may change it)
    scale_read_at: float | None = None  # when it was read (ctx.now)
    # This object's longest wait between two reads (scale_read_due): drawn once, so that
    # objects first read in the same tick do not all read again in the same tick.
    scale_reread_s: float = field(
        default_factory=lambda: random.uniform(SCALE_REREAD_S / 2, SCALE_REREAD_S)
    )
    # The node the pods run on, what it can allocate, and when that was read (ctx.now).
    allocatable: tuple[str, NodeAllocatable, float] | None = None


@dataclass(frozen=True)
class TickContext:
    api: KubeApi
    session: aiohttp.ClientSession
    metrics: ControllerMetrics
    now: float  # monotonic seconds, the policy's clock
    now_iso: str  # wall time for status and events
    dry_run: bool = False
    scrape_timeout_s: float = 1.0
    may_write: Guard = None  # still the leader? None means always (no election)
    clock: Callable[[], float] = time.monotonic  # stamps each scrape when its answer is in
    wall_s: float | None = None  # Unix seconds for the forecast; None: time.time()
    sampling: SamplingPolicy = field(default_factory=SamplingPolicy)  # which pods to scrape
    scrape_slots: asyncio.Semaphore | None = None  # bounds concurrent scrapes (all objects)
    pods: PodCache | None = None  # the pod informer's cache, synced; None: list per tick
    # Readings alone (the observed concurrency, figures in the reason) are written at most
    # this often per object (`rscore.autoscaler.status.heartbeat_due`); 0: with every change.
    status_heartbeat_s: float = 0.0
    streams: MetricStreams | None = None  # the pods' metric streams; None: GET every reading


async def _list_pod_facts(ctx: TickContext, namespace: str, selector: str) -> list[PodFacts]:
    """The pods `selector` matches, as `pod_facts` reads them: from the informer's cache
    when there is one (read once per pod object, not per tick; a selector it cannot read
    is asked of the API server, which says what is wrong)."""
    cached = _cached_pod_facts(ctx, namespace, selector)
    if cached is not None:
        return cached
    return [pod_facts(p) for p in await ctx.api.list_pods(namespace, selector)]


def _cached_pod_facts(
    ctx: TickContext, namespace: str, selector: str | None
) -> list[PodFacts] | None:
    """The pods `selector` matches, from the informer's cache; None without a cache, a
    selector, or a selector the cache can read."""
    if ctx.pods is None or not selector:
        return None
    try:
        return ctx.pods.select_facts(namespace, selector)
    except SelectorError:
        return None


def _writable(ctx: TickContext) -> bool:
    return not ctx.dry_run and (ctx.may_write is None or ctx.may_write())


async def _event(
    ctx: TickContext, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False
) -> None:
    log.info("%s/%s %s: %s", _ns(obj), _name(obj), reason, message)
    if not _writable(ctx):
        return
    try:
        body = event_body(
            involved=obj,
            reason=reason,
            message=message,
            now_iso=ctx.now_iso,
            component=COMPONENT,
            warning=warning,
        )
        await ctx.api.create_event(_ns(obj), body, guard=ctx.may_write)
    except ApiError as error:  # an Event is a courtesy: never fail the tick for it
        log.warning("event %s for %s/%s not recorded: %s", reason, _ns(obj), _name(obj), error)


def _ns(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace", ""))


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


async def _warn_once(
    ctx: TickContext, obj: dict[str, Any], memory: Memory, reason: str, msg: str
) -> None:
    """A Warning event when a failure starts, not on every tick it lasts."""
    if reason not in memory.failing:
        memory.failing.add(reason)
        await _event(ctx, obj, reason, msg, warning=True)


async def _write_status(
    ctx: TickContext,
    obj: dict[str, Any],
    memory: Memory,
    conditions: list[Condition],
    *,
    recommendation: Recommendation | None = None,
    scale: Scale | None = None,
    current_nodes: int | None = None,
    profile: DemandProfile | None = None,
) -> None:
    if not _writable(ctx):
        return
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    # The profile is large and learns slot by slot: save it once a slot occurrence.
    saving = profile if profile is not None and _profile_due(memory, profile) else None
    body = status_body(
        recommendation=recommendation,
        current_replicas=None if scale is None else scale.status_replicas,
        current_nodes=current_nodes,
        last_scale_time=memory.last_scale_time,
        conditions=merge_conditions(
            (obj.get("status") or {}).get("conditions") or [], conditions, ctx.now_iso, generation
        ),
        generation=generation,
        demand_profile=None if saving is None else saving.to_dict(),
    )
    previous = obj.get("status") or {}
    change = status_change(previous, body["status"])
    if change == UNCHANGED or (change == READINGS_ONLY and not _heartbeat_due(ctx, obj, memory)):
        _profile_saved(memory, saving)  # the stored status holds it (or none is due)
        return  # spare the API server (and our own watch) a write per tick
    try:
        await ctx.api.patch_status(_ns(obj), _name(obj), body, guard=ctx.may_write)
    except ApiError as error:  # a profile not saved is tried again next tick
        log.warning("status of %s/%s not written: %s", _ns(obj), _name(obj), error)
    else:
        memory.status_written_at = ctx.now
        # As the merge patch did, so the next tick's conditions keep their times (and
        # the saved profile stays in the cached object).
        merged = {**previous, **body["status"]}
        obj["status"] = {key: value for key, value in merged.items() if value is not None}
        _profile_saved(memory, saving)


def _heartbeat_due(ctx: TickContext, obj: dict[str, Any], memory: Memory) -> bool:
    """Are the readings due to be written? Always at a term's first write (a new leader
    brings the status up to date), then at this object's next heartbeat."""
    if memory.status_written_at is None or ctx.status_heartbeat_s <= 0:
        return True
    return heartbeat_due(
        _ns(obj), _name(obj), ctx.status_heartbeat_s, memory.status_written_at, ctx.now
    )


def _slot_of(profile: DemandProfile) -> float | None:
    return None if profile.current is None else profile.current.start


def _profile_due(memory: Memory, profile: DemandProfile) -> bool:
    return not memory.profile_saved or memory.profile_saved_slot != _slot_of(profile)


def _profile_saved(memory: Memory, profile: DemandProfile | None) -> None:
    if profile is not None:
        memory.profile_saved, memory.profile_saved_slot = True, _slot_of(profile)


async def _restore_profile(ctx: TickContext, obj: dict[str, Any], memory: Memory) -> None:
    """A new controller, or a new leader, continues the demand profile the status keeps;
    one that does not read back is announced once and the forecast starts empty."""
    memory.restored = True
    profile, problem = profile_from_status(obj.get("status"))
    if problem is not None:
        await _warn_once(ctx, obj, memory, "InvalidDemandProfile", problem)
    if profile is not None:
        memory.policy_state = replace(memory.policy_state, profile=profile)
        _profile_saved(memory, profile)


async def _fail(
    ctx: TickContext, obj: dict[str, Any], memory: Memory, condition: Condition
) -> None:
    """Report a failure that stops this tick: a Warning event once, and the condition."""
    await _warn_once(ctx, obj, memory, condition.reason, condition.message)
    await _write_status(ctx, obj, memory, [condition])


async def _scrape_all(
    ctx: TickContext, settings: AutoscalerSettings, ready: list[PodFacts], memory: Memory
) -> dict[str, PodDemand | None]:
    """Scrape this tick's sample of the ready pods; the others get stand-ins."""

    async def one(pod: PodFacts) -> tuple[str, PodScrape | None]:
        assert pod.pod_ip is not None  # ready pods have an IP (observe.pod_facts)
        url = compact_url(metrics_url(pod.pod_ip, settings.metrics_port))
        try:
            async with ctx.scrape_slots or contextlib.nullcontext():
                page = await scrape_pod(ctx.session, url, ctx.scrape_timeout_s, ctx.clock)
            return pod.name, page
        except ScrapeError as error:
            ctx.metrics.scrape_errors.labels(settings.namespace, settings.name).inc()
            log.warning("scrape of %s failed: %s", pod.name, error)
            return pod.name, None

    names = [p.name for p in ready]
    choice = memory.rotation.choose(names, ctx.sampling)
    sampled = set(choice.scrape)
    chosen = [p for p in ready if p.name in sampled]
    # The sample is read from the pods' streams where they are live (a cheaper GET), by
    # GET where not. A live stream whose next reading has not come yet repeats the pod's
    # latest interval (at most an interval older) rather than wait for a GET.
    streamed, waiting = _streamed(ctx, settings, chosen)
    by_get = [p for p in chosen if p.name not in streamed and p.name not in waiting]
    ctx.metrics.scrapes.inc(len(by_get))
    ctx.metrics.sampled_pods.labels(settings.namespace, settings.name).set(len(chosen))
    results = await asyncio.gather(*(one(p) for p in by_get))
    pages = {**streamed, **dict(results)}
    demand = memory.demand.update(
        pages, keep=[n for n in names if n not in pages and n not in waiting], repeat=waiting
    )
    memory.rotation.observed({n: demand[n] for n in choice.fresh if n in demand})
    fresh = [page for page in pages.values() if page is not None]
    workers = [page.workers for page in fresh if page.workers > 0]
    if workers:
        memory.workers_per_pod = max(workers)
    return sampled_demand(choice, names, demand)


def _streamed(
    ctx: TickContext, settings: AutoscalerSettings, ready: list[PodFacts]
) -> tuple[dict[str, PodScrape | None], set[str]]:
    """The ready pods' new readings from their streams (None: a reading that is no
    metrics page), and the pods whose stream is live but brought nothing new since the
    last tick (`MetricStreams.take`); the other pods are in neither."""
    out: dict[str, PodScrape | None] = {}
    waiting: set[str] = set()
    if ctx.streams is None:
        return out, waiting
    for pod in ready:
        assert pod.pod_ip is not None  # ready pods have an IP (observe.pod_facts)
        url = metrics_url(pod.pod_ip, settings.metrics_port)
        try:
            reading = ctx.streams.take(url)
        except ScrapeError as error:
            ctx.metrics.scrape_errors.labels(settings.namespace, settings.name).inc()
            log.warning("metrics stream of %s: %s", pod.name, error)
            out[pod.name] = None
            continue
        if reading is not None:
            out[pod.name] = reading
        elif ctx.streams.live(url):
            waiting.add(pod.name)
    ctx.metrics.stream_readings.inc(sum(1 for r in out.values() if r is not None))
    return out, waiting


async def _unrouted(
    ctx: TickContext, obj: dict[str, Any], settings: AutoscalerSettings, memory: Memory
) -> float:
    """Requests held by the ready activator pods (`spec.activator`), summed; 0 without
    an activator. A failure is reported (metric, a Warning once) and leaves
    `memory.unrouted_unknown` set, so that this tick scales nothing down."""
    memory.unrouted_unknown = None
    activator = settings.activator
    if activator is None:
        return 0.0
    try:
        pods = await _list_pod_facts(ctx, settings.namespace, activator.selector)
        urls = [metrics_url(p.pod_ip, activator.metrics_port) for p in pods if p.ready and p.pod_ip]

        async def held_by(url: str) -> float:
            async with ctx.scrape_slots or contextlib.nullcontext():
                return await scrape_held_requests(ctx.session, url, ctx.scrape_timeout_s)

        answers = await asyncio.gather(
            *(held_by(url) for url in urls),
            return_exceptions=True,  # every scrape ends before a failure is reported
        )
        held = [a for a in answers if not isinstance(a, BaseException)]
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
    except (ApiError, ScrapeError) as error:
        memory.unrouted_unknown = f"activator {activator.selector}: {error}"
        ctx.metrics.activator_scrape_errors.labels(settings.namespace, settings.name).inc()
        log.warning("%s/%s: %s", settings.namespace, settings.name, memory.unrouted_unknown)
        await _warn_once(ctx, obj, memory, "FailedGetActivatorMetrics", memory.unrouted_unknown)
        return 0.0
    memory.failing.discard("FailedGetActivatorMetrics")
    ctx.metrics.unrouted_concurrency.labels(settings.namespace, settings.name).set(sum(held))
    return float(sum(held))


async def _node_pool_state(
    ctx: TickContext, settings: AutoscalerSettings, memory: Memory, pods: list[PodFacts]
) -> tuple[int | None, NodeAllocatable]:
    """(current nodes, what a node running the pods can allocate) for the node pool."""
    assert settings.node_pool_target is not None
    pool_scale = await ctx.api.get_scale(settings.namespace, settings.node_pool_target)
    allocatable = NodeAllocatable(None, None)
    pool = settings.scaling.node_pool
    if pool is not None and pool.pods_per_node is None:
        node_name = next((p.node_name for p in pods if p.node_name), None)
        if node_name:
            allocatable = await _allocatable(ctx, memory, node_name)
    return pool_scale.replicas, allocatable


async def _allocatable(ctx: TickContext, memory: Memory, node_name: str) -> NodeAllocatable:
    """What `node_name` can allocate: read once per node, again after ALLOCATABLE_REREAD_S
    (a node's allocatable is fixed when its kubelet registers it), not every tick."""
    known = memory.allocatable
    if known is not None and known[0] == node_name and ctx.now - known[2] < ALLOCATABLE_REREAD_S:
        return known[1]
    allocatable = await ctx.api.node_allocatable(node_name)
    memory.allocatable = (node_name, allocatable, ctx.now)
    return allocatable


async def _observe(
    obj: dict[str, Any], memory: Memory, ctx: TickContext, settings: AutoscalerSettings
) -> tuple[Observation, Scale] | None:
    """This tick's observation, or None after reporting why there is none."""
    ns, target = settings.namespace, settings.target
    if memory.scale_of != target:  # a new scaleTargetRef: what was read is another's
        memory.scale = None
    scale = memory.scale
    pods = None if scale is None else _cached_pod_facts(ctx, ns, scale.selector)
    replicas = None if scale is None else scale.replicas
    if scale_read_due(replicas, memory.scale_read_at, ctx.now, pods, memory.scale_reread_s):
        try:
            scale = await ctx.api.get_scale(ns, target)
        except ApiError as error:
            memory.scale = None
            message = f"reading the scale of {target}: {error}"
            await _fail(
                ctx, obj, memory, Condition("AbleToScale", False, "FailedGetScale", message)
            )
            return None
        memory.scale, memory.scale_of, memory.scale_read_at = scale, target, ctx.now
        pods = None
        ctx.metrics.scale_reads.inc()
    else:  # the last read stands: as many active pods as its replicas, its status too
        assert scale is not None
        scale = replace(scale, status_replicas=scale.replicas)
    assert scale is not None  # read above when there was none
    memory.failing.discard("FailedGetScale")
    if not scale.selector:
        message = f"{target} reports no status.selector in its /scale"
        await _write_status(
            ctx, obj, memory, [Condition("ScalingActive", False, "InvalidSelector", message)]
        )
        return None

    try:
        if pods is None:
            pods = await _list_pod_facts(ctx, ns, scale.selector)
        usage: dict[str, PodUsage] = {}
        if (
            settings.scaling.cpu_target_utilization is not None
            or settings.scaling.memory_target_utilization is not None
        ):
            usage = await ctx.api.list_pod_usage(ns, scale.selector)
        current_nodes, allocatable = None, NodeAllocatable(None, None)
        if settings.node_pool_target is not None:
            current_nodes, allocatable = await _node_pool_state(ctx, settings, memory, pods)
    except ApiError as error:
        message = f"observing {target}: {error}"
        await _fail(
            ctx, obj, memory, Condition("ScalingActive", False, "FailedGetMetrics", message)
        )
        return None
    memory.failing.discard("FailedGetMetrics")

    demand = await _scrape_all(ctx, settings, [p for p in pods if p.ready], memory)
    unrouted = await _unrouted(ctx, obj, settings, memory)
    observation = build_observation(
        now=ctx.now,
        current_replicas=scale.replicas,
        pods=pods,
        demand=demand,
        usage=usage,
        workers_per_pod=memory.workers_per_pod,
        current_nodes=current_nodes,
        wall_s=time.time() if ctx.wall_s is None else ctx.wall_s,
        node_allocatable_cpu_millicores=allocatable.cpu_millicores,
        node_allocatable_memory_bytes=allocatable.memory_bytes,
        unrouted_concurrency=unrouted,
        unrouted_unknown=memory.unrouted_unknown,
    )
    return observation, scale


def _labels(settings: AutoscalerSettings) -> tuple[str, str]:
    return settings.namespace, settings.name


def _record(ctx: TickContext, settings: AutoscalerSettings, rec: Recommendation) -> None:
    labels = _labels(settings)
    ctx.metrics.desired_replicas.labels(*labels).set(rec.desired_replicas)
    ctx.metrics.max_replicas.labels(*labels).set(settings.scaling.max_replicas)
    ctx.metrics.panic.labels(*labels).set(1 if rec.mode == MODE_PANIC else 0)
    if rec.observed_concurrency is not None:
        ctx.metrics.observed_concurrency.labels(*labels).set(rec.observed_concurrency)
    if rec.desired_nodes is not None:
        ctx.metrics.desired_nodes.labels(*labels).set(rec.desired_nodes)


async def _act(
    obj: dict[str, Any],
    memory: Memory,
    ctx: TickContext,
    *,
    settings: AutoscalerSettings,
    recommendation: Recommendation,
    current: dict[str, int | None],
) -> Condition:
    """Patch the /scale of the target and of the node pool where the decision differs.

    Updates `current` to what was written; returns the AbleToScale condition.
    """
    able = Condition("AbleToScale", True, "ReadyForNewScale", "the target's /scale can be read")
    moves = [("pods", settings.target, recommendation.desired_replicas)]
    if settings.node_pool_target is not None and recommendation.desired_nodes is not None:
        moves.append(("nodes", settings.node_pool_target, recommendation.desired_nodes))
    for what, ref, desired in moves:
        before = current[what]
        if before is None or before == desired:
            continue
        direction = "up" if desired > before else "down"
        message = f"{ref}: {before} -> {desired}; {recommendation.reason}"
        if not _writable(ctx):
            log.info("%s/%s would scale %s (not leading, or dry run)", *_labels(settings), message)
            continue
        try:
            await ctx.api.patch_scale(settings.namespace, ref, desired, guard=ctx.may_write)
        except NotLeading:
            log.info("%s/%s did not scale %s: no longer the leader", *_labels(settings), message)
            break
        except ApiError as error:
            failure = f"scaling {ref} to {desired}: {error}"
            able = Condition("AbleToScale", False, "FailedUpdateScale", failure)
            await _warn_once(ctx, obj, memory, f"FailedRescale-{what}", failure)
            continue
        memory.failing.discard(f"FailedRescale-{what}")
        memory.last_scale_time = ctx.now_iso
        current[what] = desired
        if what == "pods" and memory.scale is not None:  # what the next tick compares with
            memory.scale = replace(memory.scale, replicas=desired)
        ctx.metrics.scale_operations.labels(*_labels(settings), what, direction).inc()
        reason = ("ScaledUp" if direction == "up" else "ScaledDown") + (
            "Nodes" if what == "nodes" else ""
        )
        await _event(ctx, obj, reason, message)
    return able


async def reconcile(obj: dict[str, Any], memory: Memory, ctx: TickContext) -> None:
    """Observe, decide, act and report for one ScoringAutoscaler."""
    try:
        settings = settings_from_object(obj)
    except SpecError as error:
        await _fail(ctx, obj, memory, Condition("ScalingActive", False, "InvalidSpec", str(error)))
        return
    memory.failing.discard("InvalidSpec")
    if memory.last_scale_time is None:  # a new term: keep what the last leader recorded
        memory.last_scale_time = (obj.get("status") or {}).get("lastScaleTime")
    if not memory.restored:
        await _restore_profile(ctx, obj, memory)
    observed = await _observe(obj, memory, ctx, settings)
    if observed is None:
        return
    observation, scale = observed
    recommendation, memory.policy_state = decide(observation, memory.policy_state, settings.scaling)
    _record(ctx, settings, recommendation)
    current: dict[str, int | None] = {
        "pods": scale.replicas,
        "nodes": observation.current_nodes,
    }
    able = await _act(
        obj, memory, ctx, settings=settings, recommendation=recommendation, current=current
    )
    active = (
        Condition("ScalingActive", True, "ValidMetricFound", recommendation.reason)
        if recommendation.observed_concurrency is not None
        else Condition("ScalingActive", False, "NoMetrics", recommendation.reason)
    )
    limited = limit_condition(
        recommendation.desired_replicas,
        settings.scaling.min_replicas,
        settings.scaling.max_replicas,
    )
    await _write_status(
        ctx,
        obj,
        memory,
        [able, active, limited],
        recommendation=recommendation,
        scale=scale,
        current_nodes=current["nodes"],
        profile=memory.policy_state.profile,
    )
