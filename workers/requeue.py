"""The stuck-event sweeper: events recorded as `queued` long ago that no worker has finished are put on their
queue again.

How an event gets stuck: the API records it and dies before enqueueing it; a Redis without persistence
restarts and loses its queues; an operator flushes a queue. Requeueing is safe because screening is
idempotent: if the original message is still somewhere, one of the two deliveries finds the event finished
(or the verdict of its image and model) and writes nothing new. `stuck_after_s` should exceed the longest
normal wait and the broker's visibility timeout (a reserved message comes back by itself after that); the
sweeper also waits longer than the oldest message on the queues, and an event is requeued again only after
another such period. The message carries the attempt the event was on, so retries keep their budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from db.store import Store
from pipeline.events import UploadEvent

log = logging.getLogger(__name__)


def requeue_stuck(store: Store, send: Callable[[UploadEvent, int], None], stuck_after_s: float, limit: int = 1000,
                  now: datetime | None = None, dry_run: bool = False, backlog_age_s: float = 0.0) -> list[str]:
    """Send (event, attempt) again for events queued longer than `stuck_after_s`, or than the oldest message
    still waiting on a queue (`backlog_age_s`): during a backlog, a queued event is waiting, not lost."""
    now = now or datetime.now(UTC)
    waited = max(stuck_after_s, backlog_age_s + 60.0 if backlog_age_s else 0.0)
    events = store.stuck_events(now - timedelta(seconds=waited), limit)
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
