"""Verdicts by image id or sha256, and the auth-proxied media behind them (originals, heatmaps, crops)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response

from review import media
from review.auth import MediaReader, Reader
from review.context import Ctx, ReviewContext
from review.schemas import MAX_FACE_INDEX, Error, ImageOut, RowId, error_response

router = APIRouter(prefix="/v1", tags=["images"])
SHA256 = re.compile(r"^[0-9a-f]{64}$")
NOT_FOUND = {404: {"model": Error}}


def _image_document(ctx: ReviewContext, image: dict[str, Any]) -> dict[str, Any]:
    verdicts = [ctx.images.verdict(v) for v in image["verdict_ids"]]
    presigned = ctx.presigner is not None
    return {**{k: image[k] for k in ("id", "sha256", "source", "width", "height", "size_bytes", "uploaded_at",
                                     "first_seen_at", "review_items")},
            "original_url": media.original_link(ctx, image, [v for v in verdicts if v is not None]),
            "links_expire_in_s": ctx.settings.presign_seconds if presigned else None,
            "verdicts": [media.verdict_out(ctx, v) for v in verdicts if v is not None]}


@router.get("/images/by-sha256/{sha256}", response_model=ImageOut, responses=NOT_FOUND)
def image_by_sha256(ctx: Ctx, principal: Reader, sha256: str) -> Any:
    """The image with this content hash: every verdict, per-face scores and short-lived heatmap links."""
    sha256 = sha256.lower()
    image = ctx.images.image(sha256=sha256) if SHA256.match(sha256) else None
    if image is None:
        return error_response(404, "no_such_image")
    return _image_document(ctx, image)


@router.get("/images/{image_id}", response_model=ImageOut, responses=NOT_FOUND)
def image_by_id(ctx: Ctx, principal: Reader, image_id: RowId) -> Any:
    """The image: every verdict, per-face scores and short-lived heatmap links."""
    image = ctx.images.image(image_id=image_id)
    if image is None:
        return error_response(404, "no_such_image")
    return _image_document(ctx, image)


def _send(fetch: Any, *args: Any) -> Response:
    try:
        blob = fetch(*args)
    except media.MediaMissing:
        return error_response(404, "no_such_media")
    return Response(blob.data, media_type=blob.content_type,
                    headers={"cache-control": "private, max-age=300", "content-disposition": "attachment"})


@router.get("/media/images/{image_id}/original", responses=NOT_FOUND)
def original(ctx: Ctx, principal: MediaReader, image_id: RowId) -> Response:
    return _send(media.original, ctx, image_id)


@router.get("/media/images/{image_id}/thumbnail", responses=NOT_FOUND)
def thumbnail(ctx: Ctx, principal: MediaReader, image_id: RowId) -> Response:
    return _send(media.thumbnail, ctx, image_id)


@router.get("/media/verdicts/{verdict_id}/heatmap", responses=NOT_FOUND)
def verdict_heatmap(ctx: Ctx, principal: MediaReader, verdict_id: RowId) -> Response:
    return _send(media.verdict_blob, ctx, verdict_id)


@router.get("/media/verdicts/{verdict_id}/faces/{index}/{kind}", responses=NOT_FOUND)
def face_media(ctx: Ctx, principal: MediaReader, verdict_id: RowId,
               index: Annotated[int, Path(ge=0, le=MAX_FACE_INDEX)], kind: Literal["heatmap", "crop"]) -> Response:
    return _send(media.verdict_blob, ctx, verdict_id, index, kind)
