"""The review queue: list with filters, claim (next or given) with an expiring lease, decide, release."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import JSONResponse, Response

from db.review_store import QueueFilter, ReviewError
from db.states import ReviewState
from review import decisions
from review.auth import Admin, BundleReader, Reviewer
from review.context import Ctx
from review.schemas import (
    MAX_AGE_S,
    MAX_ROW_ID,
    BundleOut,
    ClaimOut,
    DecisionIn,
    DecisionOut,
    Error,
    ItemDetail,
    QueuePage,
    ReverseIn,
    RowId,
    error_response,
)

router = APIRouter(prefix="/v1/review", tags=["review"])
ERRORS = {404: {"model": Error}, 409: {"model": Error}}


def review_error(exc: ReviewError) -> JSONResponse:
    return error_response(exc.status, exc.reason, detail=exc.detail or None)


def bundle_out(bundle: dict[str, Any]) -> dict[str, Any]:
    return {**{k: bundle[k] for k in ("id", "review_item_id", "manifest_sha256", "signature", "created_by",
                                      "created_at")}, "download_url": f"/v1/bundles/{bundle['id']}"}


@router.get("/items", response_model=QueuePage)
def list_items(
    ctx: Ctx, principal: Reviewer,
    state: Literal["pending", "claimed", "confirmed_fake", "marked_real", "escalated", "withdrawn", "any"] = "pending",
    verdict: Literal["fake", "uncertain", "matched_known_fake"] | None = None,
    min_score: float | None = Query(None, ge=0, le=1), max_score: float | None = Query(None, ge=0, le=1),
    source: str | None = Query(None, max_length=200),
    min_age_s: float | None = Query(None, ge=0, le=MAX_AGE_S),
    max_age_s: float | None = Query(None, ge=0, le=MAX_AGE_S),
    order: Literal["oldest", "score"] = "oldest",
    limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_ROW_ID),
) -> Any:
    """The queue. `pending` includes claims whose lease ran out."""
    flt = QueueFilter(state=None if state == "any" else state, verdict=verdict, min_score=min_score,
                      max_score=max_score, source=source, min_age_s=min_age_s, max_age_s=max_age_s, order=order,
                      limit=limit, offset=offset)
    items, total = ctx.reviews.list_items(flt)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/items/{item_id}", response_model=ItemDetail, responses=ERRORS)
def get_item(ctx: Ctx, principal: Reviewer, item_id: RowId) -> Any:
    try:
        item = ctx.reviews.item(item_id, viewer=principal.actor)
    except ReviewError as exc:
        return review_error(exc)
    if item["history"]:
        item["bundles"] = [bundle_out(b) for b in ctx.escalations.bundles_for(item_id)]
    return item


@router.post("/claim", response_model=ClaimOut, responses={204: {"description": "the queue is empty"}})
def claim_next(ctx: Ctx, principal: Reviewer) -> Any:
    """Claim the next item (oldest first, items you skipped last) for `review_lease_seconds`."""
    claim = ctx.reviews.claim_next(principal.actor, ctx.settings.review_lease_seconds, ctx.settings.gold_rate)
    if claim is None:
        return Response(status_code=204)
    return {"item_id": claim.item_id, "lease_expires_at": claim.lease_expires_at}


@router.post("/items/{item_id}/claim", response_model=ClaimOut, responses=ERRORS)
def claim_item(ctx: Ctx, principal: Reviewer, item_id: RowId) -> Any:
    """Claim this item (or renew your own claim). 409 when someone else holds it or it is decided."""
    try:
        claim = ctx.reviews.claim(principal.actor, item_id, ctx.settings.review_lease_seconds)
    except ReviewError as exc:
        return review_error(exc)
    return {"item_id": claim.item_id, "lease_expires_at": claim.lease_expires_at}


@router.post("/items/{item_id}/decision", response_model=DecisionOut, responses=ERRORS)
def decide(ctx: Ctx, principal: Reviewer, item_id: RowId, body: DecisionIn,
           background: BackgroundTasks) -> Any:
    """Decide an item you hold: confirm_fake, mark_real, escalate (builds a signed evidence bundle and sends
    it to the webhook) or skip (back to the queue)."""
    try:
        decided = decisions.decide(ctx, principal.actor, item_id, body.decision, body.note)
    except ReviewError as exc:
        return review_error(exc)
    for followup in decided.followups:
        background.add_task(followup)
    result = decided.result
    return {"item_id": item_id, "decision": result.decision, "previous_state": result.previous_state,
            "new_state": result.new_state, "bundle_id": decided.bundle["id"] if decided.bundle else None}


@router.post("/items/{item_id}/reverse", response_model=DecisionOut, responses=ERRORS)
def reverse(ctx: Ctx, principal: Admin, item_id: RowId, body: ReverseIn) -> Any:
    """Reverse a decided item's decision (admins): it goes back to the queue, and the known-fake memory
    entry the decision made is removed, with every match it made."""
    try:
        result = decisions.reverse(ctx, principal.actor, item_id, body.note)
    except ReviewError as exc:
        return review_error(exc)
    return {"item_id": item_id, "decision": result.decision, "previous_state": result.previous_state,
            "new_state": result.new_state}


@router.post("/items/{item_id}/release", status_code=204, response_class=Response, responses=ERRORS)
def release(ctx: Ctx, principal: Reviewer, item_id: RowId) -> Response:
    """Give an item back to the queue (admins may release anyone's claim)."""
    try:
        ctx.reviews.release(principal.actor, item_id)
    except ReviewError as exc:
        return review_error(exc)
    return Response(status_code=204)


@router.post("/items/{item_id}/bundles", response_model=BundleOut, status_code=201, responses=ERRORS)
def build_bundle(ctx: Ctx, principal: Reviewer, item_id: RowId) -> Any:
    """Build a fresh signed evidence bundle of an escalated item."""
    try:
        item = ctx.reviews.item(item_id)
    except ReviewError as exc:
        return review_error(exc)
    if item["state"] != ReviewState.ESCALATED:
        return error_response(409, "not_escalated")
    return bundle_out(decisions.rebuild_bundle(ctx, principal.actor, item_id))


bundles = APIRouter(prefix="/v1", tags=["review"])


@bundles.get("/bundles/{bundle_id}", responses={404: {"model": Error}})
def download_bundle(ctx: Ctx, principal: BundleReader, bundle_id: RowId) -> Response:
    """The bundle zip: manifest.json, manifest.sig (HMAC-SHA256), the original and the heatmaps."""
    bundle = ctx.escalations.bundle(bundle_id)
    if bundle is None:
        return error_response(404, "no_such_bundle")
    data = ctx.blobs.get(bundle["blob_key"])
    ctx.reviews.record(principal.actor, "bundle_downloaded", bundle["review_item_id"],
                       details={"bundle_id": bundle_id})
    return Response(data, media_type="application/zip", headers={
        "content-disposition": f'attachment; filename="evidence-{bundle["review_item_id"]}-{bundle_id}.zip"',
        "x-deepscreen-signature": f"sha256={bundle['signature']}"})
