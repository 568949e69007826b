"""Re-scan runs in the database: selection by keyset cursor, chunk bookkeeping, progress and the report.

A chunk's items, queued events and cursor are committed before the chunk is sent, so every selected image has
its item before a worker screens it; events a crash left unsent are sent by the sweeper (workers/requeue.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, sessionmaker

from db.events import event_from_row
from db.schema import Event, Image, RescanItem, RescanRun, ReviewItem, Verdict
from db.states import TERMINAL, EventStatus
from db.timestamps import aware

log = logging.getLogger(__name__)

ACTIVE_STATES = ("running", "draining")
RUN_STATES = ("running", "paused", "draining", "finished", "cancelled")


class RescanError(Exception):
    """A run request that cannot be done: unknown run, a state change that makes no sense."""


@dataclass(frozen=True)
class RescanSelector:
    """Which stored images a run re-screens. Images that already have a verdict from the run's model version
    are never selected: history holds one verdict per (image, model version)."""

    from_model_version: str | None = None  # only images whose latest verdict is from this version
    older_than_days: float | None = None  # only images whose latest verdict is older than this
    source: str | None = None
    uploaded_from: datetime | None = None
    uploaded_to: datetime | None = None
    verdicts: tuple[str, ...] = ()  # latest verdict (fake|real|uncertain) or status (no_face|invalid_input)
    reopen_decided: bool = False  # a decided review item may be reopened by a new fake/uncertain verdict

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, (), False)}
        for key in ("uploaded_from", "uploaded_to"):
            if key in out:
                out[key] = out[key].isoformat()
        if "verdicts" in out:
            out["verdicts"] = list(out["verdicts"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RescanSelector:
        values = dict(data)
        for key in ("uploaded_from", "uploaded_to"):
            if isinstance(values.get(key), str):
                values[key] = datetime.fromisoformat(values[key])
        values["verdicts"] = tuple(values.get("verdicts", ()))
        return cls(**values)


@dataclass(frozen=True)
class ChunkRow:
    image_id: int
    sha256: str
    uri: str
    source: str
    old_verdict_id: int | None
    old_verdict: str | None

    def event_id(self, run_id: int) -> str:
        return f"rescan-r{run_id}-i{self.image_id}"


@dataclass(frozen=True)
class RunView:
    id: int
    state: str
    model_version: str
    selector: dict[str, Any]
    cursor: int
    selected: int
    enqueued: int
    rate_per_s: float
    chunk_size: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    last_tick_at: datetime | None
    report: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at", "last_tick_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


class RescanStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # -- selection -----------------------------------------------------------------------------------------
    def _selection(self, selector: RescanSelector, model_version: str, now: datetime):  # noqa: ANN202
        """(image, latest verdict) rows the selector picks, as a SELECT still open for cursor and limit."""
        latest_id = (select(func.max(Verdict.id)).where(Verdict.image_id == Image.id)
                     .correlate(Image).scalar_subquery())
        current = aliased(Verdict)
        label = func.coalesce(Verdict.verdict, Verdict.status)
        stmt = (select(Image.id, Image.sha256, Image.uri, Image.source, Verdict.id, label)
                .join(Verdict, Verdict.id == latest_id)
                .where(~exists().where(current.image_id == Image.id, current.model_version == model_version)))
        if selector.from_model_version:
            stmt = stmt.where(Verdict.model_version == selector.from_model_version)
        if selector.older_than_days is not None:
            stmt = stmt.where(Verdict.created_at < now - timedelta(days=selector.older_than_days))
        if selector.source:
            stmt = stmt.where(Image.source == selector.source)
        uploaded = func.coalesce(Image.uploaded_at, Image.first_seen_at)
        if selector.uploaded_from:
            stmt = stmt.where(uploaded >= selector.uploaded_from)
        if selector.uploaded_to:
            stmt = stmt.where(uploaded < selector.uploaded_to)
        if selector.verdicts:
            stmt = stmt.where(label.in_(selector.verdicts))
        return stmt

    def count(self, selector: RescanSelector, model_version: str) -> int:
        stmt = self._selection(selector, model_version, datetime.now(UTC)).subquery()
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(stmt)) or 0)

    def next_chunk(self, run_id: int, limit: int) -> list[ChunkRow]:
        with self.sessions() as session:
            run = _get(session, run_id)
            return self.chunk(session, run, limit)

    def chunk(self, session: Session, run: RescanRun, limit: int) -> list[ChunkRow]:
        selector = RescanSelector.from_dict(run.selector)
        stmt = (self._selection(selector, run.model_version, aware(run.created_at) or datetime.now(UTC))
                .where(Image.id > run.cursor).order_by(Image.id).limit(limit))
        return [ChunkRow(*row) for row in session.execute(stmt)]

    # -- lifecycle -----------------------------------------------------------------------------------------
    def create(self, selector: RescanSelector, model_version: str, rate_per_s: float, chunk_size: int,
               created_by: str = "cli") -> RunView:
        if rate_per_s <= 0 or chunk_size < 1:
            raise RescanError("rate must be > 0 and chunk size >= 1")
        now = datetime.now(UTC)
        selected = self.count(selector, model_version)
        with self.sessions.begin() as session:
            run = RescanRun(selector=selector.to_dict(), state="running", model_version=model_version, cursor=0,
                            selected=selected, enqueued=0, rate_per_s=rate_per_s, chunk_size=chunk_size,
                            reopen_decided=selector.reopen_decided, created_by=created_by, created_at=now,
                            started_at=now, report={})
            session.add(run)
            session.flush()
            log.info("rescan run created run_id=%d selected=%d model_version=%s", run.id, selected, model_version)
            return _view(run)

    def get(self, run_id: int) -> RunView:
        with self.sessions() as session:
            return _view(_get(session, run_id))

    def list(self, limit: int = 50) -> list[RunView]:
        with self.sessions() as session:
            rows = session.scalars(select(RescanRun).order_by(RescanRun.id.desc()).limit(limit)).all()
            return [_view(r) for r in rows]

    def active_runs(self, include_paused: bool = False) -> list[int]:
        states = (*ACTIVE_STATES, "paused") if include_paused else ACTIVE_STATES
        with self.sessions() as session:
            return list(session.scalars(select(RescanRun.id).where(RescanRun.state.in_(states))
                                        .order_by(RescanRun.id)))

    def set_state(self, run_id: int, action: str) -> RunView:
        """pause | resume | cancel."""
        allowed = {"pause": (("running", "draining"), "paused"), "resume": (("paused",), "running"),
                   "cancel": (("running", "paused", "draining"), "cancelled")}
        if action not in allowed:
            raise RescanError(f"unknown action {action!r}")
        sources, target = allowed[action]
        with self.sessions.begin() as session:
            run = _get(session, run_id, lock=True)
            if run.state not in sources:
                raise RescanError(f"run {run_id} is {run.state}: cannot {action} it")
            run.state = target
            if target == "cancelled":
                run.finished_at = datetime.now(UTC)
            log.info("rescan run %s run_id=%d", target, run_id)
            return _view(run)

    def lock_for_tick(self, session: Session, run_id: int) -> RescanRun | None:
        """The run, locked for this tick; None if another driver holds it or it is not running."""
        stmt = select(RescanRun).where(RescanRun.id == run_id)
        if self.engine.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        run = session.scalars(stmt).first()
        return run if run is not None and run.state in ACTIVE_STATES else None

    def record_chunk(self, session: Session, run: RescanRun, rows: list[ChunkRow], now: datetime) -> None:
        """A chunk's items and queued events, and the cursor past it, in the tick's transaction (before sending)."""
        if not rows:
            return
        items = [{"run_id": run.id, "image_id": r.image_id, "event_id": r.event_id(run.id),
                  "old_verdict_id": r.old_verdict_id, "old_verdict": r.old_verdict, "enqueued_at": now} for r in rows]
        session.execute(self._insert(RescanItem).values(items).on_conflict_do_nothing(index_elements=["event_id"]))
        events = [{"event_id": r.event_id(run.id), "image_uri": r.uri, "source": r.source, "priority": "rescan",
                   "expected_sha256": r.sha256, "uploaded_at": now, "received_at": now, "status": EventStatus.QUEUED,
                   "attempts": 0} for r in rows]
        session.execute(self._insert(Event).values(events).on_conflict_do_nothing(index_elements=["event_id"]))
        run.cursor = max(r.image_id for r in rows)
        run.enqueued = run.enqueued + len(rows)

    # -- progress and report ---------------------------------------------------------------------------------
    def progress(self, run_id: int) -> dict[str, int]:
        with self.sessions() as session:
            return self._progress(session, run_id)

    def _progress(self, session: Session, run_id: int) -> dict[str, int]:
        rows = session.execute(
            select(Event.status, func.count()).select_from(RescanItem)
            .join(Event, Event.event_id == RescanItem.event_id).where(RescanItem.run_id == run_id)
            .group_by(Event.status)).all()
        by_status = {status: int(n) for status, n in rows}
        done = sum(n for s, n in by_status.items() if s in TERMINAL)
        return {"enqueued": sum(by_status.values()), "done": done, "failed": by_status.get(EventStatus.FAILED, 0)}

    def take_over_unsent(self, run_id: int, before: datetime, now: datetime) -> list[Any]:
        """Events of this run recorded before `before` and still `queued`: a driver that died between
        recording a chunk and sending it left them. Marked requeued at `now`; the caller sends them again
        (a message sent twice is screened once)."""
        since = func.coalesce(Event.requeued_at, Event.received_at)
        with self.sessions.begin() as session:
            rows = session.scalars(select(Event).join(RescanItem, RescanItem.event_id == Event.event_id)
                                   .where(RescanItem.run_id == run_id, Event.status == EventStatus.QUEUED, since < before)
                                   .order_by(Event.received_at).limit(10_000)).all()
            for row in rows:
                row.requeued_at = now
            return [event_from_row(row, run_id) for row in rows]

    def finish_if_done(self, session: Session, run: RescanRun, now: datetime) -> bool:
        """A draining run whose every item is terminal gets its report and ends `finished`."""
        if run.state != "draining":
            return False
        progress = self._progress(session, run.id)
        if progress["done"] < progress["enqueued"]:  # items, not run.enqueued: an erased image takes its item along
            return False
        run.report = self._report(session, run, now)
        run.state, run.finished_at = "finished", now
        log.info("rescan run finished run_id=%d images=%d changed=%d", run.id, run.enqueued, run.report["changed"])
        return True

    def changes(self, run_id: int, only_changed: bool = True) -> list[dict[str, Any]]:
        """The run's images, old -> new verdict (only those that changed, by default): the CSV's rows."""
        new = aliased(Verdict)
        old = aliased(Verdict)
        # the image's newest review item, whichever verdict opened it: where a moderator looks at it now
        newest_item = (select(func.max(ReviewItem.id)).where(ReviewItem.image_id == RescanItem.image_id)
                       .correlate(RescanItem).scalar_subquery())
        stmt = (select(RescanItem.image_id, Image.sha256, Image.source, RescanItem.old_verdict,
                       old.fake_probability, func.coalesce(new.verdict, new.status, Event.status),
                       new.fake_probability, new.model_version, Event.event_id, newest_item)
                .join(Image, Image.id == RescanItem.image_id)
                .join(Event, Event.event_id == RescanItem.event_id)
                .outerjoin(old, old.id == RescanItem.old_verdict_id)
                .outerjoin(new, new.id == Event.verdict_id)
                .where(RescanItem.run_id == run_id).order_by(RescanItem.image_id))
        out = []
        with self.sessions() as session:
            for row in session.execute(stmt):
                (image_id, sha256, source, old_label, old_p, new_label, new_p, version, event_id, review_id) = row
                if only_changed and old_label == new_label:
                    continue
                out.append({"image_id": image_id, "sha256": sha256, "source": source, "old_verdict": old_label,
                            "old_fake_probability": old_p, "new_verdict": new_label, "new_fake_probability": new_p,
                            "model_version": version, "event_id": event_id, "review_item_id": review_id})
        return out

    def _report(self, session: Session, run: RescanRun, now: datetime) -> dict[str, Any]:
        new = aliased(Verdict)
        new_label = func.coalesce(new.verdict, new.status, Event.status)
        rows = session.execute(
            select(RescanItem.old_verdict, new_label, func.count()).select_from(RescanItem)
            .join(Event, Event.event_id == RescanItem.event_id)
            .outerjoin(new, new.id == Event.verdict_id)
            .where(RescanItem.run_id == run.id).group_by(RescanItem.old_verdict, new_label)).all()
        matrix: dict[str, dict[str, int]] = {}
        for old_label, new_value, n in rows:
            matrix.setdefault(str(old_label), {})[str(new_value)] = int(n)
        total = sum(sum(v.values()) for v in matrix.values())
        changed = sum(n for o, v in matrix.items() for nl, n in v.items() if o != nl)
        first, last = session.execute(
            select(func.min(RescanItem.enqueued_at), func.max(Event.finished_at)).select_from(RescanItem)
            .join(Event, Event.event_id == RescanItem.event_id).where(RescanItem.run_id == run.id)).one()
        seconds = (aware(last) - aware(first)).total_seconds() if first and last else 0.0
        return {"images": total, "changed": changed, "transitions": matrix, "seconds": round(seconds, 3),
                "images_per_s": round(total / seconds, 3) if seconds > 0 else None}

    def measured_throughput(self) -> float | None:
        """Images/s of the newest finished run that measured one (for --dry-run estimates)."""
        with self.sessions() as session:
            for report in session.scalars(select(RescanRun.report).where(RescanRun.state == "finished")
                                          .order_by(RescanRun.id.desc()).limit(20)):
                if report and report.get("images_per_s"):
                    return float(report["images_per_s"])
        return None


def _get(session: Session, run_id: int, lock: bool = False) -> RescanRun:
    stmt = select(RescanRun).where(RescanRun.id == run_id)
    if lock:
        stmt = stmt.with_for_update()
    run = session.scalars(stmt).first()
    if run is None:
        raise RescanError(f"no re-scan run {run_id}")
    return run


def _view(run: RescanRun) -> RunView:
    return RunView(run.id, run.state, run.model_version, dict(run.selector or {}), run.cursor, run.selected,
                   run.enqueued, run.rate_per_s, run.chunk_size, aware(run.created_at), aware(run.started_at),
                   aware(run.finished_at), aware(run.last_tick_at), dict(run.report or {}))
