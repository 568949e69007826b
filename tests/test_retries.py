"""Transient infrastructure failures are retried with backoff and dead-lettered, never turned into verdicts.

Its own module: the module-scoped healthy worker of test_distributed.py must not be consuming meanwhile.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select

from db.schema import Event
from devservices import WorkerProcess, service_env, wait_for
from tests.services import wait_terminal

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_transient_s3_failure_is_retried_then_dead_lettered_never_a_verdict(
    postgres_url, redis_url, s3_server, flagging_model, tmp_path, celery_app, capsys  # noqa: ANN001
) -> None:
    """A worker whose S3 endpoint refuses connections: the event is retried with backoff, never gets a
    verdict, and after max_attempts ends `failed` with the attempt count and reason."""
    from devservices import S3Server, free_port
    from workers.submit import submit

    dead = S3Server(f"http://127.0.0.1:{free_port()}", s3_server.process)  # nothing listens there
    env = service_env(postgres_url, redis_url, dead, flagging_model, DEEPSCREEN_MAX_ATTEMPTS="3",
                      DEEPSCREEN_RETRY_BACKOFF_S="0.2", AWS_MAX_ATTEMPTS="1")
    proc = WorkerProcess(env, tmp_path / "dead-s3-worker.log", queues="upload")
    try:
        wait_for(proc.ready, 120, what="worker ready")
        submit([{"event_id": "poison-1", "image_uri": "s3://uploads/t/face.jpg", "source": "t"}], celery_app=celery_app)
        engine = create_engine(postgres_url)
        statuses = wait_terminal(engine, ["poison-1"], proc, timeout=180)
        with engine.connect() as conn:
            row = conn.execute(select(Event).where(Event.event_id == "poison-1")).one()
        engine.dispose()
    finally:
        proc.stop()
    assert statuses["poison-1"] == "failed"
    assert row.attempts == 3 and row.verdict_id is None
    assert row.reason.startswith("retries_exhausted")
    log = (tmp_path / "dead-s3-worker.log").read_text()
    assert log.count("retry event_id=poison-1") == 2
    import json

    from cli.main import main

    capsys.readouterr()
    assert main(["dead-letters", "--json", "--database-url", postgres_url]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    poison = [row for row in listed if row["event_id"] == "poison-1"]
    assert poison and poison[0]["attempts"] == 3 and poison[0]["reason"].startswith("retries_exhausted")
