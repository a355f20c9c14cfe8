"""Model data collection: sampled scoring inputs and outputs as JSON lines on disk.

After Azure ML's model data collector: `rscore serve ... --collect-dir DIR
--collect-sample-rate 0.1` keeps a sample of what each model was asked and what it
answered, for drift monitoring, debugging and retraining. Records land in
`DIR/<model>/YYYY/MM/DD/HH/data-<pid>-<seq>.jsonl` (the hour of each record's own UTC
timestamp), one JSON object per line: `{"time", "request_id", "model", "inputs",
"outputs"}`.

Collection is a side show and must never block or fail a request. `offer()` runs on the
event loop after a request is answered: it samples, stamps the time and hands the record
to a bounded queue, nothing more; a full queue drops the record. One background thread
serialises and writes. Every failure (unserialisable data, a full disk, a vanished or
unwritable directory) drops records, counts them in `rscore_collect_records_total` and
logs at most one warning a minute; the thread lives on and writes again once it can.

What it writes is what clients sent, so it must never be readable by others or grow
without bound: files are 0600 and the folders it makes 0700, whatever the umask; a
record over `max_record_bytes` is written as a small marker line instead (`"dropped":
"too_large"` and its size, no inputs or outputs); and the files under the model's folder
stay under `max_bytes` together: when the next write would pass it, the oldest files
(by hour folder, then modification time) are deleted down to nine tenths of it
(`files_to_delete`, a pure decision), so the folder is scanned about once per tenth of
the cap written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("rscore.collector")

OUTCOMES = (
    "written",
    "dropped_queue_full",
    "dropped_write_error",
    "dropped_unserialisable",
    "dropped_too_large",  # over max_record_bytes: a marker line is written instead
    "dropped_over_cap",  # no room under max_bytes even after deleting every older file
)
WARNING_INTERVAL_S = 60.0
FILE_MODE: Final = 0o600
FOLDER_MODE: Final = 0o700
LOW_WATER: Final = 0.9  # retention deletes down to this share of max_bytes
_HOUR_FOLDER = re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}")
_IDLE_WAIT_S = 0.5  # how long the writer sleeps on an empty queue before re-checking close()
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # a bundle name: one safe path part


@dataclass(frozen=True, slots=True, order=True)
class CollectedFile:
    """One data file on disk; the field order is the age order (oldest first)."""

    hour: str  # its hour folder, "YYYY/MM/DD/HH"
    mtime_ns: int
    name: str
    size: int

    @property
    def relative(self) -> str:
        return f"{self.hour}/{self.name}"


def files_to_delete(
    files: Iterable[CollectedFile],
    *,
    max_bytes: int,
    incoming: int,
    keep: str | None = None,
) -> list[CollectedFile]:
    """Which files to delete, oldest first, before writing `incoming` more bytes.

    None while everything fits under `max_bytes`. Otherwise the oldest files (hour
    folder, then modification time) go until the rest plus `incoming` are at most
    LOW_WATER of `max_bytes` (so the next deletion is a tenth of the cap away), or until
    only `keep` (the file being written, by its relative path) is left.
    """
    ordered = sorted(files)
    total = sum(f.size for f in ordered)
    if total + incoming <= max_bytes:
        return []
    target = int(max_bytes * LOW_WATER)
    doomed: list[CollectedFile] = []
    for candidate in ordered:
        if total + incoming <= target:
            break
        if candidate.relative == keep:
            continue
        doomed.append(candidate)
        total -= candidate.size
    return doomed


@dataclass(frozen=True, slots=True)
class _Record:
    """What offer() queues: serialising is left to the writer, off the event loop."""

    time_s: float
    request_id: str
    inputs: Any
    outputs: Any


_WAKE: Final = object()  # put by close() so an idle writer notices at once


class DataCollector:
    """Samples scoring records and appends them, from one writer thread, to hourly files.

    `offer()` is the only method for the request path. `start()` starts the writer;
    `close()` writes out what is queued and stops it (call it once serving has stopped).
    """

    def __init__(
        self,
        directory: Path,
        *,
        model_name: str,
        sample_rate: float,
        registry: CollectorRegistry,
        max_bytes: int = 1 << 30,
        max_record_bytes: int = 1 << 20,
        max_file_bytes: int = 100 * 1024 * 1024,
        queue_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        sample: Callable[[], float] = random.random,
    ) -> None:
        _check_arguments(
            model_name,
            sample_rate,
            max_bytes=max_bytes,
            max_record_bytes=max_record_bytes,
            max_file_bytes=max_file_bytes,
            queue_size=queue_size,
        )
        self.directory = Path(directory)
        self.model_name = model_name
        self.sample_rate = float(sample_rate)
        self.max_record_bytes = max_record_bytes
        self._clock = clock
        self._sample = sample
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        # Files of at most a tenth of the cap: deleting the oldest frees a small part.
        file_bytes = min(max_file_bytes, max(1, max_bytes // 10))
        self._files = _HourlyFiles(self.directory / model_name, file_bytes)
        self._retention = _Retention(self.directory / model_name, max_bytes, registry)
        self._records = Counter(
            "rscore_collect_records",
            "Collected scoring records by outcome (written or why dropped).",
            ["outcome"],
            registry=registry,
        )
        # Children looked up once (labels() takes a lock); all four exported from zero.
        self._outcomes = {outcome: self._records.labels(outcome) for outcome in OUTCOMES}
        depth = Gauge(
            "rscore_collect_queue_depth",
            "Collected records waiting for the writer thread.",
            registry=registry,
        )
        depth.set_function(self._queue.qsize)  # read at scrape time: offer() never touches it
        self._write_warnings = _WarningLimiter(clock)  # writer thread only
        self._offer_warnings = _WarningLimiter(clock)  # event loop only
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request path ---------------------------------------------------------------

    def offer(self, request_id: str, inputs: Any, outputs: Any) -> None:
        """Maybe collect one answered request. Never blocks, never raises.

        `inputs` and `outputs` are serialised later by the writer thread: the caller must
        not mutate them afterwards (a finished request's own objects are fine).
        """
        try:
            if self._closing.is_set() or not self._sample() < self.sample_rate:
                return
            record = _Record(self._clock(), request_id, inputs, outputs)
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._outcomes["dropped_queue_full"].inc()
        except Exception:  # a failing clock or sample(): never the request's problem
            if self._offer_warnings.allow():
                log.warning("data collection: offer failed; record dropped", exc_info=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (once; again is a no-op)."""
        if self._closing.is_set():
            raise RuntimeError("data collector is closed; make a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"rscore-collector-{self.model_name}", daemon=True
            )
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write out every record queued so far, then stop the writer (waits up to timeout_s).

        Blocks the caller: call it at shutdown, after the HTTP server has stopped (from
        the event loop, via `asyncio.to_thread`). Records offered after close() are
        ignored. A writer that was never started is started here so nothing queued is lost.
        """
        if self._thread is None:
            self.start()
        thread = self._thread
        if thread is None or (self._closing.is_set() and not thread.is_alive()):
            return  # closed before
        self._closing.set()
        # No room for the wake-up means the writer is busy draining: it will see _closing.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning(
                "data collection: writer still busy after %.1f s; %d records not yet written",
                timeout_s,
                self._queue.qsize(),
            )

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._take_batch()
                if batch:
                    self._write_batch_safely(batch)
                if self._closing.is_set() and self._queue.empty():
                    return
        finally:
            self._files.close()

    def _take_batch(self) -> list[_Record]:
        """Wait for one record, then take everything else already queued (one write each)."""
        try:
            items = [self._queue.get(timeout=_IDLE_WAIT_S)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [item for item in items if isinstance(item, _Record)]

    def _write_batch_safely(self, batch: list[_Record]) -> None:
        try:
            self._write_batch(batch)
        except Exception:  # a bug must not kill the thread: later records still deserve a go
            self._count("dropped_write_error", len(batch))
            self._warn("unexpected error; %d records dropped", len(batch), exc_info=True)

    def _write_batch(self, batch: list[_Record]) -> None:
        lines = self._serialise(batch)
        for hour, hour_lines in _runs_by_hour(lines):
            self._write_hour(hour, hour_lines)

    def _serialise(self, batch: list[_Record]) -> Iterator[tuple[str, _Line]]:
        """(hour path, line) per record; unserialisable records are counted and skipped,
        one over max_record_bytes is counted and replaced by a marker line."""
        for record in batch:
            try:
                stamp = datetime.fromtimestamp(record.time_s, UTC)
                line = orjson.dumps(self._document(record, stamp), option=orjson.OPT_APPEND_NEWLINE)
            # JSONEncodeError (a TypeError): not JSON; the others: a clock gone out of range.
            except (TypeError, ValueError, OverflowError, OSError) as error:
                self._count("dropped_unserialisable", 1)
                self._warn("record %r dropped, not serialisable: %s", record.request_id, error)
                continue
            if len(line) > self.max_record_bytes:
                self._count("dropped_too_large", 1)
                marker = self._marker(record, stamp, len(line))
                yield stamp.strftime("%Y/%m/%d/%H"), _Line(marker, is_record=False)
                continue
            yield stamp.strftime("%Y/%m/%d/%H"), _Line(line, is_record=True)

    def _document(self, record: _Record, stamp: datetime) -> dict[str, Any]:
        return {
            "time": rfc3339_utc(stamp),
            "request_id": record.request_id,
            "model": self.model_name,
            "inputs": record.inputs,
            "outputs": record.outputs,
        }

    def _marker(self, record: _Record, stamp: datetime, size: int) -> bytes:
        """What is written in place of a record over the size cap: that it was, and how big."""
        document = {
            "time": rfc3339_utc(stamp),
            "request_id": record.request_id,
            "model": self.model_name,
            "dropped": "too_large",
            "record_bytes": size,
            "max_record_bytes": self.max_record_bytes,
        }
        return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE)

    def _write_hour(self, hour: str, lines: list[_Line]) -> None:
        """Write one hour's lines, a file's worth at a time; failures drop that chunk only."""
        data = [line.data for line in lines]
        start = 0
        while start < len(lines):
            try:
                self._files.prepare(hour, len(data[start]))
            except OSError as error:
                # No file to write to (mkdir or open failed): the rest would fail alike.
                self._drop_on_write_error(_records_in(lines[start:]), error)
                return
            count = self._files.fitting(data, start)
            chunk = data[start : start + count]
            records = _records_in(lines[start : start + count])
            size = sum(len(line) for line in chunk)
            if not self._retention.make_room(size, keep=self._files.relative_path):
                self._count("dropped_over_cap", records)
                self._warn("no room under the collection cap; %d records dropped", records)
                start += count
                continue
            try:
                self._files.append(chunk)
            except OSError as error:
                self._drop_on_write_error(records, error)
            else:
                self._retention.added(size)
                self._count("written", records)
            start += count

    def _drop_on_write_error(self, count: int, error: OSError) -> None:
        self._count("dropped_write_error", count)
        self._warn("cannot write under %s (%s); %d records dropped", self.directory, error, count)

    def _warn(self, message: str, *args: object, exc_info: bool = False) -> None:
        """A warning, unless one was logged in the last minute (a full disk fails every
        batch; the counters carry the numbers, the log only needs to say why)."""
        if not self._write_warnings.allow():
            return
        suppressed = self._write_warnings.suppressed_before
        note = f" ({suppressed} similar warnings suppressed)" if suppressed else ""
        log.warning("data collection: " + message + note, *args, exc_info=exc_info)

    def _count(self, outcome: str, count: int) -> None:
        if count:
            self._outcomes[outcome].inc(count)


@dataclass(frozen=True, slots=True)
class _Line:
    """A serialised line and whether it is a record (not a too-large marker), for counting."""

    data: bytes
    is_record: bool


def _records_in(lines: list[_Line]) -> int:
    return sum(line.is_record for line in lines)


class _Retention:
    """Keeps the files under `root` within `max_bytes` (the writer thread only).

    The total is scanned from disk when unknown or when the next write would pass the
    cap (files written or deleted by others count then); in between, the writer's own
    appends are added up. Deleting down to LOW_WATER keeps the scans rare.
    """

    def __init__(self, root: Path, max_bytes: int, registry: CollectorRegistry) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self.total: int | None = None
        self._deleted_files = Counter(
            "rscore_collect_deleted_files",
            "Collected files deleted to stay under the collection cap.",
            registry=registry,
        )
        self._deleted_bytes = Counter(
            "rscore_collect_deleted_bytes",
            "Bytes of collected files deleted to stay under the collection cap.",
            registry=registry,
        )
        size = Gauge(
            "rscore_collect_bytes",
            "Bytes of collected files on disk, as the writer last knew.",
            registry=registry,
        )
        size.set_function(lambda: self.total or 0)

    def added(self, size: int) -> None:
        if self.total is not None:
            self.total += size

    def make_room(self, incoming: int, *, keep: str | None) -> bool:
        """Delete old files so that `incoming` bytes fit; False if they cannot."""
        if self.total is not None and self.total + incoming <= self._max_bytes:
            return True
        files = scan_collected(self._root)
        self.total = sum(f.size for f in files)
        for doomed in files_to_delete(
            files, max_bytes=self._max_bytes, incoming=incoming, keep=keep
        ):
            if self._delete(doomed):
                self.total -= doomed.size
        return self.total + incoming <= self._max_bytes

    def _delete(self, doomed: CollectedFile) -> bool:
        path = self._root / doomed.relative
        try:
            path.unlink()
        except FileNotFoundError:
            return True  # someone else deleted it: gone all the same
        except OSError:
            return False
        self._deleted_files.inc()
        self._deleted_bytes.inc(doomed.size)
        # Empty hour, day, month and year folders go too; the model's folder stays.
        folder = path.parent
        while folder != self._root:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): stop here
                break
            folder = folder.parent
        return True


def scan_collected(root: Path) -> list[CollectedFile]:
    """The data files under `root`'s hour folders (YYYY/MM/DD/HH/*.jsonl)."""
    found: list[CollectedFile] = []
    for hour_folder in _hour_folders(root):
        hour = hour_folder.relative_to(root).as_posix()
        try:
            entries = list(os.scandir(hour_folder))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith(".jsonl"):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # deleted since the listing
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(CollectedFile(hour, st.st_mtime_ns, entry.name, st.st_size))
    return found


def _hour_folders(root: Path) -> Iterator[Path]:
    folders = [root]
    for _ in range(4):  # year, month, day, hour
        folders = [child for folder in folders for child in _subfolders(folder)]
    for folder in folders:
        if _HOUR_FOLDER.fullmatch(folder.relative_to(root).as_posix()):
            yield folder


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:  # missing, not a folder, or unreadable: nothing in it counts
        return []


def make_private_folders(folder: Path) -> None:
    """`mkdir -p folder`, each folder it makes mode 0700 whatever the umask (Path.mkdir
    would give the parents it makes the umask's default mode)."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, FOLDER_MODE)
        except FileExistsError:  # made meanwhile by another writer: use it as it is
            continue
        os.chmod(path, FOLDER_MODE)  # the umask may have taken bits away


class _HourlyFiles:
    """The writer's open file: one hour folder at a time, rotated by hour and by size.

    Files are opened with O_CREAT | O_EXCL | O_APPEND, so an existing file (an earlier
    process with the same pid, common in containers) is never written into: the next
    free seq is taken instead. Writes go straight to the descriptor (no user-space
    buffer), so a batch is on its way to disk as soon as `append` returns, and a failed
    write can be cut back to the last whole line.
    """

    def __init__(self, root: Path, max_file_bytes: int) -> None:
        self._root = root
        self._max_bytes = max_file_bytes
        self._pid = os.getpid()
        self._fd: int | None = None
        self._path: Path | None = None
        self._hour = ""
        self._seq = 0
        self._size = 0

    def prepare(self, hour: str, next_line_bytes: int) -> None:
        """Make sure a file for `hour` is open that takes the next line (or is empty)."""
        if self._fd is not None and (
            hour != self._hour or self._unlinked() or self._size + next_line_bytes > self._max_bytes
        ):
            self.close()
            if hour == self._hour:
                self._seq += 1  # size rotation: same folder, next file
        if self._fd is None:
            if hour != self._hour:
                self._hour, self._seq = hour, 0
            self._open()

    @property
    def relative_path(self) -> str | None:
        """The open file's path under the root (as `CollectedFile.relative`), if any."""
        return None if self._path is None else f"{self._hour}/{self._path.name}"

    def fitting(self, lines: list[bytes], start: int) -> int:
        """How many lines from `start` fit in the open file; at least one (a record bigger
        than the limit gets a file of its own rather than being split or lost)."""
        size = self._size
        count = 0
        for line in lines[start:]:
            if count and size + len(line) > self._max_bytes:
                break
            size += len(line)
            count += 1
        return count

    def append(self, lines: list[bytes]) -> None:
        """Write whole lines; on failure, cut the file back so no partial line remains."""
        assert self._fd is not None
        payload = b"".join(lines)
        unwritten = memoryview(payload)
        try:
            while unwritten:  # os.write may write less than asked (e.g. the disk just filled)
                unwritten = unwritten[os.write(self._fd, unwritten) :]
        except OSError:
            self._cut_back()
            raise
        self._size += len(payload)

    def close(self) -> None:
        if self._fd is None:
            return
        fd, path, empty = self._fd, self._path, self._size == 0
        self._fd = self._path = None
        self._size = 0
        try:
            os.close(fd)
            if empty and path is not None:
                path.unlink()  # an empty file left by failed writes is only litter
        except OSError:
            pass  # nothing left to save in this file

    def _open(self) -> None:
        folder = self._root / self._hour
        make_private_folders(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        while True:
            path = folder / f"data-{self._pid}-{self._seq}.jsonl"
            try:
                fd = os.open(path, flags, FILE_MODE)
            except FileExistsError:
                self._seq += 1
                continue
            try:
                os.fchmod(fd, FILE_MODE)  # exactly 0600: the umask only ever takes bits away
            except OSError:
                os.close(fd)
                raise
            self._fd, self._path, self._size = fd, path, 0
            return

    def _unlinked(self) -> bool:
        """True if our file was deleted under us (a cleanup job, a vanished folder):
        writes would still succeed, into a file nobody can read."""
        assert self._fd is not None
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def _cut_back(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self.close()  # unknown tail: leave it, start a fresh file next time


class _WarningLimiter:
    """At most one warning per WARNING_INTERVAL_S of the injected clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0
        self.suppressed_before = 0  # how many were held back before the allowed one

    def allow(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < WARNING_INTERVAL_S:
            self._suppressed += 1
            return False
        self._last = now
        self.suppressed_before, self._suppressed = self._suppressed, 0
        return True


def rfc3339_utc(stamp: datetime) -> str:
    """2026-11-26T13:45:12.345Z: UTC, milliseconds (truncated, as clocks tick)."""
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _runs_by_hour(lines: Iterable[tuple[str, _Line]]) -> Iterator[tuple[str, list[_Line]]]:
    """Consecutive lines of the same hour, in order (records arrive in time order)."""
    hour: str = ""
    run: list[_Line] = []
    for line_hour, line in lines:
        if run and line_hour != hour:
            yield hour, run
            run = []
        hour = line_hour
        run.append(line)
    if run:
        yield hour, run


def _check_arguments(model_name: str, sample_rate: float, **sizes: int) -> None:
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name):
        raise ValueError(
            f"model_name {model_name!r} must be a bundle name (letters, digits, '.', '_', '-'; "
            "it becomes a folder name)"
        )
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | float)
        or math.isnan(sample_rate)
        or not 0.0 <= sample_rate <= 1.0
    ):
        raise ValueError(f"sample_rate must be a number from 0 to 1, got {sample_rate!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
