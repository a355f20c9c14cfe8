"""cores: how many R workers the container's CPU affinity and cgroup quota allow."""

import pytest

from rscore.r_scorer.cores import parse_cpu_max, usable_cores


@pytest.mark.parametrize(
    ("affinity", "quota", "period", "expected"),
    [
        (8, None, None, 8),
        (8, None, 100000, 8),
        (8, -1, 100000, 8),
        (8, 0, 100000, 8),
        (8, 200000, None, 8),
        (8, 200000, 0, 8),
        (8, 200000, 100000, 2),
        (4, 800000, 100000, 4),
        (4, 400000, 100000, 4),
        (4, 1600000, 100000, 4),
        (8, 150000, 100000, 1),
        (8, 250000, 100000, 2),
        (8, 399999, 100000, 3),
        (8, 50000, 100000, 1),
        (8, 1, 100000, 1),
        (0, None, None, 1),
        (-2, None, None, 1),
        (0, 300000, 100000, 1),
        (1, 500000, 100000, 1),
        (64, 3200000, 100000, 32),
        (16, 600000, 200000, 3),
    ],
    ids=[
        "no-quota",
        "no-quota-with-period",
        "negative-quota-is-none",
        "zero-quota-is-none",
        "no-period",
        "zero-period",
        "quota-below-affinity",
        "quota-above-affinity",
        "quota-equals-affinity",
        "quota-far-above-affinity",
        "1500m-floors-to-1",
        "2500m-floors-to-2",
        "3999m-floors-to-3",
        "500m-never-below-1",
        "tiny-quota-never-below-1",
        "zero-affinity-at-least-1",
        "negative-affinity-at-least-1",
        "zero-affinity-with-quota",
        "one-core-big-quota",
        "large-host",
        "other-period",
    ],
)
def test_usable_cores(affinity, quota, period, expected):
    assert usable_cores(affinity, quota, period) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000", (None, None)),
        ("max 100000\n", (None, None)),
        ("150000 100000", (150000, 100000)),
        ("150000 100000\n", (150000, 100000)),
        ("  200000   50000  ", (200000, 50000)),
        ("-1 100000", (-1, 100000)),
        ("max", (None, None)),
        ("", (None, None)),
        ("\n", (None, None)),
        ("150000", (None, None)),
        ("150000 100000 7", (None, None)),
    ],
    ids=[
        "max",
        "max-newline",
        "quota",
        "quota-newline",
        "extra-whitespace",
        "negative-quota",
        "max-alone",
        "empty",
        "blank-line",
        "one-field",
        "three-fields",
    ],
)
def test_parse_cpu_max(text, expected):
    assert parse_cpu_max(text) == expected


@pytest.mark.parametrize(
    "text", ["abc 100000", "150000 max", "1.5 100000"], ids=["word", "max-period", "fraction"]
)
def test_parse_cpu_max_garbage_raises_value_error(text):
    with pytest.raises(ValueError, match="invalid literal for int"):
        parse_cpu_max(text)


@pytest.mark.parametrize(
    ("text", "affinity", "expected"),
    [
        ("max 100000", 6, 6),
        ("150000 100000", 6, 1),
        ("400000 100000", 6, 4),
        ("900000 100000", 6, 6),
    ],
    ids=["unlimited", "1500m", "4-cpus", "limit-above-affinity"],
)
def test_cpu_max_into_usable_cores(text, affinity, expected):
    assert usable_cores(affinity, *parse_cpu_max(text)) == expected
