"""Re-reads files that change on disk: TLS certificates, keys files, JWKS files.

Polls (no inotify dependency: it works the same on every filesystem, including the
Kubernetes Secret-volume layout, where the visible `tls.crt` is a symlink to
`..data/tls.crt`, `..data` is a symlink to a timestamped generation folder, and an
update swaps `..data` atomically and then deletes the old generation). Each tick it
compares the identity of every path's fully resolved target (device, inode, size,
mtime_ns); when any differs it calls `on_change()`, which loads and validates the new
content and raises if it is bad. Plain in-place writes and rename-over writes show up
the same way. A path missing for longer than a grace period (a delete, not the gap of a
delete-then-create) is a change too: `on_change()` is called and decides what a missing
file means (the credentials drop what it held; TLS keeps its certificate).

It must never log file contents (they are keys and certificates): a failed reload is
logged with the file names and the exception's type only, unless the exception is a
`ReloadError`, whose message is written to be safe to log. It must never block the
event loop for long: one tick is a few `stat` calls plus `on_change`, which must be
quick (parsing a few small files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("rscore.watch")

Identity = tuple[int, int, int, int]

# After a failed reload, try again on this many following ticks even when nothing
# changed: the files may have been caught half-written (a new certificate next to the
# old key, a truncated file whose rewrite landed within the same mtime tick).
RETRIES_AFTER_FAILURE = 2

# A path missing for this long is a change (on_change is called); shorter gaps are the
# normal window between a delete and a create. A Secret volume's swap is atomic: it never
# shows a missing file.
MISSING_GRACE_S = 2.0


class ReloadError(ValueError):
    """Raised by an `on_change` callback when the new content is unusable.

    Its message must name the files and the problem, never their contents: the
    watcher logs it as is (any other exception is logged by type only).
    """


def file_identity(path: Path) -> Identity | None:
    """(device, inode, size, mtime_ns) of what `path` finally points to; None if missing.

    Resolving symlinks first matters for Secret volumes: the visible path's own
    symlink never changes, only what `..data` points to.
    """
    try:
        st = os.stat(os.path.realpath(path))
    except OSError:  # missing, or deleted between realpath and stat: try next tick
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    """Calls `on_change()` (on the event loop) when any of `paths` changes on disk.

    `start()` records the current state as the baseline, so start the watcher right
    after loading the files. If `on_change` raises, a warning names the changed files,
    and the call is retried on the next change (and on the next few ticks, in case the
    files were caught half-written); what a failed call leaves in effect is the
    callback's business, so a return to the last applied state is reloaded too.
    A path missing for `missing_grace_s` counts as a change.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        on_change: Callable[[], None],
        *,
        interval_s: float = 1.0,
        missing_grace_s: float = MISSING_GRACE_S,
    ) -> None:
        if not paths:
            raise ValueError("FileWatcher needs at least one path")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        if missing_grace_s < 0:
            raise ValueError(f"missing_grace_s must be >= 0, not {missing_grace_s}")
        self._paths = tuple(Path(p) for p in paths)
        self._on_change = on_change
        self._interval_s = interval_s
        self._missing_grace_s = missing_grace_s
        self._task: asyncio.Task[None] | None = None
        self._applied: tuple[Identity | None, ...] = ()
        self._failed: tuple[Identity | None, ...] | None = None
        self._retries_left = 0
        self.ticks = 0  # looks at the files done (tests wait for a few to have passed)
        self._missing_since: float | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._paths

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Record the baseline and start polling; a second call is a no-op."""
        if self.running:
            return
        self._applied = self._snapshot()
        self._failed = None
        self._task = asyncio.create_task(self._run(), name="rscore-file-watcher")

    async def stop(self) -> None:
        """Stop polling and wait for the task to end; safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _snapshot(self) -> tuple[Identity | None, ...]:
        return tuple(file_identity(p) for p in self._paths)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self._tick()
            except Exception:  # a bug here must not end the watching for good
                log.exception("file watcher tick failed; will try again")
            self.ticks += 1

    def _tick(self) -> None:
        current = self._snapshot()
        if None in current:
            if not self._missing_long_enough(current):
                return
        else:
            self._missing_since = None
        if current == self._applied and self._failed is None:
            return
        if current == self._failed:
            if self._retries_left <= 0:
                return  # retried enough: wait for the next change
            self._retries_left -= 1
            retry = True
        else:
            self._retries_left = RETRIES_AFTER_FAILURE
            retry = False
        self._attempt(current, retry=retry)

    def _attempt(self, current: tuple[Identity | None, ...], *, retry: bool) -> None:
        changed = self._changed_paths(current)
        # The snapshot is taken before on_change reads the files: a write that lands
        # during the read shows up as another change next tick, never as a lost one.
        try:
            self._on_change()
        except Exception as exc:
            self._failed = current
            # Only ReloadError messages are known to be free of file contents.
            reason = type(exc).__name__
            if isinstance(exc, ReloadError):
                reason = f"{reason}: {exc}"
            if retry:
                log.debug("reload of %s failed again (%s)", changed, reason)
            else:
                log.warning(
                    "reload after a change of %s failed (%s); keeping the current state "
                    "and trying again on the next change",
                    changed,
                    reason,
                )
            return
        self._applied, self._failed = current, None
        log.info("reloaded after a change of %s", changed)

    def _changed_paths(self, current: tuple[Identity | None, ...]) -> str:
        changed = [
            str(p)
            for p, old, new in zip(self._paths, self._applied, current, strict=True)
            if old != new
        ]
        return ", ".join(changed or [str(p) for p in self._paths])

    def _missing_long_enough(self, current: tuple[Identity | None, ...]) -> bool:
        """Whether a path has been missing for the grace period (then it is a change);
        a shorter gap may be a delete-then-create: look again next tick."""
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        if now - self._missing_since >= self._missing_grace_s:
            return True
        missing = ", ".join(str(p) for p, i in zip(self._paths, current, strict=True) if i is None)
        log.debug("%s missing; looking again next tick", missing)
        return False
