"""/healthz, /readyz and the API's /metrics on real services; /readyz through a Postgres outage. The public
/readyz is bare and cached; the named checks are at /v1/admin/readiness for admin tokens.

The outage is on a throwaway Postgres cluster (tests/services.ThrowawayPostgres), never the machine's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devservices import PrivateRedis, wait_for
from tests.services import ThrowawayPostgres

pytestmark = pytest.mark.services


def _client(db_url: str, redis_url: str, s3_endpoint: str, model_dir: Path, **overrides: object):  # noqa: ANN202
    from fastapi.testclient import TestClient

    from review.api import create_app
    from review.context import distributed_context
    from tests.test_review_support import review_settings
    from workers.app import create_app as celery_app

    settings = review_settings(db_url, s3_endpoint, broker_url=redis_url, model_dir=model_dir, **overrides)
    ctx = distributed_context(settings, celery_app=celery_app(settings))
    return TestClient(create_app(ctx)), ctx


def _admin(ctx) -> dict[str, str]:  # noqa: ANN001
    token, _ = ctx.tokens.create("health-admin", "admin")
    return {"authorization": f"Bearer {token}"}


@pytest.fixture()
def throwaway_pg():  # noqa: ANN201
    from db.migrate import upgrade

    pg = ThrowawayPostgres()
    upgrade(pg.url)
    yield pg
    pg.destroy()


@pytest.mark.chaos
def test_readyz_goes_503_naming_postgres_when_it_stops_and_recovers(throwaway_pg, s3_server, tmp_model,  # noqa: ANN001
                                                                    caplog) -> None:  # noqa: ANN001
    import logging

    redis = PrivateRedis()
    client, ctx = _client(throwaway_pg.url, redis.url, s3_server.endpoint, tmp_model, readiness_cache_s=0.5)
    admin = _admin(ctx)
    caplog.set_level(logging.WARNING, logger="review")
    try:
        ready = client.get("/v1/admin/readiness", headers=admin)
        assert ready.status_code == 200, ready.text
        assert ready.json()["failing"] == [] and set(ready.json()["checks"]) == {"postgres", "redis", "blob_store",
                                                                                  "model"}
        assert client.get("/readyz").json() == {"status": "ready"}
        throwaway_pg.stop()
        time.sleep(0.6)  # past the cache period
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json() == {"status": "unavailable"}
        assert "check=postgres" in caplog.text and "OperationalError" in caplog.text  # why, for the operator
        # the admin view cannot authenticate without its database: a 503 to retry, not a 500
        assert client.get("/v1/admin/readiness", headers=admin).status_code == 503
        assert client.get("/healthz").status_code == 200  # alive, only not ready
        throwaway_pg.start()
        started = time.monotonic()
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, interval=0.5, what="readyz recovers")
        assert time.monotonic() - started < 30
        redis.stop()
        assert client.get("/v1/admin/readiness", headers=admin).json()["failing"] == ["redis"]
    finally:
        ctx.close()
        redis.destroy()


def test_readyz_names_a_missing_bucket_and_a_missing_model(postgres_url, redis_url, s3_server, tmp_path) -> None:  # noqa: ANN001
    client, ctx = _client(postgres_url, redis_url, s3_server.endpoint, tmp_path / "no-model", s3_bucket="no-such-bucket")
    try:
        body = client.get("/v1/admin/readiness", headers=_admin(ctx))
        assert body.status_code == 503
        assert body.json()["failing"] == ["blob_store", "model"]
        public = client.get("/readyz")
        assert public.status_code == 503 and public.json() == {"status": "unavailable"}
        # the spec documents the 503s as the bodies really sent, for clients that generate code from it
        from review.schemas import Readiness, ReadinessDetail

        Readiness.model_validate(public.json())
        ReadinessDetail.model_validate(body.json())
        spec = client.get("/openapi.json", headers=_admin(ctx)).json()
        for path, model in (("/readyz", "Readiness"), ("/v1/admin/readiness", "ReadinessDetail")):
            for status in ("200", "503"):
                schema = spec["paths"][path]["get"]["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{model}"}, (path, status)
    finally:
        ctx.close()


def test_public_readyz_is_bare_and_a_flood_costs_one_check(postgres_url, s3_server, tmp_model) -> None:  # noqa: ANN001
    """Anyone may ask /readyz: it says ready or not, with no paths, versions or errors, and 200 calls within
    the cache period open one Redis connection (and one Postgres and S3 round), not 200."""
    import redis as redis_client

    redis = PrivateRedis()
    try:
        client, ctx = _client(postgres_url, redis.url, s3_server.endpoint, tmp_model, readiness_cache_s=30)
        admin = _admin(ctx)
        probe = redis_client.Redis.from_url(redis.url)
        before = probe.info("stats")["total_connections_received"]
        answers = [client.get("/readyz") for _ in range(200)]
        opened = probe.info("stats")["total_connections_received"] - before
        assert {a.status_code for a in answers} == {200}
        assert all(a.json() == {"status": "ready"} for a in answers)
        assert opened <= 2, f"{opened} Redis connections for 200 /readyz calls"
        for path in ("/readyz", "/healthz"):
            text = client.get(path).text
            for leak in ("postgres", "bucket", "version", "detail", str(tmp_model), "Error"):
                assert leak not in text, (path, leak)
        assert "checks" in client.get("/v1/admin/readiness", headers=admin).json()
        assert client.get("/v1/admin/readiness").status_code == 401
        probe.close()
        ctx.close()
    finally:
        redis.destroy()


def test_openapi_is_for_admins_or_off(postgres_url, redis_url, s3_server, tmp_model) -> None:  # noqa: ANN001
    client, ctx = _client(postgres_url, redis_url, s3_server.endpoint, tmp_model)
    try:
        assert client.get("/openapi.json").status_code == 401
        token, _ = ctx.tokens.create("health-moderator", "moderator")
        assert client.get("/openapi.json", headers={"authorization": f"Bearer {token}"}).status_code == 403
        assert "/v1/review/claim" in client.get("/openapi.json", headers=_admin(ctx)).json()["paths"]
        for docs in ("/docs", "/redoc"):
            assert client.get(docs).status_code == 404
    finally:
        ctx.close()
    client, ctx = _client(postgres_url, redis_url, s3_server.endpoint, tmp_model, api_spec=False)
    try:
        assert client.get("/openapi.json", headers=_admin(ctx)).status_code == 404
    finally:
        ctx.close()


def _rows(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_api_metrics_by_route_and_status_and_the_queue_collector(postgres_url, s3_server, tmp_model) -> None:  # noqa: ANN001
    from workers.app import create_app, enqueue
    from workers.settings import Settings

    redis = PrivateRedis()
    try:
        client, ctx = _client(postgres_url, redis.url, s3_server.endpoint, tmp_model)
        queue_app = create_app(Settings(broker_url=redis.url))
        an_hour_ago = time.time() - 3600
        enqueue(queue_app, {"event_id": "q-old", "image_uri": "s3://uploads/x.jpg"}, "upload", enqueued_at=an_hour_ago)
        enqueue(queue_app, {"event_id": "q-new", "image_uri": "s3://uploads/y.jpg"}, "upload")
        enqueue(queue_app, {"event_id": "q-r", "image_uri": "s3://uploads/z.jpg"}, "rescan")
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        assert client.get("/v1/images/12345").status_code == 401
        assert client.get("/no/such/path").status_code == 404
        rows = _rows(client.get("/metrics").text)
        requests = {(lab["route"], lab["method"], lab["status"]): v for n, lab, v in rows
                    if n == "deepscreen_http_requests_total"}
        assert requests[("/healthz", "GET", "200")] == 3
        assert requests[("/v1/images/{image_id}", "GET", "401")] == 1  # the template, not the path
        assert requests[("unmatched", "GET", "404")] == 1
        assert any(n == "deepscreen_http_request_seconds_count" and lab["route"] == "/healthz" and lab["status"] == "200"
                   and v == 3 for n, lab, v in rows)
        depth = {lab["queue"]: v for n, lab, v in rows if n == "deepscreen_queue_depth"}
        assert depth == {"upload": 2, "rescan": 1}
        age = {lab["queue"]: v for n, lab, v in rows if n == "deepscreen_queue_oldest_age_seconds"}
        assert 3600 <= age["upload"] < 3700 and 0 <= age["rescan"] < 60
        assert [v for n, _, v in rows if n == "deepscreen_queue_up"] == [1]
        redis.stop()
        rows = _rows(client.get("/metrics").text)
        assert [v for n, _, v in rows if n == "deepscreen_queue_up"] == [0]  # the scrape still answers
        ctx.close()
    finally:
        redis.destroy()
