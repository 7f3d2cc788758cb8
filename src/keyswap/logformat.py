"""``--log-format json``: one JSON object per log line (gateway, admin API, origin).

Each line has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``message`` (what the
text format prints after the logger name), plus the record's structured fields: for an access line
``method``, ``path``, ``status``, ``consumer``, ``key_id`` and ``latency_ms``
(:mod:`keyswap.gateway.accesslog`); ``exception`` holds a formatted traceback when there is one.
Field values are what the text line shows: the path without its query string, never an API key or
a token (the loggers are never given them).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter"]

LOG_FORMATS = ("text", "json")

#: Attributes every LogRecord has: not copied into the JSON object as fields.
_STANDARD = frozenset(
    {
        *logging.makeLogRecord({}).__dict__,
        "message",
        "asctime",
        "color_message",  # uvicorn's coloured copy of the message
        "taskName",
    }
)
_SCALARS = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        fields: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in fields and isinstance(value, _SCALARS):
                fields[name] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exception"] = record.exc_text
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)
