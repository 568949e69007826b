"""A message that kills its worker every time (as the OOM killer would) cannot loop: after
DEEPSCREEN_MAX_DELIVERIES deaths it is dead-lettered `worker_crashed`, and its batch-mates, screened one at a
time once they are suspects, all get their verdicts.

The "OOM killer" here is the test: it watches the worker's log and SIGKILLs the worker's process group each
time the poison event's screening begins, then starts a fresh worker (real Redis redelivers the unacknowledged
messages after the visibility timeout).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, select

from db.schema import Event
from devservices import PrivateRedis, WorkerProcess, fresh_database, service_env, wait_for
from pipeline.events import UploadEvent

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _jpeg(seed: int) -> bytes:
    from skimage import data

    face = np.array(data.astronaut()[:400, :400])
    face[:8, :8] = seed
    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, format="JPEG", quality=80 + seed)
    return buffer.getvalue()


def test_a_message_that_keeps_killing_workers_is_dead_lettered_and_its_batch_mates_survive(
        s3_server, flagging_model, tmp_path) -> None:  # noqa: ANN001
    from workers.app import create_app
    from workers.settings import Settings
    from workers.submit import submit

    client = s3_server.client()
    names = ["poison", "mate-a", "mate-b", "mate-c"]
    for i, name in enumerate(names):
        client.put_object(Bucket="uploads", Key=f"crash/{name}.jpg", Body=_jpeg(i + 1))
    redis = PrivateRedis()
    with fresh_database("deepscreen_crash") as url:
        env = service_env(url, redis.url, s3_server, flagging_model, DEEPSCREEN_VISIBILITY_TIMEOUT="4",
                          DEEPSCREEN_MAX_DELIVERIES="2", DEEPSCREEN_BATCH_SIZE="4", DEEPSCREEN_BATCH_WAIT_MS="1500")
        log_path = tmp_path / "worker.log"
        worker = WorkerProcess(env, log_path)
        engine = create_engine(url)
        try:
            wait_for(worker.ready, 120, what="worker ready")
            ids = submit([UploadEvent(event_id=f"crash-{n}", image_uri=f"s3://uploads/crash/{n}.jpg", source="crash")
                          for n in names], celery_app=create_app(Settings(broker_url=redis.url)))
            kills, seen = 0, 0
            deadline = time.monotonic() + 300

            def statuses() -> dict[str, str]:
                with engine.connect() as conn:
                    return dict(conn.execute(select(Event.event_id, Event.status).where(Event.event_id.in_(ids))).all())

            while time.monotonic() < deadline:
                lines = log_path.read_text(errors="replace").splitlines()
                for line in lines[seen:]:
                    begins = ("screening batch event_ids=" in line and "crash-poison" in line) or \
                        "screening alone event_id=crash-poison " in line
                    if begins and worker.process.poll() is None:
                        os.killpg(worker.process.pid, signal.SIGKILL)  # the "OOM killer"
                        worker.process.wait(10)
                        worker.log.close()
                        kills += 1
                        worker = WorkerProcess(env, log_path)
                        break
                seen = len(lines)
                current = statuses()
                if len(current) == 4 and all(s != "queued" for s in current.values()):
                    break
                time.sleep(0.05)
            final = statuses()
            with engine.connect() as conn:
                reason = conn.scalar(select(Event.reason).where(Event.event_id == "crash-poison"))
            log_text = log_path.read_text(errors="replace")
            assert final == {"crash-poison": "failed", "crash-mate-a": "scored", "crash-mate-b": "scored",
                             "crash-mate-c": "scored"}, log_text[-4000:]
            assert reason.startswith("worker_crashed: a worker died 2 times"), reason
            assert kills == 2, f"the poison killed {kills} workers (max deliveries 2)"
            assert "screening alone event_id=crash-mate-a" in log_text
        finally:
            worker.stop()
            engine.dispose()
            redis.destroy()


def test_an_event_recorded_but_never_enqueued_is_requeued_and_screened(s3_server, flagging_model, tmp_path) -> None:  # noqa: ANN001
    """The API recorded the event and died before enqueueing it: the sweeper puts it on the queue."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from db.store import Store
    from workers.app import create_app, enqueue
    from workers.queues import held_event_ids
    from workers.requeue import requeue_stuck, requeue_stuck_events
    from workers.settings import Settings

    s3_server.client().put_object(Bucket="uploads", Key="stuck/face.jpg", Body=_jpeg(9))
    redis = PrivateRedis()
    with fresh_database("deepscreen_stuck") as url:
        store = Store.from_url(url)
        old = UploadEvent(event_id="stuck-1", image_uri="s3://uploads/stuck/face.jpg", source="stuck")
        young = UploadEvent(event_id="stuck-2", image_uri="s3://uploads/stuck/face.jpg", source="stuck")
        store.record_events([old, young])
        with store.sessions.begin() as session:
            session.execute(update(Event).where(Event.event_id == "stuck-1")
                            .values(received_at=datetime.now(UTC) - timedelta(hours=2)))
        app = create_app(Settings(broker_url=redis.url))
        send = lambda e, attempt: enqueue(app, e.model_dump(mode="json"), e.priority, attempt=attempt)  # noqa: E731
        assert requeue_stuck(store, send, 1800, dry_run=True) == ["stuck-1"]
        assert requeue_stuck(store, send, 1800) == ["stuck-1"]
        assert requeue_stuck(store, send, 1800) == [], "not again until another stuck_after_s has passed"
        later = datetime.now(UTC) + timedelta(hours=1)
        assert requeue_stuck(store, lambda e, attempt: None, 1800, now=later, dry_run=True) == ["stuck-1", "stuck-2"]
        assert requeue_stuck(store, lambda e, attempt: None, 1800, now=later, dry_run=True, backlog_age_s=7200) == [], \
            "while the queues hold a two-hour backlog, an hour-old queued event is waiting, not lost"
        # stuck-2's message taken by a worker (BRPOP) and recorded unacknowledged, as kombu does: in flight, not
        # lost. stuck-1's requeued message is lost from the list (a Redis restart without persistence, say).
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            client.delete("upload")
            send(young, 1)
            message = json.loads(client.rpop("upload"))
            info = message["properties"]["delivery_info"]
            client.hset("unacked", "tag-stuck-2", json.dumps([message, info["exchange"], info["routing_key"]]))
            assert held_event_ids(client) == {"stuck-2"}
            assert requeue_stuck(store, lambda e, attempt: None, 1800, now=later, dry_run=True,
                                 held={"stuck-2"}) == ["stuck-1"]
            # as beat sweeps: the broker read for the backlog and what is held; stuck-1 queued again
            assert requeue_stuck_events(app, store, 0) == ["stuck-1"]
            assert client.llen("upload") == 1
            client.delete("unacked")
        worker = WorkerProcess(service_env(url, redis.url, s3_server, flagging_model), tmp_path / "worker.log")
        try:
            wait_for(worker.ready, 120, what="worker ready")
            wait_for(lambda: store.event_status("stuck-1") == "scored", 120, what="the requeued event screened")
            assert store.event_status("stuck-2") == "queued"
        finally:
            worker.stop()
            store.engine.dispose()
            redis.destroy()
