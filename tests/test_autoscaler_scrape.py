"""rscore.autoscaler.scrape: a pod's /metrics page as a PodScrape, and concurrency between two.

Pages come from the real sidecar metrics code (SidecarMetrics + its scrape-time collector
over a real Dispatcher, rendered by prometheus_client) and from hand-written text.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rscore.autoscaler.scrape import (
    PodScrape,
    ScrapeError,
    average_concurrency,
    metrics_url,
    parse_pod_metrics,
    parsed_samples,
    quick_samples,
    used_lines,
)
from rscore.r_scorer.pool import WorkerPool
from rscore.sidecar.admission import Dispatcher
from rscore.sidecar.metrics import SidecarMetrics

REQUIRED = (
    "rscore_concurrency_seconds_total",
    "rscore_queue_depth",
    "rscore_inflight_requests",
    "rscore_workers",
)

PAGE = """\
# HELP rscore_requests_total Finished requests by status code.
# TYPE rscore_requests_total counter
rscore_requests_total{code="200"} 1027.0
rscore_requests_total{code="503"} 3.0
# HELP rscore_queue_depth Requests waiting for a worker.
# TYPE rscore_queue_depth gauge
rscore_queue_depth 2.0
# HELP rscore_inflight_requests Requests being scored.
# TYPE rscore_inflight_requests gauge
rscore_inflight_requests 3.0
# HELP rscore_concurrency_seconds Integral over time of queued + in-flight requests.
# TYPE rscore_concurrency_seconds counter
rscore_concurrency_seconds_total 1234.5
# HELP rscore_workers R worker slots ready.
# TYPE rscore_workers gauge
rscore_workers 4.0
"""


def page_without(name: str) -> str:
    return "".join(line + "\n" for line in PAGE.splitlines() if name not in line)


def scrape(at: float, total: float, queue: float = 0.0, inflight: float = 0.0) -> PodScrape:
    return PodScrape(
        at=at, concurrency_seconds_total=total, queue_depth=queue, inflight=inflight, workers=2
    )


# --- the real sidecar's page -------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_parses_the_real_sidecar_page_and_its_concurrency_integral(
    tmp_path: Path,
) -> None:
    """Three requests queued for 10 s: the page's integral grows by 30 request-seconds and
    the average between two scrapes is exactly 3; once they leave, it is 0."""
    clock = Clock(100.0)
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    dispatcher = Dispatcher(max_queue_per_worker=8, clock=clock)
    metrics.watch(dispatcher, WorkerPool(tmp_path / "workers.sock"), clock)
    metrics.count_request(200, 0.01)  # other families on the page are ignored
    metrics.batch_rows.observe(3)

    def page() -> str:
        return generate_latest(registry).decode()

    first = parse_pod_metrics(page(), at=clock.now)
    assert first == PodScrape(
        at=100.0,
        concurrency_seconds_total=0.0,
        queue_depth=0.0,
        inflight=0.0,
        workers=0,
        demand_requests_total=1.0,  # the 200 above
        answered_total=1.0,
        scoring_seconds_total=0.0,  # no R call observed
        calls_total=1.0,  # the batch of 3 rows
        rows_total=3.0,
        max_batch_rows=0,  # no model loaded yet
    )

    jobs = [dispatcher.submit(None, deadline=1e9) for _ in range(3)]  # no worker: queued
    clock.now = 110.0
    second = parse_pod_metrics(page(), at=clock.now)
    assert second.queue_depth == 3
    assert second.inflight == 0
    assert second.instantaneous_concurrency == 3
    assert second.concurrency_seconds_total == pytest.approx(30.0)
    assert average_concurrency(first, second) == pytest.approx(3.0)

    for job in jobs:  # the clients went away: the jobs leave the queue at t=110
        job.future.cancel()
    await asyncio.sleep(0)  # the futures' done callbacks run on the loop
    clock.now = 120.0
    third = parse_pod_metrics(page(), at=clock.now)
    assert third.queue_depth == 0
    assert third.concurrency_seconds_total == pytest.approx(30.0)
    assert average_concurrency(second, third) == pytest.approx(0.0)
    assert average_concurrency(first, third) == pytest.approx(1.5)


@pytest.mark.parametrize("workers", [1, 4], ids=["1-worker", "4-workers"])
def test_real_sidecar_page_reports_the_worker_count(workers: int, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    clock = Clock(5.0)
    # the collector reads the workers (their slots and pids, for their memory), the model
    # (None: not loaded yet) and the socket's folder (where the scorer writes the
    # workers' memory; nothing written yet here)
    links = [SimpleNamespace(slot=i, pid=1000 + i) for i in range(workers)]
    pool = SimpleNamespace(workers=links, model=None, socket_path=tmp_path / "scorer.sock")
    SidecarMetrics(registry).watch(Dispatcher(max_queue_per_worker=1, clock=clock), pool, clock)
    parsed = parse_pod_metrics(generate_latest(registry).decode(), at=7.0)
    assert parsed.workers == workers
    assert type(parsed.workers) is int
    assert parsed.at == 7.0


def test_real_sidecar_page_without_the_state_collector_lacks_the_contract() -> None:
    """SidecarMetrics alone (before watch()) has only per-request metrics."""
    registry = CollectorRegistry()
    SidecarMetrics(registry).count_request(200, 0.5)
    with pytest.raises(ScrapeError, match="lacks") as raised:
        parse_pod_metrics(generate_latest(registry).decode(), at=0.0)
    for name in REQUIRED:
        assert name in str(raised.value)


# --- hand-written pages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the 503s are not demand (a pod not ready); no scoring histogram: 0 s in R
        (PAGE, PodScrape(12.5, 1234.5, 2.0, 3.0, 4, 1027.0, 1027.0, 0.0)),
        (
            # no HELP/TYPE lines: untyped samples still count
            "rscore_concurrency_seconds_total 7\nrscore_queue_depth 0\n"
            "rscore_inflight_requests 1\nrscore_workers 2\n",
            PodScrape(12.5, 7.0, 0.0, 1.0, 2),
        ),
        (
            # labelled series of one name are summed
            'rscore_concurrency_seconds_total{slot="a"} 1\n'
            'rscore_concurrency_seconds_total{slot="b"} 2\n'
            "rscore_queue_depth 1\nrscore_inflight_requests 1\nrscore_workers 3\n",
            PodScrape(12.5, 3.0, 1.0, 1.0, 3),
        ),
        (
            # sample timestamps are allowed and ignored
            "rscore_concurrency_seconds_total 5 1700000000000\nrscore_queue_depth 0\n"
            "rscore_inflight_requests 0\nrscore_workers 1\n",
            PodScrape(12.5, 5.0, 0.0, 0.0, 1),
        ),
        (
            # scientific notation, Windows line ends
            "rscore_concurrency_seconds_total 1.5e3\r\nrscore_queue_depth 0\r\n"
            "rscore_inflight_requests 0\r\nrscore_workers 8\r\n",
            PodScrape(12.5, 1500.0, 0.0, 0.0, 8),
        ),
    ],
    ids=["full-page", "untyped", "labelled-summed", "timestamps", "exponent-crlf"],
)
def test_parses_valid_pages(text: str, expected: PodScrape) -> None:
    assert parse_pod_metrics(text, at=12.5) == expected


@pytest.mark.parametrize("missing", REQUIRED, ids=REQUIRED)
def test_a_page_missing_a_required_name_is_an_error_naming_it(missing: str) -> None:
    with pytest.raises(ScrapeError, match="lacks") as raised:
        parse_pod_metrics(page_without(missing), at=0.0)
    message = str(raised.value)
    assert missing in message
    for other in REQUIRED:
        if other != missing:
            assert other not in message


REST = "rscore_queue_depth 0\nrscore_inflight_requests 0\nrscore_workers 1\n"


def test_a_counter_typed_page_may_omit_the_total_suffix() -> None:
    """A sample of a family declared `counter` is the counter, with or without `_total`."""
    text = "# TYPE rscore_concurrency_seconds counter\nrscore_concurrency_seconds 42\n" + REST
    assert parse_pod_metrics(text, at=0.0).concurrency_seconds_total == 42.0


@pytest.mark.parametrize(
    "line",
    [
        "rscore_concurrency_seconds 42",  # untyped: a different name
        "# TYPE rscore_concurrency_seconds gauge\nrscore_concurrency_seconds 42",
        "rscore_concurrency_seconds_created 1700000000",
    ],
    ids=["untyped-without-total", "gauge-without-total", "created-only"],
)
def test_only_the_counter_total_counts(line: str) -> None:
    with pytest.raises(ScrapeError, match=r"lacks rscore_concurrency_seconds_total$"):
        parse_pod_metrics(line + "\n" + REST, at=0.0)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        # reads as a sample of a series the controller does not read: skipped unparsed
        ("this is not metrics", "lacks"),
        ("<html><body>404 page not found</body></html>", "unparsable"),
        ('{"status": "ok"}', "unparsable"),
        ("rscore_queue_depth\n", "unparsable"),
        ('rscore_queue_depth{a="b} 1\n', "unparsable"),
        ("# TYPE rscore_workers sausage\nrscore_workers 1\n", "unparsable"),
        (PAGE + "rscore_workers lots\n", "unparsable"),
        ("", "lacks"),
        ("\n\n   \n", "lacks"),
        ("# just a comment\n", "lacks"),
        ("some_other_exporter_metric 1\n", "lacks"),
    ],
    ids=[
        "prose",
        "html",
        "json",
        "no-value",
        "broken-label",
        "bad-type",
        "bad-value",
        "empty",
        "blank",
        "comment-only",
        "other-exporter",
    ],
)
def test_garbage_is_a_scrape_error(text: str, complaint: str) -> None:
    with pytest.raises(ScrapeError, match=complaint):
        parse_pod_metrics(text, at=0.0)


def test_scrape_error_is_a_value_error() -> None:
    assert issubclass(ScrapeError, ValueError)


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf"])
def test_non_finite_worker_count_is_a_scrape_error(value: str) -> None:
    with pytest.raises(ScrapeError, match="rscore_workers"):
        parse_pod_metrics(PAGE.replace("rscore_workers 4.0", f"rscore_workers {value}"), at=0.0)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("rscore_concurrency_seconds_total 1234.5", "rscore_concurrency_seconds_total NaN"),
        ("rscore_concurrency_seconds_total 1234.5", "rscore_concurrency_seconds_total +Inf"),
        ("rscore_queue_depth 2.0", "rscore_queue_depth -30"),
        ("rscore_inflight_requests 3.0", "rscore_inflight_requests NaN"),
    ],
    ids=["counter-nan", "counter-inf", "negative-queue", "inflight-nan"],
)
def test_a_page_that_parses_gives_a_usable_concurrency(old: str, new: str) -> None:
    """Either the page is refused as a ScrapeError, or every concurrency derived from it is
    a finite, non-negative number the policy can use."""
    try:
        current = parse_pod_metrics(PAGE.replace(old, new), at=10.0)
    except ScrapeError:
        return
    for previous in (None, scrape(0.0, 1000.0)):
        value = average_concurrency(previous, current)
        assert math.isfinite(value)
        assert value >= 0


# --- average concurrency -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        # the rate of the integral
        (scrape(0.0, 100.0), scrape(10.0, 130.0, queue=9, inflight=9), 3.0),
        (scrape(5.0, 0.0), scrape(20.0, 7.5), 0.5),
        (scrape(0.0, 50.0, queue=4), scrape(15.0, 50.0), 0.0),  # idle in between
        (scrape(0.0, 0.0), scrape(0.25, 1.0), 4.0),  # short interval
        # first scrape of a pod (or of a new leader): the instantaneous gauges
        (None, scrape(10.0, 999.0, queue=2, inflight=3), 5.0),
        (None, scrape(10.0, 0.0), 0.0),
        # counter went backwards (the sidecar restarted): the gauges
        (scrape(0.0, 500.0), scrape(10.0, 20.0, queue=1, inflight=2), 3.0),
        (scrape(0.0, 500.0), scrape(10.0, 499.999, inflight=1), 1.0),
        # no time between the scrapes, or time going backwards: the gauges
        (scrape(10.0, 100.0), scrape(10.0, 130.0, queue=1, inflight=1), 2.0),
        (scrape(10.0, 100.0), scrape(9.0, 130.0, inflight=6), 6.0),
    ],
    ids=[
        "rate",
        "rate-from-zero",
        "idle-interval",
        "short-interval",
        "first-scrape",
        "first-scrape-idle",
        "counter-reset",
        "counter-slightly-back",
        "zero-elapsed",
        "negative-elapsed",
    ],
)
def test_average_concurrency(
    previous: PodScrape | None, current: PodScrape, expected: float
) -> None:
    result = average_concurrency(previous, current)
    assert result == pytest.approx(expected)
    assert math.isfinite(result)


def test_instantaneous_concurrency_is_queue_plus_inflight() -> None:
    assert scrape(0.0, 0.0, queue=2.0, inflight=5.0).instantaneous_concurrency == 7.0


# --- the URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod_ip", "port", "url"),
    [
        ("10.244.1.7", 9090, "http://10.244.1.7:9090/metrics"),
        ("192.168.0.1", 8080, "http://192.168.0.1:8080/metrics"),
        ("fd00:10:244::7", 9090, "http://[fd00:10:244::7]:9090/metrics"),
        ("::1", 1, "http://[::1]:1/metrics"),
        ("2001:db8::1", 65535, "http://[2001:db8::1]:65535/metrics"),
    ],
    ids=["ipv4", "ipv4-other-port", "ipv6", "ipv6-loopback", "ipv6-max-port"],
)
def test_metrics_url(pod_ip: str, port: int, url: str) -> None:
    assert metrics_url(pod_ip, port) == url


# --- only the series used reach the parser -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("rscore_queue_depth 2.0", True),
        ('rscore_requests_total{code="200"} 7.0', True),
        ("rscore_scoring_duration_seconds_sum 1.5", True),
        ('rscore_scoring_duration_seconds_bucket{le="0.1"} 3.0', False),
        ("rscore_scoring_duration_seconds_count 3.0", False),
        ('rscore_requests_created{code="200"} 1.7e9', False),
        ("rscore_batch_rows_count 4.0", True),
        ('rscore_batch_rows_bucket{le="1"} 1.0', False),
        ("# TYPE rscore_scoring_duration_seconds histogram", True),
        ("# HELP rscore_worker_pss_bytes Proportional set size", False),
        ("# a comment", True),
        ('process_cpu_seconds_total{pid="1"} 3', False),
        ("rscore_workers lots", True),  # a used name: the parser judges the value
        ("<html>", True),  # no sample line at all: the parser rejects the page
        ("rscore_queue_depth", True),  # a name without a value: likewise
    ],
)
def test_only_the_used_series_reach_the_parser(line: str, kept: bool) -> None:
    assert (line in used_lines(PAGE + line + "\n").splitlines()) == kept


QUICK_PAGES = {
    "contract": PAGE,
    "labelled": 'rscore_requests_total{code="200",path="/score"} 3\n'
    'rscore_requests_total{ code = "429" } 1\n' + PAGE,
    "timestamps": "rscore_queue_depth 1 1700000000000\n" + PAGE,
    "special-values": "rscore_batch_max_rows NaN\nrscore_batch_rows_sum +Inf\n" + PAGE,
    "noise": PAGE + 'rscore_scoring_duration_seconds_bucket{le="0.1"} 3\n# TYPE x gauge\nx 1\n',
    "crlf": PAGE.replace("\n", "\r\n"),
}


@pytest.mark.parametrize("text", QUICK_PAGES.values(), ids=QUICK_PAGES.keys())
def test_the_one_pass_read_gives_the_parsers_samples(text: str) -> None:
    quick = quick_samples(text)
    assert quick is not None

    def comparable(samples: list[tuple[str, str, float]]) -> list[str]:
        return sorted(repr((n, c, float(v))) for n, c, v in samples)  # NaN != NaN

    assert comparable(quick) == comparable(parsed_samples(text))


@pytest.mark.parametrize("text", QUICK_PAGES.values(), ids=QUICK_PAGES.keys())
def test_a_cold_and_a_warm_read_give_the_same_samples(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quick_samples remembers the heads of lines it has read: the second read of a page
    (every head known) must give what the first (none known) gave, and the parser."""
    from rscore.autoscaler import scrape

    monkeypatch.setattr(scrape, "_HEADS", {})

    def comparable(samples: list[tuple[str, str, float]] | None) -> list[str]:
        assert samples is not None
        return sorted(repr((n, c, float(v))) for n, c, v in samples)  # NaN != NaN

    cold = comparable(quick_samples(text))
    assert scrape._HEADS  # the first read filled the cache
    warm = comparable(quick_samples(text))
    assert cold == warm == comparable(parsed_samples(text))


@pytest.mark.parametrize(
    "line",
    [
        'rscore_requests_total{code="2\\"00"} 1',  # an escape in a label
        "# TYPE rscore_concurrency_seconds counter\nrscore_concurrency_seconds 42",
        "rscore_workers 1_000",
        "rscore_workers lots",
        "<html>",
        "# TYPE rscore_workers sausage",
    ],
)
def test_anything_but_the_plain_form_goes_to_the_parser(line: str) -> None:
    assert quick_samples(PAGE + line + "\n") is None
