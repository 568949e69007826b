"""Operations: readiness (bare for anyone, detailed for admins), Prometheus metrics, and erasure of an image
(admins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from db.erasure_store import ErasureStore
from review.auth import Admin, Public
from review.context import Ctx
from review.health import readiness
from review.schemas import Error, Readiness, ReadinessDetail, RowId, error_response
from workers.erasure import NothingToErase, erase, s3_original_deleter

router = APIRouter(tags=["operations"])


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request, _: Public) -> JSONResponse:
    """Ready to work (Postgres, Redis, the blob store and the model answer): `ready`, else 503 `unavailable`.
    Anyone may ask, so the answer is bare and comes from a cache of a second or two
    (DEEPSCREEN_READINESS_CACHE_S); which part failed, and why, is at /v1/admin/readiness."""
    checks = await run_in_threadpool(request.app.state.readiness.get)
    ready = all(c.ok for c in checks)
    return JSONResponse({"status": "ready" if ready else "unavailable"}, status_code=200 if ready else 503)


@router.get("/v1/admin/readiness", response_model=ReadinessDetail, responses={503: {"model": ReadinessDetail}})
async def readiness_detail(ctx: Ctx, _: Admin) -> JSONResponse:
    """Readiness checked now, each part with its detail and timing; 503 names what failed (admins)."""
    checks = await run_in_threadpool(readiness, ctx)
    failing = [c.name for c in checks if not c.ok]
    body: dict[str, Any] = {"status": "unavailable" if failing else "ready", "failing": failing,
                            "checks": {c.name: c.as_dict() for c in checks}}
    return JSONResponse(body, status_code=503 if failing else 200)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, _: Public) -> Response:
    data, content_type = request.app.state.metrics.exposition()
    return Response(data, media_type=content_type)


@router.delete("/v1/images/{image_id}", responses={404: {"model": Error}})
def erase_image(ctx: Ctx, principal: Admin, image_id: RowId,
                reason: str = Query(..., min_length=3, max_length=500, description="why (recorded in the tombstone)"),
                keep_originals: bool = Query(False, description="leave the original upload in its bucket")) -> Any:
    """Erase an image: its heatmaps, crops, thumbnails and bundles from the blob store, its original (unless
    keep_originals), and its verdict, face, review and event rows. A tombstone (sha256, when, by whom, why)
    and the audit log remain."""
    client = getattr(ctx.reader, "client", None)
    deleter = s3_original_deleter(client, ctx.reader.allowed_buckets) if client is not None else None
    try:
        report = erase(ErasureStore(ctx.store.engine), ctx.blobs, erased_by=principal.name,
                       actor_role=principal.role, reason=reason, image_id=image_id, delete_original=deleter,
                       keep_originals=keep_originals)
    except NothingToErase:
        return error_response(404, "no_such_image")
    return report.as_dict()
