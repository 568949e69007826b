"""pool=threads with concurrency 2, end to end on real services: two batches in flight in one worker process,
one model. Every event gets its verdict, its heatmaps and its review item, and the batches really overlapped
(one batch's writes run while the next batch screens: that is what the setting is for)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select

from db.schema import Event, FaceRow, ReviewItem, Verdict
from pipeline.events import UploadEvent
from tests.services import WorkerProcess, service_env, wait_for, wait_terminal

pytestmark = [pytest.mark.services, pytest.mark.slow]

EVENTS = 16


@pytest.fixture(scope="module")
def threads_worker(postgres_url, redis_url, s3_server, flagging_model, tmp_path_factory):  # noqa: ANN001, ANN201
    env = service_env(postgres_url, redis_url, s3_server, flagging_model, DEEPSCREEN_POOL="threads",
                      DEEPSCREEN_CONCURRENCY="2", DEEPSCREEN_BATCH_SIZE="4", DEEPSCREEN_SCREEN_THREADS="1")
    proc = WorkerProcess(env, tmp_path_factory.mktemp("threads-worker") / "worker.log")
    try:
        wait_for(proc.ready, 120, what="worker ready")
    except TimeoutError:
        proc.stop()
        pytest.fail("worker did not start:\n" + proc.log_path.read_text()[-4000:])
    yield proc
    proc.stop()


def _faces(count: int) -> list[bytes]:
    from skimage import data

    rng = np.random.default_rng(11)
    base = np.asarray(Image.fromarray(data.astronaut()).resize((256, 256))).astype(np.int16)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(np.clip(base + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_two_batches_in_flight_lose_nothing_and_overlap(postgres_url, s3_server, threads_worker, celery_app):  # noqa: ANN001
    from workers.submit import submit

    client = s3_server.client()
    events = []
    for index, body in enumerate(_faces(EVENTS)):
        client.put_object(Bucket="uploads", Key=f"threads/{index}.jpg", Body=body)
        events.append(UploadEvent(event_id=f"threads-{index}", image_uri=f"s3://uploads/threads/{index}.jpg"))
    ids = submit(events, celery_app=celery_app)
    engine = create_engine(postgres_url)
    statuses = wait_terminal(engine, ids, threads_worker)
    assert set(statuses.values()) == {"scored"}, statuses
    with engine.connect() as conn:
        verdict_ids = conn.scalars(select(Event.verdict_id).where(Event.event_id.in_(ids))).all()
        assert len(set(verdict_ids)) == EVENTS  # distinct bytes: one verdict each, none lost, none doubled
        heatmaps = conn.scalars(select(Verdict.heatmap_key).where(Verdict.id.in_(verdict_ids))).all()
        face_keys = conn.execute(select(FaceRow.heatmap_key, FaceRow.crop_key)
                                 .where(FaceRow.verdict_id.in_(verdict_ids))).all()
        reviews = conn.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.verdict_id.in_(verdict_ids)))
    engine.dispose()
    assert all(heatmaps) and len(face_keys) >= EVENTS and reviews == EVENTS
    for key in heatmaps + [k for pair in face_keys for k in pair]:
        assert client.head_object(Bucket="deepscreen", Key=key)["ContentLength"] > 0, key

    # the log, in time order: a batch started before the one before it was done, on another pool thread
    log = threads_worker.log_path.read_text()
    in_flight, most = 0, 0
    for line in log.splitlines():
        if re.search(r"batch start size=\d+ event_ids=threads-", line):
            in_flight += 1
            most = max(most, in_flight)
        elif "batch done size=" in line and in_flight:
            in_flight -= 1
    assert most == 2, log[-3000:]
