"""Originals, heatmaps and crops: links for the API (presigned S3, or the auth-proxied routes) and the bytes
behind the proxied routes. Nothing is ever public: a link is either signed and short-lived, or needs a token."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage

from pipeline.decode import DecodeLimits, decode_image
from pipeline.errors import InvalidInput
from review.context import ReviewContext
from workers.storage import original_content_type

THUMBNAIL_SIDE = 256
DECODED = ("scored", "no_face")  # verdict statuses of an input that decoded as an image
log = logging.getLogger(__name__)


class MediaMissing(Exception):
    """The row names no such object, or the object cannot be read."""


@dataclass(frozen=True)
class Media:
    data: bytes
    content_type: str


def media_path(kind: str, *parts: int | str) -> str:
    return "/v1/media/" + "/".join([kind, *(str(p) for p in parts)])


def verdict_out(ctx: ReviewContext, doc: dict[str, Any], presign: bool = True) -> dict[str, Any]:
    """A `ReviewStore.verdict` with its blob keys replaced by links."""
    verdict_id = doc["verdict_id"]

    def link(key: str | None, proxied: str) -> str | None:
        if key is None:
            return None
        return ctx.presigner.blob(key) if presign and ctx.presigner is not None else proxied

    faces = [{"index": f["index"], "box": f["box"], "detection_probability": f["detection_probability"],
              "fake_probability": f["fake_probability"], "verdict": f["verdict"],
              "heatmap_url": link(f["heatmap_key"], media_path("verdicts", verdict_id, "faces", f["index"], "heatmap")),
              "crop_url": link(f["crop_key"], media_path("verdicts", verdict_id, "faces", f["index"], "crop"))}
             for f in doc["faces"]]
    return {"verdict_id": verdict_id, "model_version": doc["model_version"], "status": doc["status"],
            "verdict": doc["verdict"], "fake_probability": doc["fake_probability"], "reason": doc["reason"],
            "heatmap_url": link(doc["heatmap_key"], media_path("verdicts", verdict_id, "heatmap")), "faces": faces}


def original_link(ctx: ReviewContext, image: dict[str, Any], verdicts: list[dict[str, Any]],
                  presign: bool = True) -> str | None:
    """A link to the original, or None when no screening decoded it: a refused input (HTML, SVG, a bomb)
    is kept for the record but never handed out."""
    if not any(v["status"] in DECODED for v in verdicts):
        return None
    if presign and ctx.presigner is not None:
        signed = ctx.presigner.uri(image["uri"])
        if signed:
            return signed
    return media_path("images", image["id"], "original")


def original(ctx: ReviewContext, image_id: int) -> Media:
    image = ctx.images.image(image_id=image_id)
    if image is None:
        raise MediaMissing(f"image {image_id}")
    try:
        data = ctx.reader.read(image["uri"])
    except InvalidInput as exc:
        raise MediaMissing(exc.reason) from None
    return Media(data, original_content_type(data))


def thumbnail(ctx: ReviewContext, image_id: int) -> Media:
    """A small JPEG of the original, made once and kept in the blob store (the queue page shows many)."""
    image = ctx.images.image(image_id=image_id)
    if image is None:
        raise MediaMissing(f"image {image_id}")
    key = f"thumbnails/{image['sha256'][:2]}/{image['sha256']}-{THUMBNAIL_SIDE}.jpg"
    try:
        return Media(ctx.blobs.get(key), "image/jpeg")
    except Exception:  # noqa: BLE001 - not made yet (or the store hiccuped): make it
        pass
    source = original(ctx, image_id)
    limits = DecodeLimits(max_bytes=ctx.settings.max_image_bytes, max_pixels=ctx.settings.max_image_pixels)
    try:
        pixels = decode_image(source.data, limits).pixels
    except InvalidInput as exc:
        raise MediaMissing(exc.reason) from None
    picture = PILImage.fromarray(pixels)
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    data = buffer.getvalue()
    try:
        ctx.blobs.put(key, data, "image/jpeg")
    except Exception:  # noqa: BLE001 - a cache that could not be written is only slower next time
        log.warning("thumbnail not cached image_id=%s", image_id)
    return Media(data, "image/jpeg")


def verdict_blob(ctx: ReviewContext, verdict_id: int, face_index: int | None = None, kind: str = "heatmap") -> Media:
    doc = ctx.images.verdict(verdict_id)
    if doc is None:
        raise MediaMissing(f"verdict {verdict_id}")
    if face_index is None:
        key = doc["heatmap_key"]
    else:
        faces = [f for f in doc["faces"] if f["index"] == face_index]
        if not faces:
            raise MediaMissing(f"face {face_index}")
        key = faces[0]["heatmap_key"] if kind == "heatmap" else faces[0]["crop_key"]
    if not key:
        raise MediaMissing("no such object")
    try:
        data = ctx.blobs.get(key)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable blob is a 404, whatever the store says
        raise MediaMissing(type(exc).__name__) from None
    return Media(data, original_content_type(data))
