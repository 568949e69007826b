"""The known-fake memory end to end on real services: a moderator confirms a fake through the review API; a
re-encoded, resized copy sent through the queue to an already running worker comes back `matched_known_fake`
with a link to the confirmed item; the decision is reversed and the next copy no longer matches."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import hashlib
import io
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from db.known_fakes import CONFIRMED_FAKE, BankStore
from devservices import WorkerProcess, service_env, wait_for
from tests.test_review_console import login
from tests.test_review_support import (  # noqa: F401
    client,
    jpeg,
    review_ctx,
    review_db_url,
    review_redis_url,
    tokens,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]
REFRESH_S = 1.0


@pytest.fixture(scope="module")
def worker(review_db_url, review_redis_url, s3_server, flagging_model, tmp_path_factory):  # noqa: ANN001, ANN201
    env = service_env(review_db_url, review_redis_url, s3_server, flagging_model,
                      DEEPSCREEN_BANK_REFRESH_S=str(REFRESH_S))
    proc = WorkerProcess(env, tmp_path_factory.mktemp("known-fakes-worker") / "worker.log")
    try:
        wait_for(proc.ready, 180, what="worker ready")
    except TimeoutError:
        proc.stop()
        pytest.fail("worker did not start:\n" + proc.log_path.read_text()[-4000:])
    yield proc
    proc.stop()


def _copy(pixels: np.ndarray, scale: float, quality: int) -> bytes:
    image = Image.fromarray(pixels)
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _ingest(client, tokens, review_ctx, s3_server, worker, data: bytes) -> dict:  # noqa: ANN001
    """Upload, POST /v1/events, wait for the worker's verdict; the image document from the API."""
    sha256 = hashlib.sha256(data).hexdigest()
    key = f"known-fakes/{sha256}.jpg"
    s3_server.client().put_object(Bucket="uploads", Key=key, Body=data)
    event_id = f"kf-{uuid.uuid4().hex[:12]}"
    response = client.post("/v1/events", headers=tokens.header("service"),
                           json={"event_id": event_id, "image_uri": f"s3://uploads/{key}", "source": "kf-e2e",
                                 "sha256": sha256})
    assert response.status_code == 202, response.text
    try:
        wait_for(lambda: review_ctx.store.event_status(event_id) not in (None, "queued"), 240, interval=0.3,
                 what="the worker's verdict")
    except TimeoutError:
        pytest.fail("no verdict:\n" + worker.log_path.read_text()[-4000:])
    assert review_ctx.store.event_status(event_id) == "scored"
    return client.get(f"/v1/images/by-sha256/{sha256}", headers=tokens.header("service")).json()


def test_a_confirmed_fake_catches_its_reencoded_copy_until_the_decision_is_reversed(  # noqa: ANN001
        client, tokens, review_ctx, s3_server, worker, astronaut) -> None:  # noqa: ANN001
    moderator, admin = tokens.header("moderator"), tokens.header("admin")
    banks = BankStore(review_ctx.store.engine)

    original = _ingest(client, tokens, review_ctx, s3_server, worker, jpeg(astronaut))
    [original_verdict] = original["verdicts"]
    assert original_verdict["reason"] is None  # the classifier's own call; no bank knows it yet
    [original_item] = original["review_items"]
    assert client.post(f"/v1/review/items/{original_item['id']}/claim", headers=moderator).status_code == 200
    decided = client.post(f"/v1/review/items/{original_item['id']}/decision", headers=moderator,
                          json={"decision": "confirm_fake"})
    assert decided.status_code == 200 and decided.json()["new_state"] == "confirmed_fake"
    [entry] = banks.entries(CONFIRMED_FAKE)
    assert entry["review_item_id"] == original_item["id"] and entry["decision"] == "confirm_fake"

    time.sleep(REFRESH_S + 0.5)  # the running worker's index refreshes at most every REFRESH_S
    copy = _ingest(client, tokens, review_ctx, s3_server, worker, _copy(astronaut, 0.6, 40))
    [copy_verdict] = copy["verdicts"]
    assert (copy_verdict["verdict"], copy_verdict["reason"]) == ("fake", "matched_known_fake")
    assert copy_verdict["fake_probability"] is not None  # the classifier's score is kept for the record
    [copy_item] = copy["review_items"]
    detail = client.get(f"/v1/review/items/{copy_item['id']}", headers=moderator).json()
    assert detail["reason"] == "matched_known_fake" and detail["state"] == "pending"
    [match] = detail["bank_matches"]
    assert match["matched_review_item_id"] == original_item["id"] and match["matched_image_id"] == original["id"]
    assert match["bank"] == CONFIRMED_FAKE and 0 <= match["distance"] <= 31 and match["revoked"] is False
    listed = client.get("/v1/review/items", params={"verdict": "matched_known_fake"}, headers=moderator).json()
    assert [i["id"] for i in listed["items"]] == [copy_item["id"]]
    console = login(client.app, tokens.moderator)  # the console says so, next to the one-key confirm
    page = console.get(f"/console/items/{copy_item['id']}").text
    assert "Matches a known fake" in page and f'href="/console/items/{original_item["id"]}"' in page

    assert client.post(f"/v1/review/items/{original_item['id']}/reverse", headers=moderator,
                       json={}).status_code == 403  # admins only
    reversed_ = client.post(f"/v1/review/items/{original_item['id']}/reverse", headers=admin,
                            json={"note": "not a fake after all"})
    assert reversed_.status_code == 200 and reversed_.json()["new_state"] == "pending"
    assert banks.entries(CONFIRMED_FAKE) == []
    detail = client.get(f"/v1/review/items/{copy_item['id']}", headers=moderator).json()
    assert detail["bank_matches"][0]["revoked"] is True

    time.sleep(REFRESH_S + 0.5)
    again = _ingest(client, tokens, review_ctx, s3_server, worker, _copy(astronaut, 0.8, 60))
    [again_verdict] = again["verdicts"]
    assert again_verdict["reason"] is None  # the match is gone: only the classifier speaks
    [again_item] = again["review_items"]
    again_detail = client.get(f"/v1/review/items/{again_item['id']}", headers=moderator).json()
    assert again_detail["reason"] == "fake" and again_detail["bank_matches"] == []


def test_erasing_a_confirmed_fake_takes_its_hash_out_of_the_running_workers_index(  # noqa: ANN001
        client, tokens, review_ctx, s3_server, worker, astronaut) -> None:
    from sqlalchemy import select

    from db.schema import BankChange

    moderator, admin = tokens.header("moderator"), tokens.header("admin")
    banks = BankStore(review_ctx.store.engine)
    data = _copy(astronaut, 1.0, 85)
    original = _ingest(client, tokens, review_ctx, s3_server, worker, data)
    [original_item] = original["review_items"]
    assert client.post(f"/v1/review/items/{original_item['id']}/claim", headers=moderator).status_code == 200
    assert client.post(f"/v1/review/items/{original_item['id']}/decision", headers=moderator,
                       json={"decision": "confirm_fake"}).status_code == 200
    [entry] = [e for e in banks.entries(CONFIRMED_FAKE) if e["review_item_id"] == original_item["id"]]
    time.sleep(REFRESH_S + 0.5)
    copy = _ingest(client, tokens, review_ctx, s3_server, worker, _copy(astronaut, 0.7, 50))
    [copy_item] = copy["review_items"]
    assert client.get(f"/v1/review/items/{copy_item['id']}", headers=moderator).json()["reason"] == "matched_known_fake"

    erased = client.delete(f"/v1/images/{original['id']}", params={"reason": "user request"}, headers=admin)
    assert erased.status_code == 200 and erased.json()["rows"]["bank_entries"] == 1
    assert entry["id"] not in {e["id"] for e in banks.entries(CONFIRMED_FAKE)}
    with review_ctx.store.sessions() as session:
        logged = session.execute(select(BankChange.op, BankChange.pdq).where(BankChange.entry_id == entry["id"])
                                 .order_by(BankChange.id)).all()
        assert session.scalar(select(BankChange.id).where(BankChange.pdq == entry["hash"])) is None
    assert [op for op, _ in logged] == ["add", "remove"] and {pdq for _, pdq in logged} == {""}  # logged, hash blanked
    detail = client.get(f"/v1/review/items/{copy_item['id']}", headers=moderator).json()
    assert detail["bank_matches"][0]["revoked"] is True
    assert (detail["state"], detail["reason"]) == ("pending", "fake")  # re-checked: pending on its own verdict now

    time.sleep(REFRESH_S + 0.5)
    again = _ingest(client, tokens, review_ctx, s3_server, worker, data)  # the same bytes, uploaded again
    assert again["id"] != original["id"]
    [again_verdict] = again["verdicts"]
    assert again_verdict["reason"] is None  # screened afresh: no bank holds the erased hash
