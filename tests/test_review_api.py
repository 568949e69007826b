"""The /v1 API on real Postgres, Redis and the moto S3 server: ingest, verdicts by id and sha256, links."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import base64
import dataclasses
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from tests.test_review_support import client, make_item, review_ctx, review_db_url, review_redis_url, tokens  # noqa: F401

pytestmark = pytest.mark.services


def _queued_event_ids(redis_url: str, queue: str = "upload") -> list[str]:
    conn = redis.Redis.from_url(redis_url)
    ids = []
    for raw in conn.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0]["event_id"])
    conn.close()
    return ids


def _unqueue(redis_url: str, prefix: str) -> None:
    """Take this test's messages off the shared queues, so no later worker screens them."""
    conn = redis.Redis.from_url(redis_url)
    for queue in ("upload", "rescan"):
        for raw in conn.lrange(queue, 0, -1):
            args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            if args[0]["event_id"].startswith(prefix):
                conn.lrem(queue, 0, raw)
    conn.close()


def _without_links(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_links(v) for k, v in value.items() if not k.endswith("_url")}
    if isinstance(value, list):
        return [_without_links(v) for v in value]
    return value


def test_events_are_recorded_queued_once_and_validated(client, tokens, review_redis_url, review_ctx) -> None:  # noqa: ANN001
    headers = tokens.header("service")
    before = _queued_event_ids(review_redis_url)
    events = [{"event_id": f"api-ingest-{i}", "image_uri": f"s3://uploads/t/api-{i}.jpg", "source": "api"}
              for i in range(3)]
    try:
        response = client.post("/v1/events", json=events, headers=headers)
        assert response.status_code == 202, response.text
        assert sorted(response.json()["accepted"]) == [e["event_id"] for e in events]
        again = client.post("/v1/events", json=[events[0], {**events[0], "event_id": "api-ingest-9"}],
                            headers=headers)
        assert again.json() == {"accepted": ["api-ingest-9"], "duplicates": ["api-ingest-0"]}
        queued = [e for e in _queued_event_ids(review_redis_url) if e.startswith("api-ingest-")]
        assert sorted(queued) == ["api-ingest-0", "api-ingest-1", "api-ingest-2", "api-ingest-9"]
        assert review_ctx.store.event_status("api-ingest-1") == "queued"
        rescan = client.post("/v1/events", headers=headers, json={"event_id": "api-ingest-r",
                                                                  "image_uri": "s3://uploads/t/r.jpg",
                                                                  "priority": "rescan"})
        assert rescan.status_code == 202 and "api-ingest-r" in _queued_event_ids(review_redis_url, "rescan")
        notification = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-23T10:00:00Z",
                                     "s3": {"bucket": {"name": "uploads"},
                                            "object": {"key": "t/api-notified.jpg", "eTag": "abc"}}}]}
        first = client.post("/v1/events", json=notification, headers=headers).json()
        assert len(first["accepted"]) == 1 and first["accepted"][0].startswith("s3-")
        assert client.post("/v1/events", json=notification, headers=headers).json()["duplicates"] == first["accepted"]
        _unqueue(review_redis_url, first["accepted"][0])
        bad = client.post("/v1/events", json={"event_id": "x", "image_uri": "http://evil/x.jpg"}, headers=headers)
        assert bad.status_code == 422 and "image_uri" in bad.json()["detail"]
        assert client.post("/v1/events", content=b"{not json", headers=headers).status_code == 422
        huge = json.dumps([{**events[0], "event_id": f"big-{i}"} for i in range(20000)])
        assert len(huge) > review_ctx.settings.max_request_bytes
        too_big = client.post("/v1/events", content=huge, headers=headers)
        assert too_big.status_code == 413 and too_big.json()["error"] == "body_too_large"
        assert not [e for e in _queued_event_ids(review_redis_url) if e.startswith("big-")]
        assert len(_queued_event_ids(review_redis_url)) == len(before) + 4
    finally:
        _unqueue(review_redis_url, "api-ingest-")


def test_a_broker_outage_is_a_503_and_the_retry_is_queued(review_ctx, tokens, review_redis_url) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from devservices import free_port
    from review.api import create_app
    from workers.app import create_app as create_celery
    from workers.settings import Settings

    dead = create_celery(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    dead.conf.task_publish_retry = False
    event = {"event_id": "api-outage-1", "image_uri": "s3://uploads/t/o.jpg"}
    down = TestClient(create_app(dataclasses.replace(review_ctx, celery_app=dead)))
    response = down.post("/v1/events", json=event, headers=tokens.header("service"))
    assert response.status_code == 503 and response.json()["error"] == "queue_unavailable"
    assert review_ctx.store.event_status("api-outage-1") is None  # not left behind as "seen"
    up = TestClient(create_app(review_ctx))
    try:
        response = up.post("/v1/events", json=event, headers=tokens.header("service"))
        assert response.json()["accepted"] == ["api-outage-1"]
        assert "api-outage-1" in _queued_event_ids(review_redis_url)
    finally:
        _unqueue(review_redis_url, "api-outage-")


def test_verdicts_by_id_and_sha256_with_presigned_and_proxied_links(client, tokens, review_ctx) -> None:  # noqa: ANN001
    saved = make_item(review_ctx, faces=2, source="links")
    item = review_ctx.reviews.item(saved.review_item_id)
    image_id, sha256 = item["image"]["id"], item["sha256"]
    headers = tokens.header("service")
    doc = client.get(f"/v1/images/{image_id}", headers=headers).json()
    by_sha = client.get(f"/v1/images/by-sha256/{sha256.upper()}", headers=headers).json()
    assert _without_links(doc) == _without_links(by_sha)
    assert doc["sha256"] == sha256 and doc["links_expire_in_s"] == 300
    [verdict] = doc["verdicts"]
    assert verdict["verdict"] == "fake" and verdict["model_version"] == "test-model-1"
    assert [f["index"] for f in verdict["faces"]] == [0, 1]
    assert verdict["faces"][0]["fake_probability"] == pytest.approx(0.93)
    assert doc["review_items"][0]["id"] == saved.review_item_id
    s3 = review_ctx.blobs.client
    face0 = review_ctx.images.verdict(verdict["verdict_id"])["faces"][0]
    for url, bucket, key in ((verdict["heatmap_url"], "deepscreen", item["verdict"]["heatmap_key"]),
                             (verdict["faces"][0]["heatmap_url"], "deepscreen", face0["heatmap_key"]),
                             (verdict["faces"][0]["crop_url"], "deepscreen", face0["crop_key"]),
                             (doc["original_url"], "uploads", item["image"]["uri"].split("/", 3)[3])):
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Expires"] == ["300"] and "X-Amz-Signature" in query, url
        fetched = httpx.get(url, timeout=10)
        assert fetched.status_code == 200
        assert fetched.content == s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    # the proxied routes serve the same bytes, only with a token
    proxied = client.get(f"/v1/media/verdicts/{verdict['verdict_id']}/faces/1/heatmap", headers=headers)
    assert proxied.status_code == 200 and proxied.headers["content-type"] == "image/jpeg"
    assert client.get(f"/v1/media/verdicts/{verdict['verdict_id']}/faces/1/heatmap").status_code == 401
    thumb = client.get(f"/v1/media/images/{image_id}/thumbnail", headers=headers)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    cached = s3.get_object(Bucket="deepscreen", Key=f"thumbnails/{sha256[:2]}/{sha256}-256.jpg")["Body"].read()
    assert cached == thumb.content  # made once, kept for the next queue page
    assert client.get(f"/v1/media/images/{image_id}/thumbnail", headers=headers).content == cached
    assert client.get(f"/v1/media/verdicts/{verdict['verdict_id']}/faces/7/crop", headers=headers).status_code == 404
    assert client.get("/v1/images/by-sha256/" + "0" * 64, headers=headers).status_code == 404
    assert client.get("/v1/images/by-sha256/not-a-hash", headers=headers).status_code == 404
    assert client.get("/v1/images/99999999", headers=headers).status_code == 404


def test_responses_carry_security_headers_and_errors_name_no_secret(client, tokens) -> None:  # noqa: ANN001
    for response in (client.get("/v1/review/items", headers=tokens.header("moderator")),
                     client.get("/console/login"), client.get("/v1/review/items")):
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
    refused = client.get("/v1/review/items", headers={"authorization": f"Bearer {tokens.moderator}x"})
    assert refused.status_code == 401 and tokens.moderator not in refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
