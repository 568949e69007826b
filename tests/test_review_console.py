"""The console over TestClient (login, CSRF, pages, decisions), the "check an image" page with the real
screener, and export-labels into the dataset format `deepscreen train` reads."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import csv
import dataclasses
import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.test_review_support import (  # noqa: F401
    client,
    jpeg,
    make_item,
    review_ctx,
    review_db_url,
    review_settings,
    tokens,
)

pytestmark = pytest.mark.services


def login(app, token: str) -> TestClient:  # noqa: ANN001
    console = TestClient(app)
    page = console.get("/console/login")
    assert page.status_code == 200
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    response = console.post("/console/login", data={"token": token, "csrf": nonce, "next": "/console/queue"},
                            follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/console/queue"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    return console


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_login_queue_item_and_a_decision_through_the_forms(review_ctx, client, tokens) -> None:  # noqa: ANN001
    item = make_item(review_ctx, faces=2, source="console-test", score=0.88).review_item_id
    anonymous = TestClient(client.app)
    refused = anonymous.get("/console/queue")
    assert refused.status_code == 401 and 'name="token"' in refused.text  # the login form, with a way back
    assert 'value="/console/queue"' in refused.text
    nonce = csrf_of(anonymous.get("/console/login").text)
    wrong = anonymous.post("/console/login", data={"token": "ds_not-a-token", "csrf": nonce})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    stale = TestClient(client.app).post("/console/login", data={"token": tokens.moderator, "csrf": "forged"})
    assert stale.status_code == 403

    console = login(client.app, tokens.moderator)
    queue = console.get("/console/queue", params={"source": "console-test"})
    assert queue.status_code == 200
    assert f'href="/console/items/{item}"' in queue.text and "88.0%" in queue.text
    assert 'class="preview blurred"' in queue.text  # previews are blurred until hover or focus
    assert console.get(queue.text.split('src="', 2)[1].split('"')[0]).status_code == 200  # the thumbnail
    page = console.get(f"/console/items/{item}")
    assert page.status_code == 200 and 'id="claim-form"' in page.text and "<rect" in page.text
    csrf = csrf_of(page.text)
    assert console.post(f"/console/items/{item}/claim", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    page = console.get(f"/console/items/{item}")
    assert 'data-key="f"' in page.text and 'data-key="e"' in page.text and "claimed by mod-ann" in page.text
    for index in (0, 1):
        assert "/v1/media/verdicts/" in page.text and f"/faces/{index}/heatmap" in page.text
    no_csrf = console.post(f"/console/items/{item}/decision", data={"decision": "confirm_fake"})
    assert no_csrf.status_code == 403
    done = console.post(f"/console/items/{item}/decision", data={"decision": "confirm_fake", "note": "hands",
                                                                  "csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert review_ctx.reviews.item(item)["state"] == "confirmed_fake"
    page = console.get(done.headers["location"])
    assert "Recorded: confirm_fake" in page.text and "hands" in page.text  # the history table
    assert console.post("/console/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert console.get("/console/queue").status_code == 401  # the session is gone server-side too


def test_service_tokens_and_revoked_tokens_cannot_use_the_console(review_ctx, client, tokens) -> None:  # noqa: ANN001
    service = TestClient(client.app)
    nonce = csrf_of(service.get("/console/login").text)
    refused = service.post("/console/login", data={"token": tokens.service, "csrf": nonce}, follow_redirects=False)
    assert refused.status_code == 403 and "ds_session" not in service.cookies  # no session for a program
    assert service.get("/console/queue").status_code == 401
    plaintext, info = review_ctx.tokens.create("soon-revoked", "moderator")
    console = login(client.app, plaintext)
    assert console.get("/console/queue").status_code == 200
    review_ctx.tokens.revoke(info.id)
    assert console.get("/console/queue").status_code == 401


@pytest.fixture(scope="module")
def screening_app(review_ctx, flagging_model):  # noqa: ANN001, ANN201
    from review.api import create_app
    from review.context import _screener_runtime

    settings = review_settings(review_ctx.settings.database_url, review_ctx.settings.s3_endpoint_url,
                               model_dir=flagging_model)
    ctx = dataclasses.replace(review_ctx, settings=settings, _runtime=None,
                              runtime_factory=_screener_runtime(settings, review_ctx.store, review_ctx.blobs,
                                                                review_ctx.reader))
    return create_app(ctx)


def test_check_an_image_runs_the_real_screener_and_is_stored_and_audited(review_ctx, screening_app, tokens,  # noqa: ANN001
                                                                        astronaut) -> None:  # noqa: ANN001
    console = login(screening_app, tokens.moderator)
    csrf = csrf_of(console.get("/console/check").text)
    data = jpeg(astronaut)
    response = console.post("/console/check", data={"csrf": csrf}, follow_redirects=False,
                            files={"image": ("astronaut.jpg", data, "image/jpeg")})
    assert response.status_code == 303, response.text[:500]
    result = console.get(response.headers["location"])
    assert result.status_code == 200
    event_id = response.headers["location"].rsplit("/", 1)[1]
    assert 'id="check-label"' in result.text and ">fake<" in result.text  # the flagging model flags every face
    p_fake = float(re.search(r'id="p-fake">([\d.]+)%', result.text).group(1))
    p_real = float(re.search(r'id="p-real">([\d.]+)%', result.text).group(1))
    assert p_fake + p_real == pytest.approx(100.0, abs=0.15)
    event = review_ctx.images.event(event_id)
    assert event["status"] == "scored" and event["source"] == "console-check"
    verdict = review_ctx.images.verdict(event["verdict_id"])
    assert verdict["model_version"] == "test-flag-all" and len(verdict["faces"]) >= 1
    heatmap = console.get(f"/v1/media/verdicts/{verdict['verdict_id']}/heatmap")
    assert heatmap.status_code == 200 and heatmap.content[:3] == b"\xff\xd8\xff"
    image = review_ctx.images.image(image_id=verdict["image_id"])
    assert image["uri"].startswith("s3://uploads/checks/")
    audit = [e for e in review_ctx.reviews.audit_log(action="check") if e["details"]["event_id"] == event_id]
    assert len(audit) == 1 and audit[0]["actor"] == "mod-ann" and audit[0]["details"]["verdict"] == "fake"
    assert audit[0]["review_item_id"] is not None  # a flagged check opens a review item like any upload
    empty = console.post("/console/check", data={"csrf": csrf}, files={"image": ("x.jpg", b"", "image/jpeg")})
    assert empty.status_code == 422

    # what a moderator needs beside the pixels: boxes over the original, their size, the key, the thresholds
    boxes = re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', result.text)
    assert len(boxes) == len(verdict["faces"])
    for (x, y, w, h), face in zip(boxes, verdict["faces"], strict=True):
        x1, y1, x2, y2 = face["box"]
        assert (float(x), float(y), float(w), float(h)) == pytest.approx((x1, y1, x2 - x1, y2 - y1), abs=0.06)
        assert f"{round(x2 - x1)}×{round(y2 - y1)} px" in result.text
    assert f'viewBox="0 0 {image["width"]} {image["height"]}"' in result.text
    assert f'/v1/media/images/{image["id"]}/original' in result.text
    assert image["uri"].removeprefix("s3://uploads/") in result.text and "uploads" in result.text
    facts = re.search(r'<p class="thresholds"[^>]*>(.*?)</p>', result.text, re.S).group(1)
    # stored with the verdict: its own model's, not a fallback
    assert "Thresholds in force when this verdict" in facts and "(model test-flag-all)" in facts and "≥ 0.0%" in facts
    item_link = f'href="/console/items/{audit[0]["review_item_id"]}"'
    assert item_link in result.text  # the review item the check opened
    item_page = console.get(f"/console/items/{audit[0]['review_item_id']}")
    assert item_page.status_code == 200 and image["uri"].removeprefix("s3://uploads/") in item_page.text


def test_item_page_names_the_object_face_sizes_and_the_thresholds(review_ctx, client, tokens) -> None:  # noqa: ANN001
    from sqlalchemy import update

    from db.schema import Image as ImageRow
    from pipeline.model import read_metadata

    saved = make_item(review_ctx, faces=2, source="facts", score=0.93)
    item = review_ctx.reviews.item(saved.review_item_id)
    console = login(client.app, tokens.moderator)
    page = console.get(f"/console/items/{saved.review_item_id}").text
    key = item["image"]["uri"].removeprefix("s3://uploads/")
    assert f"<code>{key}</code>" in page and "bucket <code>uploads</code>" in page
    # make_item's boxes are 30 x 40 pixels; each face shows its size beside its own verdict
    assert re.search(r"Face 0:.*?fake.*?30×40 px", page, re.S) and re.search(r"Face 1:.*?uncertain.*?30×40 px", page, re.S)
    # a verdict recorded without its thresholds, of test-model-1, which has no metadata anywhere: the page says
    # so and shows the thresholds of the model it runs
    served = read_metadata(review_ctx.settings.model_dir)
    facts = re.search(r'<p class="thresholds"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert "test-model-1" in facts and served.version in facts and "before thresholds were stored" in facts
    assert f"≥ {100 * served.threshold_fake:.1f}%" in facts and f"≤ {100 * served.threshold_real:.1f}%" in facts
    # a verdict stored with its thresholds shows those, whatever model the server runs
    stored = make_item(review_ctx, source="facts", score=0.93, thresholds=(0.777, 0.111, 48))
    facts = re.search(r'<p class="thresholds"[^>]*>(.*?)</p>',
                      console.get(f"/console/items/{stored.review_item_id}").text, re.S).group(1)
    assert "Thresholds in force when this verdict" in facts and "test-model-1" in facts
    assert "≥ 77.7%" in facts and "≤ 11.1%" in facts and "under 48 px" in facts
    assert served.version not in facts or served.version == "test-model-1"

    # an object key is producer data: it is escaped, never markup
    with review_ctx.store.engine.begin() as conn:
        conn.execute(update(ImageRow).where(ImageRow.id == item["image"]["id"])
                     .values(uri='s3://uploads/t/"><script>alert(1)</script>.jpg'))
    page = console.get(f"/console/items/{saved.review_item_id}").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_favicon_and_the_shortcut_help_are_served(client, tokens) -> None:  # noqa: ANN001
    console = login(client.app, tokens.moderator)
    page = console.get("/console/queue").text
    icon = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page).group(1)
    served = console.get(icon)
    assert served.status_code == 200 and served.headers["content-type"].startswith("image/svg+xml")
    assert served.text.lstrip().startswith("<svg") and "<script" not in served.text
    help_box = re.search(r'<dialog id="shortcut-help".*?</dialog>', page, re.S).group(0)
    for key in ("n", "c", "f", "r", "e", "s", "u", "?", "Esc"):
        assert f"<kbd>{key}</kbd>" in help_box


def test_export_labels_writes_the_dataset_train_reads(review_ctx, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from cli.main import main
    from db.review_store import Actor
    from pipeline.training.data import read_manifest

    admin = Actor("labeller", "admin")
    fake = make_item(review_ctx, faces=2, source="labels", score=0.95)  # face 1 is "uncertain": left out
    real = make_item(review_ctx, faces=2, source="labels", score=0.6, label="uncertain")
    for saved, decision in ((fake, "confirm_fake"), (real, "mark_real")):
        review_ctx.reviews.claim(admin, saved.review_item_id, 60)
        review_ctx.reviews.decide(admin, saved.review_item_id, decision)
    monkeypatch.setenv("DEEPSCREEN_S3_ENDPOINT_URL", review_ctx.settings.s3_endpoint_url)
    out = tmp_path / "labels"
    code = main(["export-labels", "--out", str(out), "--margin", "0.1", "--no-progress", "--json",
                 "--database-url", review_ctx.settings.database_url])
    assert code == 0
    samples = read_manifest(out)
    fake_sha = review_ctx.reviews.item(fake.review_item_id)["sha256"]
    real_sha = review_ctx.reviews.item(real.review_item_id)["sha256"]
    mine = {(s.file, s.label, s.group) for s in samples if s.group in (fake_sha, real_sha)}
    assert mine == {(f"fake/{fake_sha[:20]}-face0.jpg", 1, fake_sha), (f"real/{real_sha[:20]}-face0.jpg", 0, real_sha),
                    (f"real/{real_sha[:20]}-face1.jpg", 0, real_sha)}
    for sample in samples:
        with Image.open(out / sample.file) as crop:
            assert crop.size == (224, 224)
        assert sample.split in ("train", "val")
    with (out / "manifest.csv").open() as handle:
        assert csv.DictReader(handle).fieldnames == ["file", "label", "group", "split"]
    first = (out / "manifest.csv").read_bytes()
    main(["export-labels", "--out", str(out), "--margin", "0.1", "--no-progress", "--json",
          "--database-url", review_ctx.settings.database_url])
    assert (out / "manifest.csv").read_bytes() == first  # deterministic: same files, same splits
    assert io.BytesIO(first).read().count(b"\n") == len(samples) + 1
