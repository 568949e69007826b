"""Evidence bundles (signed escalation packages), the webhook outbox and webhook delivery attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker

from db.schema import EvidenceBundle, ReviewItem, WebhookCursor, WebhookDelivery, WebhookOutbox
from db.states import ReviewState
from db.timestamps import aware

OUTBOX_STATES = ("pending", "delivered", "failed", "dropped")


def _bundle_dict(row: EvidenceBundle) -> dict[str, Any]:
    return {"id": row.id, "review_item_id": row.review_item_id, "blob_key": row.blob_key,
            "manifest_sha256": row.manifest_sha256, "signature": row.signature, "created_by": row.created_by,
            "created_at": aware(row.created_at)}


def _delivery_dict(row: WebhookDelivery) -> dict[str, Any]:
    return {"id": row.id, "delivery_id": row.delivery_id, "topic": row.topic, "bundle_id": row.bundle_id,
            "target": row.target, "attempt": row.attempt, "status_code": row.status_code, "error": row.error,
            "succeeded": row.succeeded, "seconds": row.seconds, "at": aware(row.at)}


def _outbox_dict(row: WebhookOutbox) -> dict[str, Any]:
    return {"id": row.id, "delivery_id": row.delivery_id, "topic": row.topic, "bundle_id": row.bundle_id,
            "payload": row.payload, "state": row.state, "attempts": row.attempts,
            "next_attempt_at": aware(row.next_attempt_at), "last_error": row.last_error,
            "created_at": aware(row.created_at)}


class EscalationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def add_bundle(self, review_item_id: int, blob_key: str, manifest_sha256: str, signature: str,
                   created_by: str, created_at: datetime) -> dict[str, Any]:
        row = EvidenceBundle(review_item_id=review_item_id, blob_key=blob_key, manifest_sha256=manifest_sha256,
                             signature=signature, created_by=created_by, created_at=created_at)
        with self.sessions.begin() as session:
            session.add(row)
            session.flush()
            return _bundle_dict(row)

    def bundle(self, bundle_id: int) -> dict[str, Any] | None:
        with self.sessions() as session:
            row = session.get(EvidenceBundle, bundle_id)
            return _bundle_dict(row) if row else None

    def bundles_for(self, review_item_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(EvidenceBundle).where(EvidenceBundle.review_item_id == review_item_id)
                                   .order_by(EvidenceBundle.id))
            return [_bundle_dict(r) for r in rows]

    def record_attempt(self, delivery_id: str, topic: str, target: str, attempt: int, status_code: int | None,
                       error: str | None, succeeded: bool, seconds: float, bundle_id: int | None = None) -> None:
        with self.sessions.begin() as session:
            session.add(WebhookDelivery(delivery_id=delivery_id, topic=topic, bundle_id=bundle_id, target=target,
                                        attempt=attempt, status_code=status_code,
                                        error=error[:200] if error else None, succeeded=succeeded,
                                        seconds=round(seconds, 4), at=datetime.now(UTC)))

    def deliveries(self, delivery_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        query = select(WebhookDelivery)
        if delivery_id:
            query = query.where(WebhookDelivery.delivery_id == delivery_id)
        with self.sessions() as session:
            rows = session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit))
            return [_delivery_dict(r) for r in rows]

    def undelivered_bundles(self, older_than_s: float) -> list[dict[str, Any]]:
        """The newest bundle of each escalated item that no delivery has reached yet and the outbox does not
        hold, if older than the given age."""
        other = EvidenceBundle.__table__.alias("other")
        delivered = exists().where(WebhookDelivery.bundle_id == other.c.id, WebhookDelivery.succeeded.is_(True),
                                   other.c.review_item_id == EvidenceBundle.review_item_id)
        queued = exists().where(WebhookOutbox.bundle_id == EvidenceBundle.id, WebhookOutbox.state == "pending")
        newest = select(func.max(other.c.id)).where(other.c.review_item_id == EvidenceBundle.review_item_id) \
            .scalar_subquery()
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        with self.sessions() as session:
            rows = session.scalars(
                select(EvidenceBundle).join(ReviewItem, ReviewItem.id == EvidenceBundle.review_item_id)
                .where(ReviewItem.state == ReviewState.ESCALATED, EvidenceBundle.id == newest, ~delivered, ~queued,
                       EvidenceBundle.created_at <= cutoff).order_by(EvidenceBundle.id))
            return [_bundle_dict(r) for r in rows]

    # -- relay cursors -----------------------------------------------------------------------------
    def cursor(self, topic: str) -> int | None:
        with self.sessions() as session:
            return session.scalar(select(WebhookCursor.position).where(WebhookCursor.topic == topic))

    def start_cursor(self, topic: str, position: int) -> int:
        """Create the cursor at `position` unless it exists; returns where it stands."""
        with self.sessions.begin() as session:
            row = session.get(WebhookCursor, topic, with_for_update=True)
            if row is None:
                session.add(WebhookCursor(topic=topic, position=position, updated_at=datetime.now(UTC)))
                return position
            return row.position

    def advance_cursor(self, topic: str, expected: int, position: int) -> bool:
        """Move the cursor from `expected` to `position`; False when another relay moved it first."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(WebhookCursor).where(WebhookCursor.topic == topic, WebhookCursor.position == expected)
                .values(position=position, updated_at=datetime.now(UTC))
                .execution_options(synchronize_session=False))
            return result.rowcount == 1

    # -- the outbox --------------------------------------------------------------------------------
    def enqueue(self, delivery_id: str, topic: str, payload: str, bundle_id: int | None = None) -> bool:
        """Add a message for the relay; False when one with this delivery_id is there already (a message
        made twice, e.g. by two relays following the same stream, is sent once)."""
        now = datetime.now(UTC)
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(WebhookOutbox).values(
            delivery_id=delivery_id, topic=topic, bundle_id=bundle_id, payload=payload, state="pending",
            attempts=0, next_attempt_at=now, created_at=now).on_conflict_do_nothing(index_elements=["delivery_id"])
        with self.sessions.begin() as session:
            return session.execute(stmt).rowcount == 1

    def due(self, limit: int = 100, now: datetime | None = None) -> list[dict[str, Any]]:
        now = now or datetime.now(UTC)
        with self.sessions() as session:
            rows = session.scalars(select(WebhookOutbox).where(WebhookOutbox.state == "pending",
                                                               WebhookOutbox.next_attempt_at <= now)
                                   .order_by(WebhookOutbox.next_attempt_at, WebhookOutbox.id).limit(limit))
            return [_outbox_dict(r) for r in rows]

    def claim(self, message: dict[str, Any], lease_s: float) -> int | None:
        """Take a due message for one attempt: its attempt number, or None when another relay took it. A
        relay that dies mid-attempt leaves the message due again once the lease runs out."""
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            result = session.execute(
                update(WebhookOutbox).where(WebhookOutbox.id == message["id"], WebhookOutbox.state == "pending",
                                            WebhookOutbox.attempts == message["attempts"],
                                            WebhookOutbox.next_attempt_at <= now)
                .values(attempts=WebhookOutbox.attempts + 1, next_attempt_at=now + timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False))
            return message["attempts"] + 1 if result.rowcount == 1 else None

    def settle(self, outbox_id: int, attempt: int, state: str, retry_in_s: float = 0.0,
               error: str | None = None) -> None:
        """Record how an attempt ended: `pending` again after `retry_in_s`, or a final state."""
        if state not in OUTBOX_STATES:
            raise ValueError(f"unknown outbox state {state!r}")
        with self.sessions.begin() as session:
            session.execute(
                update(WebhookOutbox).where(WebhookOutbox.id == outbox_id, WebhookOutbox.attempts == attempt)
                .values(state=state, last_error=error[:200] if error else None,
                        next_attempt_at=datetime.now(UTC) + timedelta(seconds=retry_in_s))
                .execution_options(synchronize_session=False))

    def outbox(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        query = select(WebhookOutbox)
        if state:
            query = query.where(WebhookOutbox.state == state)
        with self.sessions() as session:
            rows = session.scalars(query.order_by(WebhookOutbox.id.desc()).limit(limit))
            return [_outbox_dict(r) for r in rows]
