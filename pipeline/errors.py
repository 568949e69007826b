"""Typed errors of the screening core. Reason codes are short, stable and end up in the database."""

from __future__ import annotations


class InvalidInput(Exception):
    """The input can never be screened (not an image, truncated, too large...). Terminal, never retried."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InvalidEvent(ValueError):
    """An upload event that does not match the schema."""


class ModelLoadError(RuntimeError):
    """The classifier weights or metadata are missing, corrupt or do not match their sha256."""
