"""The simulator's service model from timed calls: the batch cost fit and the files.

`rscore sim measure` and `rscore sim validate` time a bundle's calls on a real R worker
(rscore/r_scorer/timing.py, beside the worker: the simulator never imports the scorer); this
module gets those times as plain numbers (`Timings`: any object with these lists, such
as rscore.r_scorer.timing's Measurement) and does the rest, purely: the least-squares fit of
the median call time on the batch size (`a + c * rows`), the simulator's `[service]`
keys, and the files (service_times.txt, batch_cost.json, service.toml) and the table.

Never starts a worker or R, never reads the clock but to date the files it writes;
writes only into the output folder it is given.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "TIME_MEANING",
    "Fit",
    "Timings",
    "fit_batch_cost",
    "fit_inside_r",
    "fit_measurement",
    "results",
    "service_fragment",
    "simulator_keys",
    "summary_table",
    "write_results",
]

TIME_MEANING = (
    "round trip of one call on one R worker, seen from the sidecar's side of the worker "
    "protocol: request written to the socket -> answer read back (framing, socket, R "
    "data.frame building, R, conversion of the predictions); no HTTP, no queue wait"
)


class Timings(Protocol):
    """What a measurement timed (rscore.r_scorer.timing.Measurement is one)."""

    @property
    def bundle(self) -> Path: ...

    @property
    def model(self) -> str: ...

    @property
    def batchable(self) -> bool: ...

    @property
    def rows_source(self) -> str: ...

    @property
    def single_s(self) -> list[float]: ...  # one-row call round trips, seconds

    @property
    def single_r_s(self) -> list[float]: ...  # of which inside R

    @property
    def batch_s(self) -> dict[int, list[float]]: ...  # rows -> round trips

    @property
    def batch_r_s(self) -> dict[int, list[float]]: ...


@dataclass(frozen=True)
class Fit:
    """Least-squares line `median call time = a + c * rows` over the batch sizes."""

    a_s: float
    c_s: float
    r2: float


# --- results ---------------------------------------------------------------------------


def fit_batch_cost(sizes: Sequence[int], medians: Sequence[float]) -> Fit:
    """Ordinary least squares of `medians` on `sizes` (intercept a, slope c) and R^2."""
    x = np.asarray(sizes, dtype=float)
    y = np.asarray(medians, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("the fit needs at least two different batch sizes")
    design = np.column_stack([np.ones_like(x), x])
    (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(np.sum((y - (a + c * x)) ** 2))
    spread = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 if spread == 0 else min(1.0, max(0.0, 1.0 - residual / spread))
    return Fit(float(a), float(c), r2)


def fit_measurement(measurement: Timings) -> Fit:
    """`fit_batch_cost` of the median call time at each batch size measured."""
    sizes = sorted(measurement.batch_s)
    return fit_batch_cost(sizes, [float(np.median(measurement.batch_s[size])) for size in sizes])


def fit_inside_r(measurement: Timings) -> Fit:
    """`fit_batch_cost` of the *mean* time inside R at each batch size measured, the
    one-row sample among them: what `rscore sim validate` sets the pod's own R time
    against (its metrics give a sum of seconds inside R over a count of calls, a mean).
    Falls back to the one-row mean alone (slope 0) when fewer than two sizes were timed
    inside R."""
    samples = {size: list(values) for size, values in measurement.batch_r_s.items() if values}
    if measurement.single_r_s:
        samples[1] = [*samples.get(1, []), *measurement.single_r_s]
    if not samples:
        raise ValueError("the measurement has no time inside R")
    sizes = sorted(samples)
    means = [float(np.mean(samples[size])) for size in sizes]
    if len(sizes) < 2:
        return Fit(means[0], 0.0, 1.0)
    return fit_batch_cost(sizes, means)


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99 (nearest-rank, as the simulator's summaries) and mean."""
    ordered = np.sort(np.asarray(values, dtype=float))

    def rank(fraction: float) -> float:
        return float(ordered[max(0, math.ceil(fraction * ordered.size) - 1)])

    return {
        "median_s": rank(0.5),
        "p90_s": rank(0.9),
        "p99_s": rank(0.99),
        "mean_s": float(ordered.mean()),
    }


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def simulator_keys(measurement: Timings, fit: Fit) -> dict[str, Any]:
    """The simulator's `[service]` numbers: `mean_s` (a one-row call's mean, the mean of
    the measured one-row times) and `per_row_s` (the fit's slope c, kept within
    [0, mean_s] as the simulator requires); its intercept is `a = mean_s - per_row_s`."""
    mean_s = _round(float(np.mean(measurement.single_s)))
    per_row = min(max(_round(fit.c_s), 0.0), mean_s)
    return {
        "mean_s": mean_s,
        "per_row_s": per_row,
        "a_s": mean_s - per_row,
        "per_row_clamped": per_row != _round(fit.c_s),
    }


def results(measurement: Timings, fit: Fit) -> dict[str, Any]:
    """Everything `batch_cost.json` holds."""
    sizes = sorted(measurement.batch_s)
    return {
        "bundle": str(measurement.bundle),
        "model": measurement.model,
        "batchable": measurement.batchable,
        "rows_source": measurement.rows_source,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "time": TIME_MEANING,
        "fit": {
            "model": "median call time = a_s + c_s * rows (least squares over the batch sizes)",
            "a_s": fit.a_s,
            "c_s": fit.c_s,
            "r2": fit.r2,
        },
        "batch_sizes": [
            {
                "rows": size,
                "calls": len(measurement.batch_s[size]),
                **_stats(measurement.batch_s[size]),
                "median_inside_r_s": float(np.median(measurement.batch_r_s[size])),
            }
            for size in sizes
        ],
        "single_row": {
            "calls": len(measurement.single_s),
            **_stats(measurement.single_s),
            "median_inside_r_s": float(np.median(measurement.single_r_s)),
            "file": "service_times.txt",
        },
        "simulator": simulator_keys(measurement, fit),
    }


def service_fragment(measurement: Timings, fit: Fit, times_path: Path) -> str:
    """The `[service]` table to paste into a scenario (see docs/simulator.md)."""
    keys = simulator_keys(measurement, fit)
    lines = [
        f"# rscore sim measure {measurement.bundle} (model {measurement.model!r}), "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}",
        "# Paste into a scenario. `path` is relative to the scenario file's folder; from",
        f"# elsewhere use {str(times_path.resolve())!r}.",
        "# A call of r rows takes (a + c r) Z s: c = per_row_s, a = mean_s - per_row_s.",
        f"# Least-squares fit over batch sizes {min(measurement.batch_s)}-"
        f"{max(measurement.batch_s)}: a = {fit.a_s:.6g} s, c = {fit.c_s:.6g} s/row, "
        f"R^2 = {fit.r2:.4f}.",
    ]
    if keys["per_row_clamped"]:
        lines.append(f"# The fitted c ({fit.c_s:.6g}) is outside [0, mean_s]: clamped.")
    if not measurement.batchable:
        lines.append("# The model is not batchable: keep [pods] max_batch_rows = 1.")
    lines += [
        "[service]",
        'kind = "empirical"',
        'path = "service_times.txt"',
        f"mean_s = {keys['mean_s']!r}  # the mean of service_times.txt",
        f"per_row_s = {keys['per_row_s']!r}",
        "",
    ]
    text = "\n".join(lines)
    tomllib.loads(text)  # never write a fragment the simulator cannot read
    return text


def write_results(measurement: Timings, fit: Fit, out_dir: Path) -> list[Path]:
    """service_times.txt, batch_cost.json and service.toml in `out_dir`."""
    import orjson

    out_dir.mkdir(parents=True, exist_ok=True)
    times = out_dir / "service_times.txt"
    header = [
        f"# rscore sim measure {measurement.bundle} (model {measurement.model!r}): "
        f"{len(measurement.single_s)} one-row calls, seconds, one per line.",
        f"# Each is the {TIME_MEANING}.",
    ]
    body = [f"{value:.9g}" for value in measurement.single_s]
    times.write_text("\n".join(header + body) + "\n")
    cost = out_dir / "batch_cost.json"
    cost.write_bytes(orjson.dumps(results(measurement, fit), option=orjson.OPT_INDENT_2) + b"\n")
    fragment = out_dir / "service.toml"
    fragment.write_text(service_fragment(measurement, fit, times))
    return [times, cost, fragment]


def summary_table(measurement: Timings, fit: Fit) -> str:
    """Median, p90, p99 per batch size (ms), the one-row sample and the fit."""
    rows = [["rows", "calls", "median ms", "p90 ms", "p99 ms", "in R ms"]]

    def add(label: str, values: list[float], inside_r: list[float]) -> None:
        stats = _stats(values)
        rows.append([
            label, str(len(values)),
            *(f"{1000 * stats[key]:.3f}" for key in ("median_s", "p90_s", "p99_s")),
            f"{1000 * float(np.median(inside_r)):.3f}",
        ])  # fmt: skip

    add("1 (sample)", measurement.single_s, measurement.single_r_s)
    for size in sorted(measurement.batch_s):
        add(str(size), measurement.batch_s[size], measurement.batch_r_s[size])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    keys = simulator_keys(measurement, fit)
    lines += [
        "",
        f"fit: call = a + c * rows, a = {1000 * fit.a_s:.4f} ms, c = {1000 * fit.c_s:.5f} ms/row, "
        f"R^2 = {fit.r2:.4f}",
        f"simulator: mean_s = {keys['mean_s']:.6g}, per_row_s = {keys['per_row_s']:.6g}",
    ]
    return "\n".join(lines)
