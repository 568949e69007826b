"""Who is calling, and may they: bearer tokens for the API, a session cookie for the console.

Every route declares its access with one `RoleCheck` dependency (tests/test_review_auth.py walks
app.routes and proves it): the roles it admits, or `public`. No token: 401. Wrong role: 403.
A request authenticated by the session cookie that is not GET/HEAD must carry the session's CSRF token
in the form field `csrf` (or the X-CSRF-Token header). Only people sign in to the console: a `service`
token is for programs, and neither opens a session nor passes a console page's check.
A refused credential counts against the client's address (review/ratelimit.py); no credential does not.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from db.review_store import Actor
from db.token_store import TokenInfo
from review.context import get_ctx

SESSION_COOKIE = "ds_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
READ_ROLES = ("service", "moderator", "admin")
REVIEW_ROLES = ("moderator", "admin")
CONSOLE_ROLES = REVIEW_ROLES  # the roles of people; a service token may not open a console session
INGEST_ROLES = ("service", "admin")
ADMIN_ROLES = ("admin",)


class AuthError(Exception):
    """401 (who are you?), 403 (not you, or no CSRF token) or 429 (too many failures from this client);
    `reason` is returned to the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    token: TokenInfo
    via: str  # bearer | session
    csrf_token: str | None = None

    @property
    def name(self) -> str:
        return self.token.name

    @property
    def role(self) -> str:
        return self.token.role

    @property
    def actor(self) -> Actor:
        return Actor(self.token.name, self.token.role)


class RoleCheck:
    """A route's access rule. Instances are the dependency FastAPI calls; `roles` is what tests read."""

    def __init__(self, *roles: str, bearer: bool = True, cookie: bool = False, public: bool = False) -> None:
        self.roles = frozenset(roles)
        self.bearer = bearer
        self.cookie = cookie
        self.public = public

    def __repr__(self) -> str:
        return "RoleCheck(public)" if self.public else f"RoleCheck({', '.join(sorted(self.roles))})"

    async def __call__(self, request: Request) -> Principal | None:
        if self.public:
            return None
        principal = await self._authenticate(request)
        # a session a service token holds (opened before login refused them) reaches nothing, media included
        if principal.role not in self.roles or (principal.via == "session" and principal.role not in CONSOLE_ROLES):
            raise AuthError(403, "forbidden_role")
        if principal.via == "session" and request.method not in SAFE_METHODS:
            await _check_csrf(request, principal)
        request.state.principal = principal
        return principal

    async def _authenticate(self, request: Request) -> Principal:
        # credentials are checked first: a valid one passes even while its address is limited
        try:
            return await self._credentials(request)
        except AuthError as exc:
            if exc.reason != "not_authenticated" and count_failure(request):
                raise AuthError(429, "too_many_failed_attempts") from None
            raise

    async def _credentials(self, request: Request) -> Principal:
        ctx = get_ctx(request)
        header = request.headers.get("authorization")
        if header and self.bearer:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError(401, "bad_authorization_header")
            token = await run_in_threadpool(ctx.tokens.authenticate, value.strip())
            if token is None:
                raise AuthError(401, "invalid_token")
            return Principal(token, "bearer")
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id and self.cookie:
            session = await run_in_threadpool(ctx.tokens.session, session_id)
            if session is None:
                raise AuthError(401, "session_expired")
            return Principal(session.token, "session", session.csrf_token)
        raise AuthError(401, "not_authenticated")


def client_address(request: Request) -> str:
    """The address the limiter counts: the proxy-resolved client under `serve --proxy-headers`."""
    return request.client.host if request.client else "-"


def count_failure(request: Request) -> bool:
    """Count a refused credential against the client; True when it was already at the limit (answer 429)."""
    limiter = getattr(request.app.state, "auth_failures", None)
    return limiter is not None and limiter.failed(client_address(request))


async def _check_csrf(request: Request, principal: Principal) -> None:
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not sent or not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
        raise AuthError(403, "csrf_token_missing_or_wrong")


PUBLIC = RoleCheck(public=True)
# API (bearer token)
Ingest = Annotated[Principal, Depends(RoleCheck(*INGEST_ROLES))]
Reader = Annotated[Principal, Depends(RoleCheck(*READ_ROLES))]
Reviewer = Annotated[Principal, Depends(RoleCheck(*REVIEW_ROLES))]
Admin = Annotated[Principal, Depends(RoleCheck(*ADMIN_ROLES))]
# GET routes the console's <img> and download links use: a token, or the console session
MediaReader = Annotated[Principal, Depends(RoleCheck(*READ_ROLES, cookie=True))]
BundleReader = Annotated[Principal, Depends(RoleCheck(*REVIEW_ROLES, cookie=True))]
# console pages (session cookie)
ConsoleUser = Annotated[Principal, Depends(RoleCheck(*CONSOLE_ROLES, bearer=False, cookie=True))]
ConsoleReviewer = Annotated[Principal, Depends(RoleCheck(*REVIEW_ROLES, bearer=False, cookie=True))]
ConsoleAdmin = Annotated[Principal, Depends(RoleCheck(*ADMIN_ROLES, bearer=False, cookie=True))]
Public = Annotated[None, Depends(PUBLIC)]


def route_access(route: object) -> list[RoleCheck]:
    """The RoleCheck dependencies of a route (exactly one on every route of the app)."""
    found: list[RoleCheck] = []
    stack = [getattr(route, "dependant", None)]
    while stack:
        dependant = stack.pop()
        if dependant is None:
            continue
        if isinstance(dependant.call, RoleCheck):
            found.append(dependant.call)
        stack.extend(dependant.dependencies)
    return found


def app_routes(app: Any) -> list[tuple[str, set[str], Any]]:
    """(path, methods, route) for every route of the app, routers flattened (FastAPI >= 0.16x keeps included
    routers as lazy branches in app.routes; older versions copy their routes in)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI
        return [(r.path, set(getattr(r, "methods", None) or {"GET"}), r) for r in app.routes]
    out = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        methods = getattr(context, "methods", None) or getattr(route, "methods", None) or {"GET"}
        out.append((context.path, set(methods), route))
    return out
