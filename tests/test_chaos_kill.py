"""kill -9 the worker at random moments mid-batch, restart it, and prove nothing is lost or doubled.

This is the test that decides the batching design (STYLE.md, "micro-batches vs. prefetch 1"): celery-batches
with acks_late acknowledges a batch only after it returns, so messages a killed worker held come back after
the visibility timeout, and the idempotent store turns the redelivery into a no-op.

Sizes: `make chaos` runs 1,000 events and 5 kills (DEEPSCREEN_CHAOS_EVENTS / DEEPSCREEN_CHAOS_KILLS); the
default in `make test` is smaller so the suite stays under its time budget.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from bench.distributed import face_images
from db.schema import Event, ReviewItem, Verdict
from pipeline.events import UploadEvent
from tests.services import WorkerProcess, service_env, statuses_of, wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.chaos]

EVENTS = int(os.environ.get("DEEPSCREEN_CHAOS_EVENTS", "240"))
KILLS = int(os.environ.get("DEEPSCREEN_CHAOS_KILLS", "3"))


def test_kill_9_mid_batch_loses_nothing_and_doubles_nothing(
    postgres_url, redis_url, s3_server, flagging_model, celery_app, tmp_path: Path  # noqa: ANN001
) -> None:
    from workers.submit import submit

    client = s3_server.client()
    events = []
    for i, body in enumerate(face_images(EVENTS, 160, seed=7)):
        key = f"chaos/{i:05d}.jpg"
        client.put_object(Bucket="uploads", Key=key, Body=body)
        events.append(UploadEvent(event_id=f"chaos-{i}", image_uri=f"s3://uploads/{key}", source="chaos"))
    env = service_env(postgres_url, redis_url, s3_server, flagging_model, DEEPSCREEN_VISIBILITY_TIMEOUT="8",
                      DEEPSCREEN_BATCH_SIZE="16", DEEPSCREEN_HEATMAPS="flagged")
    engine = create_engine(postgres_url)
    ids = [e.event_id for e in events]

    def finished() -> int:
        return sum(1 for s in statuses_of(engine, ids).values() if s != "queued")

    rng = random.Random(1)
    submit(events, celery_app=celery_app)
    log = tmp_path / "worker.log"
    kills = 0
    worker = WorkerProcess(env, log)
    try:
        while kills < KILLS:
            wait_for(worker.ready, 120, what="worker ready")
            before = finished()
            # wait until it is mid-way through some batches, then kill at a random moment
            wait_for(lambda b=before: finished() > b, 120, interval=0.1, what="progress before a kill")
            time.sleep(rng.uniform(0.0, 2.5))
            if finished() >= EVENTS:
                break
            worker.kill9()
            kills += 1
            worker = WorkerProcess(env, log)
        wait_for(lambda: finished() >= EVENTS, 600, interval=1.0, what="every event finished")
    finally:
        worker.stop()
    statuses = statuses_of(engine, ids)
    assert len(statuses) == EVENTS
    assert set(statuses.values()) == {"scored"}, {s for s in statuses.values()}
    with engine.connect() as conn:
        verdicts = conn.scalar(select(func.count()).select_from(Verdict).join(Event, Event.verdict_id == Verdict.id)
                               .where(Event.event_id.in_(ids)))
        distinct_verdicts = conn.scalar(select(func.count(func.distinct(Event.verdict_id))).where(Event.event_id.in_(ids)))
        reviews = conn.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.source == "chaos"))
    engine.dispose()
    assert kills >= 1, "the worker finished before it could be killed; raise DEEPSCREEN_CHAOS_EVENTS"
    assert verdicts == EVENTS and distinct_verdicts == EVENTS  # every image is distinct: one verdict each
    assert reviews == EVENTS  # the flagging model flags every face: one review item each, never two
    restarts = log.read_text().count("ready.")
    assert restarts == kills + 1
