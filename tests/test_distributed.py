"""End to end on real services: events -> Redis -> a Celery worker subprocess -> Postgres rows + S3 objects.

The model is the seeded placeholder with thresholds set so that every face is flagged `fake`: the test is
about the plumbing (rows, objects, review items, idempotency), not about detection quality.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select

from db.schema import Event, FaceRow, ReviewItem, Verdict
from devservices import WorkerProcess, service_env, wait_for
from pipeline.events import UploadEvent
from tests.services import wait_terminal

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def uploads(s3_server) -> dict[str, bytes]:  # noqa: ANN001
    from skimage import data

    face = data.astronaut()
    images = {
        "face.jpg": _jpeg(face),
        "face-small.jpg": _jpeg(np.asarray(Image.fromarray(face).resize((256, 256)))),
        "face-copy.jpg": _jpeg(face),  # same bytes as face.jpg under another key: reuses the verdict
        "noface.png": _png(np.full((300, 400, 3), 120, np.uint8)),
        "page.jpg": b"<!DOCTYPE html><html><body>not an image</body></html>",
        "truncated.jpg": _jpeg(face)[:5000],
        "empty.jpg": b"",
    }
    client = s3_server.client()
    for key, body in images.items():
        client.put_object(Bucket="uploads", Key=f"t/{key}", Body=body)
    return images


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def worker(postgres_url, redis_url, s3_server, flagging_model, tmp_path_factory):  # noqa: ANN001, ANN201
    env = service_env(postgres_url, redis_url, s3_server, flagging_model)
    proc = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        wait_for(proc.ready, 120, what="worker ready")
    except TimeoutError:
        proc.stop()
        pytest.fail("worker did not start:\n" + proc.log_path.read_text()[-4000:])
    yield proc
    proc.stop()


def test_events_become_verdicts_heatmaps_and_review_items(postgres_url, s3_server, uploads, worker, celery_app):  # noqa: ANN001
    from workers.submit import submit

    events = [UploadEvent(event_id=f"e2e-{name}", image_uri=f"s3://uploads/t/{name}", source="tenant-a")
              for name in uploads]
    events.append(UploadEvent(event_id="e2e-missing", image_uri="s3://uploads/t/does-not-exist.jpg", source="tenant-a"))
    events.append(UploadEvent(event_id="e2e-foreign", image_uri="s3://someone-elses-bucket/x.jpg", source="tenant-a"))
    ids = submit(events, celery_app=celery_app)
    engine = create_engine(postgres_url)
    statuses = wait_terminal(engine, ids, worker)

    assert statuses["e2e-face.jpg"] == "scored"
    assert statuses["e2e-face-small.jpg"] == "scored"
    assert statuses["e2e-face-copy.jpg"] == "scored"
    assert statuses["e2e-noface.png"] == "no_face"
    for bad in ("page.jpg", "truncated.jpg", "empty.jpg", "missing", "foreign"):
        assert statuses[f"e2e-{bad}"] == "invalid_input", bad
    with engine.connect() as conn:
        reasons = dict(conn.execute(select(Event.event_id, Event.reason).where(Event.event_id.in_(ids))).all())
        assert reasons["e2e-page.jpg"] == "not_an_image"
        assert reasons["e2e-empty.jpg"] == "empty"
        assert reasons["e2e-missing"] == "not_found"
        assert reasons["e2e-foreign"] == "forbidden_bucket"
        assert reasons["e2e-truncated.jpg"] in ("truncated", "corrupt")
        verdict_of = dict(conn.execute(select(Event.event_id, Event.verdict_id).where(Event.event_id.in_(ids))).all())
        # identical bytes under two keys: one verdict, reused
        assert verdict_of["e2e-face.jpg"] == verdict_of["e2e-face-copy.jpg"]
        scored = conn.execute(select(Verdict).where(Verdict.id == verdict_of["e2e-face.jpg"])).one()
        assert scored.verdict == "fake" and scored.model_version == "test-flag-all"
        assert scored.heatmap_key and scored.face_count >= 1
        faces = conn.execute(select(FaceRow).where(FaceRow.verdict_id == scored.id)).all()
        assert len(faces) == scored.face_count
        assert all(f.heatmap_key and f.crop_key for f in faces)
        assert abs(max(f.fake_probability for f in faces) - scored.fake_probability) < 1e-9
        review = conn.execute(select(ReviewItem).where(ReviewItem.verdict_id == scored.id)).all()
        assert len(review) == 1 and review[0].state == "pending" and review[0].reason == "fake"
        # every heatmap the database names exists in S3
        keys = [scored.heatmap_key] + [f.heatmap_key for f in faces] + [f.crop_key for f in faces]
    client = s3_server.client()
    for key in keys:
        body = client.get_object(Bucket="deepscreen", Key=key)["Body"].read()
        assert body[:3] == b"\xff\xd8\xff", key  # heatmaps and crops are JPEG
    with engine.connect() as conn:
        invalid = conn.execute(select(Verdict).where(Verdict.status == "invalid_input")).all()
        assert {v.reason for v in invalid} >= {"not_an_image", "empty"}
    engine.dispose()


def _wait_queue_drained(redis_url: str) -> None:
    import time

    import redis

    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.llen("upload") == 0, 60, what="upload queue drained")
    time.sleep(3)  # the last reserved batch is flushed after batch_wait_ms and takes a moment to screen
    client.close()


def test_redelivered_and_resubmitted_events_make_no_second_verdict(postgres_url, redis_url, uploads, worker, celery_app):  # noqa: ANN001
    from workers.submit import submit

    engine = create_engine(postgres_url)
    event = {"event_id": "dup-1", "image_uri": "s3://uploads/t/face-small.jpg", "source": "tenant-b"}
    submit([json.dumps(event)], celery_app=celery_app)
    wait_terminal(engine, ["dup-1"], worker)

    def counts() -> tuple[int, int, int]:
        with engine.connect() as conn:
            return (conn.scalar(select(func.count()).select_from(Verdict)),
                    conn.scalar(select(func.count()).select_from(ReviewItem)),
                    conn.scalar(select(func.count()).select_from(FaceRow)))

    before = counts()
    # the same event twice more (a redelivery and a producer retry), and a new event for the same bytes
    submit([json.dumps(event), json.dumps(event)], celery_app=celery_app)
    submit([{**event, "event_id": "dup-2"}], celery_app=celery_app)
    wait_terminal(engine, ["dup-2"], worker)
    _wait_queue_drained(redis_url)
    assert counts() == before
    with engine.connect() as conn:
        ids = dict(conn.execute(select(Event.event_id, Event.verdict_id).where(Event.event_id.in_(["dup-1", "dup-2"]))).all())
    assert ids["dup-1"] == ids["dup-2"] is not None
    engine.dispose()


def test_s3_notification_payload_is_accepted(postgres_url, uploads, worker, celery_app):  # noqa: ANN001
    from pipeline.events import events_from_s3_notification
    from workers.submit import submit

    notification = {"Records": [
        {"eventName": "ObjectCreated:Put", "eventTime": "2026-11-23T10:00:00Z",
         "s3": {"bucket": {"name": "uploads"}, "object": {"key": "t/noface.png", "eTag": "abc123"}}},
        {"eventName": "ObjectRemoved:Delete",
         "s3": {"bucket": {"name": "uploads"}, "object": {"key": "t/face.jpg"}}},
    ]}
    events = events_from_s3_notification(notification, source="bucket-hook")
    assert len(events) == 1
    ids = submit([notification], celery_app=celery_app)
    assert ids == [events[0].event_id]
    engine = create_engine(postgres_url)
    assert wait_terminal(engine, ids, worker)[ids[0]] == "no_face"
    engine.dispose()

