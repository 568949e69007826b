"""Every route of the app checks its role: no token 401, a wrong role 403, the right role gets through.

The table below must name every route of the app (the first test fails when a route is added without an
entry), and each entry's roles must equal the RoleCheck the route declares.
"""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from review.auth import SESSION_COOKIE, app_routes, route_access
from tests.test_review_support import client, make_item, review_ctx, review_db_url, tokens  # noqa: F401

pytestmark = pytest.mark.services

READ = {"service", "moderator", "admin"}
REVIEW = {"moderator", "admin"}
INGEST = {"service", "admin"}
ADMIN = {"admin"}
PUBLIC: set[str] = set()
ROLES = ("service", "moderator", "admin")


@dataclass
class Case:
    roles: set[str]  # empty: public
    request: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]  # state -> (url, httpx kwargs)
    ok: set[int]  # what the right role gets
    console: bool = False  # authenticated by the session cookie, not a bearer token
    prepare: Callable[[dict[str, Any], str], None] | None = None  # (state, role) before the right-role call
    after: Callable[[dict[str, Any], str], None] | None = None  # (state, role) after the right-role call


def _fixed(url: str, **kwargs: Any) -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
    return lambda state: (url.format(**state), kwargs)


def _claim_for(state: dict[str, Any], role: str) -> None:
    state["claimed_item"] = make_item(state["ctx"]).review_item_id
    response = state["clients"]["bearer"].post(f"/v1/review/items/{state['claimed_item']}/claim",
                                               headers=state["tokens"].header(role))
    assert response.status_code == 200, response.text


def _escalated_for(state: dict[str, Any], role: str) -> None:
    _claim_for(state, role)
    response = state["clients"]["bearer"].post(f"/v1/review/items/{state['claimed_item']}/decision",
                                               json={"decision": "escalate"}, headers=state["tokens"].header(role))
    assert response.status_code == 200, response.text


def _fresh_item(state: dict[str, Any], role: str) -> None:
    state["item"] = make_item(state["ctx"]).review_item_id


def _login(app: Any, token: str) -> TestClient:
    console = TestClient(app)
    page = console.get("/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    response = console.post("/console/login", data={"token": token, "csrf": nonce, "next": "/console/queue"},
                            follow_redirects=False)
    assert response.status_code == 303, response.text
    return console


def _store_session(app: Any, ctx: Any, token: str) -> TestClient:
    session_id, _ = ctx.tokens.open_session(ctx.tokens.authenticate(token), 1.0)
    console = TestClient(app)
    console.cookies.set(SESSION_COOKIE, session_id)
    return console


def _relogin(state: dict[str, Any], role: str) -> None:
    state["clients"][role] = _login(state["clients"]["bearer"].app, getattr(state["tokens"], role))


def _fresh_token(state: dict[str, Any], role: str) -> None:
    state["token_id"] = state["ctx"].tokens.create("to-revoke", "service")[1].id


EVENT = json.dumps({"event_id": "auth-evt-{n}", "image_uri": "s3://uploads/t/x.jpg", "source": "auth"})

def _image_to_erase(state: dict[str, Any], role: str) -> None:
    item = make_item(state["ctx"]).review_item_id
    state["erase_image"] = state["ctx"].reviews.item(item)["image"]["id"]


TABLE: dict[tuple[str, str], Case] = {
    ("GET", "/healthz"): Case(PUBLIC, _fixed("/healthz"), {200}),
    ("GET", "/readyz"): Case(PUBLIC, _fixed("/readyz"), {200}),
    ("GET", "/v1/admin/readiness"): Case(ADMIN, _fixed("/v1/admin/readiness"), {200}),
    ("GET", "/metrics"): Case(PUBLIC, _fixed("/metrics"), {200}),
    ("DELETE", "/v1/images/{image_id}"): Case(
        ADMIN, lambda s: (f"/v1/images/{s.get('erase_image', 10**9)}", {"params": {"reason": "auth table"}}), {200},
        prepare=_image_to_erase),
    ("GET", "/"): Case(PUBLIC, _fixed("/"), {303}),
    ("GET", "/openapi.json"): Case(ADMIN, _fixed("/openapi.json"), {200}),
    ("GET", "/static"): Case(PUBLIC, _fixed("/static/console.css"), {200}),
    ("POST", "/v1/events"): Case(INGEST, lambda s: ("/v1/events", {"content": EVENT.replace("{n}", str(s["n"]))}),
                                 {202}),
    ("GET", "/v1/images/by-sha256/{sha256}"): Case(READ, _fixed("/v1/images/by-sha256/{sha256}"), {200}),
    ("GET", "/v1/images/{image_id}"): Case(READ, _fixed("/v1/images/{image_id}"), {200}),
    ("GET", "/v1/media/images/{image_id}/original"): Case(READ, _fixed("/v1/media/images/{image_id}/original"), {200}),
    ("GET", "/v1/media/images/{image_id}/thumbnail"): Case(READ, _fixed("/v1/media/images/{image_id}/thumbnail"),
                                                           {200}),
    ("GET", "/v1/media/verdicts/{verdict_id}/heatmap"): Case(READ, _fixed("/v1/media/verdicts/{verdict_id}/heatmap"),
                                                             {200}),
    ("GET", "/v1/media/verdicts/{verdict_id}/faces/{index}/{kind}"): Case(
        READ, _fixed("/v1/media/verdicts/{verdict_id}/faces/0/crop"), {200}),
    ("GET", "/v1/review/items"): Case(REVIEW, _fixed("/v1/review/items"), {200}),
    ("GET", "/v1/review/items/{item_id}"): Case(REVIEW, _fixed("/v1/review/items/{item}"), {200}),
    ("POST", "/v1/review/claim"): Case(REVIEW, _fixed("/v1/review/claim"), {200}, prepare=_fresh_item),
    ("POST", "/v1/review/items/{item_id}/claim"): Case(REVIEW, _fixed("/v1/review/items/{item}/claim"), {200},
                                                       prepare=_fresh_item),
    ("POST", "/v1/review/items/{item_id}/decision"): Case(
        REVIEW, _fixed("/v1/review/items/{claimed_item}/decision", json={"decision": "mark_real"}), {200},
        prepare=_claim_for),
    ("POST", "/v1/review/items/{item_id}/release"): Case(REVIEW, _fixed("/v1/review/items/{claimed_item}/release"),
                                                         {204}, prepare=_claim_for),
    ("POST", "/v1/review/items/{item_id}/bundles"): Case(REVIEW, _fixed("/v1/review/items/{claimed_item}/bundles"),
                                                         {201}, prepare=_escalated_for),
    ("POST", "/v1/review/items/{item_id}/reverse"): Case(ADMIN, _fixed("/v1/review/items/{claimed_item}/reverse",
                                                                json={}), {200}, prepare=_escalated_for),
    ("GET", "/v1/bundles/{bundle_id}"): Case(REVIEW, _fixed("/v1/bundles/{bundle_id}"), {200}),
    ("GET", "/v1/admin/tokens"): Case(ADMIN, _fixed("/v1/admin/tokens"), {200}),
    ("POST", "/v1/admin/tokens"): Case(ADMIN, _fixed("/v1/admin/tokens", json={"name": "new", "role": "service"}),
                                       {201}),
    ("POST", "/v1/admin/tokens/{token_id}/revoke"): Case(ADMIN, _fixed("/v1/admin/tokens/{token_id}/revoke"), {200},
                                                         prepare=_fresh_token),
    ("GET", "/v1/admin/audit"): Case(ADMIN, _fixed("/v1/admin/audit"), {200}),
    ("GET", "/v1/admin/deliveries"): Case(ADMIN, _fixed("/v1/admin/deliveries"), {200}),
    ("PUT", "/v1/admin/gold/{item_id}"): Case(ADMIN, _fixed("/v1/admin/gold/{item}", json={"label": "fake"}), {204}),
    ("GET", "/v1/admin/gold/agreement"): Case(ADMIN, _fixed("/v1/admin/gold/agreement"), {200}),
    ("GET", "/v1/admin/rescans"): Case(ADMIN, _fixed("/v1/admin/rescans"), {200}),
    ("GET", "/v1/admin/rescans/{run_id}"): Case(ADMIN, _fixed("/v1/admin/rescans/987654"), {404}),
    ("GET", "/v1/admin/rescans/{run_id}/changes.csv"): Case(ADMIN, _fixed("/v1/admin/rescans/987654/changes.csv"),
                                                            {404}),
    ("POST", "/v1/admin/rescans/{run_id}/{action}"): Case(ADMIN, _fixed("/v1/admin/rescans/987654/pause"), {404}),
    ("GET", "/v1/admin/models"): Case(ADMIN, _fixed("/v1/admin/models"), {200}),
    # console (session cookie; POSTs carry the CSRF token)
    ("GET", "/console/login"): Case(PUBLIC, _fixed("/console/login"), {200}),
    ("POST", "/console/login"): Case(PUBLIC, _fixed("/console/login", data={"token": "ds_wrong", "csrf": "x"}),
                                     {403}),
    ("POST", "/console/logout"): Case(REVIEW, _fixed("/console/logout"), {303}, console=True, after=_relogin),
    ("GET", "/console"): Case(PUBLIC, _fixed("/console"), {303}),
    ("GET", "/console/queue"): Case(REVIEW, _fixed("/console/queue"), {200}, console=True),
    ("POST", "/console/next"): Case(REVIEW, _fixed("/console/next"), {303}, console=True, prepare=_fresh_item),
    ("GET", "/console/items/{item_id}"): Case(REVIEW, _fixed("/console/items/{item}"), {200}, console=True),
    ("POST", "/console/items/{item_id}/claim"): Case(REVIEW, _fixed("/console/items/{item}/claim"), {303},
                                                     console=True, prepare=_fresh_item),
    ("POST", "/console/items/{item_id}/decision"): Case(
        REVIEW, _fixed("/console/items/{claimed_item}/decision", data={"decision": "skip"}), {303}, console=True,
        prepare=_claim_for),
    ("POST", "/console/items/{item_id}/release"): Case(REVIEW, _fixed("/console/items/{claimed_item}/release"),
                                                       {303}, console=True, prepare=_claim_for),
    ("POST", "/console/items/{item_id}/gold"): Case(ADMIN, _fixed("/console/items/{item}/gold", data={"label": "real"}),
                                                    {303}, console=True),
    ("GET", "/console/check"): Case(REVIEW, _fixed("/console/check"), {200}, console=True),
    ("POST", "/console/check"): Case(REVIEW, _fixed("/console/check", files={"image": ("x.jpg", b"", "image/jpeg")}),
                                     {422}, console=True),
    ("GET", "/console/checks/{event_id}"): Case(REVIEW, _fixed("/console/checks/check-none"), {404}, console=True),
    ("GET", "/console/admin/agreement"): Case(ADMIN, _fixed("/console/admin/agreement"), {200}, console=True),
    ("GET", "/console/admin/rescans"): Case(ADMIN, _fixed("/console/admin/rescans"), {200}, console=True),
    ("GET", "/console/admin/rescans/{run_id}"): Case(ADMIN, _fixed("/console/admin/rescans/987654"), {404},
                                                     console=True),
}


def _route_keys(app: Any) -> set[tuple[str, str]]:
    return {(method, path) for path, methods, _ in app_routes(app) for method in methods - {"HEAD"}}


def test_the_table_names_every_route_and_matches_each_routes_declared_roles(client, tokens) -> None:  # noqa: ANN001
    app = client.app
    assert _route_keys(app) == set(TABLE), "a route was added or removed: give it an entry in TABLE"
    api_routes = 0
    for path, methods, route in app_routes(app):
        if not isinstance(route, APIRoute):
            continue  # /static: public by construction, checked by the requests below
        api_routes += 1
        checks = route_access(route)
        assert len(checks) == 1, f"{path} must declare exactly one RoleCheck, has {checks}"
        for method in methods - {"HEAD"}:
            case = TABLE[(method, path)]
            assert (set() if checks[0].public else set(checks[0].roles)) == case.roles, path
            if case.console:
                assert checks[0].cookie and not checks[0].bearer, path
    assert api_routes >= len(TABLE) - 1
    schema = client.get("/openapi.json", headers=tokens.header("admin")).json()
    assert schema["paths"]["/v1/review/claim"]["post"]["x-roles"] == ["admin", "moderator"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # every documented 422 is the `Error` shape the validation handler sends, not FastAPI's own
    invalid = [op["responses"]["422"] for ops in schema["paths"].values() for op in ops.values()
               if "422" in op.get("responses", {})]
    assert invalid and all(r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                           for r in invalid)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"error", "detail"}
    bad = client.get("/v1/review/items", params={"limit": 0}, headers=tokens.header("admin"))
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"


@pytest.fixture(scope="module")
def state(review_ctx, tokens, client) -> dict[str, Any]:  # noqa: ANN001
    from review.api import create_app

    saved = make_item(review_ctx, faces=2)
    doc = review_ctx.reviews.item(saved.review_item_id)
    consoles = {role: _login(create_app(review_ctx), getattr(tokens, role)) for role in REVIEW}
    # login refuses a service token; a session one holds anyway (opened in the store) must not pass either
    consoles["service"] = _store_session(create_app(review_ctx), review_ctx, tokens.service)
    bundle = _bundle(review_ctx, tokens, client)
    return {"ctx": review_ctx, "tokens": tokens, "clients": {"bearer": client, **consoles}, "n": 0,
            "item": saved.review_item_id, "image_id": doc["image"]["id"], "sha256": doc["sha256"],
            "verdict_id": doc["verdict"]["id"], "bundle_id": bundle, "claimed_item": 0, "token_id": 0}


def _bundle(ctx: Any, tokens: Any, client: TestClient) -> int:  # noqa: F811
    item = make_item(ctx).review_item_id
    client.post(f"/v1/review/items/{item}/claim", headers=tokens.header("admin"))
    response = client.post(f"/v1/review/items/{item}/decision", json={"decision": "escalate"},
                           headers=tokens.header("admin"))
    return response.json()["bundle_id"]


def _call(state: dict[str, Any], key: tuple[str, str], role: str | None) -> Any:
    case = TABLE[key]
    state["n"] += 1
    url, kwargs = case.request(state)
    kwargs = dict(kwargs)
    if case.console:
        http = state["clients"][role] if role else TestClient(state["clients"]["bearer"].app)
        if role and key[0] != "GET":
            session = state["ctx"].tokens.session(http.cookies.get(SESSION_COOKIE))
            if "json" not in kwargs:
                kwargs["data"] = {**kwargs.get("data", {}), "csrf": session.csrf_token}
    else:
        http = state["clients"]["bearer"]
        kwargs["headers"] = state["tokens"].header(role) if role else {}
    return http.request(key[0], url, follow_redirects=False, **kwargs)


@pytest.mark.parametrize("key", sorted(TABLE), ids=lambda k: f"{k[0]} {k[1]}")
def test_route_refuses_no_token_and_wrong_roles_and_admits_its_roles(state, key) -> None:  # noqa: ANN001
    case = TABLE[key]
    if not case.roles:
        assert _call(state, key, None).status_code in case.ok
        return
    response = _call(state, key, None)
    assert response.status_code == 401, response.text
    for role in sorted(set(ROLES) - case.roles):
        response = _call(state, key, role)
        assert response.status_code == 403, (role, response.text)
    for role in sorted(case.roles):
        if case.prepare:
            case.prepare(state, role)
        response = _call(state, key, role)
        assert response.status_code in case.ok, (role, response.status_code, response.text[:300])
        if case.after:
            case.after(state, role)


def test_api_routes_ignore_the_console_cookie_and_console_posts_need_csrf(state) -> None:  # noqa: ANN001
    moderator_console = state["clients"]["moderator"]
    assert moderator_console.get("/v1/review/items").status_code == 401  # a cookie alone never reaches the API
    assert moderator_console.get(f"/v1/media/images/{state['image_id']}/thumbnail").status_code == 200
    response = moderator_console.post("/console/next", data={"csrf": "forged"}, follow_redirects=False)
    assert response.status_code == 403
    response = moderator_console.post("/console/next", follow_redirects=False)
    assert response.status_code == 403


def test_tokens_are_stored_hashed_and_revoked_or_expired_tokens_fail(review_ctx, review_db_url, client) -> None:  # noqa: ANN001
    from datetime import timedelta

    plaintext, info = review_ctx.tokens.create("short-lived", "moderator", timedelta(seconds=1))
    engine = create_engine(review_db_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash, prefix FROM api_tokens WHERE id = :i"), {"i": info.id}).one()
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_tokens")) for v in row)
    engine.dispose()
    assert plaintext not in dump and stored.token_hash != plaintext and len(stored.token_hash) == 64
    headers = {"authorization": f"Bearer {plaintext}"}
    assert client.get("/v1/review/items", headers=headers).status_code == 200
    import time

    time.sleep(1.2)
    assert client.get("/v1/review/items", headers=headers).status_code == 401
    other, info = review_ctx.tokens.create("revoked-one", "admin")
    assert client.get("/v1/admin/tokens", headers={"authorization": f"Bearer {other}"}).status_code == 200
    review_ctx.tokens.revoke(info.id)
    assert client.get("/v1/admin/tokens", headers={"authorization": f"Bearer {other}"}).status_code == 401
    assert client.get("/v1/admin/tokens", headers={"authorization": "Bearer ds_" + "A" * 43}).status_code == 401
    assert client.get("/v1/admin/tokens", headers={"authorization": "Basic abc"}).status_code == 401


def test_token_cli_creates_lists_and_revokes(review_db_url, capsys) -> None:  # noqa: ANN001
    from cli.main import main

    assert main(["token", "create", "--role", "moderator", "--name", "cli-mod", "--json",
                 "--database-url", review_db_url]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["token"].startswith("ds_") and created["role"] == "moderator"
    assert main(["token", "list", "--json", "--database-url", review_db_url]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(t["name"] == "cli-mod" for t in listed)
    assert created["token"] not in json.dumps(listed)
    assert main(["token", "revoke", str(created["id"]), "--database-url", review_db_url]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", "revoke", "999999", "--database-url", review_db_url]) == 2


def test_failed_authentication_is_rate_limited_per_client(review_ctx, tokens) -> None:  # noqa: ANN001, F811
    from review.api import create_app

    app = create_app(review_ctx)
    app.state.auth_failures.max_failures = 5
    with TestClient(app) as limited:
        codes = [limited.get("/v1/review/items", headers={"authorization": "Bearer wrong"}).status_code
                 for _ in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
        blocked = limited.get("/v1/review/items", headers={"authorization": "Bearer wrong"})
        assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"
        # a valid token is never limited: the limit is on guessing, not on the address
        assert limited.get("/v1/review/items", headers=tokens.header("moderator")).status_code == 200


def test_tokens_never_reach_the_logs(review_ctx, tokens, client, caplog) -> None:  # noqa: ANN001, F811
    import logging

    caplog.set_level(logging.DEBUG)
    wrong = "ds_" + "x" * 40
    for token in (tokens.moderator, tokens.service, tokens.admin, wrong):
        client.get("/v1/review/items", headers={"authorization": f"Bearer {token}"})
    client.post("/console/login", data={"token": wrong, "csrf": "nope"})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for token in (tokens.moderator, tokens.service, tokens.admin, wrong):
        assert token not in text


def _login_form(http: TestClient, token: str) -> Any:
    nonce = re.search(r'name="csrf" value="([^"]+)"', http.get("/console/login").text).group(1)
    return http.post("/console/login", data={"token": token, "csrf": nonce, "next": "/console/queue"},
                     follow_redirects=False)


def test_requests_without_credentials_never_lock_out_valid_users(review_ctx, tokens) -> None:  # noqa: ANN001, F811
    """Everyone here shares one address (TestClient's), as everyone behind one proxy or NAT does."""
    from review.api import create_app

    app = create_app(review_ctx)
    app.state.auth_failures.max_failures = 20
    moderator_console = _login(app, tokens.moderator)
    anonymous = TestClient(app)
    for _ in range(25):
        assert anonymous.get("/console/queue").status_code == 401
        assert anonymous.get("/v1/review/items").status_code == 401
    assert anonymous.get("/v1/review/items", headers=tokens.header("admin")).status_code == 200
    assert moderator_console.get("/console/queue").status_code == 200
    # wrong tokens are what the limiter counts: past the limit they get 429 ...
    codes = [anonymous.get("/v1/review/items", headers={"authorization": "Bearer ds_wrong"}).status_code
             for _ in range(22)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    assert _login_form(TestClient(app), "ds_wrong").status_code == 429
    # ... while valid credentials from the same address still get through
    assert anonymous.get("/v1/review/items", headers=tokens.header("admin")).status_code == 200
    assert moderator_console.get("/console/queue").status_code == 200
    assert _login_form(TestClient(app), tokens.admin).status_code == 303


def test_a_service_token_cannot_sign_in_to_the_console(review_ctx, tokens) -> None:  # noqa: ANN001, F811
    from review.api import create_app

    app = create_app(review_ctx)
    console = TestClient(app)
    refused = _login_form(console, tokens.service)
    assert refused.status_code == 403 and "moderator or admin" in refused.text
    assert SESSION_COOKIE not in console.cookies
    assert console.get("/console/queue").status_code == 401
    assert _login_form(TestClient(app), tokens.moderator).status_code == 303
    # a session a service token already holds reaches neither console pages nor media through its cookie
    held = _store_session(app, review_ctx, tokens.service)
    image_id = review_ctx.reviews.item(make_item(review_ctx).review_item_id)["image"]["id"]
    assert held.get("/console/queue").status_code == 403
    assert held.get(f"/v1/media/images/{image_id}/thumbnail").status_code == 403
    assert TestClient(app).get(f"/v1/media/images/{image_id}/thumbnail",
                               headers=tokens.header("service")).status_code == 200  # its bearer use is unchanged


def test_the_limiter_counts_the_client_the_trusted_proxy_names(review_ctx, tokens) -> None:  # noqa: ANN001, F811
    """`serve`'s proxy options (uvicorn --proxy-headers with FORWARDED_ALLOW_IPS): two clients behind one
    trusted proxy are limited apart; a client that is not the proxy cannot pick its address."""
    import uvicorn

    from cli.main import build_parser
    from cli.review import proxy_options
    from review.api import create_app

    parser = build_parser()
    args = parser.parse_args(["serve", "--forwarded-allow-ips", "testclient,10.0.0.0/8"])
    app = create_app(review_ctx)
    app.state.auth_failures.max_failures = 3
    config = uvicorn.Config(app, **proxy_options(args, review_ctx.settings))
    config.load()
    behind_proxy = TestClient(config.loaded_app)

    def wrong_from(client: str) -> int:
        return behind_proxy.get("/v1/review/items", headers={"authorization": "Bearer ds_wrong",
                                                             "x-forwarded-for": client}).status_code

    assert [wrong_from("203.0.113.7") for _ in range(4)] == [401, 401, 401, 429]
    assert wrong_from("198.51.100.9") == 401  # another client of the same proxy
    assert review_ctx.settings.proxy_headers and proxy_options(
        parser.parse_args(["serve", "--no-proxy-headers"]), review_ctx.settings)["proxy_headers"] is False
    untrusted = uvicorn.Config(app, **proxy_options(parser.parse_args(["serve", "--forwarded-allow-ips",
                                                                      "10.0.0.1"]), review_ctx.settings))
    untrusted.load()
    spoofing = TestClient(untrusted.loaded_app)
    codes = {spoofing.get("/v1/review/items", headers={"authorization": "Bearer ds_wrong",
                                                       "x-forwarded-for": f"192.0.2.{n}"}).status_code
             for n in range(6)}
    assert 429 in codes  # a fresh X-Forwarded-For per request does not reset the count


def test_compose_serves_with_proxy_headers() -> None:
    import yaml

    from tests.test_compose import COMPOSE

    words = [str(w) for w in yaml.safe_load(COMPOSE.read_text())["services"]["api"]["command"]]
    assert "--proxy-headers" in words
    assert words[words.index("--forwarded-allow-ips") + 1].startswith("${FORWARDED_ALLOW_IPS")
