"""Review work on review items: the queue, claims with expiring leases, decisions, gold answers, the audit log.

A claim is one conditional UPDATE (`... WHERE id = :id AND <claimable>`), so on any dialect two moderators
can never both hold an item: the second UPDATE matches no row. On Postgres, claim-next first picks its
candidate with SELECT ... FOR UPDATE SKIP LOCKED, so concurrent claimers do not queue up behind one row.
Every state change writes its audit row in the same transaction; the audit table refuses UPDATE and DELETE.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, exists, func, or_, select, true, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import known_fakes
from db.schema import AuditEntry, BankMatchRow, FaceRow, GoldAnswer, Image, ReviewItem, Verdict
from db.states import DECIDED_STATES, ReviewState
from db.timestamps import aware, now_utc

DECISIONS: dict[str, str] = {
    "confirm_fake": ReviewState.CONFIRMED_FAKE,
    "mark_real": ReviewState.MARKED_REAL,
    "escalate": ReviewState.ESCALATED,
    "skip": ReviewState.PENDING,
}
GOLD_ANSWER = {"confirm_fake": "fake", "escalate": "fake", "mark_real": "real", "skip": "skip"}


class ReviewError(Exception):
    """A review action that cannot be done; `reason` is a short stable code the API returns."""

    status = 409

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ItemNotFound(ReviewError):
    status = 404


class ClaimConflict(ReviewError):
    """Held by someone else, not held by the caller, its lease expired, or already decided."""


class InvalidDecision(ReviewError):
    status = 422


@dataclass(frozen=True)
class Actor:
    name: str
    role: str


@dataclass(frozen=True)
class Claim:
    item_id: int
    lease_expires_at: datetime
    gold: bool = False  # a served gold item: looks like any claim, its answer is scored, its state untouched


@dataclass(frozen=True)
class DecisionResult:
    item_id: int
    decision: str
    previous_state: str
    new_state: str
    gold: bool = False
    bank_entry_id: int | None = None  # the known-fake memory entry the decision made (confirm_fake, mark_real)


@dataclass(frozen=True)
class QueueFilter:
    state: str | None = ReviewState.PENDING  # pending includes claims whose lease expired
    verdict: str | None = None  # the verdict that opened the item: fake | uncertain
    min_score: float | None = None
    max_score: float | None = None
    source: str | None = None
    min_age_s: float | None = None
    max_age_s: float | None = None
    order: str = "oldest"  # oldest | score
    limit: int = 50
    offset: int = 0


def _claimable(now: datetime):  # noqa: ANN202 - a SQL expression
    return or_(ReviewItem.state == ReviewState.PENDING,
               and_(ReviewItem.state == ReviewState.CLAIMED, ReviewItem.lease_expires_at < now))


class ReviewStore:
    def __init__(self, engine: Engine, lease_seconds: int = 600) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.lease_seconds = lease_seconds  # what a served gold item shows as its lease

    # -- the queue ---------------------------------------------------------------------------------
    def list_items(self, flt: QueueFilter) -> tuple[list[dict[str, Any]], int]:
        now = now_utc()
        query = select(ReviewItem, Image.sha256).join(Image, Image.id == ReviewItem.image_id)
        conditions = []
        if flt.state == ReviewState.PENDING:
            conditions.append(_claimable(now))
        elif flt.state == ReviewState.CLAIMED:
            conditions.append(and_(ReviewItem.state == ReviewState.CLAIMED, ReviewItem.lease_expires_at >= now))
        elif flt.state:
            conditions.append(ReviewItem.state == flt.state)
        if flt.verdict:
            conditions.append(ReviewItem.reason == flt.verdict)
        if flt.min_score is not None:
            conditions.append(ReviewItem.fake_probability >= flt.min_score)
        if flt.max_score is not None:
            conditions.append(ReviewItem.fake_probability <= flt.max_score)
        if flt.source:
            conditions.append(ReviewItem.source == flt.source)
        if flt.min_age_s is not None:
            conditions.append(ReviewItem.created_at <= now - timedelta(seconds=flt.min_age_s))
        if flt.max_age_s is not None:
            conditions.append(ReviewItem.created_at >= now - timedelta(seconds=flt.max_age_s))
        order = ((ReviewItem.fake_probability.desc(), ReviewItem.id) if flt.order == "score"
                 else (ReviewItem.created_at, ReviewItem.id))
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(ReviewItem).where(*conditions)) or 0
            rows = session.execute(query.where(*conditions).order_by(*order).limit(flt.limit).offset(flt.offset))
            return [item_dict(item, sha256, now) for item, sha256 in rows], int(total)

    def item(self, item_id: int, viewer: Actor | None = None) -> dict[str, Any]:
        """The item with its image, verdict, faces and history. A gold item served to `viewer` is shown
        as their own fresh claim, without its history (which would give the answer away)."""
        now = now_utc()
        with self.sessions() as session:
            row = session.execute(select(ReviewItem, Image).join(Image, Image.id == ReviewItem.image_id)
                                  .where(ReviewItem.id == item_id)).first()
            if row is None:
                raise ItemNotFound("no_such_item", str(item_id))
            item, image = row
            verdict = session.get(Verdict, item.verdict_id)
            faces = session.scalars(select(FaceRow).where(FaceRow.verdict_id == item.verdict_id)
                                    .order_by(FaceRow.face_index)).all()
            doc = item_dict(item, image.sha256, now)
            doc["image"] = {"id": image.id, "sha256": image.sha256, "uri": image.uri, "source": image.source,
                            "width": image.width, "height": image.height, "size_bytes": image.size_bytes,
                            "uploaded_at": aware(image.uploaded_at)}
            doc["verdict"] = {"id": verdict.id, "model_version": verdict.model_version, "status": verdict.status,
                              "verdict": verdict.verdict, "fake_probability": verdict.fake_probability,
                              "heatmap_key": verdict.heatmap_key, "created_at": aware(verdict.created_at),
                              **verdict_thresholds(verdict)}
            doc["faces"] = [face_dict(f) for f in faces]
            doc["history"] = self._history(session, item_id)
            doc["bank_matches"] = [known_fakes.match_dict(m) for m in session.scalars(
                select(BankMatchRow).where(BankMatchRow.verdict_id == item.verdict_id).order_by(BankMatchRow.label))]
            gold = self._open_gold(session, item_id, viewer.name) if viewer is not None else None
            if gold is not None:
                lease = aware(gold.served_at) + timedelta(seconds=self.lease_seconds)  # type: ignore[operator]
                doc.update(state=ReviewState.CLAIMED, claimed_by=viewer.name, lease_expires_at=lease,  # type: ignore[union-attr]
                           decision=None, decided_by=None, decided_at=None, history=[], gold_label=None,
                           bank_matches=[])
            elif viewer is not None and viewer.role != "admin":
                doc["gold_label"] = None
            return doc

    def history(self, item_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return self._history(session, item_id)

    # -- claims ------------------------------------------------------------------------------------
    def claim_next(self, actor: Actor, lease_seconds: int, gold_rate: float = 0.0) -> Claim | None:
        if gold_rate > 0 and random.random() < gold_rate:
            served = self._serve_gold(actor, lease_seconds)
            if served is not None:
                return served
        for _ in range(8):
            try:
                with self.sessions.begin() as session:
                    now = now_utc()
                    skipped_by_me = exists().where(AuditEntry.review_item_id == ReviewItem.id,
                                                   AuditEntry.actor == actor.name, AuditEntry.action == "skip")
                    candidate = session.scalar(
                        select(ReviewItem.id).where(_claimable(now), ~skipped_by_me)
                        .order_by(ReviewItem.skips, _matches_confirmed_real(), ReviewItem.created_at, ReviewItem.id)
                        .limit(1).with_for_update(skip_locked=True)
                    )
                    if candidate is None:
                        return None
                    claim = self._take(session, actor, candidate, lease_seconds, now)
                    if claim is not None:
                        return claim
            except OperationalError:
                if self.engine.dialect.name != "sqlite":
                    raise  # SQLite: a writer raced us past our read snapshot; try again
        return None

    def claim(self, actor: Actor, item_id: int, lease_seconds: int) -> Claim:
        with self.sessions.begin() as session:
            gold = self._open_gold(session, item_id, actor.name)
            if gold is not None:
                return Claim(item_id, aware(gold.served_at) + timedelta(seconds=lease_seconds), gold=True)  # type: ignore[operator]
            claim = self._take(session, actor, item_id, lease_seconds, now_utc())
            if claim is not None:
                return claim
            raise self._why_not(session, actor, item_id)

    def release(self, actor: Actor, item_id: int) -> None:
        with self.sessions.begin() as session:
            now = now_utc()
            gold = self._open_gold(session, item_id, actor.name)
            if gold is not None:  # released like any claim, so it gives nothing away; counts as a skip
                self._answer_gold(session, actor, gold, "skip", None, now)
                return
            holder = true() if actor.role == "admin" else ReviewItem.claimed_by == actor.name
            result = session.execute(
                update(ReviewItem)
                .where(ReviewItem.id == item_id, ReviewItem.state == ReviewState.CLAIMED, holder)
                .values(state=ReviewState.PENDING, claimed_by=None, lease_expires_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                raise self._why_not(session, actor, item_id)
            _audit(session, actor, "release", item_id, ReviewState.CLAIMED, ReviewState.PENDING, now=now)

    def decide(self, actor: Actor, item_id: int, decision: str, note: str | None = None) -> DecisionResult:
        if decision not in DECISIONS:
            raise InvalidDecision("unknown_decision", decision)
        with self.sessions.begin() as session:
            now = now_utc()
            gold = self._open_gold(session, item_id, actor.name)
            if gold is not None:
                return self._answer_gold(session, actor, gold, decision, note, now)
            new_state = DECISIONS[decision]
            values: dict[str, Any] = {"state": new_state, "claimed_by": None, "lease_expires_at": None,
                                      "updated_at": now}
            if decision == "skip":
                values["skips"] = ReviewItem.skips + 1
            else:
                values.update(decision=decision, decided_by=actor.name, decided_at=now)
            result = session.execute(
                update(ReviewItem)
                .where(ReviewItem.id == item_id, ReviewItem.state == ReviewState.CLAIMED,
                       ReviewItem.claimed_by == actor.name, ReviewItem.lease_expires_at >= now)
                .values(values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                raise self._why_not(session, actor, item_id)
            entry = _audit(session, actor, decision, item_id, ReviewState.CLAIMED, new_state, note=note, now=now)
            session.flush()
            bank_entry_id = known_fakes.on_decision(session, item_id, decision, entry.id, actor.name)
            return DecisionResult(item_id, decision, ReviewState.CLAIMED, new_state, bank_entry_id=bank_entry_id)

    def reverse(self, actor: Actor, item_id: int, note: str | None = None) -> DecisionResult:
        """Undo a decision: the item goes back to the queue, and the bank entries it made are removed."""
        with self.sessions.begin() as session:
            now = now_utc()
            row = session.execute(select(ReviewItem.state, ReviewItem.decision)
                                  .where(ReviewItem.id == item_id).with_for_update()).first()
            if row is None:
                raise ItemNotFound("no_such_item", str(item_id))
            state, decision = row
            if state not in DECIDED_STATES:
                raise ClaimConflict("not_decided", state)
            result = session.execute(
                update(ReviewItem).where(ReviewItem.id == item_id, ReviewItem.state == state)
                .values(state=ReviewState.PENDING, decision=None, decided_by=None, decided_at=None, claimed_by=None,
                        lease_expires_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                raise ClaimConflict("changed_meanwhile")
            removed = known_fakes.on_reversal(session, item_id)
            _audit(session, actor, "reverse", item_id, state, ReviewState.PENDING, note=note,
                   details={"reversed_decision": decision, "bank_entries_removed": removed}, now=now)
            return DecisionResult(item_id, "reverse", state, ReviewState.PENDING)

    # -- gold --------------------------------------------------------------------------------------
    def set_gold(self, actor: Actor, item_id: int, label: str | None) -> None:
        if label not in ("fake", "real", None):
            raise InvalidDecision("bad_gold_label", str(label))
        with self.sessions.begin() as session:
            state = session.scalar(select(ReviewItem.state).where(ReviewItem.id == item_id))
            if state is None:
                raise ItemNotFound("no_such_item", str(item_id))
            session.execute(update(ReviewItem).where(ReviewItem.id == item_id).values(gold_label=label)
                            .execution_options(synchronize_session=False))
            _audit(session, actor, "set_gold", item_id, state, state, details={"gold_label": label})

    def agreement(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.execute(
                select(GoldAnswer.moderator, func.count(GoldAnswer.id),
                       func.sum(case((GoldAnswer.correct.is_(True), 1), else_=0)))
                .where(GoldAnswer.correct.is_not(None)).group_by(GoldAnswer.moderator).order_by(GoldAnswer.moderator)
            )
            return [{"moderator": m, "answered": int(n), "agreed": int(a or 0),
                     "agreement": round(float(a or 0) / n, 4) if n else None} for m, n, a in rows]

    # -- audit -------------------------------------------------------------------------------------
    def record(self, actor: Actor, action: str, item_id: int | None = None, note: str | None = None,
               details: dict[str, Any] | None = None) -> None:
        """An audited action that changes no item state (a check upload, a token change, a download)."""
        with self.sessions.begin() as session:
            _audit(session, actor, action, item_id, None, None, note=note, details=details)

    def audit_log(self, item_id: int | None = None, actor: str | None = None, action: str | None = None,
                  limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
        query = select(AuditEntry)
        if item_id is not None:
            query = query.where(AuditEntry.review_item_id == item_id)
        if actor:
            query = query.where(AuditEntry.actor == actor)
        if action:
            query = query.where(AuditEntry.action == action)
        with self.sessions() as session:
            rows = session.scalars(query.order_by(AuditEntry.id).limit(limit).offset(offset)).all()
            return [_audit_dict(a) for a in rows]

    # -- internals ---------------------------------------------------------------------------------
    def _take(self, session: Session, actor: Actor, item_id: int, lease_seconds: int, now: datetime) -> Claim | None:
        before = session.execute(select(ReviewItem.state, ReviewItem.claimed_by)
                                 .where(ReviewItem.id == item_id).with_for_update()).first()
        if before is None:
            raise ItemNotFound("no_such_item", str(item_id))
        expires = now + timedelta(seconds=lease_seconds)
        mine = and_(ReviewItem.state == ReviewState.CLAIMED, ReviewItem.claimed_by == actor.name)
        result = session.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id, or_(_claimable(now), mine))
            .values(state=ReviewState.CLAIMED, claimed_by=actor.name, lease_expires_at=expires, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        previous_state, previous_holder = before
        details = {"lease_expires_at": expires.isoformat()}
        if previous_state == ReviewState.CLAIMED and previous_holder != actor.name:
            details["expired_claim_of"] = previous_holder
        action = "renew" if previous_state == ReviewState.CLAIMED and previous_holder == actor.name else "claim"
        _audit(session, actor, action, item_id, previous_state, ReviewState.CLAIMED, details=details, now=now)
        return Claim(item_id, expires)

    def _why_not(self, session: Session, actor: Actor, item_id: int) -> ReviewError:
        row = session.execute(select(ReviewItem.state, ReviewItem.claimed_by, ReviewItem.lease_expires_at)
                              .where(ReviewItem.id == item_id)).first()
        if row is None:
            return ItemNotFound("no_such_item", str(item_id))
        state, holder, lease = row
        if state in DECIDED_STATES:
            return ClaimConflict("already_decided", state)
        if state == ReviewState.CLAIMED and holder != actor.name and (aware(lease) or now_utc()) >= now_utc():
            return ClaimConflict("claimed_by_other")
        if state == ReviewState.CLAIMED and holder == actor.name:
            return ClaimConflict("lease_expired")
        return ClaimConflict("not_claimed")

    def _open_gold(self, session: Session, item_id: int, moderator: str) -> GoldAnswer | None:
        return session.scalar(select(GoldAnswer).where(GoldAnswer.review_item_id == item_id,
                                                       GoldAnswer.moderator == moderator,
                                                       GoldAnswer.answer.is_(None)))

    def _serve_gold(self, actor: Actor, lease_seconds: int) -> Claim | None:
        with self.sessions.begin() as session:
            answered = exists().where(GoldAnswer.review_item_id == ReviewItem.id, GoldAnswer.moderator == actor.name)
            item_id = session.scalar(
                select(ReviewItem.id).where(ReviewItem.gold_label.is_not(None),
                                            ReviewItem.state.in_(DECIDED_STATES), ~answered)
                .order_by(func.random()).limit(1)
            )
            if item_id is None:
                return None
            now = now_utc()
            session.add(GoldAnswer(review_item_id=item_id, moderator=actor.name, served_at=now))
            _audit(session, actor, "gold_served", item_id, None, None, now=now)
            return Claim(item_id, now + timedelta(seconds=lease_seconds), gold=True)

    def _answer_gold(self, session: Session, actor: Actor, gold: GoldAnswer, decision: str, note: str | None,
                     now: datetime) -> DecisionResult:
        label = session.scalar(select(ReviewItem.gold_label).where(ReviewItem.id == gold.review_item_id))
        answer = GOLD_ANSWER[decision]
        gold.answer, gold.answered_at = answer, now
        gold.correct = None if answer == "skip" else answer == label
        _audit(session, actor, "gold_answer", gold.review_item_id, None, None, note=note,
               details={"decision": decision, "correct": gold.correct})
        return DecisionResult(gold.review_item_id, decision, ReviewState.CLAIMED, DECISIONS[decision], gold=True)

    def _history(self, session: Session, item_id: int) -> list[dict[str, Any]]:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.review_item_id == item_id,
                                                        AuditEntry.action.not_in(("gold_served", "gold_answer")))
                               .order_by(AuditEntry.id)).all()
        return [_audit_dict(a) for a in rows]


def _audit(session: Session, actor: Actor, action: str, item_id: int | None, previous: str | None,
           new: str | None, note: str | None = None, details: dict[str, Any] | None = None,
           now: datetime | None = None) -> AuditEntry:
    entry = AuditEntry(at=now or now_utc(), actor=actor.name, actor_role=actor.role, action=action,
                       review_item_id=item_id, previous_state=previous, new_state=new,
                       note=(note or None) and note[:4000], details=details or {})
    session.add(entry)
    return entry


def _matches_confirmed_real():  # noqa: ANN202 - a SQL expression
    """1 when the item's image matched a confirmed_real entry: such items are served after the others."""
    return case((exists().where(BankMatchRow.verdict_id == ReviewItem.verdict_id, BankMatchRow.label == "real",
                                BankMatchRow.revoked_at.is_(None)), 1), else_=0)


def item_dict(item: ReviewItem, sha256: str, now: datetime) -> dict[str, Any]:
    lease = aware(item.lease_expires_at)
    state = item.state
    if state == ReviewState.CLAIMED and lease is not None and lease < now:
        state = ReviewState.PENDING  # the lease ran out: anyone may claim it
    created = aware(item.created_at)
    return {"id": item.id, "state": state, "verdict_id": item.verdict_id,
            "image_id": item.image_id, "sha256": sha256, "reason": item.reason,
            "fake_probability": item.fake_probability, "source": item.source, "created_at": created,
            "age_s": (now - created).total_seconds() if created else None,
            "claimed_by": item.claimed_by if state == ReviewState.CLAIMED else None,
            "lease_expires_at": lease if state == ReviewState.CLAIMED else None, "decision": item.decision,
            "decided_by": item.decided_by, "decided_at": aware(item.decided_at), "skips": item.skips,
            "gold_label": item.gold_label}


def verdict_thresholds(verdict: Verdict) -> dict[str, Any]:
    return {"threshold_fake": verdict.threshold_fake, "threshold_real": verdict.threshold_real,
            "min_face_side": verdict.min_face_side}


def face_dict(face: FaceRow) -> dict[str, Any]:
    return {"id": face.id, "index": face.face_index, "box": [face.x1, face.y1, face.x2, face.y2],
            "detection_probability": face.detection_probability, "fake_probability": face.fake_probability,
            "verdict": face.verdict, "heatmap_key": face.heatmap_key, "crop_key": face.crop_key}


def _audit_dict(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": aware(entry.at), "actor": entry.actor, "actor_role": entry.actor_role,
            "action": entry.action, "review_item_id": entry.review_item_id, "previous_state": entry.previous_state,
            "new_state": entry.new_state, "note": entry.note, "details": entry.details}
