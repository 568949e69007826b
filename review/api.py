"""The FastAPI app factory: the /v1 API, the console, security headers, body limits, error shapes.

`create_app(ctx)` takes its adapters from a ReviewContext (review/context.py), so tests hand it the real
Postgres and S3 of their fixtures, and `deepscreen serve` the ones its Settings name.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, OperationalError

from review import console
from review.auth import Admin, AuthError, Public, route_access
from review.context import ReviewContext
from review.health import ReadinessCache
from review.ratelimit import FailedAuthLimiter
from review.routes import admin, events, images, ops, rescans, review
from review.schemas import Error, error_response
from review.security import BodyLimit, RefuseNulInUrl, SecurityHeaders
from review.telemetry import ApiMetrics, RequestMetrics

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
VERSION = "1.0.0"


def create_app(ctx: ReviewContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        ctx.close()

    # the spec lists every route and role: it is served below to admins only, not by FastAPI to anyone
    app = FastAPI(title="deepscreen review API", version=VERSION, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="Ingest upload events, read verdicts, and work the moderators' review queue. "
                  "Authenticate with `Authorization: Bearer <token>` (`deepscreen token create`).")
    app.state.ctx = ctx
    app.state.auth_failures = FailedAuthLimiter(ctx.settings.auth_failures_per_minute, 60.0)
    app.state.metrics = ApiMetrics(ctx.settings.broker_url if ctx.celery_app is not None else None)
    app.state.readiness = ReadinessCache(ctx, ctx.settings.readiness_cache_s)
    for router in (events.router, images.router, review.router, review.bundles, admin.router, rescans.router,
                   console.router, ops.router):
        _document_access(router.routes)
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/healthz", tags=["meta"])
    def healthz(_: Public) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    def root(_: Public) -> RedirectResponse:
        return RedirectResponse("/console/queue", status_code=303)

    if ctx.settings.api_spec:
        @app.get("/openapi.json", include_in_schema=False)
        def openapi_spec(_: Admin) -> JSONResponse:
            return JSONResponse(app.openapi())

    _bad_input_handlers(app)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        if request.url.path.startswith("/console"):
            return console.auth_page(request, exc)
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 429:
            headers = {"retry-after": "60"}
        return error_response(exc.status, exc.reason, headers=headers)

    _bearer_scheme(app)
    limits = ctx.settings

    def limit_for(path: str) -> int:
        if path.startswith("/console/check"):
            return limits.max_image_bytes + 64 * 1024
        return limits.max_request_bytes

    app.add_middleware(RefuseNulInUrl)
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(SecurityHeaders, hsts=ctx.settings.environment == "production")
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def _bad_input_handlers(app: FastAPI) -> None:
    """Bad input is a 4xx with a reason, and an unreachable database a 503: never a 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default echoes the input back, and an echoed NaN or Infinity cannot be written as JSON
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
                             for err in exc.errors())
        return error_response(422, "invalid_request", detail=problems[:2000])

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def out_of_range(request: Request, exc: Exception) -> Response:
        # a value the database cannot hold; routes bound their numbers, this is the net under them
        log.warning("bad input reached the store path=%s error=%s", request.url.path, type(exc).__name__)
        return error_response(400, "value_out_of_range", detail="a value is out of the range the store holds")

    @app.exception_handler(OperationalError)
    async def store_unavailable(request: Request, exc: OperationalError) -> Response:
        # the database is down or unreachable: a 503 the client may retry, and the readiness probe names it
        log.warning("database unavailable path=%s error=%s", request.url.path, str(exc).splitlines()[0][:200])
        return error_response(503, "store_unavailable", headers={"retry-after": "5"})


def _document_access(routes: list[Any]) -> None:
    """Put each route's roles into its OpenAPI operation (x-roles) with the bearer security scheme."""
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        checks = route_access(route)
        if not checks or checks[0].public:
            continue
        route.openapi_extra = {**(route.openapi_extra or {}), "x-roles": sorted(checks[0].roles),
                               "security": [{"bearer": []}]}


def _bearer_scheme(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a deepscreen API token"}}
            _error_shape_for_422(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error_shape_for_422(schema: dict[str, Any]) -> None:
    """FastAPI documents 422 as its own `HTTPValidationError`; `invalid_request` above answers with `Error`."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None:
                response["content"] = error
    schemas = schema["components"].setdefault("schemas", {})
    schemas.setdefault("Error", Error.model_json_schema())
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
