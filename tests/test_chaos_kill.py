"""kill -9 the worker at random moments mid-batch, restart it, and prove nothing is lost or doubled: the test
that decides the batching design (STYLE.md, "micro-batches vs. prefetch 1"). Events are recorded `queued`
before they are sent and the stuck-event sweeper runs meanwhile, as in production, because a kill inside
kombu's two-step take loses the message from Redis (docs/architecture.md). `make chaos` runs a larger size.
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
from db.store import Store
from devservices import WorkerProcess, service_env, wait_for
from pipeline.events import UploadEvent
from tests.services import statuses_of

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
    # The kills here are the test's, not a poison message's: each can count one crashed delivery against an event,
    # and a killed batch's messages come back within 18 s, often into the next worker's solo screening when the
    # next kill lands. MAX_DELIVERIES above the kills keeps the crash-loop guard (tests/test_crash_loop.py) out of it.
    env = service_env(postgres_url, redis_url, s3_server, flagging_model, DEEPSCREEN_VISIBILITY_TIMEOUT="8",
                      DEEPSCREEN_BATCH_SIZE="16", DEEPSCREEN_HEATMAPS="flagged",
                      DEEPSCREEN_MAX_DELIVERIES=str(KILLS + 1))
    engine = create_engine(postgres_url)
    ids = [e.event_id for e in events]

    def finished() -> int:
        return sum(1 for s in statuses_of(engine, ids).values() if s != "queued")

    rng = random.Random(1)
    store = Store.from_url(postgres_url)
    submit(events, celery_app=celery_app, store=store)
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
        sweeps: list[str] = []

        def done_or_sweep() -> bool:
            if finished() >= EVENTS:
                return True
            sweeps.extend(_sweep(store, celery_app))
            return False

        wait_for(done_or_sweep, 600, interval=5.0, what="every event finished")
    finally:
        worker.stop()
        store.engine.dispose()
    # each was held by no worker and queued before anything waiting on a queue when it was re-sent: lost by the broker
    print(f"kills={kills} re-sent by the sweeper: {sorted(set(sweeps))}")
    # a kill loses at most the one message between kombu's BRPOP and its unacknowledged record; more would mean
    # acks_late lost messages, which the sweeper must not hide
    assert len(set(sweeps) & set(ids)) <= kills
    statuses = statuses_of(engine, ids)
    assert len(statuses) == EVENTS
    assert set(statuses.values()) == {"scored"}, _reasons(engine, [i for i, s in statuses.items() if s != "scored"])
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


def _reasons(engine, ids: list[str]) -> dict[str, tuple]:  # noqa: ANN001
    with engine.connect() as conn:
        rows = conn.execute(select(Event.event_id, Event.status, Event.reason, Event.deliveries, Event.requeued_at)
                            .where(Event.event_id.in_(ids)))
        return {row[0]: tuple(row[1:]) for row in rows}


def _sweep(store, celery_app) -> list[str]:  # noqa: ANN001
    """What beat's `deepscreen.requeue_stuck` does, with STUCK_AFTER_S 60 instead of two hours (over the 8 s
    visibility timeout and kombu's 10 s restore scan, so a message that is only waiting to come back is left
    alone, as is one a worker holds unacknowledged)."""
    from workers.requeue import requeue_stuck_events

    return requeue_stuck_events(celery_app, store, 60.0)


def test_a_dead_workers_message_comes_back_soon_after_its_visibility_timeout(
    postgres_url, redis_url, s3_server, flagging_model, celery_app, tmp_path: Path  # noqa: ANN001
) -> None:
    """A worker killed after kombu recorded its message as unacknowledged leaves it in `unacked`. A running
    worker's restore scan puts it back once the visibility timeout has passed: within 10 s of that, since the
    app sets `unacked_restore_throttle` to 1 (kombu's default scans one time in ten: up to 100 s late)."""
    import json

    import redis

    from workers.queues import _task_call
    from workers.submit import submit

    body = next(face_images(1, 160, seed=11))
    s3_server.client().put_object(Bucket="uploads", Key="chaos/late.jpg", Body=body)
    event = UploadEvent(event_id="chaos-late-1", image_uri="s3://uploads/chaos/late.jpg", source="chaos-late")
    broker = redis.Redis.from_url(redis_url)
    broker.delete("upload")  # nothing an earlier test left may stand in for this message
    submit([event], celery_app=celery_app)
    raw = broker.rpop("upload")  # taken as a worker's BRPOP takes it, before any worker runs
    assert raw is not None
    message = json.loads(raw)
    assert _task_call(message)[0][0]["event_id"] == "chaos-late-1"
    info = message["properties"]["delivery_info"]
    env = service_env(postgres_url, redis_url, s3_server, flagging_model, DEEPSCREEN_VISIBILITY_TIMEOUT="4")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    engine = create_engine(postgres_url)
    try:
        wait_for(worker.ready, 120, what="worker ready")
        time.sleep(2)  # past the restore scan a worker makes as it starts
        # what a worker killed after recording the message leaves behind (kombu's QoS.append)
        tag = "dead-worker-tag-1"
        broker.zadd("unacked_index", {tag: time.time()})
        broker.hset("unacked", tag, json.dumps([message, info["exchange"], info["routing_key"]]))
        began = time.monotonic()
        wait_for(lambda: statuses_of(engine, [event.event_id]).get(event.event_id) == "scored", 60, interval=0.5,
                 what="the dead worker's message screened")
        took = time.monotonic() - began
    finally:
        worker.stop()
        engine.dispose()
        broker.close()
    assert took < 4 + 10 + 12, took  # visibility timeout + one restore period + a batch (kombu's default: up to 104 s)
