"""Where embedded R's console output goes: raw to stderr, or as JSON log lines.

Embedded R writes through rpy2's console callbacks: `consolewrite_print` (print(),
cat() to stdout) and `consolewrite_warnerror` (message(), cat(file = stderr()), R's
own diagnostics), in fragments that need not end at a line. `rmodel` routes both, and
the warnings collected while a bundle loads, to a console from this module:

- `RawConsole` (the default; `rscore predict`): the text as R wrote it, on stderr.
- `LogConsole` (the workers): one log record per complete line, with the bundle's
  name and the worker slot, so stderr stays JSON, one object per line. Levels:
  print output and message() text are `INFO`; a stderr line R starts with `Warning`
  is `WARNING` and one starting with `Error` is `ERROR` (message() and warnings share
  the one callback, so this is read from R's own prefixes); a warning raised while
  the bundle loads (score.R, init(), a package's start-up) is one `WARNING` record
  with R's "In <call> : <message>" text.

Never imports rpy2 or starts R; never writes to stdout (it is `rscore predict`'s JSON).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Protocol


class Console(Protocol):
    """A destination for embedded R's console output."""

    def write_print(self, text: str) -> None: ...

    def write_warnerror(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def flush(self) -> None: ...


class RawConsole:
    """R's console as R writes it, on stderr (never stdout)."""

    def write_print(self, text: str) -> None:
        sys.stderr.write(text)

    def write_warnerror(self, text: str) -> None:
        sys.stderr.write(text)

    def warning(self, text: str) -> None:
        sys.stderr.write(f"Warning message:\n{text}\n")

    def flush(self) -> None:
        sys.stderr.flush()


class _Lines:
    """Fragments in, complete lines out: a partial line waits for its newline."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        return lines

    def drain(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []


def level_of_stderr_line(line: str) -> int:
    """The log level of one line R wrote to its stderr (see the module's docstring)."""
    stripped = line.lstrip()
    if stripped.startswith("Error"):
        return logging.ERROR
    if stripped.startswith("Warning"):
        return logging.WARNING
    return logging.INFO


class LogConsole:
    """R's console as log records, one per line, carrying `fields` (bundle, slot)."""

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any]) -> None:
        self._logger = logger
        self._fields = dict(fields)
        self._printed = _Lines()
        self._stderr = _Lines()

    def write_print(self, text: str) -> None:
        for line in self._printed.feed(text):
            self._emit(logging.INFO, line, "stdout")

    def write_warnerror(self, text: str) -> None:
        for line in self._stderr.feed(text):
            self._emit(level_of_stderr_line(line), line, "stderr")

    def warning(self, text: str) -> None:
        self._emit(logging.WARNING, text, "warning")

    def flush(self) -> None:
        for line in self._printed.drain():
            self._emit(logging.INFO, line, "stdout")
        for line in self._stderr.drain():
            self._emit(level_of_stderr_line(line), line, "stderr")

    def _emit(self, level: int, line: str, stream: str) -> None:
        text = line.rstrip()
        if not text.strip():  # R's blank separator lines carry nothing
            return
        try:
            self._logger.log(level, "%s", text, extra={**self._fields, "r_stream": stream})
        except Exception:  # called from inside R: must never raise there
            return
