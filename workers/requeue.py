"""The stuck-event sweeper: events recorded as `queued` long ago that no worker has finished are put on their
queue again (why they exist: docs/operations.md). Safe because screening is idempotent; the message carries
the attempt the event was on, so retries keep their budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from db.store import Store
from pipeline.events import UploadEvent

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


def requeue_stuck(store: Store, send: Callable[[UploadEvent, int], None], stuck_after_s: float, limit: int = 1000,
                  now: datetime | None = None, dry_run: bool = False, backlog_age_s: float = 0.0,
                  held: Collection[str] = frozenset()) -> list[str]:
    """Send (event, attempt) again for events queued longer than `stuck_after_s`, or than the oldest message
    still waiting on a queue (`backlog_age_s`): during a backlog, a queued event is waiting, not lost. Events
    in `held` (their message is unacknowledged in the broker: workers.queues.held_event_ids) are in flight, not
    lost, and are left alone: a second copy of a message a worker is screening would count as a crashed
    delivery (MAX_DELIVERIES) if a worker then died."""
    now = now or datetime.now(UTC)
    waited = max(stuck_after_s, backlog_age_s + 60.0 if backlog_age_s else 0.0)
    events = [(event, attempt) for event, attempt in store.stuck_events(now - timedelta(seconds=waited), limit)
              if event.event_id not in held]
    if dry_run or not events:
        return [e.event_id for e, _ in events]
    sent: list[str] = []
    try:
        for event, attempt in events:
            send(event, attempt)
            sent.append(event.event_id)
    finally:
        if sent:
            store.mark_requeued(sent, now)
            log.warning("requeued stuck events count=%d first=%s", len(sent), sent[0])
    return sent


def requeue_stuck_events(celery_app: Celery, store: Store, stuck_after_s: float, limit: int = 1000,
                         dry_run: bool = False) -> list[str]:
    """The sweep as beat runs it: the backlog's age and the messages in flight read from the broker, stuck
    events sent again with the attempt they were on."""
    from workers.app import enqueue
    from workers.queues import held_event_ids, queue_states

    with celery_app.connection_for_read() as connection:
        channel = connection.default_channel
        ages = [q.oldest_age_s or 0.0 for q in queue_states(channel.client)]
        held = held_event_ids(channel.client, channel.unacked_key)
    return requeue_stuck(store, lambda e, attempt: enqueue(celery_app, e.model_dump(mode="json"), e.priority,
                                                           attempt=attempt),
                         stuck_after_s, limit, dry_run=dry_run, backlog_age_s=max(ages, default=0.0), held=held)
