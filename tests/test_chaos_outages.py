"""Outages of the services a worker depends on: it retries with backoff, loses nothing, and resumes alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from bench.distributed import face_images
from db.migrate import upgrade
from db.schema import Event, Verdict
from devservices import WorkerProcess, service_env, wait_for
from pipeline.events import UploadEvent
from tests.services import ThrowawayPostgres, statuses_of

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.chaos]

OUTAGE_S = float(os.environ.get("DEEPSCREEN_CHAOS_OUTAGE_S", "30"))
EVENTS = 60


def _upload(s3_server, prefix: str, count: int) -> list[UploadEvent]:  # noqa: ANN001
    client = s3_server.client()
    events = []
    for i, body in enumerate(face_images(count, 160, seed=hash(prefix) & 0xFFFF)):
        key = f"{prefix}/{i:04d}.jpg"
        client.put_object(Bucket="uploads", Key=key, Body=body)
        events.append(UploadEvent(event_id=f"{prefix}-{i}", image_uri=f"s3://uploads/{key}", source=prefix))
    return events


def test_postgres_outage_is_ridden_out(redis_url, s3_server, flagging_model, celery_app, tmp_path: Path) -> None:  # noqa: ANN001
    from workers.submit import submit

    pg = ThrowawayPostgres()
    worker = None
    try:
        upgrade(pg.url)
        events = _upload(s3_server, "pgout", EVENTS)
        env = service_env(pg.url, redis_url, s3_server, flagging_model, DEEPSCREEN_RETRY_BACKOFF_S="1",
                          DEEPSCREEN_RETRY_BACKOFF_MAX_S="5", DEEPSCREEN_MAX_ATTEMPTS="3")
        worker = WorkerProcess(env, tmp_path / "worker.log")
        wait_for(worker.ready, 120, what="worker ready")
        ids = [e.event_id for e in events]
        submit(events[: EVENTS // 3], celery_app=celery_app)
        engine = create_engine(pg.url, pool_pre_ping=True)
        wait_for(lambda: len(statuses_of(engine, ids)) >= 1, 120, what="first verdicts")
        engine.dispose()
        pg.stop()
        submit(events[EVENTS // 3 :], celery_app=celery_app)  # events keep arriving during the outage
        time.sleep(OUTAGE_S)
        assert worker.process.poll() is None, "the worker died during the outage"
        pg.start()
        engine = create_engine(pg.url, pool_pre_ping=True)
        wait_for(lambda: sum(s != "queued" for s in statuses_of(engine, ids).values()) == EVENTS, 300,
                 interval=1, what="every event finished after the outage")
        statuses = statuses_of(engine, ids)
        with engine.connect() as conn:
            verdicts = conn.scalar(select(func.count()).select_from(Verdict))
            retried = conn.scalar(select(func.count()).select_from(Event).where(Event.attempts > 1))
        engine.dispose()
    finally:
        if worker is not None:
            worker.stop()
        pg.destroy()
    assert set(statuses.values()) == {"scored"}  # nothing dead-lettered: an outage never counts as a try
    assert verdicts == EVENTS
    assert retried >= 1  # the events that arrived during the outage were retried, not lost
    assert "retry event_id=" in (tmp_path / "worker.log").read_text()


def test_worker_started_during_a_postgres_outage_waits_for_it(redis_url, s3_server, flagging_model, celery_app,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    """A pool child that starts while Postgres is away cannot build its runtime (it registers its model there):
    its batches go back on the queue as a database outage, which never counts toward an event's attempts, and
    are screened once Postgres is back. Each child loads its model once, not again at every batch it sends back."""
    from workers.submit import submit

    pg = ThrowawayPostgres()
    worker = None
    try:
        upgrade(pg.url)
        events = _upload(s3_server, "pgdown", 12)
        pg.stop()
        env = service_env(pg.url, redis_url, s3_server, flagging_model, DEEPSCREEN_RETRY_BACKOFF_S="1",
                          DEEPSCREEN_RETRY_BACKOFF_MAX_S="2", DEEPSCREEN_MAX_ATTEMPTS="2", DEEPSCREEN_POOL="prefork",
                          DEEPSCREEN_CONCURRENCY="2")
        worker = WorkerProcess(env, tmp_path / "worker.log")
        wait_for(worker.ready, 120, what="worker ready")
        submit(events, celery_app=celery_app)
        log = tmp_path / "worker.log"
        wait_for(lambda: log.read_text().count("database unavailable before screening") >= 2, 120, interval=0.5,
                 what="batches sent back while the database is away")
        assert worker.process.poll() is None, "the worker died during the outage"
        pg.start()
        engine = create_engine(pg.url, pool_pre_ping=True)
        ids = [e.event_id for e in events]
        wait_for(lambda: sum(s != "queued" for s in statuses_of(engine, ids).values()) == len(ids), 300,
                 interval=1, what="every event finished after the outage")
        statuses = statuses_of(engine, ids)
        engine.dispose()
    finally:
        if worker is not None:
            worker.stop()
        pg.destroy()
    assert set(statuses.values()) == {"scored"}  # MAX_ATTEMPTS=2: had the outage counted, some would be failed
    text = log.read_text()
    assert "reason=batch_error" not in text
    assert text.count("model loaded version=") == 2  # once in each pool child (CONCURRENCY=2), at its start


def test_s3_outage_is_retried_and_no_verdict_points_at_a_missing_object(
    redis_url, postgres_url, s3_server, flagging_model, celery_app, tmp_path: Path  # noqa: ANN001
) -> None:
    from devservices import S3Server
    from tests.services import SwitchableProxy
    from workers.submit import submit

    events = _upload(s3_server, "s3out", 40)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    proxy = SwitchableProxy(port)
    behind = S3Server(f"http://127.0.0.1:{proxy.port}", s3_server.process)
    env = service_env(postgres_url, redis_url, behind, flagging_model, DEEPSCREEN_RETRY_BACKOFF_S="1",
                      DEEPSCREEN_RETRY_BACKOFF_MAX_S="8", DEEPSCREEN_MAX_ATTEMPTS="12", AWS_MAX_ATTEMPTS="1")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    ids = [e.event_id for e in events]
    engine = create_engine(postgres_url)
    try:
        wait_for(worker.ready, 120, what="worker ready")
        submit(events[:10], celery_app=celery_app)
        wait_for(lambda: any(s != "queued" for s in statuses_of(engine, ids).values()), 120, what="first verdict")
        proxy.block()
        submit(events[10:], celery_app=celery_app)
        time.sleep(OUTAGE_S)
        proxy.unblock()
        wait_for(lambda: sum(s != "queued" for s in statuses_of(engine, ids).values()) == len(ids), 300,
                 interval=1, what="every event finished after the S3 outage")
    finally:
        worker.stop()
        proxy.block()
    statuses = statuses_of(engine, ids)
    assert set(statuses.values()) == {"scored"}
    client = s3_server.client()
    with engine.connect() as conn:
        keys = conn.execute(select(Verdict.heatmap_key).join(Event, Event.verdict_id == Verdict.id)
                            .where(Event.event_id.in_(ids))).scalars().all()
        retried = conn.scalar(select(func.count()).select_from(Event).where(Event.event_id.in_(ids), Event.attempts > 1))
    engine.dispose()
    assert len(keys) == len(ids) and all(keys)
    for key in keys:  # every committed verdict's heatmap exists
        client.head_object(Bucket="deepscreen", Key=key)
    assert retried >= 1


def test_redis_restart_redelivers_reserved_messages(postgres_url, s3_server, flagging_model, tmp_path: Path) -> None:  # noqa: ANN001
    """Redis (append-only file on, as compose runs it) restarts while a worker holds reserved, unacknowledged
    messages: they are redelivered and every event ends with exactly one verdict."""
    from devservices import PrivateRedis
    from workers.app import create_app
    from workers.settings import Settings
    from workers.submit import submit

    broker = PrivateRedis(appendonly=True)
    events = _upload(s3_server, "redisout", 60)
    ids = [e.event_id for e in events]
    env = service_env(postgres_url, broker.url, s3_server, flagging_model, DEEPSCREEN_VISIBILITY_TIMEOUT="8",
                      DEEPSCREEN_BATCH_SIZE="8")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    engine = create_engine(postgres_url)
    try:
        wait_for(worker.ready, 120, what="worker ready")
        submit(events, celery_app=create_app(Settings(broker_url=broker.url)))
        wait_for(lambda: any(s != "queued" for s in statuses_of(engine, ids).values()), 120, what="first verdict")
        broker.stop()  # SIGTERM: redis writes its append-only file and exits
        time.sleep(3)
        broker.start()
        wait_for(lambda: sum(s != "queued" for s in statuses_of(engine, ids).values()) == len(ids), 300,
                 interval=1, what="every event finished after the redis restart")
    finally:
        worker.stop()
        broker.destroy()
    statuses = statuses_of(engine, ids)
    with engine.connect() as conn:
        verdicts = conn.scalar(select(func.count(func.distinct(Event.verdict_id))).where(Event.event_id.in_(ids)))
    engine.dispose()
    assert set(statuses.values()) == {"scored"}
    assert verdicts == len(ids)
