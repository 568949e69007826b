"""Re-scan runs on real Postgres: selectors, keyset paging, crash-resume without gaps or duplicates, the rate
limit and backlog cap, pause/resume/cancel, the transition report and the review semantics of new verdicts.

Verdicts are written through the real Store.save with hand-built screening results, so each test states
exactly which image had which verdict from which model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from db.model_registry import ModelRegistry, RegistryError
from db.rescan_store import RescanError, RescanSelector, RescanStore
from db.review_store import Actor, ReviewStore
from db.schema import AuditEntry, Event, Image, RescanItem, ReviewItem, Verdict
from db.store import BlobKeys, Store
from devservices import fresh_database
from pipeline.events import UploadEvent
from pipeline.screen import FaceVerdict
from pipeline.screen import Verdict as ScreenVerdict
from workers.rescan import DriverConfig, RescanDriver

pytestmark = pytest.mark.services

OLD, NEW = "model-a", "model-b"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture()
def db() -> Iterator[Store]:
    with fresh_database("deepscreen_rescan") as url:
        store = Store.from_url(url)
        yield store
        store.engine.dispose()


def _sha(n: int) -> str:
    return hashlib.sha256(f"image-{n}".encode()).hexdigest()


def _verdict(n: int, version: str, label: str | None, p: float | None = None, status: str = "scored") -> ScreenVerdict:
    p = {"fake": 0.95, "uncertain": 0.6, "real": 0.1}.get(label or "", None) if p is None else p
    faces = (FaceVerdict(index=0, box=(10.0, 10.0, 90.0, 90.0), detection_probability=0.99, fake_probability=p,
                         verdict=label),) if label else ()
    return ScreenVerdict(key=str(n), status=status, model_version=version, sha256=_sha(n), size_bytes=100, width=100,
                         height=100, verdict=label, fake_probability=p, faces=faces)


def _screen(store: Store, n: int, version: str, label: str | None, *, source: str = "tenant-a",
            uploaded_at: datetime = NOW, event_id: str | None = None, rescan_run: int | None = None,
            status: str = "scored"):  # noqa: ANN202
    event = UploadEvent(event_id=event_id or f"up-{n}-{version}", image_uri=f"s3://uploads/img-{n}.jpg",
                        source=source, uploaded_at=uploaded_at, priority="rescan" if rescan_run else "upload",
                        rescan_run=rescan_run)
    return store.save(event, _verdict(n, version, label, status=status), BlobKeys())


class Recorder:
    """The driver's `send`: what would have gone onto the rescan queue, in order."""

    def __init__(self) -> None:
        self.events: list[UploadEvent] = []
        self.fail_next = False

    def __call__(self, events: list[UploadEvent]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker went away")
        self.events.extend(events)


def test_selectors_pick_exactly_the_images_they_name(db: Store) -> None:
    rescans = RescanStore(db.engine)
    _screen(db, 1, OLD, "fake", source="tenant-a", uploaded_at=NOW - timedelta(days=40))
    _screen(db, 2, OLD, "uncertain", source="tenant-a", uploaded_at=NOW - timedelta(days=10))
    _screen(db, 3, OLD, "real", source="tenant-b", uploaded_at=NOW - timedelta(days=10))
    _screen(db, 4, "model-0", "real", source="tenant-b", uploaded_at=NOW - timedelta(days=2))
    _screen(db, 5, OLD, None, source="tenant-a", status="no_face")
    _screen(db, 6, NEW, "fake", source="tenant-a")  # already has a NEW verdict: never selected
    _screen(db, 7, OLD, "real")
    _screen(db, 7, NEW, "real", event_id="up-7-b")  # latest verdict is NEW's
    with db.sessions.begin() as session:  # image 1's verdict is 30 days old
        image_1 = session.scalar(select(Image.id).where(Image.sha256 == _sha(1)))
        session.execute(update(Verdict).where(Verdict.image_id == image_1).values(created_at=datetime.now(UTC) - timedelta(days=30)))

    def picked(**kw: object) -> set[int]:
        selector = RescanSelector(**kw)  # type: ignore[arg-type]
        run = rescans.create(selector, NEW, rate_per_s=1000, chunk_size=100)
        rows = rescans.next_chunk(run.id, 100)
        rescans.set_state(run.id, "cancel")
        assert rescans.count(selector, NEW) == len(rows) == run.selected
        by_sha = {_sha(n): n for n in range(1, 8)}
        return {by_sha[r.sha256] for r in rows}

    assert picked() == {1, 2, 3, 4, 5}
    assert picked(from_model_version="model-0") == {4}
    assert picked(from_model_version=OLD) == {1, 2, 3, 5}
    assert picked(source="tenant-b") == {3, 4}
    assert picked(verdicts=("uncertain",)) == {2}
    assert picked(verdicts=("fake", "uncertain")) == {1, 2}
    assert picked(verdicts=("no_face",)) == {5}
    assert picked(older_than_days=7) == {1}
    assert picked(uploaded_from=NOW - timedelta(days=15), uploaded_to=NOW - timedelta(days=1)) == {2, 3, 4}
    assert picked(source="tenant-a", verdicts=("fake", "real")) == {1}


def test_keyset_paging_records_before_sending_and_a_failed_send_is_swept_not_skipped(db: Store) -> None:
    from workers.requeue import requeue_stuck

    rescans = RescanStore(db.engine)
    for n in range(1, 38):
        _screen(db, n, OLD, "real")
    run = rescans.create(RescanSelector(), NEW, rate_per_s=1000, chunk_size=5)
    sent = Recorder()
    driver = RescanDriver(rescans, sent, config=DriverConfig(tick_s=1.0))
    t = NOW
    failed: list[str] = []
    for tick in range(12):
        t += timedelta(seconds=1)
        if tick in (2, 5):  # the broker fails (or the driver dies) after the chunk was recorded
            sent.fail_next = True
            before = set(e.event_id for e in sent.events)
            with pytest.raises(ConnectionError):
                driver.tick_run(run.id, t)
            with db.sessions() as session:
                recorded = set(session.scalars(select(RescanItem.event_id).where(RescanItem.run_id == run.id)))
            failed += sorted(recorded - before - set(failed) - {e.event_id for e in sent.events})
            driver = RescanDriver(rescans, sent, config=DriverConfig(tick_s=1.0))  # a fresh driver resumes
            continue
        driver.tick_run(run.id, t)
    ids = [e.event_id for e in sent.events]
    assert len(ids) == len(set(ids)) == 27 and len(failed) == 10, "each chunk sent once; two never sent"
    with db.sessions() as session:
        items = session.scalars(select(RescanItem.event_id).where(RescanItem.run_id == run.id)).all()
        statuses = dict(session.execute(select(Event.event_id, Event.status).where(Event.event_id.in_(failed))).all())
    assert sorted(items) == sorted(set(ids) | set(failed)), "one rescan item per image, none missing, none twice"
    assert set(statuses.values()) == {"queued"}, "the unsent chunks wait as queued events"
    by_sha = {_sha(n): n for n in range(1, 38)}
    for event in list(sent.events):  # a worker screens what was sent
        db.save(event, _verdict(by_sha[event.sha256 or ""], NEW, "real"), BlobKeys())
    # a driver that takes the run over (`rescan follow`) finds exactly the unsent events, once
    later = NOW + timedelta(hours=1)
    taken = rescans.take_over_unsent(run.id, before=later, now=later)
    assert sorted(e.event_id for e in taken) == sorted(failed) and {e.rescan_run for e in taken} == {run.id}
    assert rescans.take_over_unsent(run.id, before=later, now=later) == [], "marked requeued: not taken twice"
    with db.sessions.begin() as session:  # undo the mark, so the sweeper below sees them as before
        session.execute(update(Event).where(Event.event_id.in_(failed)).values(requeued_at=None))
    swept = requeue_stuck(db, lambda e, attempt: sent([e]), stuck_after_s=60, now=NOW + timedelta(days=1))
    assert sorted(swept) == sorted(failed) and sent.events[-1].rescan_run == run.id
    view = rescans.get(run.id)
    assert view.enqueued == 37 and view.state == "draining"
    assert len({int(e.split("-i")[1]) for e in items}) == 37


def test_an_event_erased_during_a_run_counts_as_done_and_the_run_finishes(db: Store) -> None:
    rescans = RescanStore(db.engine)
    for n in range(1, 4):
        _screen(db, n, OLD, "real")
    run = rescans.create(RescanSelector(), NEW, rate_per_s=1000, chunk_size=5)
    sent = Recorder()
    driver = RescanDriver(rescans, sent, config=DriverConfig(tick_s=1.0))
    driver.tick_run(run.id, NOW + timedelta(seconds=1))
    assert len(sent.events) == 3
    by_sha = {_sha(n): n for n in range(1, 4)}
    for event in sent.events[:2]:
        db.save(event, _verdict(by_sha[event.sha256 or ""], NEW, "real"), BlobKeys())
    db.mark_erased([(sent.events[2], 1)])  # its bytes were erased after the run sent it
    assert rescans.progress(run.id) == {"enqueued": 3, "done": 3, "failed": 0}
    driver.tick_run(run.id, NOW + timedelta(seconds=2))
    assert rescans.get(run.id).state == "finished"


def _events_for(run_id: int, rows):  # noqa: ANN001, ANN202
    from workers.rescan import rescan_event

    return [rescan_event(run_id, r, NOW) for r in rows]


def test_rate_limit_backlog_cap_pause_resume_cancel(db: Store) -> None:
    rescans = RescanStore(db.engine)
    for n in range(1, 151):
        _screen(db, n, OLD, "real")
    run = rescans.create(RescanSelector(), NEW, rate_per_s=4.0, chunk_size=50)
    sent = Recorder()
    depth = {"n": 0}
    driver = RescanDriver(rescans, sent, queue_depth=lambda: depth["n"], config=DriverConfig(tick_s=5.0, max_queued=45))
    assert driver.tick_run(run.id, NOW) == 20  # first tick: rate x tick interval
    assert driver.tick_run(run.id, NOW + timedelta(seconds=2)) == 8  # 2 s later: 8
    assert driver.tick_run(run.id, NOW + timedelta(seconds=600)) == 40  # idle time is not banked beyond two ticks
    depth["n"] = 40
    assert driver.tick_run(run.id, NOW + timedelta(seconds=610)) == 5  # the queue holds 40 of 45 allowed
    depth["n"] = 45
    assert driver.tick_run(run.id, NOW + timedelta(seconds=620)) == 0
    depth["n"] = 0
    rescans.set_state(run.id, "pause")
    assert driver.tick(NOW + timedelta(seconds=630)) == {}
    with pytest.raises(RescanError):
        rescans.set_state(run.id, "pause")
    rescans.set_state(run.id, "resume")
    assert driver.tick_run(run.id, NOW + timedelta(seconds=640)) == 40
    rescans.set_state(run.id, "cancel")
    assert driver.tick(NOW + timedelta(seconds=650)) == {}
    assert len(sent.events) == 20 + 8 + 40 + 5 + 40 == rescans.get(run.id).enqueued
    assert all(e.priority == "rescan" and e.rescan_run == run.id for e in sent.events)


def test_slow_rates_carry_fractions_and_a_model_switch_pauses_the_run(db: Store) -> None:
    rescans = RescanStore(db.engine)
    for n in range(1, 6):
        _screen(db, n, OLD, "real")
    run = rescans.create(RescanSelector(), NEW, rate_per_s=0.05, chunk_size=10)  # one image per 20 s
    sent = Recorder()
    active = {"version": NEW}
    driver = RescanDriver(rescans, sent, config=DriverConfig(tick_s=5.0), active_version=lambda: active["version"])
    got = [driver.tick_run(run.id, NOW + timedelta(seconds=t)) for t in range(0, 100, 5)]
    assert sum(got) == 5 and max(got) == 1, f"0.05/s, first tick credited one tick (5 s): 100 s = 5 images ({got})"
    active["version"] = "model-c"
    assert driver.tick_run(run.id, NOW + timedelta(seconds=200)) == 0
    assert rescans.get(run.id).state == "paused", "another model became active: the run pauses, not mixes"


def test_changes_csv_neutralises_spreadsheet_formulas() -> None:
    import csv
    import io

    from workers.rescan import write_changes_csv

    buffer = io.StringIO()
    write_changes_csv(buffer, [{"image_id": 1, "sha256": "ab", "source": "=HYPERLINK(\"http://x\")",
                                "old_verdict": "fake", "old_fake_probability": 0.9, "new_verdict": "real",
                                "new_fake_probability": 0.1, "model_version": "m", "event_id": "@e",
                                "review_item_id": None}])
    row = next(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert row["source"].startswith("'=") and row["event_id"] == "'@e" and row["sha256"] == "ab"


def test_transition_report_and_review_semantics(db: Store) -> None:
    """Hand-built: 8 images with OLD verdicts; NEW re-screens them to known labels."""
    rescans = RescanStore(db.engine)
    reviews = ReviewStore(db.engine)
    mod = Actor("mod-1", "moderator")
    old = {1: "fake", 2: "fake", 3: "uncertain", 4: "real", 5: "real", 6: "fake", 7: "real", 8: "uncertain"}
    new = {1: "fake", 2: "real", 3: "real", 4: "fake", 5: "real", 6: "real", 7: "uncertain", 8: "fake"}
    saved = {n: _screen(db, n, OLD, label) for n, label in old.items()}
    # image 6: a moderator already confirmed the fake; image 8: a moderator marked the uncertain one real
    for n, decision in ((6, "confirm_fake"), (8, "mark_real")):
        reviews.claim(mod, saved[n].review_item_id, 600)
        reviews.decide(mod, saved[n].review_item_id, decision)
    run = rescans.create(RescanSelector(), NEW, rate_per_s=1000, chunk_size=100)
    sent = Recorder()
    driver = RescanDriver(rescans, sent, config=DriverConfig(tick_s=1.0))
    driver.tick_run(run.id, NOW)
    assert len(sent.events) == 8
    by_sha = {_sha(n): n for n in old}
    for event in sent.events:  # what the worker would do: screen with NEW and save
        n = by_sha[event.sha256 or ""]
        db.save(event, _verdict(n, NEW, new[n]), BlobKeys())
    driver.tick_run(run.id, NOW + timedelta(seconds=1))  # all enqueued -> draining
    driver.tick_run(run.id, NOW + timedelta(seconds=2))  # all done -> finished with its report
    view = rescans.get(run.id)
    assert view.state == "finished"
    assert view.report["transitions"] == {
        "fake": {"fake": 1, "real": 2}, "uncertain": {"real": 1, "fake": 1}, "real": {"fake": 1, "real": 1, "uncertain": 1}}
    assert view.report["images"] == 8 and view.report["changed"] == 6
    changed = {by_sha[row["sha256"]]: (row["old_verdict"], row["new_verdict"]) for row in rescans.changes(run.id)}
    assert changed == {n: (old[n], new[n]) for n in old if old[n] != new[n]}

    with db.sessions() as session:
        def verdicts_of(n: int) -> list[str]:
            return sorted(session.scalars(select(Verdict.model_version).join(Image).where(Image.sha256 == _sha(n))))

        def items_of(n: int) -> list[tuple[str, str]]:
            return [(i.state, i.reason) for i in session.scalars(
                select(ReviewItem).join(Image, Image.id == ReviewItem.image_id).where(Image.sha256 == _sha(n))
                .order_by(ReviewItem.id))]

        def notes_of(n: int) -> list[str]:
            return [a.note or "" for a in session.scalars(
                select(AuditEntry).join(ReviewItem, ReviewItem.id == AuditEntry.review_item_id)
                .join(Image, Image.id == ReviewItem.image_id)
                .where(Image.sha256 == _sha(n), AuditEntry.action == "rescan_note"))]

        assert all(verdicts_of(n) == [OLD, NEW] for n in old), "history is kept: one verdict per model version"
        assert items_of(1) == [("pending", "fake")] and "now fake" in notes_of(1)[0]  # still fake: a note, no 2nd item
        assert items_of(2) == [("pending", "fake")] and "now real" in notes_of(2)[0]  # turned real: the item stays
        assert "stays open" in notes_of(2)[0]
        assert items_of(4) == [("pending", "fake")] and notes_of(4) == []  # turned fake: a new review item
        assert items_of(5) == [] and items_of(7) == [("pending", "uncertain")]
        assert items_of(6) == [("confirmed_fake", "fake")] and "stands" in notes_of(6)[0]  # decided: not reopened
        assert items_of(8) == [("marked_real", "uncertain")] and "stands" in notes_of(8)[0]
        assert session.scalar(select(Event.status).where(Event.event_id == sent.events[0].event_id)) == "scored"


def test_a_run_that_asks_reopens_decided_items(db: Store) -> None:
    rescans = RescanStore(db.engine)
    reviews = ReviewStore(db.engine)
    mod = Actor("mod-1", "moderator")
    saved = _screen(db, 1, OLD, "uncertain")
    reviews.claim(mod, saved.review_item_id, 600)
    reviews.decide(mod, saved.review_item_id, "mark_real")
    run = rescans.create(RescanSelector(reopen_decided=True), NEW, rate_per_s=1000, chunk_size=10)
    sent = Recorder()
    RescanDriver(rescans, sent).tick_run(run.id, NOW)
    result = db.save(sent.events[0], _verdict(1, NEW, "fake"), BlobKeys())
    assert result.review_item_id is not None and result.review_item_id != saved.review_item_id
    with db.sessions() as session:
        states = session.scalars(select(ReviewItem.state).order_by(ReviewItem.id)).all()
    assert states == ["marked_real", "pending"]


def test_registry_activation_and_canary(db: Store) -> None:
    registry = ModelRegistry(db.engine)
    assert registry.roles().active is None
    registry.register("m1", "a" * 64, "/models/m1")
    registry.register("m2", "b" * 64, "/models/m2")
    registry.register("m1", "a" * 64, "/models/m1-moved")  # idempotent; the folder may move
    with pytest.raises(RegistryError, match="new version"):
        registry.register("m1", "c" * 64, "/models/m1")
    with pytest.raises(RegistryError, match="unknown"):
        registry.activate("m3")
    registry.activate("m1")
    assert registry.roles().active.version == "m1"
    registry.activate("m2")
    roles = registry.roles()
    assert roles.active.version == "m2" and roles.canary is None
    assert {m.version: m.role for m in registry.list()} == {"m1": "registered", "m2": "active"}
    with pytest.raises(RegistryError, match="active"):
        registry.set_canary("m2", 0.1)
    with pytest.raises(RegistryError, match="fraction"):
        registry.set_canary("m1", 0.0)
    registry.set_canary("m1", 0.25)
    assert registry.roles().canary.canary_fraction == 0.25
    registry.set_canary(None)
    assert registry.roles().canary is None


def test_nightly_run_starts_once_and_only_when_there_is_work(db: Store, tmp_path) -> None:  # noqa: ANN001
    from workers.app import beat_schedule
    from workers.rescan import start_nightly
    from workers.settings import Settings

    registry = ModelRegistry(db.engine)
    registry.register(NEW, "b" * 64, str(tmp_path))
    registry.activate(NEW)
    rescans = RescanStore(db.engine)
    assert start_nightly(rescans, registry, tmp_path, 10.0, 100) is None, "nothing stored: no run"
    _screen(db, 1, OLD, "fake")
    run = start_nightly(rescans, registry, tmp_path, 10.0, 100)
    assert run is not None and run.selected == 1 and run.model_version == NEW
    assert start_nightly(rescans, registry, tmp_path, 10.0, 100) is None, "a run is still going: no second one"

    schedule = beat_schedule(Settings(rescan_cron="30 3 * * 1-5", rescan_tick_s=2, stuck_check_s=60))
    nightly = schedule["rescan-nightly"]["schedule"]
    assert nightly.minute == {30} and nightly.hour == {3} and nightly.day_of_week == {1, 2, 3, 4, 5}
    assert schedule["rescan-tick"]["schedule"] == 2 and schedule["rescan-tick"]["options"]["expires"] == 2
    assert schedule["requeue-stuck"]["options"]["queue"] == "control"
    assert "rescan-nightly" not in beat_schedule(Settings(rescan_cron=""))
    with pytest.raises(ValueError, match="five fields"):
        Settings(rescan_cron="0 2 * *")
