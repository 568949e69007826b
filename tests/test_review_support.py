"""Fixtures and helpers of the review tests (imported by the other test_review_* modules), and the tests of
the review floor's settings and migration.

Each review test module gets its own freshly migrated Postgres database (so claim-next never meets items
another module made) and the session's moto S3 server. Review items are made through the real persistence
path: heatmaps written by workers.processing.store_blobs, verdicts saved by db.store.Store.save.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from db.events import SavedResult
from devservices import fresh_database
from pipeline.events import UploadEvent
from pipeline.screen import FaceVerdict, Verdict

SECRET = "test-signing-secret-0123456789abcdef"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def review_db_url() -> Iterator[str]:
    with fresh_database("deepscreen_review") as url:
        yield url


def review_settings(db_url: str, s3_endpoint: str, **overrides: Any):  # noqa: ANN201
    from workers.settings import Settings

    values: dict[str, Any] = {
        "database_url": db_url, "s3_endpoint_url": s3_endpoint, "s3_bucket": "deepscreen",
        "input_buckets": ["uploads"], "upload_bucket": "uploads", "environment": "test",
        "signing_secret": SECRET, "review_lease_seconds": 60, "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2, "webhook_timeout_s": 3.0, "torch_threads": 1, "detect_max_side": 640,
        "auth_failures_per_minute": 100_000,  # the route-by-route tests fail authentication on purpose, often
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def review_redis_url(redis_url: str) -> str:
    return redis_url  # the session's private redis-server (tests/services.py)


@pytest.fixture(scope="module")
def review_ctx(review_db_url, s3_server, redis_url):  # noqa: ANN001, ANN201
    from review.context import distributed_context
    from workers.app import create_app

    settings = review_settings(review_db_url, s3_server.endpoint, broker_url=redis_url)
    ctx = distributed_context(settings, celery_app=create_app(settings))
    yield ctx
    ctx.close()


@dataclass
class Tokens:
    service: str
    moderator: str
    moderator2: str
    admin: str

    def header(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {getattr(self, role)}"}


@pytest.fixture(scope="module")
def tokens(review_ctx) -> Tokens:  # noqa: ANN001
    made = {}
    for attr, role, name in (("service", "service", "ingest-bot"), ("moderator", "moderator", "mod-ann"),
                             ("moderator2", "moderator", "mod-bob"), ("admin", "admin", "admin-cat")):
        made[attr], _ = review_ctx.tokens.create(name, role)
    return Tokens(**made)


@pytest.fixture(scope="module")
def client(review_ctx):  # noqa: ANN001, ANN201
    from fastapi.testclient import TestClient

    from review.api import create_app

    return TestClient(create_app(review_ctx))


def make_item(ctx: Any, source: str = "tenant-a", score: float = 0.93, faces: int = 1, seed: int | None = None,
              label: str = "fake", thresholds: tuple[float, float, int] | None = None) -> SavedResult:
    """One screened image with `faces` faces, saved through the real path; returns the saved result."""
    from workers.processing import store_blobs

    rng = np.random.default_rng(seed if seed is not None else uuid.uuid4().int % 2**32)
    pixels = rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    original = jpeg(pixels)
    sha256 = hashlib.sha256(original).hexdigest()
    key = f"t/{sha256}.jpg"
    ctx.blobs.client.put_object(Bucket="uploads", Key=key, Body=original)
    crop = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    face_verdicts = tuple(
        FaceVerdict(index=i, box=(10.0 + 40 * i, 20.0, 40.0 + 40 * i, 60.0), detection_probability=0.99,
                    fake_probability=score - 0.1 * i, verdict=label if i == 0 else "uncertain",
                    heatmap_jpeg=jpeg(crop), crop_jpeg=jpeg(crop))
        for i in range(faces))
    verdict = Verdict(key=sha256, status="scored", model_version="test-model-1", sha256=sha256,
                      size_bytes=len(original), width=160, height=120, verdict=label, fake_probability=score,
                      faces=face_verdicts, heatmap_jpeg=jpeg(pixels))
    if thresholds is not None:
        verdict = replace(verdict, threshold_fake=thresholds[0], threshold_real=thresholds[1],
                          min_face_side=thresholds[2])
    event = UploadEvent(event_id=f"evt-{uuid.uuid4().hex}", image_uri=f"s3://uploads/{key}", source=source)
    return ctx.store.save(event, verdict, store_blobs(ctx.blobs, verdict))


# -- tests of the settings and the migration --------------------------------------------------------------
def test_production_refuses_the_placeholder_secret_and_never_echoes_a_secret() -> None:
    from pydantic import ValidationError

    from workers.settings import Settings

    with pytest.raises(ValidationError, match="SIGNING_SECRET"):
        Settings(environment="production")
    with pytest.raises(ValidationError) as caught:
        Settings(environment="production", signing_secret="too-short-secret-value")
    assert "too-short-secret-value" not in str(caught.value)
    with pytest.raises(ValidationError):
        Settings(environment="production", signing_secret="x" * 40)  # long, but one repeated character
    assert Settings(environment="production", signing_secret=SECRET + "-9f3a6c1e").environment == "production"
    assert Settings(environment="local").signing_secret.get_secret_value() == "changethis"  # allowed locally
    assert "changethis" not in repr(Settings())


def test_review_migration_runs_up_and_down_on_sqlite_and_makes_the_audit_log_append_only(tmp_path) -> None:  # noqa: ANN001
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import DatabaseError

    from db.migrate import alembic_config, current, upgrade

    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()  # later migrations follow 0002
    upgrade(url)
    assert current(url) == head
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_log (at, actor, actor_role, action, details) "
                          "VALUES ('2026-01-01 00:00:00', 'a', 'admin', 'x', '{}')"))
    for statement in ("UPDATE audit_log SET actor = 'b'", "DELETE FROM audit_log"):
        with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()
    command.downgrade(alembic_config(url), "0ff4c0ce0df1")
    assert current(url) == "0ff4c0ce0df1"
    upgrade(url)
    assert current(url) == head


def test_claims_work_on_sqlite_too(tmp_path) -> None:  # noqa: ANN001
    """The embedded mode's SQLite runs the same conditional-UPDATE claims."""
    from db.engine import connect
    from db.migrate import upgrade
    from db.review_store import Actor, ClaimConflict, ReviewStore
    from db.store import Store
    from workers.processing import store_blobs
    from workers.storage import LocalBlobStore

    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    upgrade(url)
    engine = connect(url)
    store, reviews, blobs = Store(engine), ReviewStore(engine), LocalBlobStore(tmp_path / "blobs")
    pixels = np.full((40, 40, 3), 90, np.uint8)
    data = png(pixels)
    sha = hashlib.sha256(data).hexdigest()
    face = FaceVerdict(0, (1.0, 1.0, 30.0, 30.0), 0.99, 0.9, "fake", jpeg(pixels), jpeg(pixels))
    verdict = Verdict(key=sha, status="scored", model_version="m", sha256=sha, size_bytes=len(data), width=40,
                      height=40, verdict="fake", fake_probability=0.9, faces=(face,))
    saved = store.save(UploadEvent(event_id="e1", image_uri="/x.png"), verdict, store_blobs(blobs, verdict))
    ann, bob = Actor("ann", "moderator"), Actor("bob", "moderator")
    claim = reviews.claim_next(ann, 60)
    assert claim is not None and claim.item_id == saved.review_item_id
    assert reviews.claim_next(bob, 60) is None
    with pytest.raises(ClaimConflict, match="claimed_by_other"):
        reviews.claim(bob, claim.item_id, 60)
    assert reviews.decide(ann, claim.item_id, "mark_real").new_state == "marked_real"
    assert [h["action"] for h in reviews.history(claim.item_id)] == ["claim", "mark_real"]
    engine.dispose()
