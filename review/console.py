"""The moderators' console: server-rendered pages over the same stores the API uses.

Login exchanges a moderator or admin token (never a service token) for a session cookie (HttpOnly,
SameSite=Strict, Secure in production); every form carries the session's CSRF token; images come through
the auth-proxied /v1/media routes.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, BackgroundTasks, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from db.review_store import QueueFilter, ReviewError
from db.states import ReviewState
from review import decisions
from review.auth import (
    CONSOLE_ROLES,
    SESSION_COOKIE,
    AuthError,
    ConsoleAdmin,
    ConsoleReviewer,
    ConsoleUser,
    Principal,
    Public,
    client_address,
    count_failure,
)
from review.checks import CheckFailed, run_check
from review.context import Ctx, get_ctx
from review.item_facts import box_size, origin, thresholds
from review.schemas import MAX_PAGE, RowId, StoredText

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
LOGIN_CSRF_COOKIE = "ds_login_csrf"
SHORTCUTS = {"confirm_fake": "f", "mark_real": "r", "escalate": "e", "skip": "s"}

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["pct"] = lambda p: "-" if p is None else f"{100 * p:.1f}%"
templates.env.filters["age"] = lambda s: "-" if s is None else (
    f"{s / 86400:.1f} d" if s >= 86400 else f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min")
templates.env.filters["px"] = box_size
router = APIRouter(prefix="/console", include_in_schema=False)


def render(request: Request, name: str, me: Principal | None, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"me": me, "csrf": me.csrf_token if me else None,
                                                      "shortcuts": SHORTCUTS, **context}, status_code=status)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/queue"


def auth_page(request: Request, exc: AuthError) -> Response:
    """401: the login form (with the page to come back to); 403: a plain refusal."""
    if exc.status == 401:
        return _login_form(request, status=401, next_url=request.url.path, error=None)
    if exc.status == 429:
        return _login_form(request, status=429, next_url=request.url.path, error="Too many failed attempts; wait a minute.")
    return render(request, "error.html", None, status=403, message="Your token's role may not open this page.")


def _login_form(request: Request, status: int, next_url: str | None, error: str | None) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, status=status, next_url=_safe_next(next_url), error=error,
                      login_csrf=nonce)
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, httponly=True, samesite="strict", path="/console/login",
                        secure=get_ctx(request).settings.environment == "production", max_age=3600)
    return response


@router.get("/login")
def login_page(request: Request, _: Public, next: str | None = None) -> HTMLResponse:
    return _login_form(request, 200, next, None)


@router.post("/login")
async def login(request: Request, ctx: Ctx, _: Public, token: str = Form(max_length=200),
                csrf: str = Form(max_length=100),
                next: str = Form("/console/queue", max_length=500)) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf):
        return _login_form(request, 403, next, "The form expired; try again.")
    # the token is checked first: a valid one signs in even while its address is limited
    info = await run_in_threadpool(ctx.tokens.authenticate, token.strip())
    if info is None:
        log.warning("console login refused client=%s", client_address(request))
        if count_failure(request):
            return _login_form(request, 429, next, "Too many failed attempts; wait a minute.")
        return _login_form(request, 401, next, "That token is not valid (unknown, expired or revoked).")
    if info.role not in CONSOLE_ROLES:
        log.warning("console login refused role=%s token_id=%s", info.role, info.id)
        return _login_form(request, 403, next, "Service tokens are for programs; sign in with a moderator "
                           "or admin token.")
    session_id, session = await run_in_threadpool(ctx.tokens.open_session, info, ctx.settings.session_hours)
    await run_in_threadpool(ctx.reviews.record, Principal(info, "session").actor, "console_login")
    response = _see_other(_safe_next(next))
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", path="/",
                        secure=ctx.settings.environment == "production",
                        max_age=max(60, int((session.expires_at - datetime.now(UTC)).total_seconds())))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
    return response


@router.post("/logout")
def logout(request: Request, ctx: Ctx, me: ConsoleUser) -> Response:
    ctx.tokens.close_session(request.cookies.get(SESSION_COOKIE, ""))
    response = _see_other("/console/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("")
def console_root(_: Public) -> Response:
    return _see_other("/console/queue")


@router.get("/queue")
def queue_page(request: Request, ctx: Ctx, me: ConsoleReviewer, state: str = "pending",
               verdict: str | None = None, source: str | None = None,
               min_score: float | None = Query(None, ge=0, le=1),
               max_score: float | None = Query(None, ge=0, le=1), order: str = "oldest",
               page: int = Query(1, ge=1, le=MAX_PAGE), message: str | None = None) -> HTMLResponse:
    limit = 50
    flt = QueueFilter(state=None if state == "any" else state, verdict=verdict or None, source=source or None,
                      min_score=min_score, max_score=max_score, order=order if order in ("oldest", "score") else "oldest",
                      limit=limit, offset=(page - 1) * limit)
    items, total = ctx.reviews.list_items(flt)
    filters = {"state": state, "verdict": verdict or "", "source": source or "", "order": order,
               "min_score": "" if min_score is None else min_score, "max_score": "" if max_score is None else max_score}
    pages = max(1, -(-total // limit))
    links = {name: "/console/queue?" + urlencode({**filters, "page": number})
             for name, number in (("previous", page - 1), ("next", page + 1)) if 1 <= number <= pages}
    return render(request, "queue.html", me, items=items, total=total, page=page, pages=pages, filters=filters,
                  links=links, message=message, states=[*(s.value for s in ReviewState), "any"])


@router.post("/next")
def claim_next(ctx: Ctx, me: ConsoleReviewer) -> Response:
    claim = ctx.reviews.claim_next(me.actor, ctx.settings.review_lease_seconds, ctx.settings.gold_rate)
    if claim is None:
        return _see_other("/console/queue?message=" + quote("The queue is empty."))
    return _see_other(f"/console/items/{claim.item_id}")


@router.get("/items/{item_id}")
def item_page(request: Request, ctx: Ctx, me: ConsoleReviewer, item_id: RowId,
              message: str | None = None) -> Response:
    try:
        item = ctx.reviews.item(item_id, viewer=me.actor)
    except ReviewError:
        return render(request, "error.html", me, status=404, message=f"No review item {item_id}.")
    bundles = ctx.escalations.bundles_for(item_id) if item["history"] else []
    return render(request, "item.html", me, item=item, bundles=bundles, message=message,
                  mine=item["state"] == ReviewState.CLAIMED and item["claimed_by"] == me.name,
                  origin=origin(item["image"]["uri"]), thresholds=thresholds(ctx, item["verdict"]))


@router.post("/items/{item_id}/claim")
def claim_item(ctx: Ctx, me: ConsoleReviewer, item_id: RowId) -> Response:
    try:
        ctx.reviews.claim(me.actor, item_id, ctx.settings.review_lease_seconds)
    except ReviewError as exc:
        return _see_other(f"/console/items/{item_id}?message=" + quote(f"Not claimed: {exc.reason}"))
    return _see_other(f"/console/items/{item_id}")


@router.post("/items/{item_id}/decision")
def decide(ctx: Ctx, me: ConsoleReviewer, item_id: RowId, background: BackgroundTasks,
           decision: str = Form(max_length=20),
           note: Annotated[StoredText, Form(max_length=4000)] = "") -> Response:
    try:
        decided = decisions.decide(ctx, me.actor, item_id, decision, note.strip() or None)
    except ReviewError as exc:
        return _see_other(f"/console/items/{item_id}?message=" + quote(f"Not recorded: {exc.reason}"))
    for followup in decided.followups:
        background.add_task(followup)
    text = f"Recorded: {decision}." + (" Evidence bundle created." if decided.bundle else "")
    return _see_other(f"/console/items/{item_id}?message=" + quote(text + " Press n for the next item."))


@router.post("/items/{item_id}/release")
def release(ctx: Ctx, me: ConsoleReviewer, item_id: RowId) -> Response:
    try:
        ctx.reviews.release(me.actor, item_id)
    except ReviewError as exc:
        return _see_other(f"/console/items/{item_id}?message=" + quote(f"Not released: {exc.reason}"))
    return _see_other("/console/queue?message=" + quote(f"Released item {item_id}."))


@router.post("/items/{item_id}/gold")
def set_gold(ctx: Ctx, me: ConsoleAdmin, item_id: RowId, label: str = Form(max_length=8)) -> Response:
    try:
        ctx.reviews.set_gold(me.actor, item_id, label if label in ("fake", "real") else None)
    except ReviewError as exc:
        return _see_other(f"/console/items/{item_id}?message=" + quote(f"Not set: {exc.reason}"))
    return _see_other(f"/console/items/{item_id}?message=" + quote(f"Gold label: {label}."))


@router.get("/check")
def check_page(request: Request, me: ConsoleReviewer) -> HTMLResponse:
    return render(request, "check.html", me, error=None)


@router.post("/check")
async def check_upload(request: Request, ctx: Ctx, me: ConsoleReviewer,
                       image: UploadFile = File(...)) -> Response:
    data = await image.read(ctx.settings.max_image_bytes + 1)
    if len(data) > ctx.settings.max_image_bytes:
        return render(request, "check.html", me, status=413, error="The file is larger than the limit.")
    try:
        result = await run_in_threadpool(run_check, ctx, me.actor, data, image.filename)
    except CheckFailed as exc:
        return render(request, "check.html", me, status=422 if exc.reason == "empty" else 503,
                      error=f"The image could not be screened ({exc.reason}).")
    return _see_other(f"/console/checks/{result.event_id}")


@router.get("/checks/{event_id}")
def check_result(request: Request, ctx: Ctx, me: ConsoleReviewer, event_id: str) -> HTMLResponse:
    event = ctx.images.event(event_id) if event_id.startswith("check-") else None
    if event is None:
        return render(request, "error.html", me, status=404, message="No such check.")
    verdict = ctx.images.verdict(event["verdict_id"]) if event["verdict_id"] else None
    image = ctx.images.image(image_id=event["image_id"]) if event["image_id"] else None
    item_id = next((i["id"] for i in (image or {}).get("review_items", []) if verdict
                    and i["verdict_id"] == verdict["verdict_id"]), None)
    return render(request, "check_result.html", me, event=event, verdict=verdict, image=image, item_id=item_id,
                  origin=origin(image["uri"]) if image else None,
                  thresholds=thresholds(ctx, verdict) if verdict else None)


@router.get("/admin/agreement")
def agreement_page(request: Request, ctx: Ctx, me: ConsoleAdmin) -> HTMLResponse:
    return render(request, "agreement.html", me, rows=ctx.reviews.agreement())


@router.get("/admin/rescans")
def rescans_page(request: Request, ctx: Ctx, me: ConsoleAdmin) -> HTMLResponse:
    from db.model_registry import ModelRegistry
    from db.rescan_store import RescanStore

    engine = ctx.store.engine
    store = RescanStore(engine)
    runs = [{"run": run, "progress": store.progress(run.id)} for run in store.list()]
    registry = ModelRegistry(engine)
    return render(request, "rescans.html", me, runs=runs, models=registry.list(), canary=registry.canary_report())


@router.get("/admin/rescans/{run_id}")
def rescan_page(request: Request, ctx: Ctx, me: ConsoleAdmin, run_id: RowId) -> HTMLResponse:
    from db.rescan_store import RescanError, RescanStore

    store = RescanStore(ctx.store.engine)
    try:
        run = store.get(run_id)
    except RescanError:
        return render(request, "error.html", me, status=404, message=f"No re-scan run {run_id}.")
    labels = sorted({n for row in (run.report.get("transitions") or {}).values() for n in row})
    return render(request, "rescan.html", me, run=run, progress=store.progress(run_id), new_labels=labels,
                  changes=store.changes(run_id)[:500])
