"""POST /v1/events: the same events the queue takes (one, a list, or an S3 notification); idempotent."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline.errors import InvalidEvent
from pipeline.events import parse_payload
from review.auth import Ingest
from review.context import Ctx
from review.schemas import Error, EventsAccepted, error_response
from workers.submit import QueueUnavailable, record_and_enqueue

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["ingest"])


@router.post("/events", status_code=202, response_model=EventsAccepted,
             responses={413: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}})
async def post_events(request: Request, ctx: Ctx, principal: Ingest) -> JSONResponse:
    """Record and queue upload events. An event_id seen before is not queued again (a producer may retry)."""
    limit = ctx.settings.max_request_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return error_response(413, "body_too_large", limit_bytes=limit)
        chunks.append(chunk)
    try:
        events = parse_payload(b"".join(chunks))
    except InvalidEvent as exc:
        return error_response(422, "invalid_event", detail=str(exc)[:2000])
    # only the re-scan driver attaches events to a run, and its event ids are reserved
    if any(e.rescan_run is not None or e.event_id.startswith("rescan-") for e in events):
        return error_response(422, "invalid_event", detail="rescan_run and event ids starting with 'rescan-' "
                              "belong to deepscreen's re-scan runs, not to producers")
    if not events:
        return JSONResponse({"accepted": [], "duplicates": []}, status_code=202)
    if ctx.celery_app is None:
        return error_response(503, "no_queue", detail="this server has no queue")
    try:
        accepted = await run_in_threadpool(record_and_enqueue, ctx.store, ctx.celery_app, events)
    except QueueUnavailable:
        return error_response(503, "queue_unavailable")
    fresh = set(accepted)
    duplicates = sorted({e.event_id for e in events} - fresh)
    log.info("events accepted=%d duplicates=%d by=%s", len(accepted), len(duplicates), principal.name)
    return JSONResponse({"accepted": accepted, "duplicates": duplicates}, status_code=202)
