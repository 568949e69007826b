"""Reads of images, verdicts and events for the review floor (and the one event write it needs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from db.review_store import face_dict, item_dict, verdict_thresholds
from db.schema import Event, FaceRow, Image, ReviewItem, Verdict
from db.states import ReviewState
from db.timestamps import aware, now_utc


class ImageStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def image(self, image_id: int | None = None, sha256: str | None = None) -> dict[str, Any] | None:
        """An image with the ids of its verdicts (newest first) and its review items."""
        with self.sessions() as session:
            query = select(Image).where(Image.id == image_id) if image_id is not None else \
                select(Image).where(Image.sha256 == sha256)
            image = session.scalar(query)
            if image is None:
                return None
            verdict_ids = session.scalars(select(Verdict.id).where(Verdict.image_id == image.id)
                                          .order_by(Verdict.created_at.desc(), Verdict.id.desc())).all()
            items = session.scalars(select(ReviewItem).where(ReviewItem.image_id == image.id)
                                    .order_by(ReviewItem.id)).all()
            now = now_utc()
            return {"id": image.id, "sha256": image.sha256, "uri": image.uri, "source": image.source,
                    "width": image.width, "height": image.height, "size_bytes": image.size_bytes,
                    "uploaded_at": aware(image.uploaded_at), "first_seen_at": aware(image.first_seen_at),
                    "verdict_ids": list(verdict_ids),
                    "review_items": [{k: v for k, v in item_dict(i, image.sha256, now).items()
                                      if k in ("id", "state", "verdict_id", "decision", "decided_at")}
                                     for i in items]}

    def verdict(self, verdict_id: int) -> dict[str, Any] | None:
        """A verdict with its faces, blob keys included (heatmap and crop per face)."""
        with self.sessions() as session:
            row = session.get(Verdict, verdict_id)
            if row is None:
                return None
            faces = session.scalars(select(FaceRow).where(FaceRow.verdict_id == verdict_id)
                                    .order_by(FaceRow.face_index)).all()
            return {"verdict_id": row.id, "image_id": row.image_id, "model_version": row.model_version,
                    "status": row.status, "verdict": row.verdict, "fake_probability": row.fake_probability,
                    "reason": row.reason, "heatmap_key": row.heatmap_key, "created_at": aware(row.created_at),
                    **verdict_thresholds(row), "faces": [face_dict(f) for f in faces]}

    def event(self, event_id: str) -> dict[str, Any] | None:
        with self.sessions() as session:
            row = session.get(Event, event_id)
            if row is None:
                return None
            return {"event_id": row.event_id, "status": row.status, "reason": row.reason, "source": row.source,
                    "image_id": row.image_id, "verdict_id": row.verdict_id,
                    "received_at": aware(row.received_at), "finished_at": aware(row.finished_at)}

    def latest_verdict_id(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.max(Verdict.id))) or 0)

    def verdicts_after(self, position: int, label: str, limit: int = 100) -> list[dict[str, Any]]:
        """Verdicts with this label and an id above `position`, oldest first, with image and review item."""
        with self.sessions() as session:
            rows = session.execute(
                select(Verdict.id, Image.sha256, Image.source, ReviewItem.id)
                .join(Image, Image.id == Verdict.image_id)
                .outerjoin(ReviewItem, ReviewItem.verdict_id == Verdict.id)
                .where(Verdict.id > position, Verdict.verdict == label).order_by(Verdict.id).limit(limit)
            ).all()
        out = []
        for verdict_id, sha256, source, item_id in rows:
            doc = self.verdict(verdict_id)
            if doc is not None:
                out.append({**doc, "sha256": sha256, "source": source, "review_item_id": item_id})
        return out

    def labelled(self) -> list[dict[str, Any]]:
        """Decided items with a label (confirmed fake, marked real) and the faces of their verdict."""
        with self.sessions() as session:
            rows = session.execute(
                select(ReviewItem.id, ReviewItem.state, ReviewItem.verdict_id, Image.sha256, Image.uri)
                .join(Image, Image.id == ReviewItem.image_id)
                .where(ReviewItem.state.in_((ReviewState.CONFIRMED_FAKE, ReviewState.MARKED_REAL))).order_by(ReviewItem.id)
            ).all()
            out = []
            for item_id, state, verdict_id, sha256, uri in rows:
                faces = session.scalars(select(FaceRow).where(FaceRow.verdict_id == verdict_id)
                                        .order_by(FaceRow.face_index)).all()
                out.append({"item_id": item_id, "label": "fake" if state == ReviewState.CONFIRMED_FAKE else "real",
                            "sha256": sha256, "uri": uri, "faces": [face_dict(f) for f in faces]})
            return out
