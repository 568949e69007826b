"""Admin: re-scan runs (progress, report, changed images as CSV, pause/resume/cancel) and the model registry."""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from db.model_registry import ModelRegistry
from db.rescan_store import RescanError, RescanStore
from review.auth import Admin
from review.context import Ctx, ReviewContext
from review.schemas import Error, RowId, error_response
from workers.rescan import write_changes_csv

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def rescans(ctx: ReviewContext) -> RescanStore:
    return RescanStore(ctx.store.engine)


def run_document(store: RescanStore, run_id: int) -> dict[str, Any]:
    return {**store.get(run_id).as_json(), "progress": store.progress(run_id)}


@router.get("/rescans")
def list_runs(ctx: Ctx, principal: Admin) -> Any:
    store = rescans(ctx)
    return [{**run.as_json(), "progress": store.progress(run.id)} for run in store.list()]


@router.get("/rescans/{run_id}", responses={404: {"model": Error}})
def get_run(ctx: Ctx, principal: Admin, run_id: RowId) -> Any:
    try:
        return run_document(rescans(ctx), run_id)
    except RescanError as exc:
        return error_response(404, "not_found", detail=str(exc))


@router.get("/rescans/{run_id}/changes.csv", responses={404: {"model": Error}})
def run_changes(ctx: Ctx, principal: Admin, run_id: RowId, all: bool = False) -> Response:  # noqa: A002
    store = rescans(ctx)
    try:
        store.get(run_id)
    except RescanError as exc:
        return error_response(404, "not_found", detail=str(exc))
    buffer = io.StringIO()
    write_changes_csv(buffer, store.changes(run_id, only_changed=not all))
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="rescan-{run_id}-changes.csv"'})


@router.post("/rescans/{run_id}/{action}", responses={404: {"model": Error}, 409: {"model": Error}})
def change_run(ctx: Ctx, principal: Admin, run_id: RowId, action: str) -> Any:
    if action not in ("pause", "resume", "cancel"):
        return error_response(404, "unknown_action", detail="pause, resume or cancel")
    store = rescans(ctx)
    try:
        store.get(run_id)
        store.set_state(run_id, action)
    except RescanError as exc:
        status = 404 if "no re-scan run" in str(exc) else 409
        return error_response(status, "not_found" if status == 404 else "conflict", detail=str(exc))
    ctx.reviews.record(principal.actor, f"rescan_{action}", details={"run_id": run_id})
    return run_document(store, run_id)


@router.get("/models")
def list_models(ctx: Ctx, principal: Admin) -> Any:
    registry = ModelRegistry(ctx.store.engine)
    return {"models": [m.__dict__ for m in registry.list()], "canary": registry.canary_report()}
