"""Prometheus metrics of the screening workers, and the exporter that serves them.

Under Celery's prefork pool these are written in prometheus-client's multiprocess mode and summed by one
exporter per worker (workers/exporter.py says how).

Label cardinality is bounded: queue (2), model_version (a handful), status, verdict, stage, and a retry
reason class (not the free-text reason). `source` appears only on deepscreen_source_verdicts_total, which
the fake-rate anomaly alert needs; a platform with unbounded sources should map them to tenants first.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

STAGES = ("fetch", "decode", "detect", "classify", "gradcam", "store")
# Screen stage names (pipeline/screen.py timings) -> metric stage labels
STAGE_OF_TIMING = {"decode": "decode", "detect": "detect", "classify": "classify", "explain": "gradcam",
                   "encode": "encode"}
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

IMAGES_SCREENED = Counter(
    "deepscreen_images_screened_total", "Events that reached a terminal status, by status and verdict",
    ["queue", "model_version", "status", "verdict"])
SOURCE_VERDICTS = Counter(
    "deepscreen_source_verdicts_total", "Scored verdicts by source (tenant) and verdict: the fake-rate alert's input",
    ["source", "verdict"])
BATCH_SIZE = Histogram(
    "deepscreen_batch_size", "Events per micro-batch", ["queue", "model_version"], buckets=BATCH_BUCKETS)
STAGE_SECONDS = Histogram(
    "deepscreen_stage_seconds", "Seconds a micro-batch spent in each stage", ["stage", "model_version"],
    buckets=STAGE_BUCKETS)
EVENT_LATENCY = Histogram(
    "deepscreen_event_latency_seconds",
    "Seconds from the event's upload (since=upload) or first enqueue (since=enqueue) to its terminal status",
    ["queue", "model_version", "since"], buckets=LATENCY_BUCKETS)
RETRIES = Counter("deepscreen_retries_total", "Events re-queued for another try, by reason class",
                  ["queue", "model_version", "reason"])
DEAD_LETTERS = Counter("deepscreen_dead_letters_total", "Events that exhausted their retries (status failed)",
                       ["queue", "model_version", "reason"])
WORKER_PROCESSES = Gauge("deepscreen_worker_processes", "Worker processes with a loaded model",
                         ["model_version"], multiprocess_mode="livesum")


def reason_class(reason: str | None) -> str:
    """A retry reason's class, a bounded label value (the free text stays in the logs and the database)."""
    if not reason:
        return "unknown"
    head = reason.split(":", 1)[0].strip()
    if head in ("database", "out_of_memory", "save_error", "batch_error", "worker_crashed"):
        return head
    if reason.startswith("s3 ") or "s3://" in reason:
        return "storage"
    return "other"


def queue_of(priority: str) -> str:
    return "rescan" if priority == "rescan" else "upload"


def record_batch(jobs: list, outcomes: list, stage_seconds: dict[str, float], model_version: str,  # noqa: ANN001
                 now: float) -> None:
    """One micro-batch's samples: batch size, seconds per stage, and per finished event its status, verdict
    and latency. Retries and dead letters are counted where they are decided (workers/tasks.py)."""
    queues = {queue_of(j.event.priority) for j in jobs}
    batch_queue = queues.pop() if len(queues) == 1 else "mixed"
    if jobs:
        BATCH_SIZE.labels(batch_queue, model_version).observe(len(jobs))
    for stage, seconds in stage_seconds.items():
        STAGE_SECONDS.labels(stage, model_version).observe(seconds)
    for outcome in outcomes:
        saved = outcome.saved
        if saved is None or outcome.skipped:
            continue
        event = outcome.job.event
        queue = queue_of(event.priority)
        IMAGES_SCREENED.labels(queue, model_version, saved.status, saved.verdict or "none").inc()
        if saved.verdict:
            SOURCE_VERDICTS.labels(event.source, saved.verdict).inc()
        EVENT_LATENCY.labels(queue, model_version, "upload").observe(max(0.0, now - event.uploaded_at.timestamp()))
        if outcome.job.enqueued_at:
            EVENT_LATENCY.labels(queue, model_version, "enqueue").observe(max(0.0, now - outcome.job.enqueued_at))
