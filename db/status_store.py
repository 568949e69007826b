"""The database's part of `deepscreen status`: recent throughput, the review backlog, the newest errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from db.schema import Event, ReviewItem
from db.states import ERROR_STATUSES, OPEN_STATES, ReviewState
from db.timestamps import aware


def status_summary(engine: Engine, window_s: float = 300.0, errors: int = 10,
                   now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=window_s)
    with engine.connect() as conn:
        finished = dict(conn.execute(select(Event.status, func.count()).where(Event.finished_at >= since)
                                     .group_by(Event.status)).all())
        backlog = dict(conn.execute(select(ReviewItem.state, func.count())
                                    .where(ReviewItem.state.in_(OPEN_STATES))
                                    .group_by(ReviewItem.state)).all())
        oldest = aware(conn.scalar(select(func.min(ReviewItem.created_at)).where(ReviewItem.state == ReviewState.PENDING)))
        rows = conn.execute(select(Event.finished_at, Event.status, Event.reason, Event.event_id, Event.source)
                            .where(Event.status.in_(ERROR_STATUSES), Event.reason.is_not(None))
                            .order_by(Event.finished_at.desc()).limit(errors)).all()
    total = sum(finished.values())
    return {
        "throughput": {"window_s": window_s, "finished": total, "per_second": round(total / window_s, 4),
                       "by_status": finished},
        "review_backlog": {"pending": backlog.get(ReviewState.PENDING, 0), "claimed": backlog.get(ReviewState.CLAIMED, 0),
                           "oldest_pending_age_s": round((now - oldest).total_seconds(), 1) if oldest else None},
        "errors": [{"at": aware(at).isoformat() if at else None, "status": status, "reason": reason,
                    "event_id": event_id, "source": source} for at, status, reason, event_id, source in rows],
    }
