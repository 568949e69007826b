"""Hostile values in every parameter of every route get a 4xx with a reason, never a 500.

The requests are generated from the app's own routes (path, query, form and JSON body parameters), so a
route added later is probed too. They run against both stores `deepscreen serve` can sit on: Postgres (the
review fixtures) and the embedded SQLite home.
"""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from annotated_types import Ge, Gt, Le, Lt
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from review.auth import SESSION_COOKIE, app_routes, route_access
from tests.test_review_support import client, make_item, review_ctx, review_db_url, tokens  # noqa: F401

pytestmark = pytest.mark.services

BIG_INTS = ("100000000000000000000", "-100000000000000000000", "9223372036854775808", "2147483648", "-1", "0")
BAD_FLOATS = ("nan", "inf", "-inf", "1e400", "-1e308", "1e308")
BAD_TEXT = ("a\x00b", "x" * 5000, "%", "\u202e\ufeff")
# a valid body for each JSON body model of the app, so a hostile value in one field reaches the handler
VALID_BODIES: dict[str, dict[str, Any]] = {
    "DecisionIn": {"decision": "skip"}, "ReverseIn": {}, "TokenIn": {"name": "hostile", "role": "service"},
    "GoldIn": {"label": "fake"},
}
HOSTILE_JSON: tuple[str, ...] = ("NaN", "Infinity", "-Infinity", "1e400", "1e308", "100000000000000000000000",
                                 '"a\\u0000b"', "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000)


def _sample(name: str) -> str:
    """A plausible value for a path parameter that is not under test."""
    return {"sha256": "0" * 64, "event_id": "check-none", "kind": "crop", "action": "pause"}.get(name, "1")


def _numeric(field: Any) -> bool:
    return field.field_info.annotation in (int, float, int | None, float | None)


def _params(route: APIRoute) -> tuple[list[Any], list[Any], list[Any]]:
    dependant = route.dependant
    return dependant.path_params, dependant.query_params, dependant.body_params


@pytest.fixture(scope="module")
def sqlite_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from review.context import embedded_context
    from workers.settings import Settings

    settings = Settings(environment="test", auth_failures_per_minute=100_000, signing_secret="s" * 40)
    ctx = embedded_context(settings, Path(tmp_path_factory.mktemp("hostile-home")))
    yield ctx
    ctx.close()


def _login(app: Any, token: str) -> TestClient:
    console = TestClient(app, raise_server_exceptions=False)
    nonce = re.search(r'name="csrf" value="([^"]+)"', console.get("/console/login").text).group(1)
    response = console.post("/console/login", data={"token": token, "csrf": nonce}, follow_redirects=False)
    assert response.status_code == 303, response.text[:200]
    return console


def _admin_clients(ctx: Any) -> tuple[TestClient, dict[str, str], TestClient, str]:
    from review.api import create_app

    token, _ = ctx.tokens.create("hostile-admin", "admin")
    app = create_app(ctx)
    bearer = TestClient(app, raise_server_exceptions=False)
    console = _login(app, token)
    csrf = ctx.tokens.session(console.cookies.get(SESSION_COOKIE)).csrf_token
    return bearer, {"authorization": f"Bearer {token}"}, console, csrf


def _requests(app: Any) -> Iterator[tuple[str, str, dict[str, Any], bool]]:
    """(method, url, httpx kwargs, via console session) with one hostile value in one parameter."""
    for path, methods, route in app_routes(app):
        if not isinstance(route, APIRoute):
            continue
        console = route_access(route)[0].cookie and not route_access(route)[0].bearer
        path_params, query_params, body_params = _params(route)
        base = {p.name: _sample(p.name) for p in path_params}
        for method in sorted(methods - {"HEAD"}):
            for param in [*path_params, *query_params]:
                values = (*BIG_INTS, *BAD_FLOATS) if _numeric(param) else BAD_TEXT
                for value in values:
                    if param in path_params:
                        url = path.format(**{**base, param.name: quote(value, safe="")})
                        yield method, url, {"params": {"reason": "hostile"}}, console
                    else:
                        yield method, path.format(**base), {"params": {param.name: value}}, console
            yield from _bodies(method, path.format(**base), body_params, console)


def _bodies(method: str, url: str, body_params: list[Any], console: bool) -> Iterator[tuple[str, str, dict, bool]]:
    for body in body_params:
        model = body.field_info.annotation
        if isinstance(model, type) and hasattr(model, "model_fields"):
            assert model.__name__ in VALID_BODIES, f"give {model.__name__} a valid example in VALID_BODIES"
            valid = VALID_BODIES[model.__name__]
            for field in model.model_fields:
                for raw in HOSTILE_JSON:
                    text = json.dumps(valid)[:-1] + ("," if valid else "") + f'"{field}":{raw}}}'
                    yield method, url, {"content": text, "headers": {"content-type": "application/json"}}, console
        else:  # a form field
            for value in BAD_TEXT:
                yield method, url, {"data": {body.name: value}}, console


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_hostile_values_in_every_parameter_never_answer_500(backend, review_ctx, sqlite_ctx) -> None:  # noqa: ANN001
    ctx = review_ctx if backend == "postgres" else sqlite_ctx
    if backend == "postgres":
        make_item(review_ctx)
    bearer, headers, console, csrf = _admin_clients(ctx)
    failures, count = [], 0
    for method, url, kwargs, via_console in _requests(bearer.app):
        count += 1
        if via_console:
            http = console
            if method != "GET":
                if "data" in kwargs:
                    kwargs = {**kwargs, "data": {**kwargs["data"], "csrf": csrf}}
                kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), "x-csrf-token": csrf}}
        else:
            http = bearer
            kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}
        response = http.request(method, url, follow_redirects=False, **kwargs)
        if response.status_code >= 500:
            failures.append((response.status_code, method, url[:80], str(kwargs)[:120]))
    assert count > 500
    assert not failures, f"{len(failures)} of {count} hostile requests answered 5xx: {failures[:15]}"


def test_every_numeric_parameter_is_bounded_and_every_body_model_guarded(sqlite_ctx) -> None:  # noqa: ANN001
    """A number with no ceiling reaches the database as a value it cannot hold (OverflowError, DataError);
    a JSON body model outside schemas.Body takes NaN, Infinity and NUL."""
    from review.api import create_app
    from review.schemas import Body

    unbounded = []
    for path, _, route in app_routes(create_app(sqlite_ctx)):
        if not isinstance(route, APIRoute):
            continue
        path_params, query_params, body_params = _params(route)
        for body in body_params:
            model = body.field_info.annotation
            if isinstance(model, type) and hasattr(model, "model_fields"):
                assert issubclass(model, Body), f"{path}: {model.__name__} must derive from review.schemas.Body"
        for param in [*path_params, *query_params]:
            if not _numeric(param):
                continue
            kinds = {type(m) for m in param.field_info.metadata}
            if not (kinds & {Ge, Gt} and kinds & {Le, Lt}):
                unbounded.append(f"{path} {param.name}")
    assert not unbounded, f"numeric parameters without ge/le bounds: {unbounded}"


def test_a_deeply_nested_event_body_is_refused_with_a_reason(review_ctx, client, tokens) -> None:  # noqa: ANN001
    headers = tokens.header("service")
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        response = client.post("/v1/events", content=body, headers=headers)
        assert response.status_code == 422, response.text[:200]
        assert response.json()["error"] == "invalid_event" and "deep" in response.json()["detail"]


def test_a_huge_console_page_number_is_a_400_not_a_500(review_ctx, client, tokens) -> None:  # noqa: ANN001
    console = _login(client.app, tokens.moderator)
    response = console.get("/console/queue", params={"page": 10**20})
    assert response.status_code in (400, 422), response.text[:200]
    assert "page" in response.text
    assert console.get("/console/queue", params={"page": 2}).status_code == 200


def test_text_postgres_cannot_hold_is_refused_before_it_reaches_the_store(review_ctx, client, tokens) -> None:  # noqa: ANN001
    """A NUL in a note (JSON or console form) or in a query string is a 4xx; the claimed item stays claimed."""
    item = make_item(review_ctx).review_item_id
    headers = tokens.header("moderator")
    assert client.post(f"/v1/review/items/{item}/claim", headers=headers).status_code == 200
    bad = client.post(f"/v1/review/items/{item}/decision", json={"decision": "mark_real", "note": "a\x00b"},
                      headers=headers)
    assert bad.status_code == 422 and "NUL" in bad.json()["detail"]
    console = _login(client.app, tokens.moderator)
    csrf = review_ctx.tokens.session(console.cookies.get(SESSION_COOKIE)).csrf_token
    form = console.post(f"/console/items/{item}/claim", data={"csrf": csrf}, follow_redirects=False)
    assert form.status_code == 303
    form = console.post(f"/console/items/{item}/decision", data={"decision": "mark_real", "note": "a\x00b",
                                                                 "csrf": csrf}, follow_redirects=False)
    assert form.status_code == 422, form.text[:200]
    assert review_ctx.reviews.item(item)["state"] == "claimed"
    query = client.get("/v1/review/items", params={"source": "a\x00b"}, headers=headers)
    assert query.status_code == 400 and query.json()["error"] == "bad_url"
    nan = client.post(f"/v1/review/items/{item}/decision", content='{"decision": NaN}',
                      headers={**headers, "content-type": "application/json"})
    assert nan.status_code == 422 and nan.json()["error"] == "invalid_request"


def test_deep_nesting_is_an_invalid_event_wherever_events_are_parsed() -> None:
    """The queue's messages go through parse_event, the API's bodies through parse_payload: both refuse."""
    from pipeline.errors import InvalidEvent
    from pipeline.events import parse_event, parse_payload

    deep = "[" * 8000 + "]" * 8000  # under the 16 KB event limit, far past the decoder's recursion limit
    for parse in (parse_event, parse_payload):
        with pytest.raises(InvalidEvent, match="nests too deep"):
            parse(deep)
