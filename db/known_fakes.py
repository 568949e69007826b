"""Hash banks of the known-fake memory: entries, their change log (`bank_changes`, which workers follow),
CSV import/export, decision hooks, the re-scan hook, and the rows a screening writes (its PDQ hash and bank
matches). Removing an entry (a reversal or an erasure) revokes its matches and re-checks what they decided.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np
from sqlalchemy import Engine, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from db.schema import (
    AuditEntry,
    BankChange,
    BankEntry,
    BankMatchRow,
    FaceRow,
    HashBank,
    Image,
    PerceptualHashRow,
    ReviewItem,
    Verdict,
)
from db.states import OPEN_STATES, ReviewState
from pipeline.csv_cells import SafeWriter, restore_cell
from pipeline.decide import needs_review
from pipeline.known_fakes import MATCHED_KNOWN_FAKE
from pipeline.pdq import PerceptualHash, hex_to_bytes, normalize_hex
from pipeline.screen import Verdict as ScreenVerdict

log = logging.getLogger(__name__)

CONFIRMED_FAKE, CONFIRMED_REAL = "confirmed_fake", "confirmed_real"
DECISION_BANKS = {"confirm_fake": (CONFIRMED_FAKE, "fake"), "mark_real": (CONFIRMED_REAL, "real")}
LABELS = ("fake", "real")
HASH_COLUMNS = ("hash", "pdq", "pdq_hash", "signal_value", "indicator", "hash_value")
LABEL_COLUMNS = ("label", "verdict", "status")
# Change ids come from a sequence, and Postgres may commit them out of order: a follower re-reads this many
# changes behind its revision. Replaying a change is harmless (an add replaces, a remove is idempotent).
CHANGE_LOOKBACK = 1000
SCAN_CHUNK = 50_000
SCRUBBED = ""  # an erased entry's hash in bank_changes: blanked, the entry id and op stay for followers
JUDGED = ("fake", "uncertain", "real")  # face verdicts in the order the image's own verdict takes them


class BankError(Exception):
    """A bank operation that cannot be done; `reason` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Change:
    id: int
    entry_id: int
    op: str  # add | remove
    pdq: str
    label: str


@dataclass(frozen=True)
class ImportReport:
    bank: str
    added: int
    duplicates: int
    rejected: list[tuple[int, str]]  # (line number, reason)

    def as_dict(self) -> dict[str, Any]:
        return {"bank": self.bank, "added": self.added, "duplicates": self.duplicates,
                "rejected": [{"line": n, "reason": r} for n, r in self.rejected]}


@dataclass(frozen=True)
class NearImage:
    verdict_id: int
    image_id: int
    distance: int
    mirrored: bool = False  # the stored image's mirror is what is near


def _insert_for(session: Session):  # noqa: ANN202
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def ensure_bank(session: Session, name: str, kind: str = "decisions", description: str | None = None) -> int:
    bank_id = session.scalar(select(HashBank.id).where(HashBank.name == name))
    if bank_id is not None:
        return int(bank_id)
    insert = _insert_for(session)
    session.execute(insert(HashBank).values(name=name, kind=kind, description=description,
                                            created_at=datetime.now(UTC)).on_conflict_do_nothing(index_elements=["name"]))
    return int(session.scalar(select(HashBank.id).where(HashBank.name == name)))


def add_entries(session: Session, bank_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Insert entries (dicts of BankEntry columns) and log their adds; returns the new ids."""
    ids = []
    now = datetime.now(UTC)
    for row in rows:
        entry = BankEntry(bank_id=bank_id, created_at=now, **row)
        session.add(entry)
        session.flush()
        ids.append(int(entry.id))
        session.add(BankChange(entry_id=entry.id, op="add", pdq=entry.pdq, label=entry.label, at=now))
    return ids


def remove_entries(session: Session, entry_ids: list[int], why: str = "bank entry removed",
                   scrub: bool = False) -> int:
    """Delete entries, log their removal, revoke the matches they made and re-check the verdicts those
    matches decided. `scrub` (erasure): blank the entries' hashes in the change log too."""
    if not entry_ids:
        return 0
    now = datetime.now(UTC)
    rows = session.execute(select(BankEntry.id, BankEntry.pdq, BankEntry.label).where(BankEntry.id.in_(entry_ids))).all()
    for entry_id, pdq, label in rows:
        session.add(BankChange(entry_id=entry_id, op="remove", pdq=SCRUBBED if scrub else pdq, label=label, at=now))
    revoked = session.execute(
        update(BankMatchRow).where(BankMatchRow.entry_id.in_(entry_ids), BankMatchRow.revoked_at.is_(None))
        .values(revoked_at=now).returning(BankMatchRow.verdict_id, BankMatchRow.label)
        .execution_options(synchronize_session=False)).all()
    recheck_verdicts(session, sorted({v for v, label in revoked if label == "fake"}), why, now)
    session.execute(delete(BankEntry).where(BankEntry.id.in_(entry_ids)).execution_options(synchronize_session=False))
    if scrub:
        session.execute(update(BankChange).where(BankChange.entry_id.in_(entry_ids)).values(pdq=SCRUBBED)
                        .execution_options(synchronize_session=False))
    return len(rows)


def erase_entries(session: Session, entry_ids: list[int], hashes: set[str]) -> int:
    """An erased image's entries go as a reversal removes them, and the change log forgets its hashes: those
    of these entries, and those of its entries removed earlier (a reversed decision). Live entries of other
    images with the same hash keep theirs."""
    removed = remove_entries(session, entry_ids, why="erasure", scrub=True)
    if hashes:
        session.execute(update(BankChange).where(BankChange.pdq.in_(sorted(hashes)),
                                                 BankChange.entry_id.not_in(select(BankEntry.id)))
                        .values(pdq=SCRUBBED).execution_options(synchronize_session=False))
    return removed


def entries_of_images(session: Session, image_ids: list[int]) -> list[int]:
    """Bank entries an image's decisions made (by image, or by one of its review items)."""
    items = select(ReviewItem.id).where(ReviewItem.image_id.in_(image_ids))
    return list(session.scalars(select(BankEntry.id).where(
        or_(BankEntry.image_id.in_(image_ids), BankEntry.review_item_id.in_(items)))).all())


# -- re-checking what a removed entry decided ----------------------------------------------------------------
def recheck_verdicts(session: Session, verdict_ids: list[int], why: str, now: datetime) -> None:
    """Verdicts whose fake match was revoked: one that was `fake` by the match alone gets the classifier's own
    verdict back (from its faces), and an open review item the match opened stays open only if that verdict
    needs review (with it as its reason); otherwise the item is withdrawn. Decided items are left as decided."""
    if not verdict_ids:
        return
    faces: dict[int, list[str]] = {}
    for verdict_id, label in session.execute(select(FaceRow.verdict_id, FaceRow.verdict)
                                             .where(FaceRow.verdict_id.in_(verdict_ids))):
        faces.setdefault(verdict_id, []).append(label)
    matched = set(session.scalars(select(Verdict.id).where(Verdict.id.in_(verdict_ids),
                                                           Verdict.reason == MATCHED_KNOWN_FAKE)).all())
    for verdict_id in verdict_ids:
        own = _own_label(faces.get(verdict_id, []))
        if verdict_id in matched:
            session.execute(update(Verdict).where(Verdict.id == verdict_id)
                            .values(_own_verdict(own, faces.get(verdict_id, [])))
                            .execution_options(synchronize_session=False))
        _recheck_item(session, verdict_id, own, why, now)


def _own_label(face_labels: list[str]) -> str | None:
    """The classifier's verdict of the image: its worst judged face (the image score is the faces' maximum)."""
    return next((label for label in JUDGED if label in face_labels), None)


def _own_verdict(own: str | None, face_labels: list[str]) -> dict[str, Any]:
    if own is not None:
        return {"status": "scored", "verdict": own, "reason": None}
    return {"status": "no_face", "verdict": None, "reason": "face_too_small" if face_labels else "no_face"}


def _recheck_item(session: Session, verdict_id: int, own: str | None, why: str, now: datetime) -> None:
    item = session.execute(select(ReviewItem.id, ReviewItem.state, ReviewItem.reason)
                           .where(ReviewItem.verdict_id == verdict_id)).first()
    if item is None or item.state not in OPEN_STATES or item.reason != MATCHED_KNOWN_FAKE:
        return
    if needs_review(own):
        values: dict[str, Any] = {"reason": own, "updated_at": now}
        new_state = item.state
    else:
        values = {"state": ReviewState.WITHDRAWN, "claimed_by": None, "lease_expires_at": None, "updated_at": now}
        new_state = ReviewState.WITHDRAWN
    session.execute(update(ReviewItem).where(ReviewItem.id == item.id).values(values)
                    .execution_options(synchronize_session=False))
    session.add(AuditEntry(at=now, actor="system", actor_role="system", action="bank_recheck",
                           review_item_id=item.id, previous_state=item.state, new_state=new_state,
                           note=f"{why}: the bank match that queued this item is gone",
                           details={"own_verdict": own}))


# -- decision hooks (called inside the decision's transaction by db.review_store) ---------------------------
def on_decision(session: Session, item_id: int, decision: str, audit_id: int | None, actor: str) -> int | None:
    """confirm_fake / mark_real put the item's hash in confirmed_fake / confirmed_real. Returns the entry id
    (None when the decision fills no bank or the image has no usable hash)."""
    target = DECISION_BANKS.get(decision)
    if target is None:
        return None
    bank_name, label = target
    row = session.execute(
        select(PerceptualHashRow.pdq, PerceptualHashRow.quality, PerceptualHashRow.low_quality, ReviewItem.image_id)
        .join(ReviewItem, ReviewItem.verdict_id == PerceptualHashRow.verdict_id).where(ReviewItem.id == item_id)
    ).first()
    if row is None or row.low_quality:
        return None
    bank_id = ensure_bank(session, bank_name)
    stale = session.scalars(select(BankEntry.id).where(BankEntry.bank_id == bank_id,
                                                       BankEntry.review_item_id == item_id)).all()
    remove_entries(session, list(stale))
    [entry_id] = add_entries(session, bank_id, [{"pdq": row.pdq, "label": label, "quality": row.quality,
                                                 "review_item_id": item_id, "image_id": row.image_id,
                                                 "audit_id": audit_id, "created_by": actor}])
    return entry_id


def on_reversal(session: Session, item_id: int) -> int:
    """The item's decision was reversed: every entry it put in a bank goes."""
    ids = session.scalars(select(BankEntry.id).where(BankEntry.review_item_id == item_id)).all()
    return remove_entries(session, list(ids))


# -- what a screening writes (called inside db.store.Store.save) --------------------------------------------
def without_removed_matches(session: Session, result: ScreenVerdict) -> ScreenVerdict:
    """A verdict made `fake` by an entry removed since the worker's index last refreshed (a reversal, an
    erasure: up to `bank_refresh_s` ago) gets the classifier's own verdict back; the match is still recorded,
    revoked (save_screening_rows)."""
    if result.reason != MATCHED_KNOWN_FAKE:
        return result
    fake = [m.entry_id for m in result.matches if m.label == "fake"]
    if fake and session.scalar(select(BankEntry.id).where(BankEntry.id.in_(fake)).limit(1)) is not None:
        return result
    labels = [face.verdict for face in result.faces]
    return dataclasses.replace(result, **_own_verdict(_own_label(labels), labels))


def save_screening_rows(session: Session, verdict_id: int, image_id: int, result: ScreenVerdict) -> None:
    if result.pdq is None:
        return
    insert = _insert_for(session)
    session.execute(insert(PerceptualHashRow).values(hash_row(verdict_id, image_id, result.pdq))
                    .on_conflict_do_nothing(index_elements=["verdict_id"]))
    now = datetime.now(UTC)
    for match in result.matches:
        entry = session.execute(select(BankEntry.review_item_id, BankEntry.image_id, HashBank.name)
                                .join(HashBank, HashBank.id == BankEntry.bank_id)
                                .where(BankEntry.id == match.entry_id)).first()
        values = {"verdict_id": verdict_id, "entry_id": match.entry_id if entry else None, "label": match.label,
                  "distance": match.distance, "mirrored": match.mirrored, "bank": entry.name if entry else "removed",
                  "matched_review_item_id": entry.review_item_id if entry else None,
                  "matched_image_id": entry.image_id if entry else None, "found_by": "upload", "created_at": now,
                  "revoked_at": None if entry else now}  # removed between the index refresh and this save
        session.execute(insert(BankMatchRow).values(values)
                        .on_conflict_do_nothing(index_elements=["verdict_id", "label"]))


def hash_row(verdict_id: int, image_id: int, pdq: PerceptualHash) -> dict[str, Any]:
    """A verdict's `perceptual_hashes` row."""
    return {"verdict_id": verdict_id, "image_id": image_id, "pdq": pdq.hex, "pdq_mirror": pdq.mirror,
            "quality": pdq.quality, "low_quality": pdq.low_quality}


def review_reason(result: ScreenVerdict, label: str | None) -> str | None:
    """A review item opened by a bank match says so; the console and the queue filter show it."""
    return MATCHED_KNOWN_FAKE if result.reason == MATCHED_KNOWN_FAKE else label


class BankStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    # -- the index's feed ----------------------------------------------------------------------------
    def revision(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.max(BankChange.id))) or 0)

    def iter_entries(self, chunk: int = SCAN_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every entry as (ids, packed codes (n, 32) uint8, labels 1 fake / 0 real), in chunks."""
        last = 0
        while True:
            with self.sessions() as session:
                rows = session.execute(select(BankEntry.id, BankEntry.pdq, BankEntry.label).where(BankEntry.id > last)
                                       .order_by(BankEntry.id).limit(chunk)).all()
            if not rows:
                return
            last = rows[-1][0]
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            codes = np.frombuffer(bytes.fromhex("".join(r[1] for r in rows)), dtype=np.uint8).reshape(-1, 32)
            labels = np.array([1 if r[2] == "fake" else 0 for r in rows], dtype=np.int8)
            yield ids, codes, labels

    def changes_since(self, revision: int) -> list[Change]:
        with self.sessions() as session:
            rows = session.scalars(select(BankChange).where(BankChange.id > max(0, revision - CHANGE_LOOKBACK))
                                   .order_by(BankChange.id)).all()
            return [Change(r.id, r.entry_id, r.op, r.pdq, r.label) for r in rows]

    # -- banks ---------------------------------------------------------------------------------------
    def banks(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            counts = dict(session.execute(select(BankEntry.bank_id, func.count()).group_by(BankEntry.bank_id)).all())
            rows = session.scalars(select(HashBank).order_by(HashBank.id)).all()
            return [{"name": b.name, "kind": b.kind, "entries": int(counts.get(b.id, 0)), "description": b.description,
                     "created_at": b.created_at.isoformat() if b.created_at else None} for b in rows]

    def entries(self, bank: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            bank_id = session.scalar(select(HashBank.id).where(HashBank.name == bank))
            if bank_id is None and bank in (CONFIRMED_FAKE, CONFIRMED_REAL):
                return []  # made by the first decision that fills it
            if bank_id is None:
                raise BankError("no_such_bank", bank)
            rows = session.execute(
                select(BankEntry, AuditEntry.action, AuditEntry.actor)
                .outerjoin(AuditEntry, AuditEntry.id == BankEntry.audit_id)
                .where(BankEntry.bank_id == bank_id).order_by(BankEntry.id)).all()
            return [{"id": e.id, "hash": e.pdq, "label": e.label, "quality": e.quality,
                     "review_item_id": e.review_item_id, "image_id": e.image_id, "audit_id": e.audit_id,
                     "decision": action, "decided_by": actor, "external_id": e.external_id,
                     "created_by": e.created_by} for e, action, actor in rows]

    def import_csv(self, bank: str, text: TextIO, default_label: str | None, created_by: str) -> ImportReport:
        """Rows of hash[,label] (a header naming them is optional; ThreatExchange exports name the hash
        `signal_value` or `indicator`). Rows whose hash is already in the bank are duplicates."""
        if bank in (CONFIRMED_FAKE, CONFIRMED_REAL):
            raise BankError("decision_bank", f"{bank} is filled by moderators' decisions, not by imports")
        if default_label is not None and default_label not in LABELS:
            raise BankError("bad_label", default_label)
        parsed, rejected = parse_bank_csv(text, default_label)
        with self.sessions.begin() as session:
            bank_id = ensure_bank(session, bank, kind="imported")
            present = set(session.scalars(select(BankEntry.pdq).where(BankEntry.bank_id == bank_id)).all())
            fresh, duplicates = [], 0
            for pdq, label, external_id in parsed:
                if pdq in present:
                    duplicates += 1
                    continue
                present.add(pdq)
                fresh.append({"pdq": pdq, "label": label, "external_id": external_id, "created_by": created_by})
            add_entries(session, bank_id, fresh)
        return ImportReport(bank, len(fresh), duplicates, rejected)

    def export_csv(self, bank: str, out: TextIO) -> int:
        writer = SafeWriter(out)  # external ids come from partners' files: no formula reaches a spreadsheet
        writer.writerow(["hash", "label", "quality", "external_id", "review_item_id", "audit_id"])
        rows = self.entries(bank)
        for row in rows:
            writer.writerow([row["hash"], row["label"], row["quality"] if row["quality"] is not None else "",
                             row["external_id"] or "", row["review_item_id"] or "", row["audit_id"] or ""])
        return len(rows)

    def delete_bank(self, bank: str) -> int:
        if bank in (CONFIRMED_FAKE, CONFIRMED_REAL):
            raise BankError("decision_bank", f"{bank} entries go when their decisions are reversed")
        with self.sessions.begin() as session:
            bank_id = session.scalar(select(HashBank.id).where(HashBank.name == bank))
            if bank_id is None:
                raise BankError("no_such_bank", bank)
            removed = remove_entries(session, list(session.scalars(select(BankEntry.id).where(BankEntry.bank_id == bank_id))))
            session.execute(delete(HashBank).where(HashBank.id == bank_id))
            return removed

    # -- matches -------------------------------------------------------------------------------------
    def matches_for_verdict(self, verdict_id: int) -> list[dict[str, Any]]:
        return self.matches_for_verdicts([verdict_id])[verdict_id]

    def matches_for_verdicts(self, verdict_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Each verdict's bank matches (by label), in one query: verdict id -> matches (empty when none)."""
        found: dict[int, list[dict[str, Any]]] = {verdict_id: [] for verdict_id in verdict_ids}
        if not found:
            return found
        with self.sessions() as session:
            rows = session.scalars(select(BankMatchRow).where(BankMatchRow.verdict_id.in_(sorted(found)))
                                   .order_by(BankMatchRow.verdict_id, BankMatchRow.label)).all()
            for row in rows:
                found[row.verdict_id].append(match_dict(row))
        return found

    def matches_for_item(self, item_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            verdict_id = session.scalar(select(ReviewItem.verdict_id).where(ReviewItem.id == item_id))
        return self.matches_for_verdict(verdict_id) if verdict_id is not None else []

    # -- the re-scan hook ----------------------------------------------------------------------------
    def near(self, pdq: str, max_distance: int, chunk: int = SCAN_CHUNK) -> list[NearImage]:
        """Stored images (newest verdict each) whose usable hash, or its mirror's, is within `max_distance`."""
        query = np.frombuffer(hex_to_bytes(pdq), dtype=np.uint8)
        best: dict[int, NearImage] = {}
        last = 0
        while True:
            with self.sessions() as session:
                rows = session.execute(
                    select(PerceptualHashRow.verdict_id, PerceptualHashRow.image_id, PerceptualHashRow.pdq,
                           PerceptualHashRow.pdq_mirror)
                    .where(PerceptualHashRow.verdict_id > last, PerceptualHashRow.low_quality.is_(False))
                    .order_by(PerceptualHashRow.verdict_id).limit(chunk)).all()
            if not rows:
                break
            last = rows[-1][0]
            codes = np.frombuffer(bytes.fromhex("".join(r[2] for r in rows)), dtype=np.uint8).reshape(-1, 32)
            distances = np.bitwise_count(codes ^ query).sum(axis=1)
            mirrors = np.frombuffer(bytes.fromhex("".join(r[3] or r[2] for r in rows)), dtype=np.uint8).reshape(-1, 32)
            mirror_distances = np.bitwise_count(mirrors ^ query).sum(axis=1)
            for i in np.nonzero(np.minimum(distances, mirror_distances) <= max_distance)[0].tolist():
                verdict_id, image_id, _, _ = rows[i]
                mirrored = bool(mirror_distances[i] < distances[i])
                found = NearImage(int(verdict_id), int(image_id), int(min(distances[i], mirror_distances[i])), mirrored)
                if image_id not in best or best[image_id].verdict_id < verdict_id:
                    best[image_id] = found
        return sorted(best.values(), key=lambda n: (n.distance, n.verdict_id))

    def rescan_entry(self, entry_id: int, max_distance: int) -> list[dict[str, Any]]:
        """A hash entered a fake bank: stored images within the distance get a match row and a pending
        review item (a new one when their verdict opened none). Decided items are left as decided.
        Returns what was queued."""
        with self.sessions() as session:
            entry = session.execute(select(BankEntry, HashBank.name).join(HashBank, HashBank.id == BankEntry.bank_id)
                                    .where(BankEntry.id == entry_id)).first()
        if entry is None or entry[0].label != "fake":
            return []
        bank_entry, bank_name = entry
        queued = []
        for near in self.near(bank_entry.pdq, max_distance):
            if near.image_id == bank_entry.image_id:
                continue
            item_id = self._queue_match(near, bank_entry, bank_name)
            if item_id is not None:
                queued.append({"image_id": near.image_id, "verdict_id": near.verdict_id, "distance": near.distance,
                               "review_item_id": item_id})
        log.info("rescan entry_id=%d queued=%d", entry_id, len(queued))
        return queued

    def _queue_match(self, near: NearImage, entry: BankEntry, bank_name: str) -> int | None:
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            insert = _insert_for(session)
            session.execute(insert(BankMatchRow).values(
                verdict_id=near.verdict_id, entry_id=entry.id, label="fake", distance=near.distance,
                mirrored=near.mirrored, bank=bank_name,
                matched_review_item_id=entry.review_item_id, matched_image_id=entry.image_id, found_by="rescan",
                created_at=now).on_conflict_do_nothing(index_elements=["verdict_id", "label"]))
            item = session.execute(select(ReviewItem.id, ReviewItem.state)
                                   .where(ReviewItem.verdict_id == near.verdict_id)).first()
            if item is not None and item.state == ReviewState.WITHDRAWN:  # its match went and has come back
                session.execute(update(ReviewItem).where(ReviewItem.id == item.id)
                                .values(state=ReviewState.PENDING, reason=MATCHED_KNOWN_FAKE, updated_at=now))
                return int(item.id)
            if item is not None:
                return int(item.id) if item.state in OPEN_STATES else None
            verdict = session.execute(select(Verdict.fake_probability, Verdict.image_id)
                                      .where(Verdict.id == near.verdict_id)).one()
            source = session.scalar(select(Image.source).where(Image.id == near.image_id))
            item_id = session.scalar(insert(ReviewItem).values(
                verdict_id=near.verdict_id, image_id=near.image_id, state=ReviewState.PENDING, reason=MATCHED_KNOWN_FAKE,
                fake_probability=verdict.fake_probability, source=source, created_at=now, updated_at=now,
            ).on_conflict_do_nothing(index_elements=["verdict_id"]).returning(ReviewItem.id))
            return int(item_id) if item_id is not None else None


def match_dict(row: BankMatchRow) -> dict[str, Any]:
    return {"label": row.label, "bank": row.bank, "distance": row.distance, "mirrored": row.mirrored,
            "entry_id": row.entry_id,
            "matched_review_item_id": row.matched_review_item_id, "matched_image_id": row.matched_image_id,
            "found_by": row.found_by, "revoked": row.revoked_at is not None}


def parse_bank_csv(text: TextIO, default_label: str | None) -> tuple[list[tuple[str, str, str | None]], list[tuple[int, str]]]:
    """(hash, label, external id) rows and (line, reason) rejections."""
    reader = csv.reader(text)
    parsed: list[tuple[str, str, str | None]] = []
    rejected: list[tuple[int, str]] = []
    hash_col, label_col, id_col = 0, 1, None
    header = False
    for line, row in enumerate(reader, start=1):
        cells = [restore_cell(c.strip()) for c in row]  # our own exports quote formula-like cells
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        lowered = [c.lower() for c in cells]
        if line == 1 and any(c in HASH_COLUMNS for c in lowered):
            hash_col = next(i for i, c in enumerate(lowered) if c in HASH_COLUMNS)
            label_col = next((i for i, c in enumerate(lowered) if c in LABEL_COLUMNS), None)  # type: ignore[assignment]
            id_col = next((i for i, c in enumerate(lowered) if c in ("id", "external_id", "indicator_id")), None)
            header = True
            continue
        try:
            pdq = normalize_hex(cells[hash_col])
        except (ValueError, IndexError):
            rejected.append((line, "bad_hash"))
            continue
        label = cells[label_col].lower() if label_col is not None and label_col < len(cells) and cells[label_col] else None
        if not header and label not in LABELS:
            label = None  # a headerless file's second column need not be a label (PDQ tools write quality)
        label = label or default_label
        if label not in LABELS:
            rejected.append((line, "bad_label" if label else "no_label"))
            continue
        external = cells[id_col] if id_col is not None and id_col < len(cells) and cells[id_col] else None
        parsed.append((pdq, label, external))
    return parsed, rejected


def read_csv_text(data: bytes | str) -> TextIO:
    return io.StringIO(data.decode("utf-8-sig") if isinstance(data, bytes) else data)
