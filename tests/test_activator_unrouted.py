"""rscore.autoscaler.unrouted: an activator's /metrics page as held requests, and the rule that
unknown held demand never scales anything down. Pure functions, tables of cases."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from rscore.activator.metrics import ActivatorMetrics
from rscore.autoscaler.policy import Recommendation, hold_when_unknown
from rscore.autoscaler.scrape import ScrapeError
from rscore.autoscaler.unrouted import held_requests

PAGE = """# HELP rscore_activator_held_requests Requests held now, waiting for a ready pod
# TYPE rscore_activator_held_requests gauge
rscore_activator_held_requests {held}
# HELP rscore_activator_requests_total Answered requests by status
# TYPE rscore_activator_requests_total counter
rscore_activator_requests_total{{code="200"}} 12.0
"""


@pytest.mark.parametrize(("held", "expected"), [("0.0", 0.0), ("3.0", 3.0), ("1000", 1000.0)])
def test_held_requests_are_read_by_name(held: str, expected: float) -> None:
    assert held_requests(PAGE.format(held=held)) == expected


def test_the_real_activator_page_is_what_the_controller_reads() -> None:
    """The contract, end to end of the page: the activator's own registry, rendered by
    prometheus_client, read back by name (the autoscaler never imports the activator)."""
    metrics = ActivatorMetrics()
    assert held_requests(generate_latest(metrics.registry).decode()) == 0.0
    metrics.held.inc(3)
    metrics.count(200)
    assert held_requests(generate_latest(metrics.registry).decode()) == 3.0


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("rscore_activator_requests_total 3\n", "lacks rscore_activator_held_requests"),
        (PAGE.format(held="NaN"), "rscore_activator_held_requests is nan"),
        (PAGE.format(held="-1"), "rscore_activator_held_requests is -1"),
        (PAGE.format(held="+Inf"), "rscore_activator_held_requests is inf"),
        ("rscore_activator_held_requests one two\n", "unparsable"),
    ],
)
def test_a_page_that_is_no_count_is_a_scrape_error(page: str, message: str) -> None:
    with pytest.raises(ScrapeError, match=message):
        held_requests(page)


def rec(replicas: int, nodes: int | None = None) -> Recommendation:
    return Recommendation(
        desired_replicas=replicas,
        desired_nodes=nodes,
        mode="Stable",
        reason="policy",
        observed_concurrency=0.0,
    )


@pytest.mark.parametrize(
    ("desired", "current", "expected_replicas", "expected_nodes"),
    [
        ((0, None), (3, None), 3, None),  # down to zero: held at three
        ((1, 1), (3, 2), 3, 2),  # pods and nodes both held
        ((5, 3), (3, 2), 5, 3),  # up is up: unknown held demand only adds
        ((3, 2), (3, 2), 3, 2),
        ((2, None), (3, 4), 3, None),  # no pool in the decision: none invented
    ],
)
def test_unknown_held_demand_never_scales_down(
    desired: tuple[int, int | None],
    current: tuple[int, int | None],
    expected_replicas: int,
    expected_nodes: int | None,
) -> None:
    held = hold_when_unknown(rec(*desired), current[0], current[1], "activator x: timed out")
    assert (held.desired_replicas, held.desired_nodes) == (expected_replicas, expected_nodes)
    if (expected_replicas, expected_nodes) != desired:
        assert "held requests unknown (activator x: timed out)" in held.reason
    else:
        assert held == rec(*desired)  # nothing to hold: the decision as it was
