"""Celery tasks. `deepscreen.screen` takes one event per call; celery-batches hands them to us as lists,
flushed every `batch_size` messages or every `batch_wait_ms`, whichever comes first."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import TYPE_CHECKING

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from db.states import EventStatus
from pipeline.errors import InvalidEvent
from pipeline.events import parse_event
from workers import exporter, heartbeat, metrics
from workers.app import (
    REQUEUE_STUCK_TASK,
    RESCAN_NIGHTLY_TASK,
    RESCAN_TICK_TASK,
    RETENTION_TASK,
    SCREEN_TASK,
    app,
    enqueue,
)
from workers.logs import log_context
from workers.memory import HeapTrimmer
from workers.processing import TRANSIENT_DB, Job, Outcome, Runtime, process_events

if TYPE_CHECKING:
    from pipeline.screen import Screener

log = logging.getLogger(__name__)

_runtime: Runtime | None = None
_runtime_pid: int | None = None
_screener: Screener | None = None
_screener_pid: int | None = None


def runtime() -> Runtime:
    """This process's runtime, built once (the worker builds it at process start, not at import).

    The model is loaded first and kept on its own: building the rest needs the database (the process registers
    its model there), and a pool child started during an outage retries that at each batch without loading the
    model again."""
    global _runtime, _runtime_pid, _screener, _screener_pid
    pid = os.getpid()
    if _runtime is None or _runtime_pid != pid:
        from workers.runtime import distributed_runtime, worker_screener

        settings = app.conf.deepscreen_settings
        if _screener is None or _screener_pid != pid:
            _screener, _screener_pid = worker_screener(settings), pid
        _runtime = distributed_runtime(settings, screener=_screener)
        _runtime_pid = pid
        metrics.WORKER_PROCESSES.labels(_runtime.screener.model_version).set(1)
    return _runtime


@signals.worker_process_init.connect
def _load_models(**_: object) -> None:
    runtime()


@signals.worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: object) -> None:
    exporter.mark_process_dead(pid or os.getpid())


heartbeat.connect_signals()


settings = app.conf.deepscreen_settings
_trimmer = HeapTrimmer(settings.malloc_trim_interval_s) if settings.malloc_trim else None


class TimeLimitedBatches(Batches):
    """celery-batches' task, plus what its flush leaves out: when the pool ends a batch's process (the hard
    time limit, or the process died), the batch's messages go back on the queue at once instead of waiting
    out the visibility timeout. Their events' screening had begun, so they come back as suspects, screened
    one at a time, and one that keeps ending its process is dead-lettered (`_dead_letter_crasher`)."""

    def flush(self, requests):  # noqa: ANN001, ANN201 - celery-batches' signature
        late = [r for r in requests if r.task.acks_late]
        early = [r for r in requests if not r.task.acks_late]
        serializable = ([SimpleRequest.from_request(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for request in early:
                request.acknowledge()

        def on_return(result: object) -> None:
            for request in late:
                request.acknowledge()

        def on_error(error: object) -> None:
            log.error("batch of %d ended by the pool (%s); its messages go back on the queue", len(late),
                      getattr(getattr(error, "type", None), "__name__", type(error).__name__))
            for request in late:
                request.reject(requeue=True)

        return self._pool.apply_async(apply_batches_task, (self, serializable, 0, None),
                                      accept_callback=on_accepted, callback=on_return, error_callback=on_error)


@app.task(
    base=TimeLimitedBatches,
    name=SCREEN_TASK,
    flush_every=settings.batch_size,
    flush_interval=settings.batch_wait_ms / 1000.0,
    acks_late=True,
    reject_on_worker_lost=True,
)
def screen(requests) -> None:  # noqa: ANN001 - celery-batches SimpleRequest list
    # celery-batches acknowledges every message of the batch when this returns, even after an exception, so
    # nothing may escape: each event is either saved, re-queued, dead-lettered, or (a malformed message that
    # has no event to record) logged.
    try:
        with (_trimmer.batch() if _trimmer is not None else nullcontext(),
              log_context(batch_id=requests[0].id if requests else None, model_version=_model_version())):
            _screen(requests)
    except Exception:  # noqa: BLE001
        log.critical("batch handling failed outside the per-event paths; exiting so the broker redelivers",
                     exc_info=True)
        os._exit(75)


def _screen(requests) -> None:  # noqa: ANN001
    jobs: list[Job] = []
    for request in requests:
        try:
            event = parse_event(request.args[0] if request.args else request.kwargs.get("event"))
            attempt = max(1, int(request.kwargs.get("attempt", 1)))
            enqueued_at = _epoch(request.kwargs.get("enqueued_at"))
        except (InvalidEvent, TypeError, ValueError, RecursionError) as exc:
            log.error("dropping malformed message task_id=%s error=%s", request.id, str(exc)[:300])
            continue
        jobs.append(Job(event, attempt, enqueued_at))
    if not jobs:
        return
    log.info("batch start size=%d event_ids=%s", len(jobs), ",".join(j.event.event_id for j in jobs))
    # A message whose screening already began once without an end (a worker was killed, or the OOM killer struck)
    # may be what killed it: such messages are screened one at a time, after the others, and the ones that keep
    # dying are dead-lettered, so a poison message only ever takes itself down, and never loops.
    before = _started_before(jobs)
    fresh = [j for j in jobs if before.get(j.event.event_id, 0) == 0]
    suspects = sorted((j for j in jobs if before.get(j.event.event_id, 0) > 0),
                      key=lambda j: before[j.event.event_id])
    outcomes: list[Outcome] = []
    current: list[Job] = []
    try:
        if fresh:
            _begin(fresh)
            log.info("screening batch event_ids=%s", ",".join(j.event.event_id for j in fresh))
            current = fresh
            outcomes += _process(fresh)
        if suspects:
            log.warning("screening alone, after a worker died with them: event_ids=%s",
                        ",".join(j.event.event_id for j in suspects))
        for job in suspects:
            current = []
            count = _begin([job]).get(job.event.event_id, 1)
            if count > app.conf.deepscreen_settings.max_deliveries and _dead_letter_crasher(job, count):
                continue
            log.info("screening alone event_id=%s begun=%d", job.event.event_id, count)
            current = [job]
            outcomes += _process([job])
    except SoftTimeLimitExceeded:
        settled = {id(o.job) for o in outcomes}
        _over_time([j for j in jobs if id(j) not in settled], current)
    _settle(outcomes)


def _over_time(unsettled: list[Job], current: list[Job]) -> None:
    """The batch passed the soft time limit. An event screened alone when time ran out is what took the time:
    it is recorded `failed`, reason `time_limit`. The others go back on the queue under the same attempt:
    their screening had begun, so they come back as suspects, screened one at a time."""
    limit = app.conf.deepscreen_settings.task_soft_time_limit_s
    for job in unsettled:
        if current == [job]:
            log.error("time limit event_id=%s screened alone for more than %g s", job.event.event_id, limit)
            try:
                runtime().store.mark_failed(job.event, EventStatus.FAILED, f"time_limit: screening alone took more than "
                                            f"{limit:g} s", job.attempt)
                continue
            except TRANSIENT_DB:
                log.exception("could not record the time limit of event_id=%s; requeueing", job.event.event_id)
        log.warning("time limit: requeueing event_id=%s attempt=%d to screen it alone", job.event.event_id,
                    job.attempt)
        try:
            enqueue(app, job.event.model_dump(mode="json"), job.event.priority, attempt=job.attempt,
                    enqueued_at=job.enqueued_at)
        except Exception:  # noqa: BLE001 - the same way out as a retry that cannot be queued
            log.critical("cannot requeue event_id=%s; exiting so the broker redelivers the batch", job.event.event_id)
            os._exit(75)


def _process(jobs: list[Job]) -> list[Outcome]:
    try:
        return process_events(runtime(), jobs)
    except SoftTimeLimitExceeded:
        raise  # not a bug in the batch: the batch's time is up (_screen settles it)
    except TRANSIENT_DB as exc:  # the database is away while the runtime is built (a pool child started in
        # an outage registers its model there): an outage, so it never counts toward the events' attempts
        log.warning("database unavailable before screening size=%d error=%s", len(jobs), type(exc).__name__)
        return [Outcome(job, retry_reason=f"database: {type(exc).__name__}") for job in jobs]
    except Exception as exc:  # noqa: BLE001 - a bug must not lose the batch: every job goes back on the queue
        log.exception("batch failed size=%d; requeueing every event", len(jobs))
        return [Outcome(job, retry_reason=f"batch_error: {type(exc).__name__}: {exc}"[:200]) for job in jobs]


def _started_before(jobs: list[Job]) -> dict[str, int]:
    try:
        return runtime().store.started_before([(j.event, j.attempt) for j in jobs])
    except TRANSIENT_DB:
        return {}  # the database is away: screen as usual; saving will wait for it


def _begin(jobs: list[Job]) -> dict[str, int]:
    try:
        return runtime().store.count_deliveries([(j.event, j.attempt) for j in jobs])
    except TRANSIENT_DB:
        return {}


def _dead_letter_crasher(job: Job, count: int) -> bool:
    reason = f"worker_crashed: a worker died {count - 1} times while screening it (attempt {job.attempt})"
    log.error("dead-letter event_id=%s reason=%s", job.event.event_id, reason)
    try:
        runtime().store.mark_failed(job.event, EventStatus.FAILED, reason, job.attempt)
        metrics.DEAD_LETTERS.labels(metrics.queue_of(job.event.priority), _model_version() or "unknown",
                                    metrics.reason_class(reason)).inc()
        return True
    except TRANSIENT_DB:
        log.exception("could not record dead-letter event_id=%s; screening it alone", job.event.event_id)
        return False


def _settle(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.saved is None:
            _retry_or_dead_letter(outcome)
        elif not outcome.skipped:
            log.info("verdict event_id=%s sha256=%s status=%s verdict=%s reused=%s review_item_id=%s",
                     outcome.job.event.event_id, outcome.saved.sha256 or "-", outcome.saved.status,
                     outcome.saved.verdict, outcome.saved.reused, outcome.saved.review_item_id)


def _epoch(value: object) -> float | None:
    if value is None:
        return None
    seconds = float(value)  # type: ignore[arg-type]
    return seconds if seconds > 0 else None


def _model_version() -> str | None:
    try:
        return runtime().screener.model_version
    except Exception:  # noqa: BLE001 - the model failed to load: process_events will say so
        return None


def _retry_or_dead_letter(outcome: Outcome) -> None:
    settings = app.conf.deepscreen_settings
    job = outcome.job
    reason = outcome.retry_reason or "unknown"
    # A database outage is everybody's failure, not this event's: it never dead-letters an event (the backoff
    # is capped, so the worker keeps trying and resumes on its own). Anything else counts toward max_attempts.
    if job.attempt >= settings.max_attempts and not reason.startswith("database"):
        log.error("dead-letter event_id=%s attempts=%d reason=%s", job.event.event_id, job.attempt, reason)
        try:
            runtime().store.mark_failed(job.event, EventStatus.FAILED, f"retries_exhausted: {reason}"[:200], job.attempt)
            metrics.DEAD_LETTERS.labels(metrics.queue_of(job.event.priority), _model_version() or "unknown",
                                        metrics.reason_class(reason)).inc()
            return
        except TRANSIENT_DB:
            log.exception("could not record dead-letter event_id=%s; requeueing", job.event.event_id)
        except Exception:  # noqa: BLE001 - it cannot even be recorded: say so loudly, and stop retrying it
            log.critical("dead-letter event_id=%s could not be recorded; dropped after %d attempts reason=%s",
                         job.event.event_id, job.attempt, reason, exc_info=True)
            return
    delay = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** min(job.attempt - 1, 16))
    log.warning("retry event_id=%s attempt=%d in=%.1fs reason=%s", job.event.event_id, job.attempt + 1, delay, reason)
    try:
        enqueue(app, job.event.model_dump(mode="json"), job.event.priority, attempt=job.attempt + 1, countdown=delay,
                enqueued_at=job.enqueued_at)
        metrics.RETRIES.labels(metrics.queue_of(job.event.priority), _model_version() or "unknown",
                               metrics.reason_class(reason)).inc()
    except Exception:  # noqa: BLE001
        # celery-batches acknowledges the whole batch when this task returns, even after an exception. If the
        # retry cannot be queued, the only way not to lose the event is to die before that acknowledgement:
        # the unacknowledged messages come back after the visibility timeout.
        log.critical("cannot requeue event_id=%s; exiting so the broker redelivers the batch", job.event.event_id)
        os._exit(75)


# -- re-scans ----------------------------------------------------------------------------------------------
def _rescan_parts():  # noqa: ANN202
    from db.model_registry import ModelRegistry
    from db.rescan_store import RescanStore
    from workers.rescan import celery_driver

    settings = app.conf.deepscreen_settings
    engine = runtime().store.engine
    store = RescanStore(engine)
    driver = celery_driver(app, store, settings.rescan_tick_s, settings.rescan_max_queued)
    return settings, store, ModelRegistry(engine), driver


@app.task(name=RESCAN_TICK_TASK, ignore_result=True)
def rescan_tick() -> None:
    _, _, _, driver = _rescan_parts()
    moved = driver.tick()
    if any(moved.values()):
        log.info("rescan tick enqueued=%s", moved)


@app.task(name=RESCAN_NIGHTLY_TASK, ignore_result=True)
def rescan_nightly() -> None:
    from workers.rescan import start_nightly

    settings, store, registry, _ = _rescan_parts()
    run = start_nightly(store, registry, settings.model_dir, settings.rescan_rate_per_s, settings.rescan_chunk)
    if run is not None:
        log.info("nightly rescan started run_id=%d images=%d model_version=%s", run.id, run.selected, run.model_version)


@app.task(name=REQUEUE_STUCK_TASK, ignore_result=True)
def requeue_stuck() -> None:
    from workers.requeue import requeue_stuck_events

    requeue_stuck_events(app, runtime().store, app.conf.deepscreen_settings.stuck_after_s)


@app.task(name=RETENTION_TASK, acks_late=True)
def retention() -> dict:
    """The daily retention pass (beat schedules it); idempotent, so a duplicate run changes nothing."""
    from db.erasure_store import ErasureStore
    from workers.retention import apply_retention

    settings = app.conf.deepscreen_settings
    rt = runtime()
    return apply_retention(ErasureStore(rt.store.engine), rt.blobs, settings.retention_heatmap_days,
                           settings.retention_verdict_days)
