"""The errors of scoring, each carrying the contract's error code.

Only the HTTP edge turns a code into a status; everything below raises these. Messages
name the column, row, file or class at fault and never contain a credential.
"""

from __future__ import annotations


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


ERRORS_BY_CODE: dict[str, type[ScoringError]] = {
    cls.code: cls
    for cls in (BadRequest, SchemaMismatch, ModelError, WorkerCrashed, BundleError, ProtocolError)
}


def error_from_json(code: str, message: str) -> ScoringError:
    """Rebuild an error sent over the worker protocol."""
    return ERRORS_BY_CODE.get(code, ScoringError)(message)
