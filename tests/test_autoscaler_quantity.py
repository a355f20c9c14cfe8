"""rscore.autoscaler.quantity: Kubernetes resource quantities as millicores and bytes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from rscore.autoscaler.quantity import cpu_millicores, memory_bytes, parse_quantity


@pytest.mark.parametrize(
    ("quantity", "base_units"),
    [
        # decimal SI suffixes
        ("123456789n", Decimal("0.123456789")),
        ("250000u", Decimal("0.25")),
        ("250m", Decimal("0.25")),
        ("2", Decimal(2)),
        ("3k", Decimal(3000)),
        ("3M", Decimal(3_000_000)),
        ("3G", Decimal(3 * 10**9)),
        ("3T", Decimal(3 * 10**12)),
        ("3P", Decimal(3 * 10**15)),
        ("3E", Decimal(3 * 10**18)),
        # binary suffixes
        ("1Ki", Decimal(1024)),
        ("200Mi", Decimal(200 * 2**20)),
        ("0.5Gi", Decimal(2**29)),
        ("2Ti", Decimal(2 * 2**40)),
        ("1Pi", Decimal(2**50)),
        ("1Ei", Decimal(2**60)),
        # plain and signed numbers, decimal exponents
        ("1.5", Decimal("1.5")),
        ("0.1", Decimal("0.1")),
        (".5", Decimal("0.5")),
        ("+1", Decimal(1)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("5e-3", Decimal("0.005")),
        (" 100m ", Decimal("0.1")),
        # numbers as YAML/JSON give them
        (2, Decimal(2)),
        (0, Decimal(0)),
        (0.25, Decimal("0.25")),
        (1.5, Decimal("1.5")),
    ],
    ids=lambda v: repr(v) if not isinstance(v, Decimal) else None,
)
def test_parse_quantity(quantity: str | int | float, base_units: Decimal) -> None:
    assert parse_quantity(quantity) == base_units


@pytest.mark.parametrize(
    ("quantity", "millicores"),
    [
        ("123456789n", 123.456789),  # metrics-server reports CPU usage in nanocores
        ("5000000n", 5.0),
        ("1500u", 1.5),
        ("250m", 250.0),
        ("1", 1000.0),
        ("1.5", 1500.0),
        ("0.001", 1.0),
        (2, 2000.0),
        (0.5, 500.0),
        ("0", 0.0),
    ],
    ids=[
        "nanocores",
        "5ms-nanocores",
        "microcores",
        "millicores",
        "one-core",
        "1.5-cores",
        "0.001-cores",
        "int",
        "float",
        "zero",
    ],
)
def test_cpu_millicores(quantity: str | int | float, millicores: float) -> None:
    assert cpu_millicores(quantity) == pytest.approx(millicores, rel=1e-12)


@pytest.mark.parametrize(
    ("quantity", "bytes_"),
    [
        ("0.5Gi", 536_870_912.0),
        ("128Mi", 134_217_728.0),
        ("1234Ki", 1_263_616.0),  # metrics-server reports memory in Ki
        ("1G", 1e9),
        ("1M", 1e6),
        ("1k", 1e3),
        ("1000", 1000.0),
        (1048576, 1048576.0),
    ],
    ids=["0.5Gi", "128Mi", "Ki", "G", "M", "k", "plain", "int"],
)
def test_memory_bytes(quantity: str | int, bytes_: float) -> None:
    assert memory_bytes(quantity) == bytes_


def test_results_are_plain_floats() -> None:
    assert type(cpu_millicores("250m")) is float
    assert type(memory_bytes("1Gi")) is float


@pytest.mark.parametrize(
    ("quantity", "complaint"),
    [
        ("", "not a Kubernetes quantity"),
        ("   ", "not a Kubernetes quantity"),
        ("abc", "not a Kubernetes quantity"),
        ("Mi", "not a Kubernetes quantity"),
        ("1 Mi", "not a Kubernetes quantity"),
        ("1.2.3", "not a Kubernetes quantity"),
        (".", "not a Kubernetes quantity"),
        ("1,5", "not a Kubernetes quantity"),
        ("1Mi2", "not a Kubernetes quantity"),
        ("nan", "not a Kubernetes quantity"),
        ("Infinity", "not a Kubernetes quantity"),
        ("1K", "unknown suffix 'K'"),  # kilo is lower-case k; K is nothing
        ("1ki", "unknown suffix 'ki'"),
        ("1mi", "unknown suffix 'mi'"),
        ("1MB", "unknown suffix 'MB'"),
        ("1Gb", "unknown suffix 'Gb'"),
        ("1e", "unknown suffix 'e'"),
        ("100cores", "unknown suffix 'cores'"),
    ],
    ids=repr,
)
def test_bad_strings_raise_value_error_naming_the_input(quantity: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as raised:
        parse_quantity(quantity)
    assert repr(quantity) in str(raised.value)
    # The converters pass the same error on.
    with pytest.raises(ValueError, match=complaint):
        cpu_millicores(quantity)
    with pytest.raises(ValueError, match=complaint):
        memory_bytes(quantity)
