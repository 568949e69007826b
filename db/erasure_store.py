"""Erasure and retention in the database: which rows and blob keys belong to an image, and their deletion.

Erasure removes every row that names the image (events, image, verdicts, faces, review items, gold answers,
evidence bundles; webhook delivery records lose their bundle link) and leaves one tombstone per sha256
(`erasures`: the sha256, when, by whom, why) plus an audit entry. The audit log itself is never touched.

Retention deletes heatmap keys after N days and, after M days, verdicts (with faces and crops) whose review
item is absent or was decided more than M days ago; then events and images nothing points at any more.
Callers delete the blobs first (workers/erasure.py, workers/retention.py), then the rows: a failure in
between leaves rows whose blobs are gone (a re-run finishes the job), never blobs no row remembers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.schema import (
    AuditEntry,
    CanaryResult,
    Erasure,
    Event,
    EvidenceBundle,
    FaceRow,
    GoldAnswer,
    Image,
    RescanItem,
    ReviewItem,
    Verdict,
    WebhookDelivery,
    utcnow,
)

OPEN_REVIEW_STATES = ("pending", "claimed")


@dataclass
class ErasurePlan:
    selector: str
    images: dict[int, str] = field(default_factory=dict)  # image id -> sha256
    model_versions: dict[str, set[str]] = field(default_factory=dict)  # sha256 -> model versions screened
    blob_keys: set[str] = field(default_factory=set)  # derivatives the rows name (heatmaps, crops, bundles)
    originals: set[str] = field(default_factory=set)  # where the uploads were read from
    source: str | None = None

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
        """Delete the plan's rows and write the tombstones and an audit entry, in one transaction."""
        ids = list(plan.images)
        shas = plan.sha256s or ([sha256] if sha256 else [])
        with self.sessions.begin() as session:
            counts = self._delete_images(session, ids, self._event_filter(plan, sha256))
            now = utcnow()
            for sha in shas:
                session.add(Erasure(sha256=sha, erased_at=now, erased_by=erased_by, reason=reason,
                                    selector=plan.selector, details=counts))
            session.add(AuditEntry(at=now, actor=erased_by, actor_role=actor_role, action="erase", note=reason,
                                   details={"selector": plan.selector, "sha256": shas, **counts}))
        return counts

    def _delete_images(self, session: Session, image_ids: list[int], event_filter: Any) -> dict[str, int]:
        verdicts = select(Verdict.id).where(Verdict.image_id.in_(image_ids))
        items = select(ReviewItem.id).where(ReviewItem.image_id.in_(image_ids))
        counts = {"events": session.execute(delete(Event).where(event_filter)).rowcount or 0}
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
                ReviewItem.state.in_(OPEN_REVIEW_STATES), ReviewItem.decided_at.is_(None),
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
