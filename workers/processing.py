"""The adapter glue around screen_batch: fetch -> reuse check -> screen -> store blobs -> save verdicts.

The Celery task and the embedded `deepscreen scan` both call `process_events`; they differ only in the
adapters in the Runtime (Postgres or SQLite; S3 or a local folder).

An event sent before an erasure of the bytes it carries ends `erased`: checked once the bytes are fetched
(nothing is screened), and again by the save in its own transaction (an erasure while the batch screened);
blobs written for a verdict the save then refused are deleted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from db.events import SavedResult
from db.states import EventStatus
from db.store import BlobKeys, ExistingVerdict, Store
from pipeline.decode import OUT_OF_MEMORY
from pipeline.errors import InvalidInput
from pipeline.events import UploadEvent
from pipeline.screen import Screener, ScreenItem, Verdict
from workers import metrics
from workers.known_fakes import KnownFakeMemory
from workers.rollout import Models, ModelSwitch, run_canary
from workers.storage import BlobStore, InputReader, TransientError

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

# Connection-level failures only: a DataError or IntegrityError is this event's problem, not an outage.
TRANSIENT_DB = (OperationalError, InterfaceError)


@dataclass
class Runtime:
    """Everything one worker process needs, built once at process start."""

    screener: Screener
    store: Store
    blobs: BlobStore
    reader: InputReader
    fetch_threads: int = 8
    models: ModelSwitch | None = None  # distributed: follow the registry's active/canary versions per batch
    known_fakes: KnownFakeMemory | None = None  # None: no bank matching


@dataclass(frozen=True)
class Job:
    event: UploadEvent
    attempt: int = 1  # 1 for the first delivery
    enqueued_at: float | None = None  # epoch seconds of the first enqueue (the message says), for latency


@dataclass(frozen=True)
class Outcome:
    job: Job
    saved: SavedResult | None = None  # None: a transient failure, the job must be retried
    retry_reason: str | None = None
    skipped: bool = False  # the event already had a terminal status (a redelivery)


def heatmap_keys(model_version: str, sha256: str) -> tuple[str, str]:
    """Content-addressed prefix: the same image under the same model always lands on the same keys."""
    base = f"heatmaps/{model_version}/{sha256[:2]}/{sha256}"
    return base, f"{base}/image.jpg"


def process_events(runtime: Runtime, jobs: Sequence[Job]) -> list[Outcome]:
    """Screen a batch of events and save their results: `persist_events(screen_events(...))`."""
    return persist_events(runtime, screen_events(runtime, jobs))


@dataclass
class Screened:
    """A batch between its two halves: screened (verdicts in memory), not yet saved."""

    jobs: Sequence[Job]
    started: float
    model_version: str
    outcomes: dict[int, Outcome]  # settled without a verdict to save: skipped, reused, fetch failures
    verdicts: list[Verdict]
    to_screen: dict[str, list[int]]  # verdict key -> the job indexes it answers
    stages: dict[str, float]


def screen_events(runtime: Runtime, jobs: Sequence[Job]) -> Screened:
    """Fetch, reuse check and screening: everything before the writes. `deepscreen scan` runs the next
    batch's screen_events while this batch's persist_events writes (workers/embedded.py)."""
    started = time.perf_counter()
    models = runtime.models.current() if runtime.models is not None else None
    if models is not None:
        runtime.screener = models.active  # an activation reaches this process at its next batch
    outcomes: dict[int, Outcome] = {}
    stages: dict[str, float] = {}
    to_screen: dict[str, list[int]] = {}  # sha256 (or a unique key for failures) -> job indexes
    verdicts: list[Verdict] = []
    model_version = runtime.screener.model_version
    try:
        finished = runtime.store.finished_events([j.event.event_id for j in jobs])
    except TRANSIENT_DB as exc:
        outcomes = {i: Outcome(j, retry_reason=f"database: {type(exc).__name__}") for i, j in enumerate(jobs)}
        return Screened(jobs, started, model_version, outcomes, verdicts, to_screen, stages)
    pending = []
    for index, job in enumerate(jobs):
        status = finished.get(job.event.event_id)
        if status is not None:
            outcomes[index] = Outcome(job, SavedResult(job.event.event_id, status, None, None, None, True), skipped=True)
        else:
            pending.append(index)
    fetch_started = time.perf_counter()
    fetched = _fetch(runtime, [jobs[i] for i in pending])
    stages["fetch"] = time.perf_counter() - fetch_started
    digests = {index: hashlib.sha256(result).hexdigest() for index, result in zip(pending, fetched, strict=True)
               if isinstance(result, bytes)}
    existing = _existing(runtime, list(digests.values()))  # one query for the batch
    outcomes.update(_erased_outcomes(runtime, {index: (jobs[index], sha) for index, sha in digests.items()}))
    items: dict[str, ScreenItem] = {}
    for index, result in zip(pending, fetched, strict=True):
        job = jobs[index]
        if index in outcomes:
            continue
        if isinstance(result, TransientError):
            outcomes[index] = Outcome(job, retry_reason=str(result)[:200])
            continue
        if isinstance(result, InvalidInput):
            key = f"error:{index}"
            items[key] = ScreenItem(key=key, data=None, error=result)
        else:
            key = digests[index]
            if job.event.sha256 and job.event.sha256 != key:
                key = f"mismatch:{index}"  # screened alone: it will get invalid_input sha256_mismatch
            elif key not in items and key in existing:
                outcomes[index] = _link(runtime, job, existing[key], key)
                continue
            items.setdefault(key, ScreenItem(key=key, data=result, expected_sha256=job.event.sha256))
        to_screen.setdefault(key, []).append(index)
    if items:
        verdicts = runtime.screener.screen_batch(list(items.values()))
        stages.update(_stage_seconds(verdicts))
        if models is not None and models.canary is not None:
            _canary(runtime, models, list(items.values()), verdicts,
                    {key: jobs[indexes[0]].event.event_id for key, indexes in to_screen.items()})
        if runtime.known_fakes is not None:
            verdicts = runtime.known_fakes.apply(verdicts)
    return Screened(jobs, started, model_version, outcomes, verdicts, to_screen, stages)


def persist_events(runtime: Runtime, screened: Screened) -> list[Outcome]:
    """Blobs (in parallel), then the verdict rows (one transaction for the batch); one outcome per job, in the
    jobs' order."""
    jobs, outcomes, stages = screened.jobs, screened.outcomes, screened.stages
    if screened.verdicts:
        store_started = time.perf_counter()
        _persist(runtime, screened, outcomes)
        stages["store"] = time.perf_counter() - store_started
    elapsed = time.perf_counter() - screened.started
    ordered = [outcomes[i] for i in range(len(jobs))]
    metrics.record_batch(list(jobs), ordered, stages, screened.model_version, time.time())
    log.info("batch done size=%d screened=%d seconds=%.3f model_version=%s", len(jobs), len(screened.verdicts),
             elapsed, screened.model_version)
    return ordered


def _stage_seconds(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """The batch's seconds per screen stage (screen_batch records each stage's time per image)."""
    if not verdicts:
        return {}
    timings = verdicts[0].timings
    size = timings.get("batch_size", float(len(verdicts)))
    return {metrics.STAGE_OF_TIMING[k]: v * size for k, v in timings.items() if k in metrics.STAGE_OF_TIMING}


def _canary(runtime: Runtime, models: Models, items: list[ScreenItem], verdicts: list[Verdict],
            event_ids: dict[str, str]) -> None:
    """The canary's second opinion on a sample: recorded for the disagreement rate, never as a verdict."""
    assert runtime.models is not None
    try:
        runtime.models.registry.record_canary(run_canary(models, items, verdicts, event_ids))
    except Exception:  # noqa: BLE001 - a canary problem must not cost the batch its verdicts
        log.exception("canary scoring failed; the batch's verdicts are unaffected")


def _fetch(runtime: Runtime, jobs: list[Job]) -> list[bytes | InvalidInput | TransientError]:
    def one(job: Job) -> bytes | InvalidInput | TransientError:
        try:
            return runtime.reader.read(job.event.image_uri)
        except (InvalidInput, TransientError) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - an unknown fetch failure is retried, then dead-lettered
            return TransientError(f"{type(exc).__name__}: {exc}")

    return _on_io_threads(runtime, one, jobs, len(jobs), "fetch")


def _on_io_threads(runtime: Runtime, fn: Callable[[_T], _R], items: Sequence[_T], busy: int, name: str) -> list[_R]:
    """`fn` over `items` on up to `fetch_threads` threads (object-store round trips), in order; in this thread
    when at most one of them has real work (`busy`)."""
    if busy <= 1 or runtime.fetch_threads <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(runtime.fetch_threads, busy), thread_name_prefix=name) as pool:
        return list(pool.map(fn, items))


def _existing(runtime: Runtime, sha256s: list[str]) -> dict[str, ExistingVerdict]:
    try:
        return runtime.store.find_verdicts(sha256s, runtime.screener.model_version)
    except TRANSIENT_DB:
        return {}  # screen them; the save will hit the same outage and retry


def _erased_outcomes(runtime: Runtime, fetched: dict[int, tuple[Job, str]]) -> dict[int, Outcome]:
    """Events sent before an erasure of the bytes they carry: recorded `erased`, never screened. In an outage
    they are screened as usual; the save checks again."""
    try:
        covered = runtime.store.erased_events([(job.event, sha) for job, sha in fetched.values()])
        if not covered:
            return {}
        saved = runtime.store.mark_erased([(job.event, job.attempt) for job, _ in fetched.values()
                                           if job.event.event_id in covered])
    except TRANSIENT_DB:
        return {}
    log.warning("erased before screening event_ids=%s", ",".join(sorted(covered)))
    return {index: Outcome(job, saved[job.event.event_id]) for index, (job, _) in fetched.items()
            if job.event.event_id in saved}


def _link(runtime: Runtime, job: Job, existing, sha256: str) -> Outcome:  # noqa: ANN001
    try:
        return Outcome(job, replace(runtime.store.link_existing(job.event, existing, job.attempt, sha256), sha256=sha256))
    except TRANSIENT_DB as exc:
        return Outcome(job, retry_reason=f"database: {type(exc).__name__}")


def store_blobs(blobs: BlobStore, verdict: Verdict) -> BlobKeys:
    """Write the heatmaps before the verdict row, so no committed verdict points at a missing object."""
    if verdict.sha256 is None or verdict.status != "scored":
        return BlobKeys()
    base, image_key = heatmap_keys(verdict.model_version, verdict.sha256)
    faces: dict[int, tuple[str | None, str | None]] = {}
    heatmap = None
    for face in verdict.faces:
        heat = blobs.put(f"{base}/face-{face.index}.jpg", face.heatmap_jpeg, "image/jpeg") if face.heatmap_jpeg else None
        crop = blobs.put(f"{base}/crop-{face.index}.jpg", face.crop_jpeg, "image/jpeg") if face.crop_jpeg else None
        faces[face.index] = (heat, crop)
        if heat is not None and face.heatmap_jpeg is verdict.heatmap_jpeg:
            heatmap = heat  # a face crop screened as it is: the image's heatmap is the face's, stored once
    if heatmap is None and verdict.heatmap_jpeg:
        heatmap = blobs.put(image_key, verdict.heatmap_jpeg, "image/jpeg")
    return BlobKeys(heatmap=heatmap, faces=faces)


def _persist(runtime: Runtime, screened: Screened, outcomes: dict[int, Outcome]) -> None:
    """Every verdict's blobs, then every row: blobs before rows, so no committed verdict points at a missing
    object. The rows go in one transaction; if that fails for a reason of one row's own (not an outage), the
    rows are saved one by one, so a bad row only costs its own event a retry."""
    jobs = screened.jobs
    storable = []
    for verdict in screened.verdicts:
        if verdict.reason == OUT_OF_MEMORY:  # the machine's state, not the image's: screen it again
            for index in screened.to_screen[verdict.key]:
                outcomes[index] = Outcome(jobs[index], retry_reason="out_of_memory")
        else:
            storable.append(verdict)
    rows: list[tuple[int, Job, Verdict, BlobKeys]] = []
    for verdict, keys in zip(storable, _store_all_blobs(runtime, storable), strict=True):
        for index in screened.to_screen[verdict.key]:
            if isinstance(keys, str):
                outcomes[index] = Outcome(jobs[index], retry_reason=keys)
            else:
                rows.append((index, jobs[index], verdict, keys))
    if not rows:
        return
    try:
        saved = runtime.store.save_many([(job.event, verdict, keys, job.attempt) for _, job, verdict, keys in rows])
    except TRANSIENT_DB as exc:
        for index, job, _, _ in rows:
            outcomes[index] = Outcome(job, retry_reason=f"database: {type(exc).__name__}")
        return
    except Exception:  # noqa: BLE001 - find the row at fault: each alone
        log.warning("saving %d verdicts in one transaction failed; saving them one by one", len(rows), exc_info=True)
        for index, job, verdict, keys in rows:
            outcomes[index] = _save_one(runtime, job, verdict, keys)
        _forget_refused_blobs(runtime, rows, outcomes)
        return
    for (index, job, verdict, _), result in zip(rows, saved, strict=True):
        outcomes[index] = Outcome(job, replace(result, sha256=verdict.sha256))
    _forget_refused_blobs(runtime, rows, outcomes)


def _forget_refused_blobs(runtime: Runtime, rows: list[tuple[int, Job, Verdict, BlobKeys]],
                          outcomes: dict[int, Outcome]) -> None:
    """The blobs of verdicts every one of whose events the save refused as erased, unless a verdict of the same
    content (a re-upload after the erasure) now uses those content-addressed keys."""
    refused: dict[str, tuple[Verdict, BlobKeys]] = {}
    kept: set[str] = set()
    for index, _, verdict, keys in rows:
        saved = outcomes[index].saved
        if saved is not None and saved.status == EventStatus.ERASED:
            refused[verdict.key] = (verdict, keys)
        else:
            kept.add(verdict.key)
    for key, (verdict, keys) in refused.items():
        names = [k for k in (keys.heatmap, *(k for pair in keys.faces.values() for k in pair)) if k]
        if key in kept or not names or verdict.sha256 is None:
            continue
        try:
            if runtime.store.find_verdict(verdict.sha256, verdict.model_version) is not None:
                continue
            for name in names:
                runtime.blobs.delete(name)
        except Exception:  # noqa: BLE001 - the outcomes stand; the erasure's own report lists what is left
            log.exception("deleting the blobs of an erased image failed keys=%d", len(names))


def _store_all_blobs(runtime: Runtime, verdicts: list[Verdict]) -> list[BlobKeys | str]:
    """store_blobs for each verdict, on the fetch threads (object stores are network round trips); a failure
    becomes its retry reason."""
    def one(verdict: Verdict) -> BlobKeys | str:
        try:
            return store_blobs(runtime.blobs, verdict)
        except TransientError as exc:
            return str(exc)[:200]
        except Exception as exc:  # noqa: BLE001 - one verdict's blobs must not take its batch-mates down
            log.exception("storing the blobs of sha256=%s failed", verdict.sha256)
            return f"save_error: {type(exc).__name__}: {exc}"[:200]

    busy = sum(1 for v in verdicts if v.sha256 is not None and v.status == "scored")
    return _on_io_threads(runtime, one, verdicts, busy, "blobs")


def _save_one(runtime: Runtime, job: Job, verdict: Verdict, keys: BlobKeys) -> Outcome:
    try:
        saved = runtime.store.save(job.event, verdict, keys, attempts=job.attempt)
        return Outcome(job, replace(saved, sha256=verdict.sha256))
    except TRANSIENT_DB as exc:
        return Outcome(job, retry_reason=f"database: {type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - one event's bad row must not take its batch-mates down
        log.exception("saving event_id=%s failed", job.event.event_id)
        return Outcome(job, retry_reason=f"save_error: {type(exc).__name__}: {exc}"[:200])
