"""The Celery app and its settings: acks_late with task_reject_on_worker_lost, uploads polled before
re-scans, a prefork pool with one model per child, time limits below the visibility timeout, and a prefetch
of whole batches rather than Celery's usual 1, because a worker can only batch what it holds (acks_late keeps
that safe). Why each: docs/architecture.md, "How a worker runs".
"""

from __future__ import annotations

import time

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from workers.settings import Settings, get_settings

UPLOAD_QUEUE = "upload"
RESCAN_QUEUE = "rescan"
CONTROL_QUEUE = "control"  # small periodic jobs (re-scan ticks): polled before the screening queues
SCREEN_TASK = "deepscreen.screen"
RESCAN_TICK_TASK = "deepscreen.rescan_tick"
RESCAN_NIGHTLY_TASK = "deepscreen.rescan_nightly"
REQUEUE_STUCK_TASK = "deepscreen.requeue_stuck"
RETENTION_TASK = "deepscreen.retention"


def prefetch_multiplier(settings: Settings) -> int:
    """Celery reserves multiplier x concurrency messages. A batch needs `batch_size` of them reserved, and the
    next one should be filling while the pool's batches run: `batch_size` x (concurrency + 1) in all (twice the
    batch for `solo`)."""
    wanted = settings.batch_size * (settings.concurrency + 1)
    return max(1, -(-wanted // settings.concurrency))


def create_app(settings: Settings) -> Celery:
    app = Celery("deepscreen", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=prefetch_multiplier(settings),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "queue_order_strategy": "priority",
            # kombu looks for messages whose worker died every `unacked_restore_interval` (10 s), but scans only
            # one call in `unacked_restore_throttle` (10 by default): a killed worker's messages would come back
            # up to 100 s after their visibility timeout. The scan is one ZRANGE on a small index.
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(CONTROL_QUEUE), Queue(UPLOAD_QUEUE), Queue(RESCAN_QUEUE)],
        task_default_queue=UPLOAD_QUEUE,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_pool=settings.pool,
        worker_concurrency=settings.concurrency,
        worker_send_task_events=False,
        task_track_started=False,
        task_soft_time_limit=settings.task_soft_time_limit_s or None,
        task_time_limit=settings.task_time_limit_s or None,
    )
    app.conf.beat_schedule = beat_schedule(settings)
    app.conf.deepscreen_settings = settings
    return app


def beat_schedule(settings: Settings) -> dict:
    """Re-scan ticks (they expire when no worker takes them in time, so a busy fleet does not pile them up),
    the stuck-event sweeper, the nightly run and the daily retention."""
    schedule: dict = {
        "rescan-tick": {"task": RESCAN_TICK_TASK, "schedule": settings.rescan_tick_s,
                        "options": {"queue": CONTROL_QUEUE, "expires": max(1.0, settings.rescan_tick_s)}},
    }
    schedule["requeue-stuck"] = {"task": REQUEUE_STUCK_TASK, "schedule": settings.stuck_check_s,
                                 "options": {"queue": CONTROL_QUEUE, "expires": settings.stuck_check_s}}
    # retention once a day (workers/retention.py); beat runs it, any worker executes it
    schedule["retention"] = {"task": RETENTION_TASK, "schedule": crontab(hour=3, minute=17),
                             "options": {"queue": CONTROL_QUEUE}}
    if settings.rescan_cron:
        minute, hour, day, month, weekday = settings.rescan_cron.split()
        schedule["rescan-nightly"] = {"task": RESCAN_NIGHTLY_TASK, "options": {"queue": CONTROL_QUEUE},
                                      "schedule": crontab(minute=minute, hour=hour, day_of_month=day,
                                                          month_of_year=month, day_of_week=weekday)}
    return schedule


def enqueue(celery_app: Celery, event: dict, priority: str, attempt: int = 1, countdown: float | None = None,
            enqueued_at: float | None = None) -> None:
    """Put one event on its queue by task name (producers need not import the worker's task module).

    `enqueued_at` (epoch seconds of the first enqueue; a retry passes the original on) feeds the latency
    metric and the queue collector's oldest-message age."""
    queue = RESCAN_QUEUE if priority == "rescan" else UPLOAD_QUEUE
    kwargs = {"attempt": attempt, "enqueued_at": enqueued_at if enqueued_at is not None else time.time()}
    celery_app.send_task(SCREEN_TASK, args=[event], kwargs=kwargs, queue=queue, countdown=countdown)


app = create_app(get_settings())
