"""The relational schema: events, images, verdicts, faces, review items; tokens, audit, bundles, webhooks. SQLAlchemy 2 typed ORM.

Idempotency lives in unique keys: one event row per producer event_id, one image row per sha256, one
verdict per (image, model version), one face row per (verdict, index), one review item per verdict.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.timestamps import now_utc

# SQLite only autoincrements INTEGER PRIMARY KEY; Postgres gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Event(Base):
    """One upload event as the producer sent it, and where it ended."""

    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    image_uri: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200), index=True)
    priority: Mapped[str] = mapped_column(String(16), default="upload")
    expected_sha256: Mapped[str | None] = mapped_column(String(64))
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    # queued -> scored | no_face | invalid_input | failed
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    reason: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    verdict_id: Mapped[int | None] = mapped_column(ForeignKey("verdicts.id", ondelete="SET NULL"))
    # (0003) deliveries of the message of attempt `delivery_attempt` that began a batch: more than one means a
    # worker died with it in hand (kill, OOM); too many and it is dead-lettered instead of killing workers forever
    delivery_attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    requeued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # (0003) by the stuck-event sweeper
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Image(Base):
    """Image content, identified by its sha256."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(Text)  # where it was first seen
    source: Mapped[str] = mapped_column(String(200), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)

    verdicts: Mapped[list[Verdict]] = relationship(back_populates="image")


class Verdict(Base):
    """One screening of one image by one model version. History is never overwritten."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("image_id", "model_version", name="uq_verdict_image_model"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(120), index=True)
    status: Mapped[str] = mapped_column(String(20))  # scored | no_face | invalid_input
    verdict: Mapped[str | None] = mapped_column(String(12), index=True)  # fake | real | uncertain
    fake_probability: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(String(200))
    heatmap_key: Mapped[str | None] = mapped_column(Text)
    face_count: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc, index=True)
    # the thresholds that made the verdict (NULL for verdicts recorded before they were stored)
    threshold_fake: Mapped[float | None] = mapped_column(Float)
    threshold_real: Mapped[float | None] = mapped_column(Float)
    min_face_side: Mapped[int | None] = mapped_column(Integer)

    image: Mapped[Image] = relationship(back_populates="verdicts")
    faces: Mapped[list[FaceRow]] = relationship(back_populates="verdict_row", order_by="FaceRow.face_index")


class FaceRow(Base):
    __tablename__ = "faces"
    __table_args__ = (UniqueConstraint("verdict_id", "face_index", name="uq_face_verdict_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id", ondelete="CASCADE"), index=True)
    face_index: Mapped[int] = mapped_column(Integer)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    detection_probability: Mapped[float | None] = mapped_column(Float)
    fake_probability: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(12))
    heatmap_key: Mapped[str | None] = mapped_column(Text)
    crop_key: Mapped[str | None] = mapped_column(Text)

    verdict_row: Mapped[Verdict] = relationship(back_populates="faces")

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


class ReviewItem(Base):
    """A verdict that needs a human: fake or uncertain."""

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id", ondelete="CASCADE"), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    reason: Mapped[str] = mapped_column(String(40))  # the verdict that opened it: fake | uncertain
    fake_probability: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc, onupdate=now_utc)
    # review work (0002): pending -> claimed -> confirmed_fake | marked_real | escalated; skip/release -> pending
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision: Mapped[str | None] = mapped_column(String(20))
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    skips: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gold_label: Mapped[str | None] = mapped_column(String(8))  # fake | real: an admin's known answer


Index("ix_review_items_state_created", ReviewItem.state, ReviewItem.created_at)


class ApiToken(Base):
    """An API token: only its sha256 is stored. `name` is the identity a moderator's work is recorded under."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    role: Mapped[str] = mapped_column(String(16))  # service | moderator | admin
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart in lists
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """A console login: the cookie holds a random id whose sha256 is the key; it dies with its token."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Append-only (database triggers refuse UPDATE and DELETE): who did what to which item, and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(40))
    # no foreign key since 0004: an entry outlives the item it names (erasure, retention)
    review_item_id: Mapped[int | None] = mapped_column(BigId, index=True)
    previous_state: Mapped[str | None] = mapped_column(String(20))
    new_state: Mapped[str | None] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class EvidenceBundle(Base):
    """A signed escalation bundle (zip in the blob store): manifest sha256 and its HMAC-SHA256."""

    __tablename__ = "evidence_bundles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    review_item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), index=True)
    blob_key: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class WebhookDelivery(Base):
    """One delivery attempt of one webhook message (a message is retried under the same delivery_id)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(64), index=True)
    topic: Mapped[str] = mapped_column(String(40))
    bundle_id: Mapped[int | None] = mapped_column(ForeignKey("evidence_bundles.id"))
    target: Mapped[str] = mapped_column(Text)  # scheme://host/path: never the query or credentials
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(200))
    succeeded: Mapped[bool] = mapped_column(default=False)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class GoldAnswer(Base):
    """A moderator's answer on a gold item served in their queue (the item's own state is not touched)."""

    __tablename__ = "gold_answers"
    __table_args__ = (UniqueConstraint("review_item_id", "moderator", name="uq_gold_item_moderator"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    review_item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), index=True)
    moderator: Mapped[str] = mapped_column(String(200), index=True)
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    answer: Mapped[str | None] = mapped_column(String(8))  # fake | real, None while served
    correct: Mapped[bool | None] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookCursor(Base):
    """How far a webhook relay has followed a stream (e.g. fake verdicts, by verdict id)."""

    __tablename__ = "webhook_cursors"

    topic: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class WebhookOutbox(Base):
    """A webhook message waiting for the relay (0006). Requests only add rows; the relay makes one attempt
    per row when it is due and schedules the next with backoff, so no request thread waits on a receiver."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(64), unique=True)  # the same on every attempt
    topic: Mapped[str] = mapped_column(String(40))
    bundle_id: Mapped[int | None] = mapped_column(BigInteger)  # no key: erasure deletes bundles; the relay drops
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON; an escalation's zip is read at delivery time
    state: Mapped[str] = mapped_column(String(12), default="pending")  # pending|delivered|failed|dropped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


# -- re-scans and model roll-outs (0003) ----------------------------------------------------------------


class ModelRecord(Base):
    """A registered model version. At most one is `active` (scores new work); at most one is `canary`
    (scores `canary_fraction` of the traffic a second time, for the disagreement rate only)."""

    __tablename__ = "models"

    version: Mapped[str] = mapped_column(String(120), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    folder: Mapped[str] = mapped_column(Text)  # where every worker finds the weights (sha256 checked at load)
    role: Mapped[str] = mapped_column(String(12), default="registered", index=True)  # registered|active|canary
    canary_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    registered_by: Mapped[str] = mapped_column(String(200), default="cli")
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


Index("uq_models_one_per_role", ModelRecord.role, unique=True,
      postgresql_where=ModelRecord.role.in_(("active", "canary")),
      sqlite_where=ModelRecord.role.in_(("active", "canary")))


class RescanRun(Base):
    """One re-scan run: what it selects, how far it has enqueued (keyset cursor on images.id), and its state.

    pending -> running -> draining (all enqueued) -> finished; running <-> paused; any -> cancelled."""

    __tablename__ = "rescan_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(12), default="running", index=True)
    model_version: Mapped[str] = mapped_column(String(120))  # the version this run re-screens with
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)  # highest images.id enqueued
    selected: Mapped[int] = mapped_column(Integer, default=0)  # count at start (the progress bar's total)
    enqueued: Mapped[int] = mapped_column(Integer, default=0)
    rate_per_s: Mapped[float] = mapped_column(Float, default=10.0)
    chunk_size: Mapped[int] = mapped_column(Integer, default=200)
    reopen_decided: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[str] = mapped_column(String(200), default="cli")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    last_tick_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RescanItem(Base):
    """One image of one run, written in the transaction that advances the cursor past it, with the verdict
    it had before (the transition report's `old` side)."""

    __tablename__ = "rescan_items"
    __table_args__ = (UniqueConstraint("run_id", "image_id", name="uq_rescan_item_run_image"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("rescan_runs.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    old_verdict_id: Mapped[int | None] = mapped_column(ForeignKey("verdicts.id", ondelete="SET NULL"))
    old_verdict: Mapped[str | None] = mapped_column(String(20))  # verdict label, or the status without one
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class CanaryResult(Base):
    """One image scored by both the active and the canary model: the canary's verdict is recorded here only."""

    __tablename__ = "canary_results"
    __table_args__ = (UniqueConstraint("image_sha256", "active_version", "canary_version", name="uq_canary_pair"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(200))
    active_version: Mapped[str] = mapped_column(String(120))
    canary_version: Mapped[str] = mapped_column(String(120), index=True)
    active_verdict: Mapped[str | None] = mapped_column(String(20))
    canary_verdict: Mapped[str | None] = mapped_column(String(20))
    active_probability: Mapped[float | None] = mapped_column(Float)
    canary_probability: Mapped[float | None] = mapped_column(Float)
    agree: Mapped[bool] = mapped_column()
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


# -- operations (0004): erasure tombstones ------------------------------------------------------------------
class Erasure(Base):
    """A tombstone: this sha256 was erased, when, by whom and why. Nothing else of the image is kept."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc, index=True)
    erased_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    selector: Mapped[str] = mapped_column(String(300))  # sha256=... | image_id=... | source=...
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # what was removed: counts, no content


# -- known-fake memory (0005): perceptual hashes, hash banks, their change log, bank matches ----------------
class PerceptualHashRow(Base):
    """The PDQ hash of a verdict's image, computed in the batch that screened it."""

    __tablename__ = "perceptual_hashes"

    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    pdq: Mapped[str] = mapped_column(String(64))
    pdq_mirror: Mapped[str | None] = mapped_column(String(64))  # the mirror image's hash
    quality: Mapped[int] = mapped_column(Integer)
    low_quality: Mapped[bool] = mapped_column(default=False)  # below the quality floor: never matched on


class HashBank(Base):
    """A named set of hashes: confirmed_fake and confirmed_real (filled by decisions), or an imported bank."""

    __tablename__ = "hash_banks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # decisions | imported
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class BankEntry(Base):
    """One hash in a bank. An entry a decision put there names its review item and the decision's audit row;
    reversing the decision deletes it."""

    __tablename__ = "bank_entries"
    __table_args__ = (UniqueConstraint("bank_id", "review_item_id", name="uq_bank_entry_item"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("hash_banks.id", ondelete="CASCADE"), index=True)
    pdq: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(8))  # fake | real
    quality: Mapped[int | None] = mapped_column(Integer)
    review_item_id: Mapped[int | None] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    audit_id: Mapped[int | None] = mapped_column(ForeignKey("audit_log.id"))
    external_id: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class BankChange(Base):
    """Append-only log of bank entries added and removed; its id is the revision a worker's index follows."""

    __tablename__ = "bank_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(BigInteger, index=True)
    op: Mapped[str] = mapped_column(String(8))  # add | remove
    pdq: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)


class BankMatchRow(Base):
    """A verdict whose image was within the distance of a bank entry (at screening, or found by the re-scan
    hook when the entry arrived later). `revoked_at` is set when the entry is removed."""

    __tablename__ = "bank_matches"
    __table_args__ = (UniqueConstraint("verdict_id", "label", name="uq_bank_match_verdict_label"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id", ondelete="CASCADE"), index=True)
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("bank_entries.id", ondelete="SET NULL"), index=True)
    label: Mapped[str] = mapped_column(String(8))  # fake | real
    distance: Mapped[int] = mapped_column(Integer)
    mirrored: Mapped[bool] = mapped_column(default=False)  # the mirror image matched (a flipped copy)
    bank: Mapped[str] = mapped_column(String(100))
    matched_review_item_id: Mapped[int | None] = mapped_column(ForeignKey("review_items.id", ondelete="SET NULL"))
    matched_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    found_by: Mapped[str] = mapped_column(String(12), default="upload")  # upload | rescan
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now_utc)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
