"""Demand that no scoring pod sees yet: requests held by `rscore activator`.

`held_requests` reads an activator's `/metrics` page (prometheus_client's parser) and
returns its `rscore_activator_held_requests` (while it cannot be read, the policy scales
nothing down: `Observation.unrouted_unknown`). Pure: no HTTP here (the
fetch lives in `rscore.autoscaler.kube_io`), no clock, no logging. It never imports the
activator: the metric is read by its name, the contract in docs/autoscaler.md.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from rscore.autoscaler.scrape import ScrapeError

__all__ = ["HELD_REQUESTS", "held_requests"]

HELD_REQUESTS = "rscore_activator_held_requests"


def held_requests(text: str) -> float:
    """The page's held requests; ScrapeError if it is unparsable, lacks the gauge or
    reports a value that is no count."""
    values = []
    try:
        for family in text_string_to_metric_families(text):
            values += [s.value for s in family.samples if s.name == HELD_REQUESTS]
    except ValueError as error:
        raise ScrapeError(f"unparsable metrics page: {error}") from error
    if not values:
        raise ScrapeError(f"metrics page lacks {HELD_REQUESTS}")
    total = sum(values)
    if not math.isfinite(total) or total < 0:
        raise ScrapeError(f"{HELD_REQUESTS} is {total}")
    return total
