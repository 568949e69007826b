"""Log set-up for every deepscreen process: key=value text for people, or one JSON object per line whose keys
include the message's key=value fields and those of the enclosing `log_context`. Tokens and bearer values are
masked and a message is cut at MAX_MESSAGE characters, so no secret or image bytes can fill a log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

MAX_MESSAGE = 4000
FIELD = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)=(\"[^\"]*\"|'[^']*'|[^\s,;]+)")
SECRET = re.compile(r"\bds_[A-Za-z0-9_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9_\-.=]{8,}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("deepscreen_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields added to every JSON line logged inside the block (None values are left out)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def redact(text: str) -> str:
    return SECRET.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())[:MAX_MESSAGE]
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        document.update(_context.get() or {})
        for key, value in FIELD.findall(message):
            if key not in ("ts", "level", "logger", "message"):
                document[key] = value.strip("\"'")
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))[:MAX_MESSAGE]
        return json.dumps(document, default=str)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: int, fmt: str = "text") -> None:
    """The root logger on stderr, as text or JSON lines (DEEPSCREEN_LOG_FORMAT)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
