"""The errors of scoring, each carrying the contract's error code.

Only the HTTP edge turns a code into a status; everything below raises these. Messages
name the column, row, file or class at fault and never contain a credential. A string
the client sent is quoted through `quoted()` or `listed()`, never as is: an error must
not echo a body back (a 10 MB factor level, ten thousand unknown keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

MAX_QUOTED_CHARS: Final = 64  # of one client string in an error message
MAX_LISTED: Final = 8  # client strings named in one message; the rest are counted


def quoted(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """A client's value for an error message: a string in quotes (Python's repr, so
    control characters show escaped), anything else as its repr; cut to `limit`
    characters, then `... (N characters)`."""
    text = value if isinstance(value, str) else repr(value)
    shown = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def listed(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """Client strings for an error message, comma-separated: the first `limit`, each cut
    to MAX_QUOTED_CHARS, then `and N more`."""
    shown = [
        name if len(name) <= MAX_QUOTED_CHARS else f"{name[:MAX_QUOTED_CHARS]}..."
        for name in names[:limit]
    ]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


class ScoringError(Exception):
    """Base: an error with a contract code (`bad_request`, `model_error`, ...)."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ScoringError):
    """The body is not JSON or has the wrong shape."""

    code = "bad_request"


class SchemaMismatch(ScoringError):
    """A column is missing, has the wrong type or an unknown factor level."""

    code = "schema_mismatch"


class TooLarge(ScoringError):
    """The request is over a size limit: body bytes, rows or columns."""

    code = "too_large"


class ModelError(ScoringError):
    """R raised an error in `score()`, or `score()` returned something unusable."""

    code = "model_error"


class WorkerCrashed(ScoringError):
    """The R worker died while scoring this request."""

    code = "worker_crashed"


class BundleError(ScoringError):
    """The bundle cannot be loaded: a missing or broken file, or no predict method."""

    code = "bundle_error"


class ProtocolError(ScoringError):
    """A peer broke the worker protocol (bad frame, unexpected message)."""

    code = "protocol_error"


class ConfigurationError(ScoringError):
    """A setting the process cannot run with (an unsafe socket folder, say): found at
    start-up, never sent over the worker protocol."""

    code = "configuration_error"


ERRORS_BY_CODE: dict[str, type[ScoringError]] = {
    cls.code: cls
    for cls in (BadRequest, SchemaMismatch, ModelError, WorkerCrashed, BundleError, ProtocolError)
}


def error_from_json(code: str, message: str) -> ScoringError:
    """Rebuild an error sent over the worker protocol."""
    return ERRORS_BY_CODE.get(code, ScoringError)(message)
