"""The re-scan driver: each tick moves every running run forward by what its rate allows (docs/rescans.md).

A run's row is locked for the tick (FOR UPDATE SKIP LOCKED on Postgres), so two drivers never enqueue the same
chunk at once; if they did, the repeated event ids would make the second delivery a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from db.model_registry import ModelRegistry
from db.rescan_store import ChunkRow, RescanSelector, RescanStore, RunView
from db.timestamps import aware
from pipeline.csv_cells import SafeDictWriter
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
                 config: DriverConfig | None = None, active_version: Callable[[], str | None] | None = None) -> None:
        self.store = store
        self.send = send
        self.queue_depth = queue_depth
        self.config = config or DriverConfig()
        self.active_version = active_version  # a run whose model is no longer active is paused, not mixed

    def tick(self, now: datetime | None = None) -> dict[int, int]:
        """Advance every running or draining run once; returns images enqueued per run."""
        now = now or datetime.now(UTC)
        return {run_id: self.tick_run(run_id, now) for run_id in self.store.active_runs()}

    def tick_run(self, run_id: int, now: datetime | None = None) -> int:
        """Record the next chunk (items, queued events, cursor) and commit; then send it. A send that fails
        leaves recorded `queued` events, which the stuck-event sweeper sends later: nothing is skipped."""
        now = now or datetime.now(UTC)
        with self.store.sessions.begin() as session:
            run = self.store.lock_for_tick(session, run_id)
            if run is None:
                return 0
            if run.state == "draining":
                self.store.finish_if_done(session, run, now)
                return 0
            active = self.active_version() if self.active_version is not None else None
            if active is not None and active != run.model_version:
                run.state = "paused"
                log.warning("rescan run paused run_id=%d: its model %s is no longer the active one (%s); "
                            "resume it after activating it again, or cancel it", run.id, run.model_version, active)
                return 0
            credit_s = self._credit(run.last_tick_at, run.rate_per_s, now)
            budget = min(run.chunk_size, int(run.rate_per_s * credit_s))
            if self.queue_depth is not None:
                budget = min(budget, self.config.max_queued - self.queue_depth())
            if budget < 1:
                if run.last_tick_at is None:  # start the clock, so a slow rate accumulates to a whole image
                    run.last_tick_at = now - timedelta(seconds=credit_s)
                return 0  # otherwise last_tick_at stays: the time not used is credited to a later tick
            rows = self.store.chunk(session, run, budget)
            if not rows:
                run.last_tick_at = now
                run.state = "draining"
                self.store.finish_if_done(session, run, now)
                return 0
            self.store.record_chunk(session, run, rows, now)
            # what was not spent (a fraction of an image, or a short chunk) carries over to the next tick
            run.last_tick_at = now - timedelta(seconds=max(0.0, credit_s - len(rows) / run.rate_per_s))
            events = [rescan_event(run.id, row, now) for row in rows]
            log.info("rescan chunk run_id=%d images=%d cursor=%d", run.id, len(rows), run.cursor)
        self.send(events)
        return len(events)

    def _credit(self, last: datetime | None, rate_per_s: float, now: datetime) -> float:
        """Seconds of rate this tick may spend: since the last tick, capped at two ticks (or one image)."""
        if last is None:
            return self.config.tick_s
        last = aware(last)
        cap = max(2 * self.config.tick_s, 1.0 / rate_per_s)
        return min(max((now - last).total_seconds(), 0.0), cap)


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
    if store.active_runs(include_paused=True):
        log.info("nightly rescan skipped: a run is still going (or paused)")
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

    registry = ModelRegistry(store.engine)

    def active_version() -> str | None:
        active = registry.roles().active
        return active.version if active else None

    return RescanDriver(store, send, depth, DriverConfig(tick_s, max_queued), active_version)


CHANGE_FIELDS = ["image_id", "sha256", "source", "old_verdict", "old_fake_probability", "new_verdict",
                 "new_fake_probability", "model_version", "event_id", "review_item_id"]


def write_changes_csv(handle: Any, rows: list[dict[str, Any]]) -> None:
    """A run's changed images as CSV; text a spreadsheet would run as a formula is quoted (pipeline.csv_cells)."""
    writer = SafeDictWriter(handle, fieldnames=CHANGE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
