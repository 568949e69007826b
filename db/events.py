"""Event bookkeeping: which upload events exist, how often screening began for each, and how each ended."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, case, delete, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from db.schema import Event, RescanItem
from db.states import ERASED_URI, TERMINAL, EventStatus
from pipeline.events import UploadEvent

DONE_COLUMNS = ("status", "reason", "attempts", "image_id", "verdict_id", "finished_at")


@dataclass(frozen=True)
class SavedResult:
    """How one event ended when its result was saved."""

    event_id: str
    status: str
    verdict_id: int | None
    verdict: str | None
    review_item_id: int | None
    reused: bool
    reason: str | None = None
    sha256: str | None = None  # the screened bytes' hash, when known (logs)


class EventLedger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def record_events(self, events: Iterable[UploadEvent]) -> list[str]:
        """Insert events that are new; return the ids that were new (a resubmission inserts nothing)."""
        rows = [event_row(e) for e in events]
        fresh: list[str] = []
        with self.sessions.begin() as session:
            # in chunks: one statement binds every column of its rows, and SQLite allows 32,766 variables
            for start in range(0, len(rows), 1000):
                stmt = (self._insert(Event).values(rows[start:start + 1000])
                        .on_conflict_do_nothing(index_elements=["event_id"]))
                fresh.extend(r[0] for r in session.execute(stmt.returning(Event.event_id)))
        return fresh

    def forget_queued(self, event_ids: list[str]) -> None:
        """Events recorded but never enqueued (the broker was down): remove them so a retry queues them."""
        with self.sessions.begin() as session:
            session.execute(delete(Event).where(Event.event_id.in_(event_ids), Event.status == EventStatus.QUEUED))

    def count_deliveries(self, deliveries: Sequence[tuple[UploadEvent, int]]) -> dict[str, int]:
        """Record that screening begins for each (event, attempt) message; return how often it has now begun
        (1 = the first time; more = a worker died while screening it). Terminal events are left alone."""
        if not deliveries:
            return {}
        rows = [{**event_row(e), "delivery_attempt": attempt, "deliveries": 1} for e, attempt in deliveries]
        unique = sorted({r["event_id"]: r for r in rows}.values(), key=lambda r: r["event_id"])  # one lock order
        with self.sessions.begin() as session:  # one statement for the batch
            stmt = self._insert(Event).values(unique)
            stmt = stmt.on_conflict_do_update(
                index_elements=["event_id"],
                set_={"deliveries": case((Event.delivery_attempt == stmt.excluded.delivery_attempt,
                                          Event.deliveries + 1), else_=1),
                      "delivery_attempt": stmt.excluded.delivery_attempt},
                where=Event.status.not_in(TERMINAL))
            return {event_id: int(count) for event_id, count in
                    session.execute(stmt.returning(Event.event_id, Event.deliveries))}

    def started_before(self, deliveries: Sequence[tuple[UploadEvent, int]]) -> dict[str, int]:
        """How often screening already began for each (event, attempt) message without an end (0: never)."""
        if not deliveries:
            return {}
        wanted = dict((e.event_id, attempt) for e, attempt in deliveries)
        with self.sessions() as session:
            rows = session.execute(select(Event.event_id, Event.delivery_attempt, Event.deliveries)
                                   .where(Event.event_id.in_(list(wanted)), Event.status.not_in(TERMINAL)))
            return {event_id: (count if attempt == wanted[event_id] else 0) for event_id, attempt, count in rows}

    def stuck_events(self, older_than: datetime, limit: int = 1000) -> list[tuple[UploadEvent, int]]:
        """Events still `queued` since before `older_than` (and not requeued since), with the attempt their
        last message carried: the API may have died between recording them and enqueueing them, a re-scan
        chunk may have been recorded and never sent, or Redis may have lost them."""
        since = func.coalesce(Event.requeued_at, Event.received_at)
        with self.sessions() as session:
            rows = session.execute(select(Event, RescanItem.run_id)
                                   .outerjoin(RescanItem, RescanItem.event_id == Event.event_id)
                                   .where(Event.status == EventStatus.QUEUED, since < older_than)
                                   .order_by(Event.received_at).limit(limit)).all()
            return [(event_from_row(event, run_id), max(1, event.delivery_attempt)) for event, run_id in rows]

    def mark_requeued(self, event_ids: Sequence[str], at: datetime) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Event)
                            .where(Event.event_id.in_(list(event_ids)), Event.status == EventStatus.QUEUED)
                            .values(requeued_at=at))

    def event_status(self, event_id: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Event.status).where(Event.event_id == event_id))

    def finished_events(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Terminal status of those events that already have one (a redelivered message is skipped)."""
        if not event_ids:
            return {}
        with self.sessions() as session:
            rows = session.execute(
                select(Event.event_id, Event.status).where(Event.event_id.in_(list(event_ids)), Event.status.in_(TERMINAL))
            )
            return {event_id: status for event_id, status in rows}

    def mark_failed(self, event: UploadEvent, status: str, reason: str, attempts: int) -> None:
        """A terminal status without a verdict: unreadable object, retries exhausted."""
        with self.sessions.begin() as session:
            self._finish_event(session, event, status, reason, attempts, None, None)

    def mark_erased(self, events: Sequence[tuple[UploadEvent, int]]) -> dict[str, SavedResult]:
        """(event, attempts) end `erased`: their bytes were erased after they were sent."""
        with self.sessions.begin() as session:
            return {event.event_id: self._finish_erased(session, event, attempts) for event, attempts in events}

    def record_attempt(self, event_id: str, reason: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(Event)
                .where(Event.event_id == event_id, Event.status.not_in(TERMINAL))
                .values(attempts=Event.attempts + 1, reason=reason[:200])
            )

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Events that ended `failed` (retries exhausted), newest first: the dead-letter view."""
        with self.sessions() as session:
            rows = session.scalars(
                select(Event).where(Event.status == EventStatus.FAILED)
                .order_by(Event.finished_at.desc()).limit(limit)
            ).all()
            return [{"event_id": r.event_id, "image_uri": r.image_uri, "source": r.source, "attempts": r.attempts,
                     "reason": r.reason, "finished_at": r.finished_at.isoformat() if r.finished_at else None}
                    for r in rows]

    def _finish_event(
        self, session: Session, event: UploadEvent, status: str, reason: str | None, attempts: int,
        image_id: int | None, verdict_id: int | None,
    ) -> None:
        done = done_row(status, reason, attempts, image_id, verdict_id, datetime.now(UTC))
        stmt = self._insert(Event).values({**event_row(event), **done})
        # the first terminal status wins: a dead-letter racing a successful duplicate cannot undo the verdict
        session.execute(stmt.on_conflict_do_update(index_elements=["event_id"], set_=done,
                                                   where=Event.status.not_in(TERMINAL)))

    def _finish_erased(self, session: Session, event: UploadEvent, attempts: int) -> SavedResult:
        erased = EventStatus.ERASED
        done = {**done_row(erased, erased, attempts, None, None, datetime.now(UTC)), "image_uri": ERASED_URI,
                "expected_sha256": None}
        stmt = self._insert(Event).values({**event_row(event), **done})
        session.execute(stmt.on_conflict_do_update(index_elements=["event_id"], set_=done,
                                                   where=Event.status.not_in(TERMINAL)))
        return SavedResult(event.event_id, erased, None, None, None, False, erased)


def finish_events_statement(insert: Any) -> Any:  # noqa: ANN401 - the dialect's insert and its statement
    """`_finish_event` for a list of rows (executemany): the first terminal status wins here too."""
    events = insert(Event.__table__)
    return events.on_conflict_do_update(
        index_elements=["event_id"], set_={name: events.excluded[name] for name in DONE_COLUMNS},
        # the statuses inline: a list parameter is expanded per execution, which executemany cannot do
        where=Event.__table__.c.status.not_in([literal_column(f"'{status}'") for status in TERMINAL]))


def event_row(event: UploadEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id, "image_uri": event.image_uri, "source": event.source,
        "priority": event.priority, "expected_sha256": event.sha256, "uploaded_at": event.uploaded_at,
        "received_at": datetime.now(UTC), "status": EventStatus.QUEUED, "attempts": 0,
    }


def done_row(status: str, reason: str | None, attempts: int, image_id: int | None, verdict_id: int | None,
             now: datetime) -> dict[str, Any]:
    """An event's columns when it ends (DONE_COLUMNS)."""
    return {"status": status, "reason": reason, "attempts": attempts, "image_id": image_id,
            "verdict_id": verdict_id, "finished_at": now}


def event_from_row(row: Event, rescan_run: int | None) -> UploadEvent:
    return UploadEvent(event_id=row.event_id, image_uri=row.image_uri, sha256=row.expected_sha256, source=row.source,
                       uploaded_at=row.uploaded_at, priority="rescan" if row.priority == "rescan" else "upload",
                       rescan_run=rescan_run if row.priority == "rescan" else None)
