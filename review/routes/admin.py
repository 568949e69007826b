"""Admin: tokens, the audit log, webhook delivery attempts, gold items and moderator agreement."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from db.review_store import ReviewError
from db.token_store import TokenError
from review.auth import Admin
from review.context import Ctx
from review.routes.review import review_error
from review.schemas import (
    MAX_ROW_ID,
    AgreementOut,
    AuditOut,
    DeliveryOut,
    Error,
    GoldIn,
    RowId,
    TokenCreated,
    TokenIn,
    TokenOut,
    error_response,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(ctx: Ctx, principal: Admin) -> Any:
    return [t.as_dict() for t in ctx.tokens.list()]


@router.post("/tokens", response_model=TokenCreated, status_code=201, responses={422: {"model": Error}})
def create_token(ctx: Ctx, principal: Admin, body: TokenIn) -> Any:
    """A new token. The response holds it once; only its sha256 is kept."""
    expires = timedelta(days=body.expires_days) if body.expires_days else None
    try:
        plaintext, info = ctx.tokens.create(body.name, body.role, expires)
    except TokenError as exc:
        return error_response(422, exc.reason)
    ctx.reviews.record(principal.actor, "token_created", details={"token_id": info.id, "name": info.name,
                                                                  "role": info.role})
    return {**info.as_dict(), "token": plaintext}


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut, responses={404: {"model": Error}})
def revoke_token(ctx: Ctx, principal: Admin, token_id: RowId) -> Any:
    try:
        info = ctx.tokens.revoke(token_id)
    except TokenError as exc:
        return error_response(404, exc.reason)
    ctx.reviews.record(principal.actor, "token_revoked", details={"token_id": token_id, "name": info.name})
    return info.as_dict()


@router.get("/audit", response_model=list[AuditOut])
def audit_log(ctx: Ctx, principal: Admin, item_id: int | None = Query(None, ge=1, le=MAX_ROW_ID),
              actor: str | None = Query(None, max_length=200), action: str | None = Query(None, max_length=40),
              limit: int = Query(200, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_ROW_ID)) -> Any:
    return ctx.reviews.audit_log(item_id=item_id, actor=actor, action=action, limit=limit, offset=offset)


@router.get("/deliveries", response_model=list[DeliveryOut])
def deliveries(ctx: Ctx, principal: Admin, delivery_id: str | None = Query(None, max_length=64),
               limit: int = Query(200, ge=1, le=1000)) -> Any:
    return ctx.escalations.deliveries(delivery_id=delivery_id, limit=limit)


@router.put("/gold/{item_id}", status_code=204, response_class=Response, responses={404: {"model": Error}})
def set_gold(ctx: Ctx, principal: Admin, item_id: RowId, body: GoldIn) -> Response:
    """Mark an item as gold with its known answer (null clears it). Gold items are mixed into moderators'
    claim-next at DEEPSCREEN_GOLD_RATE once decided."""
    try:
        ctx.reviews.set_gold(principal.actor, item_id, body.label)
    except ReviewError as exc:
        return review_error(exc)
    return Response(status_code=204)


@router.get("/gold/agreement", response_model=list[AgreementOut])
def agreement(ctx: Ctx, principal: Admin) -> Any:
    """Per moderator: gold items answered, answers that agreed with gold, and the share."""
    return ctx.reviews.agreement()
