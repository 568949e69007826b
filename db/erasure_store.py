"""Erasure and retention in the database: which rows and blob keys belong to an image, and their deletion.

Every verdict save checks the tombstones in its own transaction, under the per-content lock an erasure takes
(`lock_contents`), so an event sent before an erasure ends `erased` and writes nothing. Callers delete the
blobs before the rows: a failure in between leaves rows a re-run finishes, never blobs no row remembers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db import known_fakes
from db.schema import (
    AuditEntry,
    CanaryResult,
    Erasure,
    Event,
    EvidenceBundle,
    FaceRow,
    GoldAnswer,
    Image,
    PerceptualHashRow,
    RescanItem,
    ReviewItem,
    Verdict,
    WebhookDelivery,
)
from db.states import ERASED_URI, OPEN_STATES, EventStatus
from db.timestamps import aware, now_utc
from pipeline.events import UploadEvent

LOCK_CLASS = 0x45524153  # "ERAS": the advisory-lock namespace of per-content erasure locks


def lock_contents(session: Session, sha256s: Sequence[str]) -> None:
    """Postgres: a transaction-scoped advisory lock per image content, in one order, taken by an erasure and
    by every save of that content, so the two never interleave. SQLite already has one writer at a time."""
    if not sha256s or session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({int(sha[:8], 16) - 2**31 for sha in sha256s})  # int4; a collision only serialises more
    session.execute(text("SELECT pg_advisory_xact_lock(:cls, k) FROM unnest(CAST(:keys AS integer[])) AS k"),
                    {"cls": LOCK_CLASS, "keys": keys})


def erased_events(session: Session, pairs: Sequence[tuple[UploadEvent, str]]) -> set[str]:
    """Of (event, sha256 of its bytes), the events an erasure covers: marked `erased` by it, or sent before an
    erasure of those bytes (by the producer's upload time or when it was received, whichever is earlier).
    An upload after the erasure is a new image and is screened."""
    shas = sorted({sha for _, sha in pairs})
    if not shas:
        return set()
    erased_at = dict(session.execute(select(Erasure.sha256, func.max(Erasure.erased_at))
                                     .where(Erasure.sha256.in_(shas)).group_by(Erasure.sha256)).tuples().all())
    if not erased_at:
        return set()
    rows = {event_id: (status, received) for event_id, status, received in session.execute(
        select(Event.event_id, Event.status, Event.received_at)
        .where(Event.event_id.in_(sorted({e.event_id for e, _ in pairs}))))}
    covered = set()
    for event, sha in pairs:
        status, received = rows.get(event.event_id, (None, None))
        last = erased_at.get(sha)
        sent = min(aware(t) for t in (event.uploaded_at, received) if t is not None)
        if status == EventStatus.ERASED or (last is not None and sent <= aware(last)):
            covered.add(event.event_id)
    return covered


@dataclass
class ErasurePlan:
    selector: str
    images: dict[int, str] = field(default_factory=dict)  # image id -> sha256
    model_versions: dict[str, set[str]] = field(default_factory=dict)  # sha256 -> model versions screened
    blob_keys: set[str] = field(default_factory=set)  # derivatives the rows name (heatmaps, crops, bundles)
    originals: set[str] = field(default_factory=set)  # where the uploads were read from
    source: str | None = None
    bank_entries: set[int] = field(default_factory=set)  # entries the images' decisions made (removed)

    @property
    def sha256s(self) -> list[str]:
        return sorted(set(self.images.values()))


@dataclass(frozen=True)
class ExpiredVerdicts:
    verdict_ids: list[int]
    blob_keys: set[str]


class ErasureStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    # -- erasure ---------------------------------------------------------------------------------------
    def plan(self, sha256: str | None = None, image_id: int | None = None, source: str | None = None) -> ErasurePlan:
        """Everything an erasure must remove, read before anything is deleted."""
        if sum(x is not None for x in (sha256, image_id, source)) != 1:
            raise ValueError("give exactly one of sha256, image_id, source")
        with self.sessions() as session:
            if sha256 is not None:
                query, selector = select(Image.id, Image.sha256, Image.uri).where(Image.sha256 == sha256), f"sha256={sha256}"
            elif image_id is not None:
                query, selector = select(Image.id, Image.sha256, Image.uri).where(Image.id == image_id), f"image_id={image_id}"
            else:
                query, selector = select(Image.id, Image.sha256, Image.uri).where(Image.source == source), f"source={source}"
            plan = ErasurePlan(selector=selector, source=source)
            for row_id, sha, uri in session.execute(query):
                plan.images[row_id] = sha
                plan.originals.add(uri)
            ids = list(plan.images)
            if ids:
                self._collect(session, plan, ids)
            events = select(Event.image_uri).where(self._event_filter(plan, sha256))
            plan.originals.update(uri for (uri,) in session.execute(events))
            return plan

    def _collect(self, session: Session, plan: ErasurePlan, ids: list[int]) -> None:
        for sha, version, key in session.execute(
            select(Image.sha256, Verdict.model_version, Verdict.heatmap_key).join(Verdict, Verdict.image_id == Image.id)
            .where(Image.id.in_(ids))
        ):
            plan.model_versions.setdefault(sha, set()).add(version)
            if key:
                plan.blob_keys.add(key)
        plan.blob_keys.update(self._face_keys(session, select(Verdict.id).where(Verdict.image_id.in_(ids))))
        items = select(ReviewItem.id).where(ReviewItem.image_id.in_(ids))
        plan.blob_keys.update(k for (k,) in session.execute(
            select(EvidenceBundle.blob_key).where(EvidenceBundle.review_item_id.in_(items))))

    @staticmethod
    def _face_keys(session: Session, verdict_ids: Any) -> set[str]:
        keys: set[str] = set()
        for heat, crop in session.execute(select(FaceRow.heatmap_key, FaceRow.crop_key)
                                          .where(FaceRow.verdict_id.in_(verdict_ids))):
            keys.update(k for k in (heat, crop) if k)
        return keys

    @staticmethod
    def _event_filter(plan: ErasurePlan, sha256: str | None) -> Any:
        clauses = [Event.image_id.in_(list(plan.images)), Event.expected_sha256.in_(plan.sha256s or [sha256 or ""])]
        if plan.originals:
            clauses.append(Event.image_uri.in_(sorted(plan.originals)))
        if plan.source is not None:
            clauses.append(Event.source == plan.source)
        return or_(*clauses)

    def erase(self, plan: ErasurePlan, erased_by: str, actor_role: str, reason: str,
              sha256: str | None = None) -> dict[str, int]:
        """Delete the plan's rows (and those of the same content saved since the plan was read: they are added
        to the plan, with their blob keys), remove the images' bank entries, stop their queued events, and
        write the tombstones and an audit entry, in one transaction."""
        shas = plan.sha256s or ([sha256] if sha256 else [])
        with self.sessions.begin() as session:
            lock_contents(session, shas)
            ids = self._resolve(session, plan, shas)
            counts = {"bank_entries": self._erase_bank_entries(session, plan, ids)}
            counts.update(self._delete_images(session, ids, self._event_filter(plan, sha256)))
            now = now_utc()
            for sha in shas:
                session.add(Erasure(sha256=sha, erased_at=now, erased_by=erased_by, reason=reason,
                                    selector=plan.selector, details=counts))
            session.add(AuditEntry(at=now, actor=erased_by, actor_role=actor_role, action="erase", note=reason,
                                   details={"selector": plan.selector, "sha256": shas, **counts}))
        return counts

    def _resolve(self, session: Session, plan: ErasurePlan, shas: list[str]) -> list[int]:
        """The plan's images, and any image of the same content a save committed since the plan was read."""
        if shas:
            late = session.execute(select(Image.id, Image.sha256, Image.uri)
                                   .where(Image.sha256.in_(shas), Image.id.not_in(list(plan.images)))).all()
            for row_id, sha, uri in late:
                plan.images[row_id] = sha
                plan.originals.add(uri)
            if late:
                self._collect(session, plan, [row_id for row_id, _, _ in late])
        return list(plan.images)

    @staticmethod
    def _erase_bank_entries(session: Session, plan: ErasurePlan, ids: list[int]) -> int:
        if not ids:
            return 0
        entries = known_fakes.entries_of_images(session, ids)
        hashes = {h for row in session.execute(select(PerceptualHashRow.pdq, PerceptualHashRow.pdq_mirror)
                                               .where(PerceptualHashRow.image_id.in_(ids))) for h in row if h}
        plan.bank_entries.update(entries)
        return known_fakes.erase_entries(session, entries, hashes)

    def _delete_images(self, session: Session, image_ids: list[int], event_filter: Any) -> dict[str, int]:
        verdicts = select(Verdict.id).where(Verdict.image_id.in_(image_ids))
        items = select(ReviewItem.id).where(ReviewItem.image_id.in_(image_ids))
        # a queued event ends `erased` (a worker that picks it up records nothing more); the others go
        queued = session.execute(update(Event).where(event_filter, Event.status == EventStatus.QUEUED).values(
            status=EventStatus.ERASED, reason=EventStatus.ERASED, image_uri=ERASED_URI, expected_sha256=None, image_id=None,
            verdict_id=None, finished_at=now_utc()).execution_options(synchronize_session=False)).rowcount or 0
        counts = {"events": session.execute(delete(Event).where(event_filter, Event.status != EventStatus.ERASED)).rowcount or 0,
                  "queued_events": queued}
        counts.update(self._delete_review_rows(session, items))
        counts["faces"] = session.execute(delete(FaceRow).where(FaceRow.verdict_id.in_(verdicts))).rowcount or 0
        shas = select(Image.sha256).where(Image.id.in_(image_ids))
        counts["canary_results"] = session.execute(delete(CanaryResult).where(CanaryResult.image_sha256.in_(shas))
                                                   ).rowcount or 0
        counts["rescan_items"] = session.execute(delete(RescanItem).where(RescanItem.image_id.in_(image_ids))
                                                 ).rowcount or 0
        counts["verdicts"] = session.execute(delete(Verdict).where(Verdict.image_id.in_(image_ids))).rowcount or 0
        counts["images"] = session.execute(delete(Image).where(Image.id.in_(image_ids))).rowcount or 0
        return counts

    @staticmethod
    def _delete_review_rows(session: Session, items: Any) -> dict[str, int]:
        bundles = select(EvidenceBundle.id).where(EvidenceBundle.review_item_id.in_(items))
        session.execute(update(WebhookDelivery).where(WebhookDelivery.bundle_id.in_(bundles)).values(bundle_id=None))
        return {
            "evidence_bundles": session.execute(delete(EvidenceBundle).where(EvidenceBundle.review_item_id.in_(items)))
            .rowcount or 0,
            "gold_answers": session.execute(delete(GoldAnswer).where(GoldAnswer.review_item_id.in_(items))).rowcount or 0,
            "review_items": session.execute(delete(ReviewItem).where(ReviewItem.id.in_(items))).rowcount or 0,
        }

    def tombstones(self, sha256: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(Erasure).where(Erasure.sha256 == sha256).order_by(Erasure.id)).all()
            return [{"sha256": r.sha256, "erased_at": r.erased_at, "erased_by": r.erased_by, "reason": r.reason,
                     "selector": r.selector, "details": r.details} for r in rows]

    # -- retention -------------------------------------------------------------------------------------
    def expired_heatmaps(self, cutoff: datetime, limit: int = 500) -> dict[int, set[str]]:
        """Verdicts older than cutoff that still name heatmaps: verdict id -> heatmap keys."""
        with self.sessions() as session:
            ids = session.scalars(
                select(Verdict.id).where(Verdict.created_at < cutoff, or_(
                    Verdict.heatmap_key.is_not(None),
                    Verdict.id.in_(select(FaceRow.verdict_id).where(FaceRow.heatmap_key.is_not(None)))))
                .order_by(Verdict.id).limit(limit)).all()
            found: dict[int, set[str]] = {i: set() for i in ids}
            for vid, key in session.execute(select(Verdict.id, Verdict.heatmap_key).where(Verdict.id.in_(ids))):
                if key:
                    found[vid].add(key)
            for vid, key in session.execute(select(FaceRow.verdict_id, FaceRow.heatmap_key)
                                            .where(FaceRow.verdict_id.in_(ids), FaceRow.heatmap_key.is_not(None))):
                found[vid].add(key)
            return found

    def forget_heatmaps(self, verdict_ids: Sequence[int]) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Verdict).where(Verdict.id.in_(list(verdict_ids))).values(heatmap_key=None))
            session.execute(update(FaceRow).where(FaceRow.verdict_id.in_(list(verdict_ids))).values(heatmap_key=None))

    def expired_verdicts(self, cutoff: datetime, limit: int = 500) -> ExpiredVerdicts:
        """Verdicts older than cutoff whose review item is absent, or decided before cutoff (open items stay)."""
        with self.sessions() as session:
            kept = select(ReviewItem.verdict_id).where(or_(
                ReviewItem.state.in_(OPEN_STATES), ReviewItem.decided_at.is_(None),
                ReviewItem.decided_at >= cutoff))
            ids = list(session.scalars(select(Verdict.id).where(Verdict.created_at < cutoff, Verdict.id.not_in(kept))
                                       .order_by(Verdict.id).limit(limit)).all())
            keys = {k for (k,) in session.execute(select(Verdict.heatmap_key).where(Verdict.id.in_(ids))) if k}
            keys |= self._face_keys(session, ids)
            items = select(ReviewItem.id).where(ReviewItem.verdict_id.in_(ids))
            keys.update(k for (k,) in session.execute(
                select(EvidenceBundle.blob_key).where(EvidenceBundle.review_item_id.in_(items))))
            return ExpiredVerdicts(ids, keys)

    def delete_verdicts(self, verdict_ids: Sequence[int]) -> dict[str, int]:
        ids = list(verdict_ids)
        with self.sessions.begin() as session:
            session.execute(update(Event).where(Event.verdict_id.in_(ids)).values(verdict_id=None))
            counts = self._delete_review_rows(session, select(ReviewItem.id).where(ReviewItem.verdict_id.in_(ids)))
            counts["faces"] = session.execute(delete(FaceRow).where(FaceRow.verdict_id.in_(ids))).rowcount or 0
            counts["verdicts"] = session.execute(delete(Verdict).where(Verdict.id.in_(ids))).rowcount or 0
            return counts

    def expired_orphans(self, cutoff: datetime) -> dict[str, Any]:
        """Events finished before cutoff, and images first seen before cutoff that no verdict names."""
        with self.sessions() as session:
            images = dict(session.execute(
                select(Image.id, Image.sha256).where(Image.first_seen_at < cutoff,
                                                     Image.id.not_in(select(Verdict.image_id)))).all())
            return {"images": images}

    def delete_orphans(self, cutoff: datetime, image_ids: Sequence[int]) -> dict[str, int]:
        with self.sessions.begin() as session:
            events = session.execute(delete(Event).where(Event.finished_at < cutoff)).rowcount or 0
            session.execute(update(Event).where(Event.image_id.in_(list(image_ids))).values(image_id=None))
            images = session.execute(delete(Image).where(Image.id.in_(list(image_ids)),
                                                         Image.id.not_in(select(Verdict.image_id)))).rowcount or 0
            return {"events": events, "images": images}
