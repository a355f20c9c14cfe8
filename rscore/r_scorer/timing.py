"""Timing a bundle's calls on one real R worker: the service times `rscore sim measure`
and `rscore sim validate` hand the simulator.

One real R worker (the supervisor's `python -m rscore.r_scorer.worker`, embedded R through
rpy2) is started for the bundle and driven from the sidecar's side of the worker
protocol (`rscore.r_scorer.pool`, on uvloop, as `bench/worker_roundtrip.py` does). Each call is
timed from the moment the request is written to the worker's socket until its answer
is read back: the time one call keeps a worker busy as the sidecar sees it (framing,
the socket, building the R data.frame, R itself, converting the predictions back). No
HTTP, no queueing: calls go one after another to one idle worker.

Two sweeps: `requests` one-row calls (the empirical service times), then, interleaved
round by round, calls of each batch size (for the cost curve `a + c * rows` that
`rscore.sim.measure` fits). The rows are the caller's (`rows_from`, any request body format)
or, by default, made from the model's input prototype.

It lives beside the worker, not in `sim/`: the simulator never imports the scorer, it
reads the `Measurement` this returns (plain lists of seconds). Starts R only in the
worker subprocess; writes only the worker's log file it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rscore.r_scorer.payload import Frame
    from rscore.r_scorer.pool import WorkerLink
    from rscore.r_scorer.prototype import Prototype, TypedFrame

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "MeasureError",
    "Measurement",
    "calls_per_size",
    "example_frame",
    "measure_bundle",
    "total_calls",
]

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # up to the sidecar's max batch
WORKER_START_TIMEOUT_S = 120.0


class MeasureError(Exception):
    """The measurement cannot be made: not a bundle, unusable rows, R failed on them."""


@dataclass
class Measurement:
    """What one measurement timed: plain numbers and rows (rscore.sim.measure reads them)."""

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

# Two rows per kind, as the OpenAPI examples (rscore/sidecar/openapi.py) make them.
_EXAMPLE_VALUES: dict[str, tuple[Any, Any]] = {
    "numeric": (1.5, 2.0),
    "integer": (1, 2),
    "logical": (True, False),
    "character": ("text", "more text"),
}


def example_frame(prototype: Prototype) -> Frame:
    """Rows made from the model's input prototype: each column's kind (factor columns
    cycle through their training levels). MeasureError when the model has none."""
    from rscore.r_scorer.payload import Frame

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
    from rscore.r_scorer.errors import BadRequest
    from rscore.r_scorer.payload import parse_body

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
    from rscore.r_scorer.prototype import TypedColumn, TypedFrame

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
    from rscore.r_scorer.errors import BundleError, ScoringError
    from rscore.r_scorer.pool import WorkerPool
    from rscore.r_scorer.prototype import coerce
    from rscore.r_scorer.supervisor import Supervisor

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
    from rscore.r_scorer.errors import ScoringError

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
    from rscore.r_scorer.prototype import TypedColumn, TypedFrame

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

    from rscore.r_scorer.bundle import read_bundle
    from rscore.r_scorer.errors import BundleError

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
