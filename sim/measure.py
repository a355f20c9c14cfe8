"""`rscore sim measure`: the simulator's service times, measured on the real scorer.

One real R worker (the supervisor's `python -m r_scorer.worker`, embedded R through
rpy2) is started for the bundle and driven from the sidecar's side of the worker
protocol (`r_scorer.pool`, on uvloop, as `bench/worker_roundtrip.py` does). Each call is
timed from the moment the request is written to the worker's socket until its answer
is read back: the time one call keeps a worker busy as the sidecar sees it (framing,
the socket, building the R data.frame, R itself, converting the predictions back). No
HTTP, no queueing: calls go one after another to one idle worker.

Two sweeps: `requests` one-row calls (the empirical service times), then, interleaved
round by round, calls of each batch size (the cost curve `a + c * rows`, fitted by
least squares to the per-size medians). The rows are the caller's (`--rows-from`, any
request body format) or, by default, made from the model's input prototype.

Writes only into the output folder; starts R only in the worker subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from r_scorer.payload import Frame
    from r_scorer.pool import WorkerLink
    from r_scorer.prototype import Prototype, TypedFrame

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "Fit",
    "MeasureError",
    "Measurement",
    "calls_per_size",
    "example_frame",
    "fit_batch_cost",
    "fit_measurement",
    "measure_bundle",
    "summary_table",
    "write_results",
]

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # up to the sidecar's max batch
WORKER_START_TIMEOUT_S = 120.0
TIME_MEANING = (
    "round trip of one call on one R worker, seen from the sidecar's side of the worker "
    "protocol: request written to the socket -> answer read back (framing, socket, R "
    "data.frame building, R, conversion of the predictions); no HTTP, no queue wait"
)


class MeasureError(Exception):
    """The measurement cannot be made: not a bundle, unusable rows, R failed on them."""


@dataclass(frozen=True)
class Fit:
    """Least-squares line `median call time = a + c * rows` over the batch sizes."""

    a_s: float
    c_s: float
    r2: float


@dataclass
class Measurement:
    bundle: Path
    model: str
    batchable: bool
    rows_source: str  # "prototype" or the --rows-from path
    single_s: list[float] = field(default_factory=list)  # one-row call round trips
    single_r_s: list[float] = field(default_factory=list)  # of which inside R
    batch_s: dict[int, list[float]] = field(default_factory=dict)  # rows -> round trips
    batch_r_s: dict[int, list[float]] = field(default_factory=dict)
    # The rows scored, column by column as a request body gives them (`rscore sim
    # validate` sends them over HTTP too).
    rows: dict[str, list[Any]] = field(default_factory=dict)


def calls_per_size(requests: int) -> int:
    """Timed calls of each batch size: a tenth of the one-row calls, at least 10."""
    return max(10, requests // 10)


def warmup_calls(requests: int) -> int:
    """Untimed one-row calls first (R's first calls are slower): 5-100."""
    return max(5, min(100, requests // 10))


# --- rows ------------------------------------------------------------------------------

# Two rows per kind, as the OpenAPI examples (sidecar/openapi.py) make them.
_EXAMPLE_VALUES: dict[str, tuple[Any, Any]] = {
    "numeric": (1.5, 2.0),
    "integer": (1, 2),
    "logical": (True, False),
    "character": ("text", "more text"),
}


def example_frame(prototype: Prototype) -> Frame:
    """Rows made from the model's input prototype: each column's kind (factor columns
    cycle through their training levels). MeasureError when the model has none."""
    from r_scorer.payload import Frame

    if not prototype.checked:
        raise MeasureError(
            "the model has no input prototype (no ptype.rds, no terms) to make rows from; "
            "pass --rows-from with a request body (JSON, any /score format)"
        )
    rows = 4
    columns: dict[str, list[Any]] = {}
    for column in prototype.columns:
        if column.kind in ("factor", "ordered"):
            if not column.levels:
                raise MeasureError(
                    f"factor column {column.name!r} has no levels to make rows from; "
                    "pass --rows-from"
                )
            columns[column.name] = [column.levels[i % len(column.levels)] for i in range(rows)]
        elif column.kind in _EXAMPLE_VALUES:
            pair = _EXAMPLE_VALUES[column.kind]
            columns[column.name] = [pair[i % 2] for i in range(rows)]
        else:  # "any": the prototype does not say; nothing sensible to invent
            raise MeasureError(
                f"the prototype does not give column {column.name!r} a type; pass --rows-from"
            )
    return Frame(columns, rows)


def read_rows(path: Path) -> Frame:
    """A request body file (dataframe_records, dataframe_split or data) as a Frame."""
    from r_scorer.errors import BadRequest
    from r_scorer.payload import parse_body

    try:
        frame = parse_body(path.read_bytes())
    except OSError as exc:
        raise MeasureError(f"--rows-from {path}: {exc.strerror or exc}") from None
    except BadRequest as exc:
        raise MeasureError(f"--rows-from {path}: {exc.message}") from None
    if frame.nrows == 0:
        raise MeasureError(f"--rows-from {path}: no rows")
    return frame


def tile(frame: TypedFrame, rows: int) -> TypedFrame:
    """`rows` rows: the frame's rows repeated in order (cut at `rows`)."""
    from r_scorer.prototype import TypedColumn, TypedFrame

    picks = [i % frame.nrows for i in range(rows)]
    columns = tuple(
        TypedColumn(column.name, column.kind, [column.values[i] for i in picks])
        for column in frame.columns
    )
    return TypedFrame(columns, rows)


# --- measuring -------------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at `path` while the workers are spawned: they inherit it,
    so their JSON logs go to the file and not over the progress bar and the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


async def _measure(
    bundle: Path,
    *,
    requests: int,
    batch_sizes: Sequence[int],
    rows_from: Path | None,
    worker_log: Path,
    progress: Callable[[int], None],
) -> Measurement:
    from r_scorer.errors import BundleError, ScoringError
    from r_scorer.pool import WorkerPool
    from r_scorer.prototype import coerce
    from r_scorer.supervisor import Supervisor

    rows = read_rows(rows_from) if rows_from is not None else None
    with tempfile.TemporaryDirectory(prefix="rscore-measure-") as folder:
        pool = WorkerPool(Path(folder) / "workers.sock")
        await pool.start()
        supervisor = Supervisor(bundle, pool.socket_path, workers=1)
        try:
            with _stderr_to(worker_log):
                await asyncio.to_thread(supervisor.start)
        except BundleError as exc:
            await pool.close()
            raise MeasureError(f"the bundle does not load: {exc.message}") from None
        try:
            try:
                await asyncio.wait_for(pool.wait_for_workers(1), WORKER_START_TIMEOUT_S)
            except TimeoutError:
                raise MeasureError(
                    f"the R worker loaded the bundle but did not connect within "
                    f"{WORKER_START_TIMEOUT_S:.0f} s (see {worker_log})"
                ) from None
            model = pool.model
            assert model is not None
            source = str(rows_from) if rows_from is not None else "prototype"
            frame = rows if rows is not None else example_frame(model.prototype)
            try:
                typed = coerce(frame, model.prototype)
            except ScoringError as exc:
                raise MeasureError(f"the rows ({source}) do not fit the model: {exc}") from None
            result = Measurement(bundle, model.name, model.batchable, source, rows=frame.columns)
            (link,) = pool.workers
            await _sweep(
                link, typed, result, requests=requests, batch_sizes=batch_sizes, progress=progress
            )
            return result
        finally:
            await pool.close()  # hang up first: the worker then exits at once
            await asyncio.to_thread(supervisor.stop)


async def _sweep(
    link: WorkerLink,
    typed: TypedFrame,
    result: Measurement,
    *,
    requests: int,
    batch_sizes: Sequence[int],
    progress: Callable[[int], None],
) -> None:
    """Warm up, then time the one-row calls, then the batch sizes round by round."""
    from r_scorer.errors import ScoringError

    singles = [_row(typed, i) for i in range(typed.nrows)]
    batches = {size: tile(typed, size) for size in batch_sizes}

    async def call(one: TypedFrame) -> tuple[float, float]:
        started = time.perf_counter()
        try:
            reply = await link.score(one)
        except ScoringError as exc:
            raise MeasureError(
                f"R failed on the rows ({result.rows_source}, {one.nrows} row(s)): {exc}"
            ) from None
        return time.perf_counter() - started, reply.r_seconds

    for index in range(warmup_calls(requests)):
        await call(singles[index % len(singles)])
        progress(1)
    for size in batch_sizes:  # each size once, untimed: R's first frame of that size
        await call(batches[size])
        progress(1)
    for index in range(requests):
        elapsed, inside_r = await call(singles[index % len(singles)])
        result.single_s.append(elapsed)
        result.single_r_s.append(inside_r)
        progress(1)
    for size in batch_sizes:
        result.batch_s[size], result.batch_r_s[size] = [], []
    for _ in range(calls_per_size(requests)):  # round by round: drift hits every size
        for size in batch_sizes:
            elapsed, inside_r = await call(batches[size])
            result.batch_s[size].append(elapsed)
            result.batch_r_s[size].append(inside_r)
            progress(1)


def _row(frame: TypedFrame, index: int) -> TypedFrame:
    from r_scorer.prototype import TypedColumn, TypedFrame

    columns = tuple(
        TypedColumn(column.name, column.kind, [column.values[index]]) for column in frame.columns
    )
    return TypedFrame(columns, 1)


def total_calls(requests: int, batch_sizes: Sequence[int]) -> int:
    """Every call a measurement makes, warm-up included (the progress bar's total)."""
    sizes = len(batch_sizes)
    return warmup_calls(requests) + sizes + requests + calls_per_size(requests) * sizes


def measure_bundle(
    bundle: Path,
    *,
    requests: int = 2000,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    rows_from: Path | None = None,
    worker_log: Path,
    progress: Callable[[int], None] = lambda _: None,
) -> Measurement:
    """Measure the bundle's call times on one real R worker (see the module's doc)."""
    import uvloop

    from r_scorer.bundle import read_bundle
    from r_scorer.errors import BundleError

    if requests < 1:
        raise MeasureError("--requests must be at least 1")
    if len(set(batch_sizes)) < 2 or min(batch_sizes) < 1:
        raise MeasureError("--batch-sizes needs at least two different sizes, each >= 1")
    try:
        spec = read_bundle(bundle)
    except BundleError as exc:
        raise MeasureError(f"not a bundle: {exc.message}") from None
    return uvloop.run(
        _measure(
            spec.path,
            requests=requests,
            batch_sizes=sorted(set(batch_sizes)),
            rows_from=rows_from,
            worker_log=worker_log,
            progress=progress,
        )
    )


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


def fit_measurement(measurement: Measurement) -> Fit:
    """`fit_batch_cost` of the median call time at each batch size measured."""
    sizes = sorted(measurement.batch_s)
    return fit_batch_cost(sizes, [float(np.median(measurement.batch_s[size])) for size in sizes])


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


def simulator_keys(measurement: Measurement, fit: Fit) -> dict[str, Any]:
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


def results(measurement: Measurement, fit: Fit) -> dict[str, Any]:
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


def service_fragment(measurement: Measurement, fit: Fit, times_path: Path) -> str:
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


def write_results(measurement: Measurement, fit: Fit, out_dir: Path) -> list[Path]:
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


def summary_table(measurement: Measurement, fit: Fit) -> str:
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
