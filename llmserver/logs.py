"""Log output: ``LOG_FORMAT=plain`` (a line of text per record, the default) or ``json``
(one JSON object per line, for a log collector).

A JSON line has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and
``message``; then every field the code attached to the record (``extra=``) as a key of
its own (the access log's ``request_id``, ``method``, ``path``, ``status``,
``duration_ms``...: llmserver/middleware.py); then, when the record carries an
exception, ``exception``: its traceback as one string.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import datetime, timezone

# The attributes every LogRecord has; any other attribute came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_OWN_KEYS = ("time", "level", "logger", "message", "exception", "stack")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in _OWN_KEYS and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # A value JSON cannot hold (an object passed in extra=) is written as its str().
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(config: dict) -> None:
    """settings.LOGGING_CONFIG: ``LOGGING`` applied, and Python's warnings (a library's
    warnings.warn) sent through it as records of the ``py.warnings`` logger, so that
    they too come out as one line of the chosen format."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
