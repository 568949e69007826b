"""Operations: readiness, Prometheus metrics, and erasure of an image (admins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from db.erasure_store import ErasureStore
from review.auth import Admin, Public
from review.context import ReviewContext
from review.health import readiness
from review.schemas import Error
from workers.erasure import NothingToErase, erase, s3_original_deleter

router = APIRouter(tags=["operations"])


@router.get("/readyz", responses={503: {"model": Error}})
async def readyz(request: Request, _: Public) -> JSONResponse:
    """Ready to work: Postgres, Redis, the blob store and the model each answer; 503 names what failed."""
    checks = await run_in_threadpool(readiness, request.app.state.ctx)
    failing = [c.name for c in checks if not c.ok]
    body: dict[str, Any] = {"status": "unavailable" if failing else "ready", "failing": failing,
                            "checks": {c.name: c.as_dict() for c in checks}}
    return JSONResponse(body, status_code=503 if failing else 200)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, _: Public) -> Response:
    data, content_type = request.app.state.metrics.exposition()
    return Response(data, media_type=content_type)


@router.delete("/v1/images/{image_id}", responses={404: {"model": Error}})
def erase_image(request: Request, principal: Admin, image_id: int = Path(ge=1),
                reason: str = Query(..., min_length=3, max_length=500, description="why (recorded in the tombstone)"),
                keep_originals: bool = Query(False, description="leave the original upload in its bucket")) -> Any:
    """Erase an image: its heatmaps, crops, thumbnails and bundles from the blob store, its original (unless
    keep_originals), and its verdict, face, review and event rows. A tombstone (sha256, when, by whom, why)
    and the audit log remain."""
    ctx: ReviewContext = request.app.state.ctx
    client = getattr(ctx.reader, "client", None)
    deleter = s3_original_deleter(client, ctx.reader.allowed_buckets) if client is not None else None
    try:
        report = erase(ErasureStore(ctx.store.engine), ctx.blobs, erased_by=principal.name,
                       actor_role=principal.role, reason=reason, image_id=image_id, delete_original=deleter,
                       keep_originals=keep_originals)
    except NothingToErase:
        return JSONResponse({"error": "no_such_image"}, status_code=404)
    return report.as_dict()
