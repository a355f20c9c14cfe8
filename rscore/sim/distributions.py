"""Delay distributions (pod start, node provisioning) and seeded random streams.

A delay is written in a scenario either as a number of seconds (constant) or as a table
`{ kind = "lognormal", mean_s = 30, cv = 0.3 }`; kinds: constant, exponential,
lognormal, uniform. Random numbers come from numpy generators spawned from one seed, one
stream per purpose, so that a change of policy never shifts the arrivals or the service
times (common random numbers make policies comparable run against run).

Never reads the clock or the environment; every draw comes from a stream given to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BLOCK", "Delay", "Streams", "lognormal_params", "parse_delay"]

BLOCK = 65536  # random numbers drawn per numpy call: amortises the call, bounded memory
DELAY_KINDS = ("constant", "exponential", "lognormal", "uniform")


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """(mu, sigma) of the normal under a lognormal with this mean and coefficient of
    variation."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


@dataclass(frozen=True)
class Delay:
    """A non-negative random duration in seconds."""

    kind: str = "constant"
    mean_s: float = 0.0
    cv: float = 0.0
    low_s: float = 0.0
    high_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in DELAY_KINDS:
            raise ValueError(f"delay kind must be one of {DELAY_KINDS}, got {self.kind!r}")
        if self.mean_s < 0 or self.cv < 0 or self.low_s < 0 or self.high_s < self.low_s:
            raise ValueError(f"invalid delay {self}")

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.low_s + self.high_s) / 2.0
        return self.mean_s

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "constant" or (self.mean_s == 0 and self.kind != "uniform"):
            return self.mean_s
        if self.kind == "exponential":
            return float(rng.exponential(self.mean_s))
        if self.kind == "lognormal":
            if self.cv == 0:
                return self.mean_s
            mu, sigma = lognormal_params(self.mean_s, self.cv)
            return float(rng.lognormal(mu, sigma))
        return float(rng.uniform(self.low_s, self.high_s))


def parse_delay(value: Any, where: str) -> Delay:
    """A scenario's delay: a number (constant seconds) or a table with a `kind`."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected seconds or a table, got {value!r}")
    if isinstance(value, int | float):
        return Delay("constant", float(value))
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected seconds or a table, got {value!r}")
    allowed = {"kind", "mean_s", "cv", "low_s", "high_s", "value_s"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    kind = value.get("kind", "constant")
    mean: Any = value.get("value_s", value.get("mean_s", 0.0))  # TOML: float() checks it
    try:
        return Delay(
            kind=kind,
            mean_s=float(mean),
            cv=float(value.get("cv", 0.0)),
            low_s=float(value.get("low_s", 0.0)),
            high_s=float(value.get("high_s", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


class Streams:
    """Independent generators for each purpose, all derived from one seed."""

    # New names go last: a child's stream depends on its index, so existing runs keep
    # their numbers.
    NAMES = ("arrivals", "service", "routing", "pods", "nodes", "noise", "history")

    def __init__(self, seed: int) -> None:
        children = np.random.SeedSequence(seed).spawn(len(self.NAMES))
        self._rngs = {
            name: np.random.Generator(np.random.PCG64(child))
            for name, child in zip(self.NAMES, children, strict=True)
        }

    def __getitem__(self, name: str) -> np.random.Generator:
        return self._rngs[name]
