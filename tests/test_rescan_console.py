"""The re-scan admin API and console page, on the review app's real Postgres: a finished run's transition
matrix, its changed images as CSV, state changes, and the models list."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient

from db.rescan_store import RescanSelector, RescanStore
from db.store import BlobKeys
from tests.test_review_support import client, make_item, review_ctx, review_db_url, tokens  # noqa: F401
from workers.rescan import RescanDriver

pytestmark = pytest.mark.services


def _finished_run(ctx) -> tuple[int, set[str]]:  # noqa: ANN001
    """Re-scan the items' images with `console-model-2`, which calls every one `real`."""
    import dataclasses

    from pipeline.screen import Verdict as ScreenVerdict

    saved = [make_item(ctx, source="rescan-console", seed=900 + i) for i in range(3)]
    store = RescanStore(ctx.store.engine)
    run = store.create(RescanSelector(source="rescan-console"), "console-model-2", rate_per_s=1000, chunk_size=50)
    sent: list = []
    driver = RescanDriver(store, sent.extend)
    driver.tick_run(run.id)
    assert len(sent) == 3
    for event in sent:
        verdict = ScreenVerdict(key="k", status="scored", model_version="console-model-2", sha256=event.sha256,
                                size_bytes=1, verdict="real", fake_probability=0.05)
        ctx.store.save(event, dataclasses.replace(verdict), BlobKeys())
    driver.tick_run(run.id)
    driver.tick_run(run.id)
    assert store.get(run.id).state == "finished"
    return run.id, {s.event_id for s in saved}


def test_admin_sees_the_report_csv_and_models(review_ctx, client, tokens) -> None:  # noqa: ANN001
    run_id, _ = _finished_run(review_ctx)
    admin = tokens.header("admin")
    doc = client.get(f"/v1/admin/rescans/{run_id}", headers=admin).json()
    assert doc["state"] == "finished" and doc["progress"] == {"enqueued": 3, "done": 3, "failed": 0}
    assert doc["report"]["transitions"] == {"fake": {"real": 3}} and doc["report"]["changed"] == 3
    assert any(r["id"] == run_id for r in client.get("/v1/admin/rescans", headers=admin).json())
    rows = list(csv.DictReader(io.StringIO(client.get(f"/v1/admin/rescans/{run_id}/changes.csv", headers=admin).text)))
    assert len(rows) == 3 and {(r["old_verdict"], r["new_verdict"]) for r in rows} == {("fake", "real")}
    conflict = client.post(f"/v1/admin/rescans/{run_id}/pause", headers=admin)
    assert conflict.status_code == 409 and "finished" in conflict.json()["detail"]
    assert client.get("/v1/admin/models", headers=admin).json()["models"] == []

    console = TestClient(client.app)
    page = console.get("/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    console.post("/console/login", data={"token": tokens.admin, "csrf": nonce, "next": "/console/queue"})
    listing = console.get("/console/admin/rescans")
    assert listing.status_code == 200 and f'/console/admin/rescans/{run_id}"' in listing.text
    detail = console.get(f"/console/admin/rescans/{run_id}")
    assert detail.status_code == 200
    assert "3 images, 3 changed" in detail.text and detail.text.count("/console/items/") >= 3


def test_pause_resume_cancel_through_the_api(review_ctx, client, tokens) -> None:  # noqa: ANN001
    store = RescanStore(review_ctx.store.engine)
    make_item(review_ctx, source="rescan-api", seed=950)
    run = store.create(RescanSelector(source="rescan-api"), "console-model-3", rate_per_s=1, chunk_size=5)
    admin = tokens.header("admin")
    assert client.post(f"/v1/admin/rescans/{run.id}/pause", headers=admin).json()["state"] == "paused"
    assert client.post(f"/v1/admin/rescans/{run.id}/resume", headers=admin).json()["state"] == "running"
    assert client.post(f"/v1/admin/rescans/{run.id}/cancel", headers=admin).json()["state"] == "cancelled"
    assert client.post(f"/v1/admin/rescans/{run.id}/explode", headers=admin).status_code == 404
    audit = client.get("/v1/admin/audit", params={"action": "rescan_cancel"}, headers=admin).json()
    assert audit and audit[0]["details"] == {"run_id": run.id}
    assert client.post(f"/v1/admin/rescans/{run.id}/pause", headers=tokens.header("moderator")).status_code == 403
