"""Kubernetes resource quantities ("250m", "1.5", "200Mi", "123456n") as plain numbers.

Pure conversions used when reading pod requests, node allocatable and PodMetrics. CPU
comes out in millicores and memory in bytes. Never guesses: a string that is not a
quantity raises ValueError naming it.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = ["cpu_millicores", "memory_bytes", "parse_quantity"]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(quantity: str | int | float) -> Decimal:
    """The quantity's value in base units (cores, bytes)."""
    if isinstance(quantity, bool) or not isinstance(quantity, str | int | float):
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    if isinstance(quantity, int | float):
        if not math.isfinite(quantity):
            raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
        return Decimal(str(quantity))
    match = _QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    number, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation as error:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}") from error
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix in _DECIMAL:
        return value * _DECIMAL[suffix]
    raise ValueError(f"unknown suffix {suffix!r} in quantity {quantity!r}")


def cpu_millicores(quantity: str | int | float) -> float:
    return float(parse_quantity(quantity) * 1000)


def memory_bytes(quantity: str | int | float) -> float:
    return float(parse_quantity(quantity))
