"""Metrics: correct under the prefork pool (multiprocess mode, one exporter), names and labels after a run.

1. Two plain processes count into one multiprocess folder; the exporter's scrape shows the sum.
2. A real `deepscreen worker --pool prefork --concurrency 2` on real Redis, Postgres and the moto S3 server
   screens a small set (scored, no face, invalid, one dead letter after a retry); its HTTP exporter shows
   two live processes (each child counts itself), per-child sample files, and every metric with its labels.
   The same run checks the heartbeat probe and `deepscreen status`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from devservices import BIN, REPO, WorkerProcess, free_port, service_env, wait_for
from tests.services import wait_terminal


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(rows: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in rows if n == name and all(lab.get(k) == x for k, x in labels.items()))


COUNT_SNIPPET = """
import sys
from workers import metrics
n = int(sys.argv[1])
metrics.IMAGES_SCREENED.labels("upload", "m-1", "scored", "fake").inc(n)
metrics.WORKER_PROCESSES.labels("m-1").set(1)
metrics.STAGE_SECONDS.labels("classify", "m-1").observe(0.2)
"""


def test_two_processes_count_and_the_exporter_shows_the_sum(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from workers.exporter import MULTIPROC_ENV, multiprocess_registry

    folder = tmp_path / "multiproc"
    folder.mkdir()
    env = {**__import__("os").environ, MULTIPROC_ENV: str(folder)}
    for n in (3, 4):  # two separate processes, as two prefork children are
        subprocess.run([sys.executable, "-c", COUNT_SNIPPET, str(n)], cwd=REPO, env=env, check=True)
    assert len({p.name.rsplit("_", 1)[-1] for p in folder.glob("counter_*.db")}) == 2  # one file per process
    rows = samples(generate_latest(multiprocess_registry(folder)).decode())
    assert total(rows, "deepscreen_images_screened_total", status="scored", verdict="fake") == 7
    assert total(rows, "deepscreen_stage_seconds_count", stage="classify") == 2
    # the live-sum gauge: both processes have exited without being marked dead, so both still count
    assert total(rows, "deepscreen_worker_processes", model_version="m-1") == 2


def test_reason_classes_are_bounded() -> None:
    from workers.metrics import reason_class

    assert reason_class("database: OperationalError") == "database"
    assert reason_class("s3 get s3://ghost/x.jpg: NoSuchBucket") == "storage"
    assert reason_class("out_of_memory") == "out_of_memory"
    assert reason_class("save_error: DataError: value too long") == "save_error"
    assert reason_class("anything else at all") == "other"
    assert reason_class(None) == "unknown"


def test_heartbeat_file_probe_reports_age(tmp_path) -> None:  # noqa: ANN001
    from workers.heartbeat import check_file, write_file

    path = tmp_path / "hb.json"
    assert check_file(path, 60)[0] is False
    write_file(path, {"at": 1000.0, "model_version": "m"})
    assert check_file(path, 60, now=1030.0) == (True, "heartbeat 30s old, model_version=m")
    ok, why = check_file(path, 60, now=1100.0)
    assert not ok and "100s old" in why
    path.write_text("{not json")
    assert check_file(path, 60)[0] is False


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.services
@pytest.mark.slow
def test_prefork_worker_metrics_heartbeat_and_status(postgres_url, redis_url, s3_server, flagging_model,  # noqa: ANN001
                                                     celery_app, tmp_path: Path) -> None:
    from skimage import data
    from sqlalchemy import create_engine

    from pipeline.events import UploadEvent
    from workers.submit import submit

    client = s3_server.client()
    images = {"m-face.jpg": _jpeg(data.astronaut()), "m-noface.jpg": _jpeg(np.full((200, 300, 3), 90, np.uint8)),
              "m-page.jpg": b"<html>not an image</html>"}
    for key, body in images.items():
        client.put_object(Bucket="uploads", Key=f"metrics/{key}", Body=body)
    port = free_port()
    heartbeat = tmp_path / "heartbeat.json"
    env = service_env(postgres_url, redis_url, s3_server, flagging_model, DEEPSCREEN_POOL="prefork",
                      DEEPSCREEN_CONCURRENCY="2", DEEPSCREEN_BATCH_SIZE="2", DEEPSCREEN_METRICS_PORT=str(port),
                      DEEPSCREEN_METRICS_DIR=str(tmp_path / "multiproc"), DEEPSCREEN_HEARTBEAT_FILE=str(heartbeat),
                      DEEPSCREEN_HEARTBEAT_SECONDS="1", DEEPSCREEN_INPUT_BUCKETS="uploads,ghost-bucket",
                      DEEPSCREEN_MAX_ATTEMPTS="2", DEEPSCREEN_LOG_FORMAT="json")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        wait_for(worker.ready, 180, what="prefork worker ready")
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> list[tuple[str, dict[str, str], float]]:
            with urllib.request.urlopen(url, timeout=5) as response:
                return samples(response.read().decode())

        # each child loads its model at process start and counts itself: the scrape shows the sum
        wait_for(lambda: total(scrape(), "deepscreen_worker_processes") == 2, 180, what="two children counted")
        events = [UploadEvent(event_id=f"metrics-{key}", image_uri=f"s3://uploads/metrics/{key}", source="tenant-m")
                  for key in images]
        events.append(UploadEvent(event_id="metrics-ghost", image_uri="s3://ghost-bucket/x.jpg", source="tenant-m"))
        ids = submit(events, celery_app=celery_app)
        engine = create_engine(postgres_url)
        statuses = wait_terminal(engine, ids, worker)
        engine.dispose()
        assert statuses == {"metrics-m-face.jpg": "scored", "metrics-m-noface.jpg": "no_face",
                            "metrics-m-page.jpg": "invalid_input", "metrics-ghost": "failed"}
        wait_for(lambda: total(scrape(), "deepscreen_images_screened_total") >= 3, 30, what="counters flushed")
        rows = scrape()

        screened = {(lab["queue"], lab["model_version"], lab["status"], lab["verdict"]): v
                    for n, lab, v in rows if n == "deepscreen_images_screened_total"}
        assert screened == {("upload", "test-flag-all", "scored", "fake"): 1,
                            ("upload", "test-flag-all", "no_face", "none"): 1,
                            ("upload", "test-flag-all", "invalid_input", "none"): 1}
        assert total(rows, "deepscreen_source_verdicts_total", source="tenant-m", verdict="fake") == 1
        for name in ("deepscreen_retries_total", "deepscreen_dead_letters_total"):
            assert total(rows, name, queue="upload", model_version="test-flag-all", reason="storage") == 1, name
        for since in ("upload", "enqueue"):
            assert total(rows, "deepscreen_event_latency_seconds_count", queue="upload", since=since,
                         model_version="test-flag-all") == 3
        stages = {lab["stage"] for n, lab, _ in rows if n == "deepscreen_stage_seconds_count"}
        assert stages == {"fetch", "decode", "detect", "classify", "gradcam", "encode", "store"}
        assert total(rows, "deepscreen_batch_size_count", model_version="test-flag-all") >= 2
        assert total(rows, "deepscreen_batch_size_sum", model_version="test-flag-all") >= 4
        pids = {p.name.rsplit("_", 1)[-1] for p in (tmp_path / "multiproc").glob("gauge_livesum_*.db")}
        assert len(pids) == 2  # two children wrote their own files

        # the consumer loop rewrites the heartbeat every second (DEEPSCREEN_HEARTBEAT_SECONDS=1)
        first = json.loads(heartbeat.read_text())["at"]
        wait_for(lambda: json.loads(heartbeat.read_text())["at"] > first, 10, what="heartbeat rewritten")
        probe = subprocess.run([str(BIN / "deepscreen"), "probe", "worker", "--max-age", "5"], env=env,
                               capture_output=True, text=True)
        assert probe.returncode == 0, probe.stderr
        status = subprocess.run([str(BIN / "deepscreen"), "status", "--json"], env=env, capture_output=True,
                                text=True)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert [(w["model_version"], w["queues"]) for w in report["workers"]] == [("test-flag-all", ["control", "rescan", "upload"])]
        assert {q["queue"] for q in report["queues"]} == {"upload", "rescan"}
        finished = report["database"]["throughput"]["by_status"]
        assert finished.get("scored", 0) >= 1 and finished.get("failed", 0) >= 1
        assert any(e["event_id"] == "metrics-ghost" and e["reason"].startswith("retries_exhausted")
                   for e in report["database"]["errors"])
        assert report["database"]["review_backlog"]["pending"] >= 1
        text_report = subprocess.run([str(BIN / "deepscreen"), "status"], env=env, capture_output=True, text=True)
        assert "workers (1 live)" in text_report.stdout and "test-flag-all" in text_report.stdout

        # the daily retention task, as beat sends it, runs in a worker (nothing is old enough to go)
        from workers.app import RETENTION_TASK

        assert celery_app.conf.beat_schedule["retention"]["task"] == RETENTION_TASK
        celery_app.send_task(RETENTION_TASK, queue="upload")
        wait_for(lambda: b"retention applied" in worker.log_path.read_bytes(), 60, what="retention ran")

        # JSON logs: the verdict line of the scored event carries its trace fields
        lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
        verdict_lines = [x for x in lines if x.get("event_id") == "metrics-m-face.jpg" and "verdict" in x["message"]]
        assert verdict_lines, "no JSON verdict line for the scored event"
        line = verdict_lines[0]
        assert len(line["sha256"]) == 64 and line["model_version"] == "test-flag-all" and line["batch_id"]
    finally:
        worker.stop()
    # a stopped worker removes its heartbeat: the probe fails
    assert not heartbeat.exists()
    dead = subprocess.run([str(BIN / "deepscreen"), "probe", "worker"], env=env, capture_output=True, text=True)
    assert dead.returncode == 1


def test_api_metric_labels_stay_bounded_under_random_methods_and_paths(tmp_path: Path) -> None:
    """Label values come from fixed sets: 3,000 requests with random method names and paths add a bounded
    number of series to the API's /metrics, however many distinct values they carry."""
    import random
    import string

    from fastapi.testclient import TestClient

    from review.api import create_app
    from review.auth import app_routes
    from review.context import embedded_context
    from workers.settings import Settings

    ctx = embedded_context(Settings(environment="test", signing_secret="s" * 40), tmp_path / "home")
    client = TestClient(create_app(ctx))
    rng = random.Random(26)

    def word() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=10))

    shapes = ("/v1/images/{n}", "/console/items/{n}", "/v1/review/items/{n}/claim", "/static/{w}", "/{w}/{w}",
              "/healthz", "/v1/{w}")
    before = len(client.get("/metrics").content)
    for _ in range(3000):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        path = rng.choice(shapes).format(n=rng.randint(1, 10**9), w=word())
        client.request(rng.choice((method, method, "GET", "POST")), path)
    text = client.get("/metrics").text
    ctx.close()
    series = {(lab["route"], lab["method"], lab["status"]) for n, lab, _ in samples(text)
              if n == "deepscreen_http_requests_total"}
    templates = {path for path, _, _ in app_routes(client.app)} | {"/static", "unmatched"}
    assert {method for _, method, _ in series} <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert {route for route, _, _ in series} <= templates
    assert len(series) <= 40, sorted(series)
    assert len(text) - before < 60_000, f"/metrics grew by {len(text) - before} bytes"
