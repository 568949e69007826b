"""The stuck-event sweeper: events recorded as `queued` long ago that no worker has finished are put on their
queue again.

How an event gets stuck: the API records it and dies before enqueueing it; a Redis without persistence
restarts and loses its queues; an operator flushes a queue. Requeueing is safe because screening is
idempotent: if the original message is still somewhere, one of the two deliveries finds the event finished
(or the verdict of its image and model) and writes nothing new. `stuck_after_s` should exceed the longest
normal wait (a backlog plus the retry backoff); an event is requeued again only after another such period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from db.store import Store
from pipeline.events import UploadEvent

log = logging.getLogger(__name__)


def requeue_stuck(store: Store, send: Callable[[UploadEvent], None], stuck_after_s: float, limit: int = 1000,
                  now: datetime | None = None, dry_run: bool = False) -> list[str]:
    now = now or datetime.now(UTC)
    events = store.stuck_events(now - timedelta(seconds=stuck_after_s), limit)
    if dry_run or not events:
        return [e.event_id for e in events]
    sent: list[str] = []
    try:
        for event in events:
            send(event)
            sent.append(event.event_id)
    finally:
        if sent:
            store.mark_requeued(sent, now)
            log.warning("requeued stuck events count=%d first=%s", len(sent), sent[0])
    return sent
