"""Structured JSON logs on stderr: one object per line, journald-friendly.

log = logging.getLogger("tinyfleet_agent.api")
log.info("listening", extra=fields(address="127.0.0.1:8470"))
-> {"ts": "...", "level": "info", "logger": "...", "event": "listening", "address": ...}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

UTC = timezone.utc  # datetime.UTC needs Python 3.11; devices may run 3.10

__all__ = ["JsonFormatter", "fields", "setup_logging"]

_FIELDS_ATTR = "tinyfleet_fields"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: the values become top-level JSON keys."""
    return {_FIELDS_ATTR: values}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line; the message is the `event`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        extra = getattr(record, _FIELDS_ATTR, None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the agent's logs to `stream` (stderr) as JSON lines at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("tinyfleet_agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
