"""`deepscreen submit`: local files uploaded and queued, s3 prefixes listed, malformed events refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.services]


def _submit(args: list[str], redis_url: str, s3_server, postgres_url: str, **env: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    full = {**os.environ, "DEEPSCREEN_BROKER_URL": redis_url, "DEEPSCREEN_S3_ENDPOINT_URL": s3_server.endpoint,
            "DEEPSCREEN_DATABASE_URL": postgres_url,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **env}
    return subprocess.run([sys.executable, "-m", "cli", "submit", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=120)


def _queued(redis_url: str, queue: str) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    client.delete(queue)
    client.close()
    return messages


def test_submit_uploads_local_files_and_queues_them(tmp_path: Path, redis_url: str, s3_server, postgres_url: str) -> None:  # noqa: ANN001
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 10, 10)).save(tmp_path / f"img{i}.png")
    done = _submit([str(tmp_path), "--upload", "--source", "tenant-x", "--json"], redis_url, s3_server, postgres_url)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["event_id"] for line in done.stdout.splitlines()]
    assert len(ids) == 3
    messages = _queued(redis_url, "upload")
    assert len(messages) == 3
    client = s3_server.client()
    for message in messages:
        assert message["headers"]["task"] == "deepscreen.screen"
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket="uploads", Prefix="incoming/")["Contents"]]
    assert len(keys) >= 3


def test_submit_lists_an_s3_prefix_onto_the_rescan_queue(redis_url: str, s3_server, postgres_url: str) -> None:  # noqa: ANN001
    client = s3_server.client()
    for i in range(4):
        client.put_object(Bucket="uploads", Key=f"batch7/{i}.jpg", Body=b"x" * (i + 1))
    done = _submit(["s3://uploads/batch7/", "--priority", "rescan"], redis_url, s3_server, postgres_url)
    assert done.returncode == 0, done.stderr
    assert "submitted 4 events" in done.stdout
    assert len(_queued(redis_url, "rescan")) == 4
    assert _queued(redis_url, "upload") == []


def test_submit_refuses_malformed_events_and_queues_nothing(tmp_path: Path, redis_url: str, s3_server, postgres_url: str) -> None:  # noqa: ANN001
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event_id": "ok-1", "image_uri": "s3://uploads/a.jpg"}) + "\n"
                      + json.dumps({"event_id": "bad", "image_uri": "http://evil.example/x.jpg"}) + "\n")
    done = _submit(["--events", str(events)], redis_url, s3_server, postgres_url)
    assert done.returncode == 2
    assert "image_uri" in done.stderr
    assert _queued(redis_url, "upload") == []


def test_local_files_need_upload_flag(tmp_path: Path, redis_url: str, s3_server, postgres_url: str) -> None:  # noqa: ANN001
    (tmp_path / "a.png").write_bytes(b"")
    done = _submit([str(tmp_path / "a.png")], redis_url, s3_server, postgres_url)
    assert done.returncode == 2 and "--upload" in done.stderr


def _statuses(postgres_url: str, ids: list[str]) -> dict[str, str]:
    from sqlalchemy import create_engine

    from tests.services import statuses_of

    engine = create_engine(postgres_url)
    try:
        return statuses_of(engine, ids)
    finally:
        engine.dispose()


def test_submitted_events_are_recorded_queued_first_and_a_resubmission_queues_nothing(
        tmp_path: Path, redis_url: str, s3_server, postgres_url: str) -> None:  # noqa: ANN001
    # recorded, so the stuck-event sweeper can send again a message the broker loses
    for i in range(2):
        Image.new("RGB", (24, 24), (7, i * 90, 200)).save(tmp_path / f"r{i}.png")
    done = _submit([str(tmp_path), "--upload", "--json"], redis_url, s3_server, postgres_url)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["event_id"] for line in done.stdout.splitlines()]
    assert len(ids) == 2
    assert _statuses(postgres_url, ids) == dict.fromkeys(ids, "queued")
    assert len(_queued(redis_url, "upload")) == 2
    again = _submit([str(tmp_path), "--upload"], redis_url, s3_server, postgres_url)
    assert again.returncode == 0, again.stderr
    assert "submitted 0 events (2 submitted before, not queued again)" in again.stdout
    assert _queued(redis_url, "upload") == []


def test_a_broker_outage_exits_3_and_leaves_nothing_recorded(tmp_path: Path, redis_url: str, s3_server,  # noqa: ANN001
                                                               postgres_url: str) -> None:
    from devservices import free_port

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event_id": "cli-outage-1", "image_uri": "s3://uploads/o.jpg"}) + "\n")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = _submit(["--events", str(events)], dead, s3_server, postgres_url)
    assert done.returncode == 3, done.stderr
    assert "0 queued" in done.stderr
    assert _statuses(postgres_url, ["cli-outage-1"]) == {}  # un-recorded: running it again queues it
    done = _submit(["--events", str(events)], redis_url, s3_server, postgres_url)
    assert done.returncode == 0 and "submitted 1 events" in done.stdout
    assert [m["headers"]["task"] for m in _queued(redis_url, "upload")] == ["deepscreen.screen"]
