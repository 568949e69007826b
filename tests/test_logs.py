"""JSON log lines: key=value fields become fields, the batch context is on every line, secrets never appear."""

from __future__ import annotations

import json
import logging

from workers.logs import JsonFormatter, RedactingFormatter, log_context


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("token ds_" + "x" * 40)
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("workers.tasks", logging.INFO, __file__, 1, message, args, exc_info)


def test_fields_and_context_on_every_line() -> None:
    formatter = JsonFormatter()
    with log_context(batch_id="b-1", model_version="m-7"):
        line = json.loads(formatter.format(_record("verdict event_id=%s sha256=%s status=%s", "e-1", "ab" * 32,
                                                   "scored")))
        with log_context(event_id="e-2"):
            inner = json.loads(formatter.format(_record("saving")))
    outside = json.loads(formatter.format(_record("idle")))
    assert (line["event_id"], line["sha256"], line["status"]) == ("e-1", "ab" * 32, "scored")
    assert (line["batch_id"], line["model_version"], line["level"]) == ("b-1", "m-7", "info")
    assert (inner["event_id"], inner["batch_id"]) == ("e-2", "b-1")
    assert "batch_id" not in outside and "event_id" not in outside


def test_tokens_and_long_payloads_never_reach_a_line() -> None:
    token = "ds_" + "Q" * 43
    for formatter in (JsonFormatter(), RedactingFormatter("%(message)s")):
        text = formatter.format(_record("auth header=Bearer %s token=%s", "abcdefgh12345678", token, exc=True))
        assert token not in text and "abcdefgh12345678" not in text and "ds_xxxxxxxx" not in text
        assert "[redacted]" in text
    huge = JsonFormatter().format(_record("oops %r", b"\xff\xd8" + b"\x00" * 100_000))
    assert len(huge) < 6000

