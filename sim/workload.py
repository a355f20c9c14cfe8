"""Arrival processes: Poisson, diurnal, MMPP bursts, and replay of real traces.

Each workload yields the arrival times (seconds from the start of the run, sorted) as
numpy blocks, so a simulated day at 100 req/s never holds one Python float per request.
Trace replay reads the Azure LLM CSVs (one timestamp per request) and per-second count
files (one integer per line, optionally gzipped; arrivals spread uniformly inside each
second). `scale` multiplies the rate: counts are scaled by randomised rounding, timestamps
are thinned (scale < 1) or duplicated with a uniform jitter inside the next second
(scale > 1). `start_s` skips that much of the trace.

Never reads the clock; every random draw comes from the generator passed in.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["WORKLOAD_KINDS", "WorkloadSpec", "arrival_blocks", "counts_per_bin", "load_trace"]

WORKLOAD_KINDS = ("poisson", "diurnal", "mmpp", "trace")
_CHUNK_S = 3600.0  # rate-driven workloads are generated an hour at a time


@dataclass(frozen=True)
class WorkloadSpec:
    kind: str = "poisson"
    rate: float = 10.0  # req/s: Poisson rate, diurnal mean
    amplitude: float = 0.5  # diurnal: relative swing around the mean
    period_s: float = 86400.0
    phase_s: float = 0.0  # diurnal: the peak is at period/4 - phase
    noise: float = 0.1  # diurnal: relative standard deviation of the rate per noise step
    noise_step_s: float = 60.0
    rates: tuple[float, ...] = (5.0, 50.0)  # mmpp: rate of each state
    mean_dwell_s: tuple[float, ...] = (300.0, 30.0)  # mmpp: mean time in each state
    path: Path | None = None  # trace: resolved against the scenario's folder
    format: str = "auto"  # trace: "azure" (CSV timestamps), "counts", or by suffix
    scale: float = 1.0
    start_s: float = 0.0
    rows: int = 1  # rows per request (a batch of b requests has b * rows rows)

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            raise ValueError(f"workload kind must be one of {WORKLOAD_KINDS}, got {self.kind!r}")
        if self.rate < 0 or self.scale <= 0 or self.start_s < 0 or self.rows < 1:
            raise ValueError("workload: rate >= 0, scale > 0, start_s >= 0, rows >= 1")
        if not 0 <= self.amplitude <= 1 or self.noise < 0 or self.period_s <= 0:
            raise ValueError("workload: amplitude in [0, 1], noise >= 0, period_s > 0")
        if self.noise_step_s <= 0:
            raise ValueError("workload: noise_step_s must be > 0")
        if self.kind == "mmpp" and (
            len(self.rates) != len(self.mean_dwell_s)
            or len(self.rates) < 1
            or any(r < 0 for r in self.rates)
            or any(d <= 0 for d in self.mean_dwell_s)
        ):
            raise ValueError("workload mmpp: rates and mean_dwell_s of equal length, > 0")
        if self.kind == "trace" and self.path is None:
            raise ValueError("workload trace: `path` is required")
        if self.format not in ("auto", "azure", "counts"):
            raise ValueError("workload format must be auto, azure or counts")


def _piecewise(
    starts: np.ndarray, ends: np.ndarray, rates: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Poisson arrivals of a piecewise-constant rate: a Poisson count per piece, placed
    uniformly inside it (exact for a constant rate), sorted."""
    counts = rng.poisson(np.maximum(rates, 0.0) * (ends - starts))
    total = int(counts.sum())
    if total == 0:
        return np.empty(0)
    lows = np.repeat(starts, counts)
    widths = np.repeat(ends - starts, counts)
    times = lows + rng.random(total) * widths
    times.sort()
    return times


def _poisson(spec: WorkloadSpec, duration: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    if spec.rate <= 0:
        return
    mean_gap = 1.0 / spec.rate
    t0 = 0.0
    block = 65536
    while t0 < duration:
        times = t0 + np.cumsum(rng.exponential(mean_gap, block))
        t0 = float(times[-1])
        yield times[times < duration]


def _diurnal(spec: WorkloadSpec, duration: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    step = 1.0  # the sinusoid is constant enough within a second for any period >= minutes
    t0 = 0.0
    carried: tuple[int, float] | None = None  # a noise step that spans two chunks
    while t0 < duration:
        t1 = min(duration, t0 + _CHUNK_S)
        starts = np.arange(t0, t1, step)
        ends = np.minimum(starts + step, t1)
        mids = (starts + ends) / 2.0
        rate = spec.rate * (
            1.0 + spec.amplitude * np.sin(2 * math.pi * (mids + spec.phase_s) / spec.period_s)
        )
        if spec.noise > 0:
            # One noise factor per noise step, drawn for the steps this chunk touches.
            first = int(t0 // spec.noise_step_s)
            last = int((t1 - 1e-9) // spec.noise_step_s)
            factors = np.maximum(0.0, 1.0 + spec.noise * rng.standard_normal(last - first + 1))
            if carried is not None and carried[0] == first:
                factors[0] = carried[1]  # one factor per step, even across chunks
            carried = (last, float(factors[-1]))
            rate = rate * factors[(mids // spec.noise_step_s).astype(np.int64) - first]
        yield _piecewise(starts, ends, rate, rng)
        t0 = t1


def _mmpp(spec: WorkloadSpec, duration: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """A Markov-modulated Poisson process cycling through its states in order (with two
    states: calm and burst), each held for an exponential time."""
    state, t = 0, 0.0
    n = len(spec.rates)
    while t < duration:
        starts, ends, rates = [], [], []
        while t < duration and len(starts) < 4096:
            dwell = float(rng.exponential(spec.mean_dwell_s[state]))
            starts.append(t)
            t = min(duration, t + dwell)
            ends.append(t)
            rates.append(spec.rates[state])
            state = (state + 1) % n
        yield _piecewise(np.array(starts), np.array(ends), np.array(rates), rng)


@lru_cache(maxsize=4)
def load_trace(path: Path, fmt: str) -> tuple[str, np.ndarray]:
    """("times", seconds since the first request) or ("counts", requests per second)."""
    if fmt == "auto":
        fmt = "azure" if path.name.endswith((".csv", ".csv.gz")) else "counts"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        if fmt == "azure":
            reader = csv.reader(handle)
            header = next(reader)
            if not header or header[0].strip().upper() != "TIMESTAMP":
                raise ValueError(f"{path}: expected a TIMESTAMP column first, got {header[:1]}")
            stamps = np.array([row[0].strip().replace(" ", "T") for row in reader if row])
            times = stamps.astype("datetime64[ns]")
            if times.size == 0:
                raise ValueError(f"{path}: no requests")
            # Rows need not be in time order: time 0 is the earliest request.
            seconds = (times - times.min()).astype(np.int64) / 1e9
            seconds.sort()
            return "times", seconds
        counts = np.array(handle.read().split(), dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError(f"{path}: negative count")
    return "counts", counts


def _trace(spec: WorkloadSpec, duration: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    assert spec.path is not None  # checked by WorkloadSpec
    shape, data = load_trace(spec.path, spec.format)
    if shape == "counts":
        first = int(spec.start_s)
        shift = spec.start_s - first  # a fractional start skips part of its second too
        last = min(len(data), first + math.ceil(duration + shift))
        for lo in range(first, last, int(_CHUNK_S)):
            hi = min(last, lo + int(_CHUNK_S))
            scaled = data[lo:hi] * spec.scale
            # Randomised rounding keeps the scaled mean exact without adding Poisson noise.
            counts = np.floor(scaled + rng.random(hi - lo)).astype(np.int64)
            seconds = np.arange(lo - first, hi - first, dtype=np.float64) - shift
            times = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
            times.sort()
            yield times[(times >= 0.0) & (times < duration)]
        return
    times = data[(data >= spec.start_s) & (data < spec.start_s + duration)] - spec.start_s
    whole, frac = int(spec.scale), spec.scale - int(spec.scale)
    parts = [np.repeat(times, whole)] if whole >= 1 else []
    if whole >= 1 and parts[0].size:
        # Copies beyond the first are jittered so they do not arrive in the same instant.
        jitter = rng.random(parts[0].size)
        jitter[::whole] = 0.0
        parts[0] = parts[0] + jitter
    if frac > 0:
        kept = times[rng.random(times.size) < frac]
        parts.append(kept + (rng.random(kept.size) if whole >= 1 else 0.0))
    merged = np.sort(np.concatenate(parts)) if parts else np.empty(0)
    merged = merged[merged < duration]
    for lo in range(0, merged.size, 1 << 20):
        yield merged[lo : lo + (1 << 20)]


def arrival_blocks(
    spec: WorkloadSpec, duration_s: float, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Sorted arrival times in [0, duration_s), block after block (blocks are in order)."""
    generator = {"poisson": _poisson, "diurnal": _diurnal, "mmpp": _mmpp, "trace": _trace}
    for block in generator[spec.kind](spec, duration_s, rng):
        if block.size:
            yield block


def counts_per_bin(
    spec: WorkloadSpec, duration_s: float, rng: np.random.Generator, bin_s: float
) -> np.ndarray:
    """How many requests arrive in each bin of `bin_s` seconds (the oracle's foresight)."""
    bins = max(1, math.ceil(duration_s / bin_s))
    counts = np.zeros(bins, dtype=np.int64)
    for block in arrival_blocks(spec, duration_s, rng):
        counts += np.bincount((block // bin_s).astype(np.int64), minlength=bins)[:bins]
    return counts
