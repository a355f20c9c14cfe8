"""Arrival processes: Poisson, diurnal, MMPP bursts, and replay of real traces.

Each workload yields the arrival times (seconds from the start of the run, sorted) as
numpy blocks, so a simulated day at 100 req/s never holds one Python float per request.
Trace replay reads the Azure LLM CSVs (one timestamp per request) and per-second count
files (one integer per line, optionally gzipped; arrivals spread uniformly inside each
second). `scale` multiplies the rate in one of two ways (`scale_mode`):

- "multiply" (the default, for stress tests): every second's count is scaled (randomised
  rounding), timestamps are thinned (scale < 1) or duplicated with a uniform jitter
  inside the next second (scale > 1): each burst becomes `scale` times bigger.
- "rate": `scale` times as many independent users. The trace's requests are counted per
  `rate_window_s` window and the arrivals are a Poisson process at `scale` x that mean
  rate, window by window: the trace's shape over windows, Poisson noise within them.

`start_s` skips that much of the trace.

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

__all__ = [
    "SCALE_MODES",
    "WORKLOAD_KINDS",
    "WorkloadSpec",
    "arrival_blocks",
    "counts_per_bin",
    "describe",
    "load_trace",
    "scale_fields",
]

WORKLOAD_KINDS = ("poisson", "diurnal", "mmpp", "trace")
SCALE_MODES = ("multiply", "rate")
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
    scale_mode: str = "multiply"  # trace: "multiply" each second, or "rate" (Poisson)
    rate_window_s: float = 60.0  # trace, rate mode: the rate is averaged over this window
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
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
        if not self.rate_window_s > 0 or not math.isfinite(self.rate_window_s):
            raise ValueError(f"rate_window_s must be > 0, got {self.rate_window_s!r}")
        if (
            self.kind == "trace"
            and self.scale_mode == "rate"
            and self.path is not None
            and _trace_format(self.path, self.format) == "counts"
            and self.rate_window_s != int(self.rate_window_s)
        ):
            raise ValueError(
                "rate_window_s must be a whole number of seconds for a per-second count "
                f"trace, got {self.rate_window_s!r}"
            )


def _trace_format(path: Path, fmt: str) -> str:
    """The trace's format, "azure" or "counts": `fmt`, or by suffix when "auto"."""
    if fmt == "auto":
        return "azure" if path.name.endswith((".csv", ".csv.gz")) else "counts"
    return fmt


def scale_fields(spec: WorkloadSpec) -> dict[str, object]:
    """How the workload was scaled, for the summary: `scale`, `scale_mode` and
    `rate_window_s` (None in multiply mode, where no window is used)."""
    return {
        "scale": spec.scale,
        "scale_mode": spec.scale_mode,
        "rate_window_s": spec.rate_window_s if spec.scale_mode == "rate" else None,
    }


def describe(spec: WorkloadSpec) -> str:
    """One line saying what drives the run, printed above the result tables."""
    if spec.kind == "poisson":
        return f"workload: poisson {spec.rate:g} req/s"
    if spec.kind == "diurnal":
        return f"workload: diurnal, mean {spec.rate:g} req/s, amplitude {spec.amplitude:g}"
    if spec.kind == "mmpp":
        return f"workload: mmpp, rates {', '.join(f'{r:g}' for r in spec.rates)} req/s"
    assert spec.path is not None  # checked by WorkloadSpec
    if spec.scale_mode == "rate":
        how = f"Poisson at {spec.scale:g} x the rate of each {spec.rate_window_s:g} s window"
    elif _trace_format(spec.path, spec.format) == "counts":
        how = f"each second's count x {spec.scale:g}"
    elif spec.scale < 1:
        how = f"each request kept with probability {spec.scale:g}"
    else:
        how = f"each request x {spec.scale:g}, copies within the next second"
    return (
        f"workload: trace {spec.path.name}, scale {spec.scale:g}, "
        f"scale_mode {spec.scale_mode} ({how})"
    )


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
    times: np.ndarray = lows + rng.random(total) * widths
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
        starts: list[float] = []
        ends: list[float] = []
        rates: list[float] = []
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
    fmt = _trace_format(path, fmt)
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


def _seconds_span(spec: WorkloadSpec, seconds: int, duration: float) -> tuple[int, float, int]:
    """A count trace's seconds the run reads: (first, the part of it skipped, end)."""
    first = int(spec.start_s)
    shift = spec.start_s - first  # a fractional start skips part of its second too
    return first, shift, min(seconds, first + math.ceil(duration + shift))


def _windowed_rates(
    window_starts: np.ndarray, window_ends: np.ndarray, counts: np.ndarray, *, scale: float,
    duration: float, rng: np.random.Generator,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Rate mode: Poisson arrivals at `scale` x (count / length) in each window (run
    time, windows in order), cut to [0, duration), an hour of run time per block. A
    window is split at the hour boundaries; the pieces keep its rate."""
    lengths = window_ends - window_starts
    rates = np.where(lengths > 0, counts / np.where(lengths > 0, lengths, 1.0), 0.0) * scale
    lo = np.maximum(window_starts, 0.0)
    hi = np.minimum(window_ends, duration)
    keep = hi > lo
    lo, hi, rates = lo[keep], hi[keep], rates[keep]
    if lo.size == 0:
        return
    hours = np.arange(_CHUNK_S, float(hi[-1]), _CHUNK_S)
    cuts = np.unique(np.concatenate([lo, hi, hours]))
    starts, ends = cuts[:-1], cuts[1:]
    owner = np.searchsorted(lo, starts, side="right") - 1  # the window a piece starts in
    inside = starts < hi[owner]  # pieces in a gap between windows are not arrivals
    starts, ends, piece_rates = starts[inside], ends[inside], rates[owner[inside]]
    chunk = (starts // _CHUNK_S).astype(np.int64)
    bounds = np.flatnonzero(np.diff(chunk)) + 1
    for part in np.split(np.arange(starts.size), bounds):
        yield _piecewise(starts[part], ends[part], piece_rates[part], rng)


def _trace_rate(
    spec: WorkloadSpec, shape: str, data: np.ndarray, duration: float, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Rate mode of a trace: its requests per `rate_window_s` window (from the run's
    start), Poisson at `scale` x that rate. The trace ends with its last second (counts)
    or the second of its last request (timestamps): a last window cut short by the end
    of the trace or of the run is averaged over the part that exists."""
    window = spec.rate_window_s
    if shape == "counts":
        first, shift, last = _seconds_span(spec, len(data), duration)
        if last <= first:
            return
        seconds = data[first:last]
        step = int(window)
        offsets = np.arange(0, seconds.size, step)
        counts = np.add.reduceat(seconds, offsets).astype(np.float64)
        ends = np.minimum(offsets + step, seconds.size)
        yield from _windowed_rates(
            offsets - shift, ends - shift, counts, scale=spec.scale, duration=duration, rng=rng
        )
        return
    if data.size == 0:
        return
    end = min(duration, math.floor(float(data[-1])) + 1.0 - spec.start_s)
    if end <= 0:
        return
    times = data[(data >= spec.start_s) & (data < spec.start_s + end)] - spec.start_s
    n = math.ceil(end / window)
    starts = np.arange(n) * window
    ends = np.minimum(starts + window, end)
    per_window = np.bincount((times // window).astype(np.int64), minlength=n)[:n]
    yield from _windowed_rates(
        starts,
        ends,
        per_window.astype(np.float64),
        scale=spec.scale,
        duration=duration,
        rng=rng,
    )


def _trace(spec: WorkloadSpec, duration: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    assert spec.path is not None  # checked by WorkloadSpec
    shape, data = load_trace(spec.path, spec.format)
    if spec.scale_mode == "rate":
        yield from _trace_rate(spec, shape, data, duration, rng)
        return
    if shape == "counts":
        first, shift, last = _seconds_span(spec, len(data), duration)
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
