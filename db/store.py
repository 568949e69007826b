"""Verdict writes: idempotent upserts on unique keys, one transaction per verdict or per batch.

The same code runs on Postgres (distributed) and SQLite (embedded `deepscreen scan`). Every save first checks
the erasure tombstones of the content it writes, in its own transaction (db.erasure_store): an event sent
before its bytes were erased ends `erased` and writes nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from db import known_fakes
from db.engine import connect
from db.erasure_store import erased_events, lock_contents
from db.events import EventLedger, SavedResult, done_row, event_row, finish_events_statement
from db.review_opening import open_review, review_for_rescan, review_row
from db.review_store import verdict_thresholds
from db.schema import Event, FaceRow, Image, PerceptualHashRow, ReviewItem, Verdict
from pipeline.decide import needs_review
from pipeline.events import UploadEvent
from pipeline.screen import Verdict as ScreenVerdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobKeys:
    """Where a verdict's derivatives were stored: the annotated image and, per face, (heatmap, crop)."""

    heatmap: str | None = None
    faces: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExistingVerdict:
    verdict_id: int
    image_id: int
    status: str
    verdict: str | None


class Store(EventLedger):
    """Verdicts, their faces and review items, written with the events they end (event bookkeeping: EventLedger)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._plain = _PlainStatements(self._insert)

    @classmethod
    def from_url(cls, url: str, fast_commits: bool = False) -> Store:
        return cls(connect(url, fast_commits=fast_commits))

    # -- verdicts --------------------------------------------------------------------------------------
    def find_verdict(self, sha256: str, model_version: str) -> ExistingVerdict | None:
        with self.sessions() as session:
            row = session.execute(
                select(Verdict.id, Verdict.image_id, Verdict.status, Verdict.verdict)
                .join(Image, Image.id == Verdict.image_id)
                .where(Image.sha256 == sha256, Verdict.model_version == model_version)
            ).first()
            return ExistingVerdict(*row) if row else None

    def find_verdicts(self, sha256s: Sequence[str], model_version: str) -> dict[str, ExistingVerdict]:
        """`find_verdict` for many images in one query: sha256 -> the verdict this model already gave it."""
        if not sha256s:
            return {}
        with self.sessions() as session:
            rows = session.execute(
                select(Image.sha256, Verdict.id, Verdict.image_id, Verdict.status, Verdict.verdict)
                .join(Image, Image.id == Verdict.image_id)
                .where(Image.sha256.in_(sorted(set(sha256s))), Verdict.model_version == model_version)
            )
            return {sha256: ExistingVerdict(*rest) for sha256, *rest in rows}

    def save(self, event: UploadEvent, result: ScreenVerdict, keys: BlobKeys, attempts: int = 1) -> SavedResult:
        """Write one verdict with its faces, review item and event status in one transaction, idempotently."""
        with self.sessions.begin() as session:
            if self._erased(session, [(event, result)]):
                return self._finish_erased(session, event, attempts)
            return self._save(session, event, result, keys, attempts)

    # -- erasures --------------------------------------------------------------------------------------
    def erased_events(self, pairs: Sequence[tuple[UploadEvent, str]]) -> set[str]:
        """Of (event, sha256 of its bytes), those an erasure covers (db.erasure_store.erased_events)."""
        with self.sessions() as session:
            return erased_events(session, pairs)

    @staticmethod
    def _erased(session: Session, items: Sequence[tuple[UploadEvent, ScreenVerdict]]) -> set[str]:
        """Lock the contents about to be written against a concurrent erasure, then read the tombstones."""
        pairs = [(event, result.sha256) for event, result in items if result.sha256 is not None]
        lock_contents(session, [sha for _, sha in pairs])
        return erased_events(session, pairs)

    def save_many(self, items: Sequence[tuple[UploadEvent, ScreenVerdict, BlobKeys, int]]) -> list[SavedResult]:
        """`save` for a batch, in one transaction: one commit (one WAL flush) for the batch, and one multi-row
        statement per table instead of 5-7 statements per verdict (SQLAlchemy compiles every dialect
        `INSERT ... ON CONFLICT` afresh, so statements, not rows, were the cost). The rows are those `save`
        writes; a batch that fails part-way leaves nothing behind and may be saved again item by item
        (`workers.processing` does, when one item's row is at fault). Re-scan events and bank matches, rarer
        and with more to decide, go through `save`'s own path inside the same transaction.

        Images and verdicts are written in sha256 order and events in event_id order, so overlapping batches of
        two workers mostly take their row locks in one order; a deadlock Postgres still detects is an
        OperationalError, and the batch is retried like any outage. Results come back in the items' order."""
        if not items:
            return []
        order = sorted(range(len(items)), key=lambda i: (items[i][1].sha256 or "", items[i][0].event_id))
        simple = {i for i in order if items[i][1].sha256 is not None and items[i][0].rescan_run is None
                  and not items[i][1].matches}
        # an image or event that also has an item of the other kind goes wholly one by one, so which item
        # writes the verdict (and which reuses it) is decided exactly as `save` in this order decides it
        mixed = ({items[i][1].sha256 for i in order if i not in simple}
                 | {items[i][0].event_id for i in order if i not in simple})
        plain = [i for i in order if i in simple and items[i][1].sha256 not in mixed
                 and items[i][0].event_id not in mixed]
        results: dict[int, SavedResult] = {}
        with self.sessions.begin() as session:
            erased = self._erased(session, [(items[i][0], items[i][1]) for i in order])
            for i in order:
                if items[i][0].event_id in erased:
                    results[i] = self._finish_erased(session, items[i][0], items[i][3])
            plain = [i for i in plain if i not in results]
            # in groups, so no statement passes SQLite's 32,766 parameters (20 faces x 11 columns per image)
            for start in range(0, len(plain), PLAIN_GROUP):
                group = plain[start : start + PLAIN_GROUP]
                results.update(self._save_plain(session, [(i, *items[i]) for i in group]))
            for i in order:
                if i not in results:
                    event, result, keys, attempts = items[i]
                    results[i] = self._save(session, event, result, keys, attempts)
        return [results[i] for i in range(len(items))]

    def _save_plain(self, session: Session, items: list[tuple[int, UploadEvent, ScreenVerdict, BlobKeys, int]],
                    ) -> dict[int, SavedResult]:
        """The batch form of `_save` for upload events with a verdict to write (scored or no face) and no bank match."""
        if not items:
            return {}
        plain, now = self._plain, datetime.now(UTC)
        first: dict[str, tuple[UploadEvent, ScreenVerdict]] = {}
        for _, upload, result, _, _ in items:
            first.setdefault(result.sha256 or "", (upload, result))
        image_rows = [_image_row(upload, result, now) for upload, result in first.values()]
        image_ids = dict(session.execute(plain.images, image_rows).tuples().all())
        missing = [sha for sha in first if sha not in image_ids]
        if missing:
            image_ids.update(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(missing))).tuples().all())
        # one verdict per (image, model): the first item of each writes it, the others reuse it
        writers: dict[tuple[int, str], tuple[int, ScreenVerdict, BlobKeys, int]] = {}
        for index, _, result, keys, attempts in items:
            writers.setdefault((image_ids[result.sha256 or ""], result.model_version), (index, result, keys, attempts))
        inserted = {(image_id, version): verdict_id for verdict_id, image_id, version in session.execute(
            plain.verdicts, [_verdict_row(image_id, result, keys, attempts)
                             for (image_id, _), (_, result, keys, attempts) in writers.items()])}
        known: dict[tuple[int, str], tuple[int, str, str | None]] = {}
        for key, (_, result, _, _) in writers.items():
            if key in inserted:
                known[key] = (inserted[key], result.status, result.verdict)
        others = [key for key in writers if key not in inserted]
        if others:
            rows = session.execute(select(Verdict.image_id, Verdict.model_version, Verdict.id, Verdict.status,
                                          Verdict.verdict).where(Verdict.image_id.in_({k[0] for k in others}),
                                                                 Verdict.model_version.in_({k[1] for k in others})))
            for image_id, version, verdict_id, status, label in rows:
                if (image_id, version) in writers and (image_id, version) not in known:
                    known[(image_id, version)] = (verdict_id, status, label)
        fresh = [(inserted[key], key[0], result, keys) for key, (_, result, keys, _) in writers.items()
                 if key in inserted]  # (verdict_id, image_id, result, keys) of the verdicts written here
        faces = [row for verdict_id, _, result, keys in fresh for row in _face_rows(verdict_id, result, keys)]
        if faces:
            session.execute(plain.faces, faces)
        hashes = [known_fakes.hash_row(verdict_id, image_id, result.pdq)
                  for verdict_id, image_id, result, _ in fresh if result.pdq is not None]
        if hashes:
            session.execute(plain.hashes, hashes)
        # review items: one per verdict that needs one (the first event's values, as `save` one by one would)
        per_item: dict[int, tuple[UploadEvent, ScreenVerdict, int, int, str, str | None, bool]] = {}
        reviews: dict[int, dict[str, Any]] = {}
        for index, upload, result, _, _ in items:
            key = (image_ids[result.sha256 or ""], result.model_version)
            verdict_id, status, label = known[key]
            reused = key not in inserted or writers[key][0] != index  # as `save` says: written by another
            per_item[index] = (upload, result, key[0], verdict_id, status, label, reused)
            if needs_review(label) and verdict_id not in reviews:
                reviews[verdict_id] = review_row(verdict_id, key[0], label, result, upload.source, now)
        review_ids: dict[int, int] = {}
        if reviews:
            review_ids = {verdict_id: review_id for review_id, verdict_id in
                          session.execute(plain.reviews, list(reviews.values()))}
            missing_reviews = [v for v in reviews if v not in review_ids]
            if missing_reviews:
                review_ids.update(session.execute(select(ReviewItem.verdict_id, ReviewItem.id)
                                                  .where(ReviewItem.verdict_id.in_(missing_reviews))).tuples().all())
        events: dict[str, dict[str, Any]] = {}
        for index, upload, result, _, attempts in items:
            _, _, image_id, verdict_id, status, _, _ = per_item[index]
            events.setdefault(upload.event_id, {**event_row(upload),
                                                **done_row(status, result.reason, attempts, image_id, verdict_id, now)})
        session.execute(plain.events, [events[event_id] for event_id in sorted(events)])
        out: dict[int, SavedResult] = {}
        for index, (upload, result, _, verdict_id, status, label, reused) in per_item.items():
            review_id = review_ids.get(verdict_id) if needs_review(label) else None
            out[index] = SavedResult(upload.event_id, status, verdict_id, label, review_id, reused, result.reason)
        return out

    def _save(self, session: Session, event: UploadEvent, result: ScreenVerdict, keys: BlobKeys,
              attempts: int) -> SavedResult:
        if result.sha256 is None:
            self._finish_event(session, event, result.status, result.reason, attempts, None, None)
            return SavedResult(event.event_id, result.status, None, None, None, False, result.reason)
        if result.matches:
            result = known_fakes.without_removed_matches(session, result)
        image_id = self._upsert_image(session, event, result)
        verdict_id = session.scalar(
            self._insert(Verdict)
            .values(_verdict_row(image_id, result, keys, attempts))
            .on_conflict_do_nothing(index_elements=["image_id", "model_version"])
            .returning(Verdict.id)
        )
        reused = verdict_id is None
        if reused:
            existing = session.execute(
                select(Verdict.id, Verdict.status, Verdict.verdict).where(
                    Verdict.image_id == image_id, Verdict.model_version == result.model_version
                )
            ).one()
            verdict_id, status, label = existing
        else:
            status, label = result.status, result.verdict
            if result.faces:
                session.execute(self._insert(FaceRow).values(_face_rows(verdict_id, result, keys)))
            known_fakes.save_screening_rows(session, verdict_id, image_id, result)
        if event.rescan_run is not None and reused:  # the verdict came from elsewhere: its item (if any) stands
            review_id = session.scalar(select(ReviewItem.id).where(ReviewItem.verdict_id == verdict_id))
        elif event.rescan_run is not None:
            review_id = review_for_rescan(
                session, run_id=event.rescan_run, verdict_id=verdict_id, image_id=image_id, label=label,
                fake_probability=result.fake_probability, model_version=result.model_version,
                needs_review=needs_review(label),
                open_item=lambda: open_review(session, self._insert, verdict_id, image_id, label, result, event.source))
        else:
            review_id = open_review(session, self._insert, verdict_id, image_id, label, result, event.source)
        self._finish_event(session, event, status, result.reason, attempts, image_id, verdict_id)
        return SavedResult(event.event_id, status, verdict_id, label, review_id, reused, result.reason)

    def link_existing(self, event: UploadEvent, existing: ExistingVerdict, attempts: int = 1,
                      sha256: str | None = None) -> SavedResult:
        """An event whose image already has a verdict from this model: point the event at it (unless the event
        was sent before an erasure of `sha256`, the bytes it carried)."""
        with self.sessions.begin() as session:
            if sha256 is not None and erased_events(session, [(event, sha256)]):
                return self._finish_erased(session, event, attempts)
            self._finish_event(session, event, existing.status, None, attempts, existing.image_id, existing.verdict_id)
            review_id = session.scalar(select(ReviewItem.id).where(ReviewItem.verdict_id == existing.verdict_id))
        return SavedResult(event.event_id, existing.status, existing.verdict_id, existing.verdict, review_id, True)

    # -- reads -----------------------------------------------------------------------------------------
    def verdict_document(self, verdict_id: int) -> dict[str, Any]:
        """The verdict as the JSON the CLI and the API print (`deepscreen scan --json` field names)."""
        documents = self.verdict_documents([verdict_id])
        if verdict_id not in documents:
            raise NoResultFound(f"no verdict {verdict_id}")
        return documents[verdict_id]

    def verdict_documents(self, verdict_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """`verdict_document` of many verdicts in two queries (a scan's batch of results), by verdict id;
        ids with no verdict are left out."""
        wanted = sorted(set(verdict_ids))
        if not wanted:
            return {}
        documents: dict[int, dict[str, Any]] = {}
        with self.sessions() as session:
            rows = session.execute(
                select(Verdict, Image.sha256).join(Image, Image.id == Verdict.image_id).where(Verdict.id.in_(wanted))
            ).all()
            for row, sha256 in rows:
                documents[row.id] = {"verdict_id": row.id, "sha256": sha256, "status": row.status,
                                     "verdict": row.verdict, "fake_probability": row.fake_probability, "faces": [],
                                     "heatmap": row.heatmap_key, "reason": row.reason,
                                     "model_version": row.model_version, **verdict_thresholds(row)}
            faces = session.execute(
                select(FaceRow.verdict_id, FaceRow.x1, FaceRow.y1, FaceRow.x2, FaceRow.y2,
                       FaceRow.detection_probability, FaceRow.fake_probability, FaceRow.verdict,
                       FaceRow.heatmap_key)
                .where(FaceRow.verdict_id.in_(wanted)).order_by(FaceRow.verdict_id, FaceRow.face_index)
            ).all()
            for vid, x1, y1, x2, y2, detection, prob, verdict, heatmap in faces:
                documents[vid]["faces"].append(
                    {"box": [x1, y1, x2, y2], "detection_probability": detection, "fake_probability": prob,
                     "verdict": verdict, "heatmap": heatmap})
        return documents

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            return {
                "events": session.scalar(select(func.count()).select_from(Event)) or 0,
                "images": session.scalar(select(func.count()).select_from(Image)) or 0,
                "verdicts": session.scalar(select(func.count()).select_from(Verdict)) or 0,
                "faces": session.scalar(select(func.count()).select_from(FaceRow)) or 0,
                "review_items": session.scalar(select(func.count()).select_from(ReviewItem)) or 0,
            }

    # -- internals -------------------------------------------------------------------------------------
    def _upsert_image(self, session: Session, event: UploadEvent, result: ScreenVerdict) -> int:
        image_id = session.scalar(
            self._insert(Image).values(_image_row(event, result, datetime.now(UTC))).on_conflict_do_nothing(index_elements=["sha256"]).returning(Image.id)
        )
        if image_id is None:
            image_id = session.scalar(select(Image.id).where(Image.sha256 == result.sha256))
        return int(image_id)


PLAIN_GROUP = 100  # items per group of rows in save_many


class _PlainStatements:
    """save_many's statements, built once and run with a list of rows (executemany): SQLAlchemy compiles each
    once and caches it, and its insertmanyvalues still sends them as multi-row INSERTs. A statement with the
    rows inlined (`.values([...])`) is a new statement per batch, compiled afresh each time, and that compile
    dominated the saving thread."""

    def __init__(self, insert: Any) -> None:  # noqa: ANN401 - postgresql.insert or sqlite.insert
        images, verdicts, reviews = Image.__table__, Verdict.__table__, ReviewItem.__table__
        self.images = (insert(images).on_conflict_do_nothing(index_elements=["sha256"])
                       .returning(images.c.sha256, images.c.id))
        self.verdicts = (insert(verdicts).on_conflict_do_nothing(index_elements=["image_id", "model_version"])
                         .returning(verdicts.c.id, verdicts.c.image_id, verdicts.c.model_version))
        self.faces = insert(FaceRow.__table__)
        self.hashes = insert(PerceptualHashRow.__table__).on_conflict_do_nothing(index_elements=["verdict_id"])
        self.reviews = (insert(reviews).on_conflict_do_nothing(index_elements=["verdict_id"])
                        .returning(reviews.c.id, reviews.c.verdict_id))
        self.events = finish_events_statement(insert)


def _image_row(event: UploadEvent, result: ScreenVerdict, now: datetime) -> dict[str, Any]:
    return {"sha256": result.sha256, "uri": event.image_uri, "source": event.source,
            "size_bytes": result.size_bytes, "width": result.width, "height": result.height,
            "uploaded_at": event.uploaded_at, "first_seen_at": now}


def _verdict_row(image_id: int, result: ScreenVerdict, keys: BlobKeys, attempts: int) -> dict[str, Any]:
    return {
        "image_id": image_id, "model_version": result.model_version, "status": result.status,
        "verdict": result.verdict, "fake_probability": result.fake_probability, "reason": result.reason,
        "heatmap_key": keys.heatmap, "face_count": len(result.faces), "timings": dict(result.timings),
        "attempts": attempts, "created_at": datetime.now(UTC), "threshold_fake": result.threshold_fake,
        "threshold_real": result.threshold_real, "min_face_side": result.min_face_side,
    }


def _face_rows(verdict_id: int, result: ScreenVerdict, keys: BlobKeys) -> list[dict[str, Any]]:
    rows = []
    for face in result.faces:
        heatmap_key, crop_key = keys.faces.get(face.index, (None, None))
        x1, y1, x2, y2 = face.box
        rows.append({
            "verdict_id": verdict_id, "face_index": face.index, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
            "detection_probability": face.detection_probability, "fake_probability": face.fake_probability,
            "verdict": face.verdict, "heatmap_key": heatmap_key, "crop_key": crop_key,
        })
    return rows
