"""Roll-outs and re-scans end to end on real services: a worker subprocess on a private Redis, its own Postgres
database and the moto S3 server.

Two placeholder models stand in for two versions: `test-flag-all` flags every face (thresholds 0), and
`test-all-real` clears every face (thresholds 1). The test is about plumbing: which version wrote which
verdict, what the canary recorded, what a re-scan changed, and in which order queues are served.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select

from db.schema import AuditEntry, CanaryResult, Event, RescanItem, ReviewItem, Verdict
from db.schema import Image as ImageRow
from devservices import BIN, REPO, PrivateRedis, WorkerProcess, fresh_database, service_env, wait_for
from pipeline.events import UploadEvent
from tests.services import wait_terminal

pytestmark = [pytest.mark.services, pytest.mark.slow]

FLAG, REAL = "test-flag-all", "test-all-real"


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.model import METADATA_FILE, make_placeholder

    folder = tmp_path_factory.mktemp("all-real-model")
    meta = dataclasses.replace(make_placeholder(folder), version=REAL, threshold_fake=1.0, threshold_real=1.0)
    (folder / METADATA_FILE).write_text(meta.to_json() + "\n")
    return folder


@pytest.fixture(scope="module")
def services(s3_server, flagging_model, tmp_path_factory) -> Iterator[dict]:  # noqa: ANN001
    from workers.app import create_app
    from workers.settings import Settings

    redis = PrivateRedis()
    with fresh_database("deepscreen_rollout") as url:
        env = service_env(url, redis.url, s3_server, flagging_model, DEEPSCREEN_RESCAN_TICK_S="0.5")
        yield {"url": url, "env": env, "engine": create_engine(url), "redis": redis,
               "app": create_app(Settings(broker_url=redis.url)), "logs": tmp_path_factory.mktemp("rollout")}
    redis.destroy()


def _start_worker(services: dict, name: str) -> WorkerProcess:
    proc = WorkerProcess(services["env"], services["logs"] / f"{name}.log")
    try:
        wait_for(proc.ready, 120, what="worker ready")
    except TimeoutError:
        proc.stop()
        pytest.fail("worker did not start:\n" + proc.log_path.read_text()[-4000:])
    return proc


def _faces(s3_server, prefix: str, count: int, start: int) -> list[str]:  # noqa: ANN001
    """Distinct JPEGs of one face (crops, qualities and a corner mark differ by number), uploaded."""
    from skimage import data

    face = data.astronaut()
    client = s3_server.client()
    uris = []
    for i in range(start, start + count):
        crop = np.array(face[i % 7: 400 + i % 7, (i * 3) % 11: 400 + (i * 3) % 11])
        crop[:8, :8] = (i * 37) % 256
        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, format="JPEG", quality=70 + i % 25)
        key = f"{prefix}/face-{i}.jpg"
        client.put_object(Bucket="uploads", Key=key, Body=buffer.getvalue())
        uris.append(f"s3://uploads/{key}")
    return uris


def _submit(services: dict, uris: list[str], prefix: str, priority: str = "upload") -> list[str]:
    from workers.submit import submit

    events = [UploadEvent(event_id=f"{prefix}-{i}", image_uri=uri, source="tenant-r", priority=priority)  # type: ignore[arg-type]
              for i, uri in enumerate(uris)]
    return submit(events, celery_app=services["app"])


def _cli(services: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "deepscreen"), *args], env=services["env"], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _versions(engine, ids: list[str]) -> dict[str, str]:  # noqa: ANN001
    with engine.connect() as conn:
        rows = conn.execute(select(Event.event_id, Verdict.model_version).join(Verdict, Verdict.id == Event.verdict_id)
                            .where(Event.event_id.in_(ids)))
        return dict(rows.all())


def test_canary_activation_and_a_rescan_that_survives_its_driver_being_killed(services, s3_server, real_model):  # noqa: ANN001
    engine = services["engine"]
    worker = _start_worker(services, "rollout")
    try:
        # 1. the worker registered and activated its own model; uploads get its verdicts
        first = _submit(services, _faces(s3_server, "r1", 6, 0), "r1")
        assert set(wait_terminal(engine, first, worker).values()) == {"scored"}
        assert set(_versions(engine, first).values()) == {FLAG}
        listing = _cli(services, "model", "list", "--json")
        assert listing.returncode == 0 and f'"{FLAG}"' in listing.stdout and '"active"' in listing.stdout

        # 2. canary: every image scored by the other model too; only the comparison is kept
        assert _cli(services, "model", "register", str(real_model)).returncode == 0
        result = _cli(services, "model", "canary", REAL, "--fraction", "1")
        assert result.returncode == 0, result.stderr
        canaried = _submit(services, _faces(s3_server, "r2", 2, 6), "r2")
        wait_terminal(engine, canaried, worker)
        assert set(_versions(engine, canaried).values()) == {FLAG}, "the canary never writes the verdict"
        with engine.connect() as conn:
            rows = conn.execute(select(CanaryResult.active_verdict, CanaryResult.canary_verdict, CanaryResult.agree)
                                .where(CanaryResult.event_id.in_(canaried))).all()
        assert sorted(rows) == [("fake", "real", False)] * 2
        report = _cli(services, "model", "canary-report", "--json")
        assert '"disagreement_rate": 1.0' in report.stdout
        assert _cli(services, "model", "canary", "--off").returncode == 0

        # 3. activation reaches the running worker at its next batch: no restart
        result = _cli(services, "model", "activate", REAL)
        assert result.returncode == 0, result.stderr
        later = _submit(services, _faces(s3_server, "r3", 2, 8), "r3")
        wait_terminal(engine, later, worker)
        assert set(_versions(engine, later).values()) == {REAL}
        assert "model switched version=test-all-real" in worker.log_path.read_text()

        # 4. a re-scan of the 8 images screened by FLAG; its driver is killed after the first chunk
        dry = _cli(services, "rescan", "start", "--dry-run")
        assert dry.returncode == 0 and dry.stdout.startswith("8 images would be re-scanned with test-all-real")
        started = _cli(services, "rescan", "start", "--rate", "2", "--chunk", "2", "--json")
        assert started.returncode == 0, started.stderr
        run_id = int(started.stdout.split('"id": ')[1].split(",")[0])
        follow = subprocess.Popen([str(BIN / "deepscreen"), "rescan", "follow", str(run_id)], env=services["env"],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def enqueued() -> int:
            with engine.connect() as conn:
                return conn.scalar(select(func.count()).select_from(RescanItem).where(RescanItem.run_id == run_id)) or 0

        wait_for(lambda: enqueued() >= 2, 60, what="first chunk")
        follow.kill()
        follow.wait(10)
        stalled = enqueued()
        time.sleep(2)
        assert enqueued() == stalled < 8, "nothing moves the run while no driver runs"
        resumed = _cli(services, "rescan", "follow", str(run_id), "--timeout", "240", timeout=300)
        assert resumed.returncode == 0, resumed.stderr + worker.log_path.read_text()[-3000:]

        with engine.connect() as conn:
            per_image = conn.execute(select(ImageRow.sha256, func.count(Verdict.id)).join(Verdict)
                                     .where(Verdict.model_version == REAL).group_by(ImageRow.sha256)).all()
            items = conn.scalars(select(RescanItem.event_id).where(RescanItem.run_id == run_id)).all()
            notes = conn.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "rescan_note"))
            pending = conn.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.state == "pending"))
            old_kept = conn.scalar(select(func.count()).select_from(Verdict).where(Verdict.model_version == FLAG))
        assert len(items) == len(set(items)) == 8, "every selected image once: no gap, no duplicate"
        assert len(per_image) == 10 and all(n == 1 for _, n in per_image), "one REAL verdict per image"
        assert old_kept == 8, "history: the old verdicts are kept"
        assert notes == 8 and pending == 8, "turned real: each pending item gets a note and stays for a moderator"

        show = _cli(services, "rescan", "show", str(run_id), "--csv", str(services["logs"] / "changes.csv"))
        assert show.returncode == 0 and "8 images, 8 changed" in show.stdout, show.stdout
        with (services["logs"] / "changes.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 8 and {(r["old_verdict"], r["new_verdict"]) for r in rows} == {("fake", "real")}
    finally:
        worker.stop()


def test_uploads_are_served_before_a_rescan_backlog(services, s3_server):  # noqa: ANN001
    """24 re-scan events queued first, 8 uploads after, then a worker starts: uploads come out first."""
    engine = services["engine"]
    backlog = _submit(services, _faces(s3_server, "p-rescan", 24, 10), "p-rescan", priority="rescan")
    uploads = _submit(services, _faces(s3_server, "p-upload", 8, 34), "p-upload")
    worker = _start_worker(services, "priority")
    try:
        wait_terminal(engine, backlog + uploads, worker, timeout=300)
    finally:
        worker.stop()
    with engine.connect() as conn:
        finished = dict(conn.execute(select(Event.event_id, Event.finished_at)
                                     .where(Event.event_id.in_(backlog + uploads))).all())
    last_upload = max(finished[e] for e in uploads)
    rescans_before = sum(1 for e in backlog if finished[e] < last_upload)
    assert rescans_before <= 8, f"{rescans_before} of 24 re-scans finished before the last upload"
