""""Check an image": one upload screened by the same process_events as every worker, stored and audited.

The upload is stored where workers read originals (the upload bucket, or the embedded home), recorded as
an event with source `console-check`, screened in-process with this server's runtime, and written to the
same tables; a flagged check opens a review item like any upload. The audit log names who checked what.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass

from db.review_store import Actor
from db.states import EventStatus
from pipeline.decode import decoded_ahead
from pipeline.events import UploadEvent
from review.context import ReviewContext
from workers.processing import Job, process_events
from workers.storage import original_content_type, original_suffix

log = logging.getLogger(__name__)

CHECK_SOURCE = "console-check"


class CheckFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckResult:
    event_id: str
    status: str
    verdict_id: int | None
    review_item_id: int | None


def run_check(ctx: ReviewContext, actor: Actor, data: bytes, filename: str | None) -> CheckResult:
    if not data:
        raise CheckFailed("empty")
    sha256 = hashlib.sha256(data).hexdigest()
    # stored before decoding, so name and type come from the bytes, never from the client's file name
    key = f"checks/{sha256[:2]}/{sha256}{original_suffix(data)}"
    uri = ctx.put_upload(key, data, original_content_type(data))
    event = UploadEvent(event_id=f"check-{uuid.uuid4().hex}", image_uri=uri, sha256=sha256, source=CHECK_SOURCE)
    try:
        runtime = ctx.runtime()
    except Exception as exc:  # noqa: BLE001 - a model that will not load is the server's problem, said plainly
        log.error("screener unavailable error=%s: %s", type(exc).__name__, exc)
        raise CheckFailed("screener_unavailable") from exc
    ctx.store.record_events([event])
    # Decoded before the lock: a slow or hostile file costs its own request (within the decode limits) and
    # never holds another check behind it; the screening under the lock takes this result.
    with decoded_ahead(data, runtime.screener.config.decode), ctx.screen_lock:
        outcome = process_events(runtime, [Job(event)])[0]  # one Screener per process, not thread-safe
    if outcome.saved is None:
        log.warning("check failed event_id=%s reason=%s", event.event_id, outcome.retry_reason)
        ctx.store.mark_failed(event, EventStatus.FAILED, (outcome.retry_reason or "unknown")[:200], 1)
        raise CheckFailed("screening_failed")
    saved = outcome.saved
    ctx.reviews.record(actor, "check", saved.review_item_id, details={
        "event_id": event.event_id, "sha256": sha256, "status": saved.status, "verdict": saved.verdict,
        "verdict_id": saved.verdict_id, "reused": saved.reused})
    return CheckResult(event.event_id, saved.status, saved.verdict_id, saved.review_item_id)
