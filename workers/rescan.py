"""The re-scan driver: each tick moves every running run forward by what its rate allows.

Ticks come from beat (`deepscreen.rescan_tick` on the control queue, every DEEPSCREEN_RESCAN_TICK_S) and from
`deepscreen rescan follow`. A run's row is locked for the tick (FOR UPDATE SKIP LOCKED on Postgres), so two
drivers never enqueue the same chunk at once; if they did, event ids repeat and the worker's idempotency
makes the second delivery a no-op.

The run enqueues at most `rate_per_s` images per second of wall time (unused time is not banked beyond two
ticks), and nothing while the re-scan queue already holds `max_queued` messages, so a paused or cancelled run
stops within one queue's worth, and fresh uploads (polled first by every worker) keep their latency.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db.model_registry import ModelRegistry
from db.rescan_store import ChunkRow, RescanSelector, RescanStore, RunView
from pipeline.events import UploadEvent
from pipeline.model import read_metadata

log = logging.getLogger(__name__)

Send = Callable[[list[UploadEvent]], None]


@dataclass(frozen=True)
class DriverConfig:
    tick_s: float = 5.0
    max_queued: int = 2000  # re-scan messages allowed in the queue before a run waits


class RescanDriver:
    def __init__(self, store: RescanStore, send: Send, queue_depth: Callable[[], int] | None = None,
                 config: DriverConfig | None = None) -> None:
        self.store = store
        self.send = send
        self.queue_depth = queue_depth
        self.config = config or DriverConfig()

    def tick(self, now: datetime | None = None) -> dict[int, int]:
        """Advance every running or draining run once; returns images enqueued per run."""
        now = now or datetime.now(UTC)
        return {run_id: self.tick_run(run_id, now) for run_id in self.store.active_runs()}

    def tick_run(self, run_id: int, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        with self.store.sessions.begin() as session:
            run = self.store.lock_for_tick(session, run_id)
            if run is None:
                return 0
            if run.state == "draining":
                self.store.finish_if_done(session, run, now)
                return 0
            last = run.last_tick_at.replace(tzinfo=UTC) if run.last_tick_at and not run.last_tick_at.tzinfo \
                else run.last_tick_at
            elapsed = (now - last).total_seconds() if last else self.config.tick_s
            budget = min(run.chunk_size, int(run.rate_per_s * min(max(elapsed, 0.0), 2 * self.config.tick_s)))
            if self.queue_depth is not None:
                budget = min(budget, self.config.max_queued - self.queue_depth())
            if budget < 1:
                return 0  # last_tick_at stays: the time not used is credited to the next tick
            rows = self.store.chunk(session, run, budget)
            run.last_tick_at = now
            if not rows:
                run.state = "draining"
                self.store.finish_if_done(session, run, now)
                return 0
            self.send([rescan_event(run.id, row, now) for row in rows])  # enqueued first, then the cursor moves
            self.store.record_chunk(session, run, rows, now)
            log.info("rescan chunk run_id=%d images=%d cursor=%d", run.id, len(rows), run.cursor)
            return len(rows)


def rescan_event(run_id: int, row: ChunkRow, now: datetime) -> UploadEvent:
    return UploadEvent(event_id=row.event_id(run_id), image_uri=row.uri, sha256=row.sha256, source=row.source,
                       uploaded_at=now, priority="rescan", rescan_run=run_id)


def estimate_seconds(count: int, rate_per_s: float, measured_per_s: float | None) -> float:
    """The run cannot go faster than its rate limit nor than the workers screened the last run."""
    speed = min(rate_per_s, measured_per_s) if measured_per_s else rate_per_s
    return count / speed if speed > 0 else float("inf")



def target_version(registry: ModelRegistry, model_dir: Path) -> str:
    """The version a new run re-screens with: the registry's active one, else the configured model's."""
    roles = registry.roles()
    return roles.active.version if roles.active else read_metadata(model_dir).version


def start_nightly(store: RescanStore, registry: ModelRegistry, model_dir: Path, rate_per_s: float,
                  chunk_size: int) -> RunView | None:
    """The scheduled run: every image without a verdict from the active model. Skipped while a run is going
    (a slow night must not stack runs) and when there is nothing to do."""
    if store.active_runs():
        log.info("nightly rescan skipped: a run is still going")
        return None
    version = target_version(registry, model_dir)
    selector = RescanSelector()
    if store.count(selector, version) == 0:
        log.info("nightly rescan: every image already has a verdict from %s", version)
        return None
    return store.create(selector, version, rate_per_s, chunk_size, created_by="beat")


def celery_driver(celery_app: Any, store: RescanStore, tick_s: float, max_queued: int) -> RescanDriver:
    """A driver that enqueues on the Celery app's rescan queue and watches that queue's depth."""
    from workers.app import RESCAN_QUEUE, enqueue
    from workers.queues import queue_states

    def send(events: list[UploadEvent]) -> None:
        for event in events:
            enqueue(celery_app, event.model_dump(mode="json"), "rescan")

    def depth() -> int:
        with celery_app.connection_for_read() as connection:
            return queue_states(connection.default_channel.client, [RESCAN_QUEUE])[0].depth

    return RescanDriver(store, send, depth, DriverConfig(tick_s, max_queued))
