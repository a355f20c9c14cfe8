"""Service times of R calls: exponential, lognormal, or resampled from measured times.

A call that scores `r` rows takes `(a + c * r) * Z` seconds: `c = per_row_s`,
`a = mean_s - c` (so a one-row call averages `mean_s`), and `Z` is a unit-mean draw of
the chosen shape (exponential; lognormal with coefficient of variation `cv`; or a
measured time divided by the measured mean). That is the dynamic-batching cost curve
`a + c * b` with the variability of the real scorer. Draws come in numpy blocks.

Never reads the clock; reads only the empirical file it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from rscore.sim.distributions import lognormal_params

__all__ = ["SERVICE_KINDS", "ServiceSpec", "load_measured_times"]

SERVICE_KINDS = ("exponential", "lognormal", "empirical")
DEFAULT_MEAN_S = 0.05  # a one-row call, unless measured times say otherwise


@lru_cache(maxsize=4)
def load_measured_times(path: Path) -> np.ndarray:
    """Seconds, one per line; blank lines and `#` comments ignored."""
    values = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{path}:{number}: not a number: {text!r}") from None
        if not value > 0:
            raise ValueError(f"{path}:{number}: service times must be > 0, got {value}")
        values.append(value)
    if not values:
        raise ValueError(f"{path}: no service times")
    return np.array(values)


@dataclass(frozen=True)
class ServiceSpec:
    kind: str = "exponential"
    mean_s: float | None = None  # None: 0.05, or with `empirical` the measured mean
    cv: float = 1.0  # lognormal only (exponential has cv 1, empirical its own)
    path: Path | None = None  # empirical: measured times, one per line
    per_row_s: float | None = None  # None: 10% of mean_s

    def __post_init__(self) -> None:
        if self.kind not in SERVICE_KINDS:
            raise ValueError(f"service kind must be one of {SERVICE_KINDS}, got {self.kind!r}")
        if self.kind == "empirical" and self.path is None:
            raise ValueError("service empirical: `path` is required")
        if self.kind != "empirical" and self.mean_s is None:
            object.__setattr__(self, "mean_s", DEFAULT_MEAN_S)
        if self.mean_s is not None and not self.mean_s > 0:
            raise ValueError(f"service mean_s must be > 0, got {self.mean_s}")
        if self.cv < 0:
            raise ValueError("service cv must be >= 0")
        if self.per_row_s is not None and not 0 <= self.per_row_s <= self.mean:
            raise ValueError("service per_row_s must be in [0, mean_s]")

    @property
    def mean(self) -> float:
        """Mean time of a one-row call."""
        if self.mean_s is not None:
            return self.mean_s
        assert self.path is not None
        return float(load_measured_times(self.path).mean())

    @property
    def row_cost(self) -> float:
        return 0.1 * self.mean if self.per_row_s is None else self.per_row_s

    def call_mean(self, rows: int) -> float:
        """Mean time of one R call scoring `rows` rows: a + c * rows."""
        c = self.row_cost
        return self.mean - c + c * rows

    def unit_block(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` unit-mean draws of the service shape."""
        if self.kind == "exponential":
            return rng.exponential(1.0, n)
        if self.kind == "lognormal":
            if self.cv == 0:
                return np.ones(n)
            mu, sigma = lognormal_params(1.0, self.cv)
            return rng.lognormal(mu, sigma, n)
        assert self.path is not None
        measured = load_measured_times(self.path)
        draws: np.ndarray = measured[rng.integers(0, measured.size, n)] / measured.mean()
        return draws
