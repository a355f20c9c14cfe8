"""A pod's `/metrics` page, reduced to what the policy needs.

`parse_pod_metrics` reads the Prometheus text format with prometheus_client's parser and
keeps the contract's names (ARCHITECTURE.md, "Metrics contract"). Only the lines of the
series it uses reach the parser (`used_lines`): the histograms' buckets and the other
families of the sidecar's page are skipped unparsed, which makes a page several times
cheaper to read (docs/autoscaler.md, "At scale"). A line that is no sample of any name
still reaches the parser, which rejects the page as before. Between two scrapes of
a pod, `pod_demand` reads what the policy sizes pods for:

- the arrival rate: requests that wanted a worker (answered, refused with 429, failed in
  R or timed out: `rscore_requests_total` of codes 2xx, 429, 500, 502, 504) that finished
  in the interval, plus the growth of those still inside (queued + in flight);
- the service time: seconds inside R (`rscore_scoring_duration_seconds_sum`) per answered
  request (2xx) — with batching, the cost a request really adds;
- the exact average concurrency (the rate of `rscore_concurrency_seconds_total`) and the
  queue depth now;
- the interval's R calls, their rows and seconds, and the rows a call may merge
  (`rscore_batch_rows`, `rscore_batch_max_rows`): what `rscore.autoscaler.batch_cost` fits the
  cost of a call to.

The controller and the simulator both call it: the simulator renders its pods' counters as
`PodScrape`s. Pure: no HTTP here (the fetch lives in `rscore.autoscaler.kube_io`), no clock reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from rscore.autoscaler.batch_cost import CallCounts

__all__ = [
    "DemandTracker",
    "PodDemand",
    "PodScrape",
    "ScrapeError",
    "average_concurrency",
    "metrics_url",
    "parse_pod_metrics",
    "pod_demand",
]

CONCURRENCY_SECONDS = "rscore_concurrency_seconds"  # the parser drops `_total`
QUEUE_DEPTH = "rscore_queue_depth"
INFLIGHT = "rscore_inflight_requests"
WORKERS = "rscore_workers"
REQUESTS = "rscore_requests_total"
SCORING_SECONDS = "rscore_scoring_duration_seconds_sum"
BATCH_CALLS = "rscore_batch_rows_count"
BATCH_ROWS = "rscore_batch_rows_sum"
BATCH_MAX_ROWS = "rscore_batch_max_rows"

# The sample names read, and the families whose TYPE/HELP lines name them (a counter's
# family may be declared with or without `_total`; a sample of a counter-typed family
# may omit it).
SAMPLES_USED = frozenset(
    {
        f"{CONCURRENCY_SECONDS}_total",
        CONCURRENCY_SECONDS,
        QUEUE_DEPTH,
        INFLIGHT,
        WORKERS,
        REQUESTS,
        SCORING_SECONDS,
        BATCH_CALLS,
        BATCH_ROWS,
        BATCH_MAX_ROWS,
    }
)
FAMILIES_USED = frozenset(
    {
        CONCURRENCY_SECONDS,
        f"{CONCURRENCY_SECONDS}_total",
        QUEUE_DEPTH,
        INFLIGHT,
        WORKERS,
        "rscore_requests",
        REQUESTS,
        "rscore_scoring_duration_seconds",
        "rscore_batch_rows",
        BATCH_MAX_ROWS,
    }
)
_USED_PREFIXES = tuple(sorted(SAMPLES_USED | FAMILIES_USED))
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def used_lines(text: str) -> str:
    """The page's lines that `parse_pod_metrics` reads: samples of `SAMPLES_USED`, the
    TYPE and HELP lines of their families, and any line that is no sample at all (so the
    parser still rejects garbage); every other series is dropped unparsed."""
    kept = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped:
            continue
        if stripped[0] == "#":
            parts = stripped.split(None, 3)
            if len(parts) < 3 or parts[1] not in ("TYPE", "HELP") or parts[2] in FAMILIES_USED:
                kept.append(line)
            continue
        if stripped.startswith(_USED_PREFIXES):
            name = _NAME.match(stripped)
            if name is not None and name.group() in SAMPLES_USED:
                kept.append(line)
                continue
        name = _NAME.match(stripped)
        end = 0 if name is None else name.end()
        if end == 0 or end == len(stripped) or stripped[end] not in " \t{":
            kept.append(line)  # not a sample line: the parser will say what is wrong
    return "\n".join(kept) + "\n"


def wants_a_worker(code: int) -> bool:
    """A finished request that counts as demand: it reached admission and wanted R (a 4xx
    other than 429 was refused before; a 503 is a pod not ready or draining, whose
    clients go elsewhere)."""
    return 200 <= code < 300 or code in (429, 500, 502, 504)


class ScrapeError(ValueError):
    """The page is not the metrics contract (unparsable, or a required name missing)."""


@dataclass(frozen=True)
class PodScrape:
    """One scrape of one pod, taken at `at` (the controller's monotonic seconds)."""

    at: float
    concurrency_seconds_total: float
    queue_depth: float
    inflight: float
    workers: int
    # None on a page without them (a sidecar older than the demand signal).
    demand_requests_total: float | None = None  # finished requests that wanted a worker
    answered_total: float | None = None  # finished 2xx
    scoring_seconds_total: float | None = None  # seconds inside R of the answered calls
    calls_total: float | None = None  # R calls that answered
    rows_total: float | None = None  # rows in them
    max_batch_rows: int | None = None  # rows a call may merge; 0: the model is not batchable

    @property
    def instantaneous_concurrency(self) -> float:
        return self.queue_depth + self.inflight


# The names a sample is read under (a counter's with `_total`).
READ = frozenset(SAMPLES_USED - {CONCURRENCY_SECONDS})
Sample = tuple[str, str, float]  # name, its `code` label ("" without), value
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^{}\\]*\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"\\]*)"\s*(?:,|$)')


# A sample line's `name{labels}` already read whole by `_SAMPLE` in the plain form
# `name{labels} value`: (name, its code label) if read, None if not. A pod's page repeats
# its lines but for their values, so most lines skip the regular expression. Bounded:
# cleared when full (heads are few per page; many only if labels carry unbounded values).
_HEADS: dict[str, tuple[str, str] | None] = {}
_HEADS_MAX = 1 << 16
_UNSEEN = ("", "")


def quick_samples(text: str) -> list[Sample] | None:
    """The samples read, in one pass over the page's lines, for a page in the plain
    form the sidecar writes; None for anything else (escapes in labels, a counter
    sample without `_total`, a line that is no sample, an odd TYPE), which then goes to
    prometheus_client's parser for its rules and its complaints. Never more lenient
    than the parser: a page it takes, this reads to the same samples."""
    out: list[Sample] = []
    heads = _HEADS
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == "#":
            parts = stripped.split(None, 3)
            typed = len(parts) >= 3 and parts[1] == "TYPE" and parts[2] in FAMILIES_USED
            if typed and (len(parts) < 4 or parts[3] not in _TYPES):
                return None
            continue
        head, _, raw = stripped.rpartition(" ")
        # A known head and a value without any whitespace (printable, and no space:
        # rpartition's) is a line `_SAMPLE` reads to that head's name and labels.
        known = heads.get(head, _UNSEEN) if raw.isprintable() else _UNSEEN
        if known is _UNSEEN:
            found = _SAMPLE.fullmatch(stripped)
            if found is None:
                return None  # no sample line: the parser says what is wrong
            name = found.group(1)
            if name not in READ:
                if name in SAMPLES_USED:
                    return None  # `rscore_concurrency_seconds`: the parser's typing rules
                known = None
            else:
                code = ""
                if found.group(2):
                    code_label = _code_label(found.group(2)[1:-1])
                    if code_label is None:
                        return None
                    code = code_label
                known = (name, code)
            if found.end(2 if found.group(2) else 1) == len(head) and found.group(3) == raw:
                if len(heads) >= _HEADS_MAX:
                    heads.clear()
                heads[head] = known
            raw = found.group(3)
        if known is None:
            continue
        if "_" in raw:  # float() takes 1_000; the format does not
            return None
        try:
            value = float(raw)
        except ValueError:
            return None
        out.append((known[0], known[1], value))
    return out


def _code_label(labels: str) -> str | None:
    """The `code` label's value ("" without one); None if the labels do not parse."""
    position, code = 0, ""
    while position < len(labels):
        pair = _LABEL.match(labels, position)
        if pair is None or pair.end() == position:
            return None
        if pair.group(1) == "code":
            code = pair.group(2)
        position = pair.end()
    return code


def parsed_samples(text: str) -> list[Sample]:
    """The samples read, by prometheus_client's parser over the used lines; ScrapeError
    if it cannot parse them."""
    out: list[Sample] = []
    try:
        for family in text_string_to_metric_families(used_lines(text)):
            for sample in family.samples:
                if sample.name in READ:
                    out.append((sample.name, sample.labels.get("code", ""), sample.value))
    except ValueError as error:  # the parser's own complaint about the text
        raise ScrapeError(f"unparsable metrics page: {error}") from error
    return out


def parse_pod_metrics(text: str, at: float) -> PodScrape:
    values: dict[str, float] = {}
    requests: dict[str, float] = {}
    samples = quick_samples(text)
    for name, code, value in parsed_samples(text) if samples is None else samples:
        if name == REQUESTS:
            requests[code] = requests.get(code, 0.0) + value
        else:
            values[name] = values.get(name, 0.0) + value
    missing = [
        name
        for name in (f"{CONCURRENCY_SECONDS}_total", QUEUE_DEPTH, INFLIGHT, WORKERS)
        if name not in values
    ]
    if missing:
        raise ScrapeError(f"metrics page lacks {', '.join(missing)}")
    # A pod reporting NaN, infinities or negative counts is a pod without usable data,
    # not a reason to stop scaling its neighbours.
    checked = {**values, **{f"{REQUESTS}{{code={c}}}": v for c, v in requests.items()}}
    unusable = [f"{n} {v}" for n, v in checked.items() if not math.isfinite(v) or v < 0]
    if unusable:
        raise ScrapeError(f"metrics page has unusable values: {', '.join(unusable)}")
    demand = answered = None
    if requests or SCORING_SECONDS in values:  # a page with the demand signal's names
        codes = {int(c): v for c, v in requests.items() if c.isdigit()}
        demand = sum(v for c, v in codes.items() if wants_a_worker(c))
        answered = sum(v for c, v in codes.items() if 200 <= c < 300)
    return PodScrape(
        at=at,
        concurrency_seconds_total=values[f"{CONCURRENCY_SECONDS}_total"],
        queue_depth=values[QUEUE_DEPTH],
        inflight=values[INFLIGHT],
        workers=int(values[WORKERS]),
        demand_requests_total=demand,
        answered_total=answered,
        scoring_seconds_total=values.get(SCORING_SECONDS, 0.0 if demand is not None else None),
        calls_total=values.get(BATCH_CALLS),
        rows_total=values.get(BATCH_ROWS),
        max_batch_rows=int(values[BATCH_MAX_ROWS]) if BATCH_MAX_ROWS in values else None,
    )


def average_concurrency(previous: PodScrape | None, current: PodScrape) -> float:
    """Average queued + in-flight requests since `previous`.

    Without an earlier scrape (a new pod, or a new leader), or when the counter went
    backwards (the sidecar restarted), the counter says nothing about the interval:
    fall back to the instantaneous gauges rather than report the pod as missing.
    """
    if previous is None:
        return current.instantaneous_concurrency
    elapsed = current.at - previous.at
    increase = current.concurrency_seconds_total - previous.concurrency_seconds_total
    if elapsed <= 0 or increase < 0:
        return current.instantaneous_concurrency
    return increase / elapsed


@dataclass(frozen=True)
class PodDemand:
    """What one pod's two scrapes say about the load it was offered.

    `arrival_rate` and `service_s` are None where the page lacks the names, or when the
    counters say nothing about the interval (a first scrape; a restarted sidecar).
    `service_s` is None too while no request was answered yet; the policy then uses the
    other pods' (or falls back to concurrency).
    """

    concurrency: float
    arrival_rate: float | None
    service_s: float | None
    queue_depth: float
    calls: CallCounts | None = None  # None on a page without the batch counters


def pod_demand(
    previous: PodScrape | None, current: PodScrape, last_service_s: float | None = None
) -> PodDemand:
    """The pod's demand between two scrapes.

    Arrivals are finished demand requests plus the growth of those inside, so a burst
    that is still queued counts as arrived, once, and a queue that lingers adds nothing
    more. The service time is the interval's seconds in R per answered request, or
    `last_service_s` (the pod's previous estimate) when nothing was answered in it.
    """
    concurrency = average_concurrency(previous, current)
    arrival_rate = service_s = calls = None
    if previous is not None and current.at > previous.at:
        # Each increase is None on a page without the names or after a counter reset.
        elapsed = current.at - previous.at
        finished = _increase(previous.demand_requests_total, current.demand_requests_total)
        answered = _increase(previous.answered_total, current.answered_total)
        r_seconds = _increase(previous.scoring_seconds_total, current.scoring_seconds_total)
        if finished is not None and answered is not None and r_seconds is not None:
            inside = current.instantaneous_concurrency - previous.instantaneous_concurrency
            arrival_rate = max(0.0, finished + inside) / elapsed
            service_s = r_seconds / answered if answered > 0 else last_service_s
            calls = _call_counts(previous, current, answered, r_seconds)
    return PodDemand(
        concurrency=concurrency,
        arrival_rate=arrival_rate,
        service_s=service_s,
        queue_depth=current.queue_depth,
        calls=calls,
    )


def _call_counts(
    previous: PodScrape, current: PodScrape, answered: float, r_seconds: float
) -> CallCounts | None:
    calls = _increase(previous.calls_total, current.calls_total)
    rows = _increase(previous.rows_total, current.rows_total)
    if calls is None or rows is None or current.max_batch_rows is None:
        return None
    return CallCounts(calls, rows, r_seconds, answered, current.max_batch_rows)


class DemandTracker:
    """The memory between ticks that `pod_demand` needs: each pod's last good scrape and
    its last known service time. The controller keeps one per ScoringAutoscaler; the
    simulator keeps one per run, so both turn pages into demand the same way."""

    def __init__(self) -> None:
        self.scrapes: dict[str, PodScrape] = {}
        self.service_s: dict[str, float] = {}
        self.last: dict[str, PodDemand] = {}  # each pod's demand over its latest interval

    def update(
        self,
        pages: Mapping[str, PodScrape | None],
        keep: Collection[str] = (),
        repeat: Collection[str] = (),
    ) -> dict[str, PodDemand | None]:
        """This tick's demand of each pod scraped (None: its scrape failed), and of each
        pod of `repeat` (no new reading yet, the one before is at most an interval old:
        a streamed pod) its demand over its latest interval, if it has one. A pod that
        failed keeps its last good scrape for the next tick, and so does a pod of `keep`
        or `repeat` (still there, not read this tick: left out of a sample); other pods
        not listed have left and are forgotten."""
        demand: dict[str, PodDemand | None] = {}
        for name, page in pages.items():
            if page is None:
                demand[name] = None
                continue
            signal = pod_demand(self.scrapes.get(name), page, self.service_s.get(name))
            demand[name] = self.last[name] = signal
            if signal.service_s is not None:
                self.service_s[name] = signal.service_s
        for name in repeat:
            if name not in pages and name in self.last:
                demand[name] = self.last[name]
        keep = [*keep, *repeat]
        previous = self.scrapes
        self.scrapes = {
            name: page if page is not None else previous[name]
            for name, page in pages.items()
            if page is not None or name in previous
        }
        for name in keep:
            if name not in pages and name in previous:
                self.scrapes[name] = previous[name]
        self.service_s = {n: v for n, v in self.service_s.items() if n in self.scrapes}
        self.last = {n: d for n, d in self.last.items() if n in self.scrapes}
        return demand


def _increase(before: float | None, after: float | None) -> float | None:
    """A counter's increase; None when either side is unknown or it went backwards (the
    sidecar restarted)."""
    if before is None or after is None or after < before:
        return None
    return after - before


def metrics_url(pod_ip: str, port: int) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip  # an IPv6 pod address
    return f"http://{host}:{port}/metrics"
