"""Logging for every rscore process: JSON, one object per line, on stderr.

Fields: time, level, logger, message, plus any `extra=` fields (request_id, status,
duration_ms...). Nothing here logs a request body or a credential.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.orjson import OrjsonFormatter

LOG_FORMAT = "%(levelname)s %(name)s %(message)s"


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send every log record to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        OrjsonFormatter(
            LOG_FORMAT,
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("rpy2").setLevel(logging.WARNING)  # its start-up chatter is INFO
