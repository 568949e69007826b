"""Admin: re-scan runs (progress, report, changed images as CSV, pause/resume/cancel) and the model registry."""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from db.model_registry import ModelRegistry
from db.rescan_store import RescanError, RescanStore
from review.auth import Admin
from review.context import ReviewContext
from review.schemas import Error, RowId
from workers.rescan import write_changes_csv

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def rescans(request: Request) -> RescanStore:
    ctx: ReviewContext = request.app.state.ctx
    return RescanStore(ctx.store.engine)


def run_document(store: RescanStore, run_id: int) -> dict[str, Any]:
    return {**store.get(run_id).as_json(), "progress": store.progress(run_id)}


@router.get("/rescans")
def list_runs(request: Request, principal: Admin) -> Any:
    store = rescans(request)
    return [{**run.as_json(), "progress": store.progress(run.id)} for run in store.list()]


@router.get("/rescans/{run_id}", responses={404: {"model": Error}})
def get_run(request: Request, principal: Admin, run_id: RowId) -> Any:
    try:
        return run_document(rescans(request), run_id)
    except RescanError as exc:
        return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)


@router.get("/rescans/{run_id}/changes.csv", responses={404: {"model": Error}})
def run_changes(request: Request, principal: Admin, run_id: RowId, all: bool = False) -> Response:  # noqa: A002
    store = rescans(request)
    try:
        store.get(run_id)
    except RescanError as exc:
        return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)
    buffer = io.StringIO()
    write_changes_csv(buffer, store.changes(run_id, only_changed=not all))
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="rescan-{run_id}-changes.csv"'})


@router.post("/rescans/{run_id}/{action}", responses={404: {"model": Error}, 409: {"model": Error}})
def change_run(request: Request, principal: Admin, run_id: RowId, action: str) -> Any:
    ctx: ReviewContext = request.app.state.ctx
    if action not in ("pause", "resume", "cancel"):
        return JSONResponse({"error": "unknown_action", "detail": "pause, resume or cancel"}, status_code=404)
    store = rescans(request)
    try:
        store.get(run_id)
        store.set_state(run_id, action)
    except RescanError as exc:
        status = 404 if "no re-scan run" in str(exc) else 409
        return JSONResponse({"error": "not_found" if status == 404 else "conflict", "detail": str(exc)},
                            status_code=status)
    ctx.reviews.record(principal.actor, f"rescan_{action}", details={"run_id": run_id})
    return run_document(store, run_id)


@router.get("/models")
def list_models(request: Request, principal: Admin) -> Any:
    ctx: ReviewContext = request.app.state.ctx
    registry = ModelRegistry(ctx.store.engine)
    return {"models": [m.__dict__ for m in registry.list()], "canary": registry.canary_report()}
