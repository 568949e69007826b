"""Escalation: signed evidence bundles, and webhooks delivered by the relay, with retries, to a real local
HTTP receiver."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from review.bundles import BundleInvalid, verify_bundle
from review.signing import BUNDLE_PURPOSE, hmac_sign
from review.webhooks import verify_webhook
from tests.test_review_support import (  # noqa: F401
    SECRET,
    client,
    make_item,
    review_ctx,
    review_db_url,
    review_settings,
    tokens,
)

pytestmark = pytest.mark.services


class Receiver:
    """An HTTP server on 127.0.0.1 answering POSTs with scripted status codes, recording what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"at": time.monotonic(), "path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/deepscreen"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def _drain(ctx: Any, http: TestClient | None = None, config: Any = None, within_s: float = 15.0) -> None:
    """Run relay passes until the outbox holds no pending message (the app's webhook settings by default)."""
    from review import relay, webhooks

    config = config or webhooks.config_from(http.app.state.ctx.settings)
    deadline = time.monotonic() + within_s
    while ctx.escalations.outbox(state="pending"):
        assert time.monotonic() < deadline, ctx.escalations.outbox(state="pending")
        relay.deliver_due(ctx, config)
        time.sleep(0.02)


def _app_with(ctx: Any, **settings: Any) -> TestClient:
    from review.api import create_app

    new = review_settings(ctx.settings.database_url, ctx.settings.s3_endpoint_url, **settings)
    return TestClient(create_app(dataclasses.replace(ctx, settings=new)))


def _escalate(http: TestClient, ctx: Any, tokens: Any, note: str = "looks synthetic") -> tuple[int, dict[str, Any]]:
    item = make_item(ctx, faces=2, source="escalation").review_item_id
    headers = tokens.header("moderator")
    assert http.post(f"/v1/review/items/{item}/claim", headers=headers).status_code == 200
    response = http.post(f"/v1/review/items/{item}/decision", headers=headers,
                         json={"decision": "escalate", "note": note})
    assert response.status_code == 200, response.text
    return item, response.json()


def test_escalation_bundle_is_signed_complete_and_tamper_evident(review_ctx, client, tokens) -> None:  # noqa: ANN001
    item, decided = _escalate(client, review_ctx, tokens)
    bundle_id = decided["bundle_id"]
    download = client.get(f"/v1/bundles/{bundle_id}", headers=tokens.header("moderator"))
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    archive = download.content
    manifest = verify_bundle(archive, SECRET)
    doc = review_ctx.reviews.item(item)
    assert manifest["image"]["sha256"] == doc["sha256"]
    assert manifest["verdict"]["model_version"] == "test-model-1"
    assert manifest["review_item"]["state"] == "escalated" and manifest["review_item"]["decided_by"] == "mod-ann"
    assert [h["action"] for h in manifest["history"]] == ["claim", "escalate"]
    assert manifest["history"][1]["note"] == "looks synthetic"
    names = {f["name"] for f in manifest["files"]}
    assert names == {"original.jpg", "heatmap.jpg", "faces/face-0-heatmap.jpg", "faces/face-0-crop.jpg",
                     "faces/face-1-heatmap.jpg", "faces/face-1-crop.jpg"} and manifest["missing"] == []
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        original = bundle.read("original.jpg")
        assert hashlib.sha256(original).hexdigest() == doc["sha256"]
        entries = {n: bundle.read(n) for n in bundle.namelist()}
    stamp = int(entries["manifest.sig"].decode().split("\nt=")[1].split()[0])
    assert download.headers["x-deepscreen-signature"] == "sha256=" + hmac_sign(
        SECRET, BUNDLE_PURPOSE, stamp, entries["manifest.json"])

    def repack(**changes: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for name, data in {**entries, **changes}.items():
                out.writestr(name, data)
        return buffer.getvalue()

    with pytest.raises(BundleInvalid, match="file_altered:original.jpg"):
        verify_bundle(repack(**{"original.jpg": original[:-1] + b"\x00"}), SECRET)
    forged = json.loads(entries["manifest.json"])
    forged["verdict"]["model_version"] = "someone-else"
    with pytest.raises(BundleInvalid, match="bad_signature"):
        verify_bundle(repack(**{"manifest.json": json.dumps(forged).encode()}), SECRET)
    with pytest.raises(BundleInvalid, match="bad_signature"):
        verify_bundle(archive, "another-secret")
    with pytest.raises(BundleInvalid, match="not_a_zip"):
        verify_bundle(b"PK nothing", SECRET)
    assert client.get(f"/v1/bundles/{bundle_id}", headers=tokens.header("service")).status_code == 403
    audit = client.get("/v1/admin/audit", params={"item_id": item}, headers=tokens.header("admin")).json()
    assert [e["action"] for e in audit] == ["claim", "escalate", "bundle_downloaded"]
    rebuilt = client.post(f"/v1/review/items/{item}/bundles", headers=tokens.header("admin"))
    assert rebuilt.status_code == 201 and rebuilt.json()["id"] != bundle_id


def test_webhook_retries_with_backoff_until_the_receiver_accepts(review_ctx, tokens, receiver_factory,  # noqa: ANN001
                                                                 caplog) -> None:  # noqa: ANN001
    receiver = receiver_factory([500, 502, 200])
    url = receiver.url + "?key=hook-credential-123"
    http = _app_with(review_ctx, webhook_url=url, webhook_backoff_s=0.2, webhook_backoff_max_s=5.0,
                     webhook_max_attempts=5)
    with caplog.at_level(logging.INFO):
        item, decided = _escalate(http, review_ctx, tokens)
        assert receiver.requests == []  # the request only queued it (TestClient has run its background tasks)
        _drain(review_ctx, http)
    assert len(receiver.requests) == 3
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38, gaps  # 0.2 s, then 0.4 s
    first, last = receiver.requests[0], receiver.requests[-1]
    assert first["path"] == "/hooks/deepscreen?key=hook-credential-123"
    assert first["body"] == last["body"] and first["headers"]["x-deepscreen-delivery"] == \
        last["headers"]["x-deepscreen-delivery"]
    assert last["headers"]["x-deepscreen-topic"] == "escalation"
    assert all(verify_webhook(SECRET, r["body"], r["headers"]["x-deepscreen-signature"]) for r in receiver.requests)
    payload = json.loads(last["body"])
    assert payload["bundle_id"] == decided["bundle_id"] and payload["review_item_id"] == item
    manifest = verify_bundle(base64.b64decode(payload["bundle_zip_base64"]), SECRET)
    assert manifest == payload["manifest"]
    rows = [r for r in review_ctx.escalations.deliveries()
            if r["delivery_id"] == last["headers"]["x-deepscreen-delivery"]]
    rows.sort(key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status_code"], r["succeeded"]) for r in rows] == [
        (1, 500, False), (2, 502, False), (3, 200, True)]
    assert all(r["target"] == receiver.url and r["bundle_id"] == decided["bundle_id"] for r in rows)
    listed = http.get("/v1/admin/deliveries", params={"delivery_id": rows[0]["delivery_id"]},
                      headers=tokens.header("admin")).json()
    assert len(listed) == 3
    assert "hook-credential-123" not in caplog.text and SECRET not in caplog.text


def test_webhook_gives_up_on_a_permanent_refusal_and_after_max_attempts(review_ctx, tokens,  # noqa: ANN001
                                                                        receiver_factory) -> None:  # noqa: ANN001
    from devservices import free_port

    gone = receiver_factory([410])
    http = _app_with(review_ctx, webhook_url=gone.url, webhook_max_attempts=4)
    _, decided = _escalate(http, review_ctx, tokens)
    _drain(review_ctx, http)
    assert len(gone.requests) == 1  # 410: retrying cannot help
    given_up = [m for m in review_ctx.escalations.outbox() if m["bundle_id"] == decided["bundle_id"]]
    assert [(m["state"], m["attempts"], m["last_error"]) for m in given_up] == [("failed", 1, "status 410")]
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    http = _app_with(review_ctx, webhook_url=nobody, webhook_max_attempts=3, webhook_backoff_s=0.01)
    _, decided = _escalate(http, review_ctx, tokens)
    _drain(review_ctx, http)
    rows = [r for r in review_ctx.escalations.deliveries() if r["bundle_id"] == decided["bundle_id"]]
    assert sorted(r["attempt"] for r in rows) == [1, 2, 3]
    assert all(r["error"] == "ConnectError" and not r["succeeded"] for r in rows)


def test_decision_topics_are_delivered_when_subscribed(review_ctx, tokens, receiver_factory) -> None:  # noqa: ANN001
    receiver = receiver_factory([])
    http = _app_with(review_ctx, webhook_url=receiver.url, webhook_topics="escalation,decision.confirm_fake")
    item = make_item(review_ctx, source="topics").review_item_id
    headers = tokens.header("moderator2")
    http.post(f"/v1/review/items/{item}/claim", headers=headers)
    assert http.post(f"/v1/review/items/{item}/decision", headers=headers,
                     json={"decision": "confirm_fake"}).status_code == 200
    other = make_item(review_ctx, source="topics").review_item_id
    http.post(f"/v1/review/items/{other}/claim", headers=headers)
    http.post(f"/v1/review/items/{other}/decision", headers=headers, json={"decision": "mark_real"})
    _drain(review_ctx, http)
    assert [r["headers"]["x-deepscreen-topic"] for r in receiver.requests] == ["decision.confirm_fake"]
    body = json.loads(receiver.requests[0]["body"])
    assert body["review_item_id"] == item and body["actor"] == "mod-bob" and body["new_state"] == "confirmed_fake"


def test_fake_verdicts_are_relayed_once_each_from_a_durable_cursor(review_ctx, receiver_factory) -> None:  # noqa: ANN001
    from review import relay, webhooks

    receiver = receiver_factory([503])  # the first delivery needs one retry
    config = webhooks.WebhookConfig(url=receiver.url, secret=SECRET, topics=("verdict.fake",), backoff_s=0.01)
    make_item(review_ctx, source="relay-before")  # made before the relay's first run: not sent
    assert relay.relay_once(review_ctx, config) == 0 and receiver.requests == []
    fakes = [make_item(review_ctx, source="relay", faces=2) for _ in range(2)]
    make_item(review_ctx, source="relay", label="uncertain", score=0.6)  # not a fake verdict
    assert relay.relay_once(review_ctx, config) == 2
    _drain(review_ctx, config=config)  # the 503 is retried on a later pass
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    assert [r["headers"]["x-deepscreen-topic"] for r in receiver.requests] == ["verdict.fake"] * 3
    assert sorted(b["verdict_id"] for b in bodies) == [fakes[0].verdict_id, fakes[0].verdict_id,
                                                       fakes[1].verdict_id]
    last = next(b for b in bodies if b["verdict_id"] == fakes[1].verdict_id)
    assert last["review_item_id"] == fakes[1].review_item_id and len(last["faces"]) == 2
    image = review_ctx.images.image(image_id=review_ctx.images.verdict(fakes[1].verdict_id)["image_id"])
    assert last["sha256"] == image["sha256"] and last["source"] == "relay"
    for request in receiver.requests:
        verify_webhook(SECRET, request["body"], request["headers"]["x-deepscreen-signature"])
    assert relay.relay_once(review_ctx, config) == 0 and len(receiver.requests) == 3  # the cursor held
    later = make_item(review_ctx, source="relay")
    assert relay.relay_once(review_ctx, config) == 1
    _drain(review_ctx, config=config)
    assert json.loads(receiver.requests[-1]["body"])["verdict_id"] == later.verdict_id
    assert review_ctx.escalations.cursor("verdict.fake") == later.verdict_id


def test_escalations_that_never_reached_the_webhook_are_redelivered(review_ctx, tokens, receiver_factory) -> None:  # noqa: ANN001
    from devservices import free_port
    from review import relay, webhooks

    down = f"http://127.0.0.1:{free_port()}/hook"
    http = _app_with(review_ctx, webhook_url=down, webhook_max_attempts=2, webhook_backoff_s=0.01)
    item, decided = _escalate(http, review_ctx, tokens)
    assert decided["bundle_id"] not in {b["id"] for b in review_ctx.escalations.undelivered_bundles(0)}  # queued
    _drain(review_ctx, http)  # two attempts, then the relay gives up
    pending = {b["id"] for b in review_ctx.escalations.undelivered_bundles(older_than_s=0)}
    assert decided["bundle_id"] in pending
    assert decided["bundle_id"] not in {b["id"] for b in review_ctx.escalations.undelivered_bundles(3600)}
    receiver = receiver_factory([])
    config = webhooks.WebhookConfig(url=receiver.url, secret=SECRET, topics=("escalation",))
    assert relay.redeliver_escalations(review_ctx, config, older_than_s=0) == len(pending)
    sent = {json.loads(r["body"])["bundle_id"] for r in receiver.requests}
    assert decided["bundle_id"] in sent
    assert relay.redeliver_escalations(review_ctx, config, older_than_s=0) == 0  # delivered: not again
    assert review_ctx.escalations.undelivered_bundles(older_than_s=0) == []
