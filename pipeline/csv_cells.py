"""CSV cells a spreadsheet will not run: every CSV deepscreen writes goes through these writers.

A text cell that a spreadsheet would read as a formula (OWASP "CSV injection": a first character of
=, +, -, @, tab or CR, also after leading spaces and in the full-width forms some locales accept) gets a
leading `'`, which spreadsheets show as text. The escape is reversible, so the product's own readers
(`restore_cell`) get back exactly what was written: a cell that already starts with quotes before such a
character gets one more quote on the way out and loses one on the way in.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

FORMULA_STARTS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")  # the last four: full-width = + - @
# Spreadsheets trim these before parsing a cell (LibreOffice, Excel with some import settings)
LEADING_BLANKS = " \t\r\n\x0b\x0c\u00a0\u3000"
QUOTE = "'"


def _runs_as_formula(text: str) -> bool:
    """True when `text`, after any quotes this module added and any blanks a spreadsheet trims, starts a formula."""
    core = text.lstrip(QUOTE)
    if core[:1] in FORMULA_STARTS:
        return True
    trimmed = core.lstrip(LEADING_BLANKS)
    return trimmed[:1] in FORMULA_STARTS


def safe_cell(value: Any) -> Any:
    """The cell as written: text that could run as a formula gets a leading `'`; numbers and None pass."""
    if isinstance(value, str) and _runs_as_formula(value):
        return QUOTE + value
    return value


def restore_cell(text: str) -> str:
    """The inverse of safe_cell for text read back from a CSV deepscreen wrote."""
    if text.startswith(QUOTE) and _runs_as_formula(text[1:]):
        return text[1:]
    return text


class SafeWriter:
    """csv.writer whose every text cell passes through safe_cell."""

    def __init__(self, handle: TextIO, **fmtparams: Any) -> None:
        self._writer = csv.writer(handle, **fmtparams)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([safe_cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


class SafeDictWriter:
    """csv.DictWriter whose every text cell passes through safe_cell."""

    def __init__(self, handle: TextIO, fieldnames: Sequence[str], **fmtparams: Any) -> None:
        self._writer = csv.DictWriter(handle, fieldnames=fieldnames, **fmtparams)

    def writeheader(self) -> None:
        self._writer.writeheader()

    def writerow(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({key: safe_cell(value) for key, value in row.items()})

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)
