"""Producers: put upload events on the Redis queues (the small Python function and `deepscreen submit`)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery

from pipeline.events import Priority, UploadEvent, parse_payload
from workers.app import enqueue
from workers.storage import original_content_type, original_suffix

if TYPE_CHECKING:
    from db.store import Store

log = logging.getLogger(__name__)


class QueueUnavailable(RuntimeError):
    """The broker refused an enqueue; the events not yet queued were un-recorded, so a retry queues them."""

    def __init__(self, queued: list[str], left: list[str]) -> None:
        super().__init__(f"the queue is unavailable: {len(left)} events not queued")
        self.queued, self.left = queued, left


def submit(events: Iterable[UploadEvent | dict[str, Any] | str], celery_app: Celery | None = None,
           store: Store | None = None) -> list[str]:
    """Validate and enqueue events (uploads and re-scans on their own queues). Returns the event ids queued.

    Raises InvalidEvent before anything is enqueued if any event is malformed. `celery_app` defaults to the
    app configured from DEEPSCREEN_ settings.

    With a `store`, each event is first recorded as `queued` (record_and_enqueue, which `deepscreen submit` and the
    API call), and an event id recorded before is not queued again (a producer may retry). A message Redis loses (a worker killed
    between kombu's BRPOP and its unacknowledged-record write, a Redis restart without persistence) is then
    re-sent by the stuck-event sweeper. Without one the events only go on the queue, and such a loss is final.
    """
    if celery_app is None:
        from workers.app import app as celery_app

    parsed = parse_events(events)
    if store is not None:
        return record_and_enqueue(store, celery_app, parsed)
    for event in parsed:
        enqueue(celery_app, event.model_dump(mode="json"), event.priority)
    log.info("submitted count=%d", len(parsed))
    return [e.event_id for e in parsed]


def parse_events(events: Iterable[UploadEvent | dict[str, Any] | str]) -> list[UploadEvent]:
    """Events, dicts, JSON text or S3 notifications as UploadEvents; InvalidEvent names every problem."""
    parsed: list[UploadEvent] = []
    for item in events:
        parsed.extend([item] if isinstance(item, UploadEvent) else parse_payload(item))
    return parsed


def record_and_enqueue(store: Store, celery_app: Celery, events: list[UploadEvent]) -> list[str]:
    """Record the events that are new as `queued`, then enqueue them; returns the ids queued. If the broker
    fails part-way, the rest are un-recorded and QueueUnavailable says which (the producer retries them)."""
    unique = list({e.event_id: e for e in events}.values())
    fresh = set(store.record_events(unique))
    queued: list[str] = []
    try:
        for event in unique:
            if event.event_id in fresh:
                enqueue(celery_app, event.model_dump(mode="json"), event.priority)
                queued.append(event.event_id)
                log.info("queued event_id=%s source=%s priority=%s", event.event_id, event.source, event.priority)
    except BaseException as exc:  # the broker is down, or an interrupt: unrecord the rest so a retry queues them
        left = sorted(fresh - set(queued))
        log.error("enqueue failed error=%s; %d events left for the producer to retry", type(exc).__name__, len(left))
        store.forget_queued(left)
        if isinstance(exc, Exception):
            raise QueueUnavailable(queued, left) from exc
        raise
    if len(queued) < len(unique):
        log.info("not queued again (recorded before) count=%d", len(unique) - len(queued))
    return queued


def local_events(client, bucket: str, paths: Iterable[Path], source: str, priority: Priority,  # noqa: ANN001
                 prefix: str = "incoming") -> Iterator[UploadEvent]:
    """Upload local files to the upload bucket under content-addressed keys, yielding their events."""
    for path in paths:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        # name and type from the bytes: a file called x.png may hold HTML, and its link must not render it
        key = f"{prefix}/{digest[:2]}/{digest}{original_suffix(data)}"
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=original_content_type(data))
        yield UploadEvent(event_id=_event_id("file", digest[:40], priority), image_uri=f"s3://{bucket}/{key}",
                          sha256=digest, source=source, priority=priority)


def s3_prefix_events(client, uri: str, source: str, priority: Priority) -> Iterator[UploadEvent]:  # noqa: ANN001
    """Every object under s3://bucket/prefix, as events keyed by bucket, key and ETag."""
    bucket, _, prefix = uri[5:].partition("/")
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue
            etag = str(obj.get("ETag", "")).strip('"')
            digest = hashlib.sha256(f"{bucket}\x00{obj['Key']}\x00{etag}".encode()).hexdigest()[:32]
            yield UploadEvent(event_id=_event_id("s3", digest, priority), image_uri=f"s3://{bucket}/{obj['Key']}",
                              source=source, priority=priority)


_RUN = uuid.uuid4().hex[:10]


def _event_id(kind: str, digest: str, priority: Priority) -> str:
    """Uploads are keyed by content/object, so a resubmission is a no-op. A re-scan is a new request to screen
    the same object again (under a new model), so it carries this submission's run id."""
    return f"{kind}-{digest}" if priority == "upload" else f"rescan-{_RUN}-{kind}-{digest}"


def new_event_id() -> str:
    return f"evt-{uuid.uuid4().hex}"
