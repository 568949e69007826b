"""End to end on real services: POST /v1/events -> Redis -> a `deepscreen worker` subprocess -> Postgres + S3
-> the verdict over the API -> a moderator claims and escalates it -> a verified evidence bundle."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import hashlib

import httpx
import pytest

from devservices import WorkerProcess, service_env, wait_for
from review.bundles import verify_bundle
from tests.test_review_support import (  # noqa: F401
    SECRET,
    client,
    jpeg,
    review_ctx,
    review_db_url,
    review_redis_url,
    tokens,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(review_db_url, review_redis_url, s3_server, flagging_model, tmp_path_factory):  # noqa: ANN001, ANN201
    env = service_env(review_db_url, review_redis_url, s3_server, flagging_model)
    proc = WorkerProcess(env, tmp_path_factory.mktemp("review-worker") / "worker.log")
    try:
        wait_for(proc.ready, 180, what="worker ready")
    except TimeoutError:
        proc.stop()
        pytest.fail("worker did not start:\n" + proc.log_path.read_text()[-4000:])
    yield proc
    proc.stop()


def test_an_ingested_upload_becomes_a_reviewed_escalation(client, tokens, review_ctx, s3_server, worker,  # noqa: ANN001
                                                          astronaut) -> None:  # noqa: ANN001
    data = jpeg(astronaut)
    sha256 = hashlib.sha256(data).hexdigest()
    s3_server.client().put_object(Bucket="uploads", Key="review-e2e/astronaut.jpg", Body=data)
    event = {"event_id": "review-e2e-1", "image_uri": "s3://uploads/review-e2e/astronaut.jpg", "source": "e2e",
             "sha256": sha256}
    response = client.post("/v1/events", json=event, headers=tokens.header("service"))
    assert response.status_code == 202 and response.json()["accepted"] == ["review-e2e-1"]
    try:
        wait_for(lambda: review_ctx.store.event_status("review-e2e-1") not in (None, "queued"), 240, interval=0.5,
                 what="the worker's verdict")
    except TimeoutError:
        pytest.fail("no verdict:\n" + worker.log_path.read_text()[-4000:])
    assert review_ctx.store.event_status("review-e2e-1") == "scored"

    doc = client.get(f"/v1/images/by-sha256/{sha256}", headers=tokens.header("service")).json()
    [verdict] = doc["verdicts"]
    assert verdict["verdict"] == "fake" and verdict["model_version"] == "test-flag-all" and verdict["faces"]
    heatmap = httpx.get(verdict["faces"][0]["heatmap_url"], timeout=10)
    assert heatmap.status_code == 200 and heatmap.content[:3] == b"\xff\xd8\xff"
    [review_item] = doc["review_items"]

    moderator = tokens.header("moderator")
    listed = client.get("/v1/review/items", params={"source": "e2e"}, headers=moderator).json()
    assert [i["id"] for i in listed["items"]] == [review_item["id"]]
    claimed = client.post(f"/v1/review/items/{review_item['id']}/claim", headers=moderator)
    assert claimed.status_code == 200
    decided = client.post(f"/v1/review/items/{review_item['id']}/decision", headers=moderator,
                          json={"decision": "escalate", "note": "face swap around the jaw"}).json()
    bundle = client.get(f"/v1/bundles/{decided['bundle_id']}", headers=moderator)
    manifest = verify_bundle(bundle.content, SECRET)
    assert manifest["image"]["sha256"] == sha256
    assert {f["name"]: f["sha256"] for f in manifest["files"]}["original.jpg"] == sha256
    assert manifest["verdict"]["model_version"] == "test-flag-all"
    assert len(manifest["faces"]) == len(verdict["faces"])
