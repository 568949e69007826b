"""Erasure and retention on real Postgres and the moto S3 server.

After an erasure, every row of every table and every object of both buckets is searched for the image's
sha256 (which also appears in its keys and its upload's URI): only the tombstone and the audit log may
still name it. A re-upload of the same bytes is then screened afresh.
"""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from db.schema import Base, Erasure, FaceRow, Image, ReviewItem, Verdict
from devservices import BIN
from tests.test_review_support import client, make_item, review_ctx, review_db_url, review_redis_url, tokens  # noqa: F401

pytestmark = pytest.mark.services


def _image_of(ctx: Any, verdict_id: int) -> tuple[int, str, str]:
    with ctx.store.sessions() as session:
        image = session.scalar(select(Image).join(Verdict, Verdict.image_id == Image.id).where(Verdict.id == verdict_id))
        return image.id, image.sha256, image.uri


def _rows_naming(ctx: Any, needle: str) -> dict[str, int]:
    """Per table, how many rows mention `needle` in any column (as text)."""
    found: dict[str, int] = {}
    with ctx.store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            hits = sum(1 for row in conn.execute(table.select()) if any(needle in str(v) for v in row))
            if hits:
                found[table.name] = hits
    return found


def _objects_naming(client_s3: Any, needle: str) -> list[str]:
    keys = []
    for bucket in ("deepscreen", "uploads"):
        for page in client_s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [f"{bucket}/{o['Key']}" for o in page.get("Contents", []) if needle in o["Key"]]
    return keys


def test_erasing_an_image_leaves_only_its_tombstone_and_the_audit_trail(review_ctx, client, tokens, s3_server,  # noqa: ANN001
                                                                        tmp_model) -> None:
    from db.review_store import Actor

    doomed = make_item(review_ctx, source="tenant-e", faces=2)
    kept = make_item(review_ctx, source="tenant-e")
    image_id, sha, uri = _image_of(review_ctx, doomed.verdict_id)
    kept_image, kept_sha, _ = _image_of(review_ctx, kept.verdict_id)
    # the API makes a thumbnail; a moderator decides (audit entries name the item)
    admin = tokens.header("admin")
    assert client.get(f"/v1/media/images/{image_id}/thumbnail", headers=admin).status_code == 200
    ann = Actor("mod-ann", "moderator")
    review_ctx.reviews.claim(ann, doomed.review_item_id, 60)
    review_ctx.reviews.decide(ann, doomed.review_item_id, "confirm_fake")
    s3 = s3_server.client()
    assert len(_objects_naming(s3, sha)) == 1 + 2 * 2 + 1 + 1  # image heatmap, 2 x (face heatmap, crop), thumbnail, original
    before = _rows_naming(review_ctx, sha)
    assert {"images", "events"} <= set(before)
    audit_before = review_ctx.reviews.audit_log(item_id=doomed.review_item_id, limit=100)

    assert client.delete(f"/v1/images/{image_id}", params={"reason": "gdpr request 17"},
                         headers=tokens.header("moderator")).status_code == 403  # admins only
    response = client.delete(f"/v1/images/{image_id}", params={"reason": "gdpr request 17"}, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["remaining"] == [] and body["sha256"] == [sha] and body["originals_deleted"] == 1
    assert body["rows"]["images"] == 1 and body["rows"]["verdicts"] == 1 and body["rows"]["faces"] == 2
    assert body["rows"]["review_items"] == 1 and body["rows"]["events"] == 1

    assert _objects_naming(s3, sha) == []
    assert set(_rows_naming(review_ctx, sha)) == {"erasures", "audit_log"}
    with review_ctx.store.sessions() as session:
        assert session.get(Image, image_id) is None
        tombstone = session.scalars(select(Erasure).where(Erasure.sha256 == sha)).one()
        assert (tombstone.erased_by, tombstone.reason, tombstone.selector) == ("admin-cat", "gdpr request 17",
                                                                              f"image_id={image_id}")
        assert session.get(Image, kept_image) is not None  # the other image is untouched
    audit_after = review_ctx.reviews.audit_log(item_id=doomed.review_item_id, limit=100)
    assert [a["id"] for a in audit_after] == [a["id"] for a in audit_before]  # the audit trail is kept
    assert any(a["action"] == "erase" for a in review_ctx.reviews.audit_log(action="erase", limit=10))
    assert len(_objects_naming(s3, kept_sha)) == 4  # heatmap, face heatmap, crop, original
    assert client.get(f"/v1/images/{image_id}", headers=admin).status_code == 404
    assert client.delete(f"/v1/images/{image_id}", params={"reason": "again"}, headers=admin).status_code == 404


def test_a_reupload_of_an_erased_image_is_screened_afresh(review_ctx, s3_server, tmp_model) -> None:  # noqa: ANN001
    import hashlib

    import numpy as np

    from db.erasure_store import ErasureStore
    from pipeline.events import UploadEvent
    from tests.test_review_support import jpeg
    from workers.erasure import erase
    from workers.processing import Job, Runtime, process_events
    from workers.runtime import build_screener

    data = jpeg(np.random.default_rng(7).integers(0, 255, size=(96, 128, 3), dtype=np.uint8))
    sha = hashlib.sha256(data).hexdigest()
    s3 = s3_server.client()
    settings = review_ctx.settings.model_copy(update={"model_dir": tmp_model})
    runtime = Runtime(screener=build_screener(settings), store=review_ctx.store, blobs=review_ctx.blobs,
                      reader=review_ctx.reader)

    def upload_and_screen(event_id: str) -> Any:
        s3.put_object(Bucket="uploads", Key=f"re/{event_id}.jpg", Body=data)
        event = UploadEvent(event_id=event_id, image_uri=f"s3://uploads/re/{event_id}.jpg", source="tenant-r")
        return process_events(runtime, [Job(event)])[0].saved

    first, again = upload_and_screen("re-1"), upload_and_screen("re-2")
    assert first.verdict_id is not None and not first.reused
    assert again.reused and again.verdict_id == first.verdict_id  # same bytes: the verdict is reused
    report = erase(ErasureStore(review_ctx.store.engine), review_ctx.blobs, erased_by="dpo", actor_role="admin",
                   reason="user request", sha256=sha)
    assert report.rows["events"] == 2 and report.remaining == []
    fresh = upload_and_screen("re-3")
    assert not fresh.reused and fresh.verdict_id is not None and fresh.verdict_id != first.verdict_id
    assert fresh.status == first.status


def test_cli_erases_every_image_of_a_source_and_a_tombstone_for_an_unknown_sha(review_ctx, review_db_url,  # noqa: ANN001
                                                                              s3_server) -> None:
    import os

    made = [make_item(review_ctx, source="tenant-gone") for _ in range(2)]
    shas = [_image_of(review_ctx, m.verdict_id)[1] for m in made]
    env = {**os.environ, "DEEPSCREEN_DATABASE_URL": review_db_url, "DEEPSCREEN_S3_ENDPOINT_URL": s3_server.endpoint,
           "DEEPSCREEN_S3_BUCKET": "deepscreen", "DEEPSCREEN_INPUT_BUCKETS": "uploads"}
    out = subprocess.run([str(BIN / "deepscreen"), "erase", "--source", "tenant-gone", "--reason", "tenant left",
                          "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert sorted(report["sha256"]) == sorted(shas) and report["rows"]["images"] == 2 and report["remaining"] == []
    for sha in shas:
        assert _objects_naming(s3_server.client(), sha) == []
        assert set(_rows_naming(review_ctx, sha)) == {"erasures", "audit_log"}
    unknown = "ab" * 32
    out = subprocess.run([str(BIN / "deepscreen"), "erase", "--sha256", unknown, "--reason", "request 9"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert set(_rows_naming(review_ctx, unknown)) == {"erasures", "audit_log"}


def test_retention_deletes_old_heatmaps_then_old_decided_verdicts_idempotently(review_ctx, s3_server) -> None:  # noqa: ANN001
    from db.erasure_store import ErasureStore
    from db.review_store import Actor
    from workers.retention import apply_retention

    now = datetime.now(UTC)
    fresh, aging, old_decided, old_open = (make_item(review_ctx, source="tenant-t") for _ in range(4))
    ann = Actor("mod-ann", "moderator")
    review_ctx.reviews.claim(ann, old_decided.review_item_id, 60)
    review_ctx.reviews.decide(ann, old_decided.review_item_id, "mark_real")
    with review_ctx.store.sessions.begin() as session:
        for saved, days in ((aging, 100), (old_decided, 400), (old_open, 400)):
            session.execute(update(Verdict).where(Verdict.id == saved.verdict_id)
                            .values(created_at=now - timedelta(days=days)))
        session.execute(update(ReviewItem).where(ReviewItem.id == old_decided.review_item_id)
                        .values(decided_at=now - timedelta(days=399)))
    keys = {}
    with review_ctx.store.sessions() as session:
        for saved in (fresh, aging, old_decided, old_open):
            v = session.get(Verdict, saved.verdict_id)
            faces = session.scalars(select(FaceRow).where(FaceRow.verdict_id == v.id)).all()
            keys[saved.verdict_id] = (v.heatmap_key, [f.heatmap_key for f in faces], [f.crop_key for f in faces])
    audit_count = len(review_ctx.reviews.audit_log(limit=1000))
    store = ErasureStore(review_ctx.store.engine)

    done = apply_retention(store, review_ctx.blobs, heatmap_days=90, verdict_days=365, now=now)
    assert done["heatmap_verdicts"] >= 3 and done["verdicts"] >= 1
    blobs = review_ctx.blobs
    image_heatmap, face_heatmaps, crops = keys[fresh.verdict_id]
    assert blobs.exists(image_heatmap) and all(blobs.exists(k) for k in face_heatmaps + crops)  # young: untouched
    for saved in (aging, old_open):
        image_heatmap, face_heatmaps, crops = keys[saved.verdict_id]
        assert not blobs.exists(image_heatmap) and not any(blobs.exists(k) for k in face_heatmaps)
        assert all(blobs.exists(k) for k in crops)  # crops live as long as the verdict
    _, _, crops = keys[old_decided.verdict_id]
    assert not any(blobs.exists(k) for k in crops)
    with review_ctx.store.sessions() as session:
        assert session.get(Verdict, aging.verdict_id).heatmap_key is None
        assert session.get(Verdict, old_decided.verdict_id) is None  # decided long ago: gone
        assert session.get(ReviewItem, old_decided.review_item_id) is None
        assert session.get(Verdict, old_open.verdict_id) is not None  # its review is still open: kept
        assert session.get(ReviewItem, old_open.review_item_id).state == "pending"
    assert len(review_ctx.reviews.audit_log(limit=1000)) == audit_count  # audit entries are never deleted
    again = apply_retention(store, review_ctx.blobs, heatmap_days=90, verdict_days=365, now=now)
    assert again == dict.fromkeys(again, 0)  # idempotent: nothing left to do
    with review_ctx.store.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM verdicts WHERE id = :v"), {"v": fresh.verdict_id}) == 1


def test_embedded_sqlite_erasure_keeps_the_append_only_audit_log(tmp_path) -> None:  # noqa: ANN001
    """The embedded mode (SQLite + a folder) erases too; the rebuilt audit_log is still append-only."""
    import hashlib

    import numpy as np
    from sqlalchemy.exc import DatabaseError

    from db.engine import connect
    from db.erasure_store import ErasureStore
    from db.migrate import upgrade
    from db.review_store import Actor, ReviewStore
    from db.store import Store
    from pipeline.events import UploadEvent
    from pipeline.screen import FaceVerdict
    from pipeline.screen import Verdict as ScreenVerdict
    from tests.test_review_support import jpeg, png
    from workers.erasure import erase
    from workers.processing import store_blobs
    from workers.storage import LocalBlobStore

    url = f"sqlite:///{tmp_path / 'e.sqlite3'}"
    upgrade(url)
    engine = connect(url)
    store, reviews, blobs = Store(engine), ReviewStore(engine), LocalBlobStore(tmp_path / "blobs")
    pixels = np.full((40, 40, 3), 77, np.uint8)
    data = png(pixels)
    sha = hashlib.sha256(data).hexdigest()
    face = FaceVerdict(0, (1.0, 1.0, 30.0, 30.0), 0.99, 0.9, "fake", jpeg(pixels), jpeg(pixels))
    verdict = ScreenVerdict(key=sha, status="scored", model_version="m", sha256=sha, size_bytes=len(data),
                            width=40, height=40, verdict="fake", fake_probability=0.9, faces=(face,),
                            heatmap_jpeg=jpeg(pixels))
    saved = store.save(UploadEvent(event_id="e1", image_uri="/x.png"), verdict, store_blobs(blobs, verdict))
    ann = Actor("ann", "moderator")
    reviews.claim(ann, saved.review_item_id, 60)
    reviews.decide(ann, saved.review_item_id, "confirm_fake")
    assert len(blobs.list_keys("heatmaps/")) == 3
    report = erase(ErasureStore(engine), blobs, erased_by="dpo", actor_role="admin", reason="request", sha256=sha)
    assert report.remaining == [] and blobs.list_keys("heatmaps/") == []
    assert report.rows["review_items"] == 1 and report.rows["images"] == 1
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM audit_log WHERE review_item_id = :i"),
                           {"i": saved.review_item_id}) == 2  # claim and decision stay
        assert conn.scalar(text("SELECT count(*) FROM erasures WHERE sha256 = :s"), {"s": sha}) == 1
    for statement in ("UPDATE audit_log SET actor = 'b'", "DELETE FROM audit_log"):
        with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()


def test_an_event_received_before_an_erasure_and_screened_after_it_recreates_nothing(  # noqa: ANN001
        review_ctx, s3_server, tmp_model, astronaut) -> None:
    import hashlib

    from db.erasure_store import ErasureStore
    from pipeline.events import UploadEvent
    from tests.test_review_support import jpeg
    from workers.erasure import erase
    from workers.processing import Job, Runtime, persist_events, process_events, screen_events
    from workers.runtime import build_screener

    data = jpeg(astronaut)  # a face: a scored verdict writes heatmaps and crops
    sha = hashlib.sha256(data).hexdigest()
    s3 = s3_server.client()
    s3.put_object(Bucket="uploads", Key=f"late/{sha}.jpg", Body=data)
    settings = review_ctx.settings.model_copy(update={"model_dir": tmp_model})
    runtime = Runtime(screener=build_screener(settings, heatmaps="all"), store=review_ctx.store,
                      blobs=review_ctx.blobs, reader=review_ctx.reader)

    def event(event_id: str) -> UploadEvent:
        return UploadEvent(event_id=event_id, image_uri=f"s3://uploads/late/{sha}.jpg", source="tenant-late")

    in_flight = screen_events(runtime, [Job(event("late-3"))])  # screened, saved only after the erasure
    assert in_flight.verdicts and in_flight.verdicts[0].status == "scored"
    first = process_events(runtime, [Job(event("late-0"))])[0].saved
    assert first.status == "scored" and [k for k in review_ctx.blobs.list_keys("heatmaps/") if sha in k]
    queued = event("late-1")
    review_ctx.store.record_events([queued])  # received (as the API records it), still on the queue
    unrecorded = event("late-2")  # on the queue, never recorded: sent before the erasure

    report = erase(ErasureStore(review_ctx.store.engine), review_ctx.blobs, erased_by="dpo", actor_role="admin",
                   reason="user request", sha256=sha, keep_originals=True)  # the worker can still read the bytes
    assert report.remaining == []

    review_ctx.store.count_deliveries([(queued, 1), (unrecorded, 1)])  # as the Celery task begins a batch
    outcomes = process_events(runtime, [Job(queued), Job(unrecorded)]) + persist_events(runtime, in_flight)
    assert [(o.saved.status, o.saved.verdict_id, o.retry_reason) for o in outcomes] == [("erased", None, None)] * 3
    assert outcomes[0].skipped  # the erasure already ended the recorded event: not even fetched again
    assert review_ctx.store.find_verdict(sha, runtime.screener.model_version) is None
    assert set(_rows_naming(review_ctx, sha)) == {"erasures", "audit_log"}  # no image, verdict or event names it
    assert [k for k in review_ctx.blobs.list_keys("heatmaps/") if sha in k] == []  # the in-flight heatmaps went too
    assert {e: review_ctx.store.event_status(e) for e in ("late-1", "late-2", "late-3")} == dict.fromkeys(
        ("late-1", "late-2", "late-3"), "erased")  # a terminal outcome, not a retry
    again = process_events(runtime, [Job(queued)])[0]  # a redelivery is skipped
    assert again.skipped and again.saved.status == "erased"
