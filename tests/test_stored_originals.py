"""Hostile uploads stored and linked safely: originals carry a content type from their magic bytes (never the
client's name or header), every link (presigned S3 or the auth-proxied routes) is an attachment with a
raster-image or opaque content type, and an input that was refused gets no link at all. On the moto server."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from tests.test_review_console import csrf_of, login, screening_app  # noqa: F401
from tests.test_review_support import (  # noqa: F401
    client,
    jpeg,
    make_item,
    review_ctx,
    review_db_url,
    review_settings,
    tokens,
)
from tests.test_submit import _queued, _submit
from workers.storage import (
    OPAQUE,
    S3BlobStore,
    original_content_type,
    original_suffix,
    response_content_type,
)

pytestmark = pytest.mark.services

HTML = b"<!doctype html><html><body><script>fetch('/v1/admin/tokens')</script></body></html>"
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'
SCRIPTABLE = (
    "text/html",
    "image/svg+xml",
    "application/xhtml+xml",
    "text/xml",
    "application/xml",
    "text/plain",
)


def _png() -> bytes:
    from tests.conftest import encode_image

    return encode_image(Image.new("RGB", (40, 30), (200, 10, 10)))


@pytest.mark.parametrize(
    ("data", "kind", "suffix"),
    [
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, "image/jpeg", ".jpg"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "image/png", ".png"),
        (b"GIF89a" + b"\0" * 20, "image/gif", ".gif"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp", ".webp"),
        (b"II*\x00" + b"\0" * 20, "image/tiff", ".tif"),
        (b"BM" + b"\0" * 20, "image/bmp", ".bmp"),
        (HTML, OPAQUE, ""),
        (SVG, OPAQUE, ""),
        (b"<svg onload=alert(1)>", OPAQUE, ""),
        (b"", OPAQUE, ""),
        (b"%PDF-1.7", OPAQUE, ""),
        (b"\xef\xbb\xbf<html>", OPAQUE, ""),
    ],
)
def test_content_type_comes_from_magic_bytes_only(data: bytes, kind: str, suffix: str) -> None:
    assert original_content_type(data) == kind
    assert original_suffix(data) == suffix


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("a/b.jpg", "image/jpeg"),
        ("a/b.JPEG", "image/jpeg"),
        ("b.png", "image/png"),
        ("evil.html", OPAQUE),
        ("x.svg", OPAQUE),
        ("noext", OPAQUE),
        ("a.png/evil.htm", OPAQUE),
    ],
)
def test_links_answer_with_a_raster_or_opaque_type_whatever_the_object_says(key: str, kind: str) -> None:
    assert response_content_type(key) == kind


def test_the_s3_store_never_keeps_a_scriptable_content_type(s3_server) -> None:  # noqa: ANN001
    client = s3_server.client()
    store = S3BlobStore(client, "deepscreen")
    for kind in SCRIPTABLE:
        store.put("hostile/x", HTML, kind)
        assert client.head_object(Bucket="deepscreen", Key="hostile/x")["ContentType"] == OPAQUE, kind
    store.put("hostile/x.jpg", b"\xff\xd8\xff", "image/jpeg")
    assert client.head_object(Bucket="deepscreen", Key="hostile/x.jpg")["ContentType"] == "image/jpeg"
    client.delete_object(Bucket="deepscreen", Key="hostile/x")
    client.delete_object(Bucket="deepscreen", Key="hostile/x.jpg")


def test_presigned_links_download_as_attachments_with_a_safe_type(review_ctx, s3_server) -> None:  # noqa: ANN001
    # an outside producer may write anything into the upload bucket, with any content type
    client = s3_server.client()
    client.put_object(Bucket="uploads", Key="outside/evil.html", Body=HTML, ContentType="text/html")
    client.put_object(Bucket="uploads", Key="outside/evil.svg", Body=SVG, ContentType="image/svg+xml")
    presigner = review_ctx.presigner
    for uri in ("s3://uploads/outside/evil.html", "s3://uploads/outside/evil.svg"):
        url = presigner.uri(uri)
        query = parse_qs(urlsplit(url).query)
        assert query["response-content-disposition"] == ["attachment"]
        fetched = httpx.get(url, timeout=10)
        assert fetched.status_code == 200 and fetched.content in (HTML, SVG)
        assert fetched.headers["content-disposition"] == "attachment"
        assert fetched.headers["content-type"] == OPAQUE
    heatmap_key = review_ctx.images.verdict(make_item(review_ctx).verdict_id)["heatmap_key"]
    heatmap = httpx.get(presigner.blob(heatmap_key), timeout=10)
    assert (
        heatmap.headers["content-disposition"] == "attachment"
        and heatmap.headers["content-type"] == "image/jpeg"
    )


def test_proxied_media_are_attachments_too(review_ctx, client, tokens) -> None:  # noqa: ANN001
    saved = make_item(review_ctx)
    image_id = review_ctx.reviews.item(saved.review_item_id)["image"]["id"]
    headers = tokens.header("moderator")
    for path in (f"/v1/media/images/{image_id}/original", f"/v1/media/verdicts/{saved.verdict_id}/heatmap"):
        response = client.get(path, headers=headers)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert response.headers["content-disposition"].startswith("attachment")
        assert response.headers["x-content-type-options"] == "nosniff"


def test_check_page_stores_hostile_uploads_opaque_and_gives_refused_ones_no_link(
    review_ctx, screening_app, tokens, astronaut
) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    console = login(screening_app, tokens.moderator)
    api = TestClient(screening_app)
    headers = tokens.header("moderator")
    s3 = review_ctx.blobs.client
    uploads = {
        "evil.html": (HTML, "text/html"),
        "evil.svg": (SVG, "image/svg+xml"),
        "looks-fine.png": (SVG, "image/png"),
        "face.jpg": (jpeg(astronaut), "text/html"),
    }
    for name, (data, declared) in uploads.items():
        csrf = csrf_of(console.get("/console/check").text)
        response = console.post(
            "/console/check",
            data={"csrf": csrf},
            follow_redirects=False,
            files={"image": (name, data, declared)},
        )
        assert response.status_code == 303, (name, response.text[:300])
        event = review_ctx.images.event(response.headers["location"].rsplit("/", 1)[1])
        image = review_ctx.images.image(image_id=event["image_id"])
        key = image["uri"].split("/", 3)[3]
        stored = s3.head_object(Bucket="uploads", Key=key)
        doc = api.get(f"/v1/images/{image['id']}", headers=headers).json()
        if name == "face.jpg":  # a real image keeps its real type, whatever the client declared
            assert stored["ContentType"] == "image/jpeg" and key.endswith(".jpg")
            fetched = httpx.get(doc["original_url"], timeout=10)
            assert fetched.headers["content-disposition"] == "attachment"
            assert fetched.headers["content-type"] == "image/jpeg" and fetched.content == data
            continue
        assert event["status"] == "invalid_input", name
        assert stored["ContentType"] == OPAQUE, (name, stored["ContentType"])
        assert not key.endswith((".html", ".htm", ".svg", ".png")), key
        assert doc["original_url"] is None, f"{name} was refused: no link to it"
        assert (
            hashlib.sha256(s3.get_object(Bucket="uploads", Key=key)["Body"].read()).hexdigest()
            == image["sha256"]
        )


def test_submit_upload_stores_by_magic_bytes_not_by_file_name(
    tmp_path: Path,
    redis_url: str,
    s3_server,  # noqa: ANN001
    postgres_url: str,
) -> None:
    (tmp_path / "evil.html").write_bytes(HTML)
    (tmp_path / "evil.svg").write_bytes(SVG)
    (tmp_path / "disguised.jpg").write_bytes(HTML + b"<!-- 2 -->")
    (tmp_path / "real.png").write_bytes(_png())
    # --all-files: a folder walk otherwise skips names without an image extension
    done = _submit([str(tmp_path), "--upload", "--all-files", "--json"], redis_url, s3_server, postgres_url)
    assert done.returncode == 0, done.stderr
    _queued(redis_url, "upload")
    client = s3_server.client()
    for name in ("evil.html", "evil.svg", "disguised.jpg", "real.png"):
        digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        [key] = [
            o["Key"]
            for o in client.list_objects_v2(Bucket="uploads", Prefix=f"incoming/{digest[:2]}/{digest}")[
                "Contents"
            ]
        ]
        kind = client.head_object(Bucket="uploads", Key=key)["ContentType"]
        if name == "real.png":
            assert (kind, key.endswith(".png")) == ("image/png", True)
        else:
            assert kind == OPAQUE and key == f"incoming/{digest[:2]}/{digest}", (name, kind, key)
