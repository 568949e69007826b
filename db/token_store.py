"""API tokens and console sessions. Only sha256 digests of tokens and session ids are stored.

A token is 32 random bytes (urlsafe base64) behind a `ds_` prefix; its sha256 is the lookup key, and the
stored digest is compared with hmac.compare_digest. A token that is revoked or expired authenticates
nothing, and the console sessions it opened die with it (they are joined on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from db.schema import ApiToken, ConsoleSession
from db.timestamps import aware

ROLES = ("service", "moderator", "admin")
TOKEN_PREFIX = "ds_"
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token


class TokenError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "prefix": self.prefix,
                "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "last_used_at": self.last_used_at}


@dataclass(frozen=True)
class SessionInfo:
    token: TokenInfo
    csrf_token: str
    expires_at: datetime


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.role, row.prefix, aware(row.created_at),  # type: ignore[arg-type]
                     aware(row.expires_at), aware(row.revoked_at), aware(row.last_used_at))


def _usable(row: ApiToken, now: datetime) -> bool:
    if row.revoked_at is not None:
        return False
    expires = aware(row.expires_at)
    return expires is None or expires > now


class TokenStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    # -- tokens ------------------------------------------------------------------------------------
    def create(self, name: str, role: str, expires_in: timedelta | None = None) -> tuple[str, TokenInfo]:
        """A new token: the plaintext is returned once and never stored."""
        if role not in ROLES:
            raise TokenError("bad_role", role)
        name = name.strip()
        if not name or len(name) > 200:
            raise TokenError("bad_name", "1 to 200 characters")
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        row = ApiToken(name=name, role=role, token_hash=digest(plaintext), prefix=plaintext[:10], created_at=now,
                       expires_at=now + expires_in if expires_in else None)
        with self.sessions.begin() as session:
            session.add(row)
            session.flush()
            return plaintext, _info(row)

    def authenticate(self, plaintext: str) -> TokenInfo | None:
        if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > 100:
            return None
        wanted = digest(plaintext)
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == wanted))
            if row is None or not hmac.compare_digest(row.token_hash, wanted) or not _usable(row, now):
                return None
            last = aware(row.last_used_at)
            if last is None or now - last > TOUCH_EVERY:
                row.last_used_at = now
            return _info(row)

    def revoke(self, token_id: int) -> TokenInfo:
        with self.sessions.begin() as session:
            row = session.get(ApiToken, token_id)
            if row is None:
                raise TokenError("no_such_token", str(token_id))
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            session.execute(delete(ConsoleSession).where(ConsoleSession.token_id == token_id))
            return _info(row)

    def find(self, id_or_prefix: str) -> TokenInfo:
        """A token by id or by the prefix `token list` shows."""
        with self.sessions() as session:
            if id_or_prefix.isdigit():
                row = session.get(ApiToken, int(id_or_prefix))
                rows = [row] if row is not None else []
            else:
                rows = list(session.scalars(select(ApiToken).where(ApiToken.prefix.startswith(id_or_prefix,
                                                                                             autoescape=True))))
            if len(rows) != 1:
                raise TokenError("no_such_token" if not rows else "ambiguous_prefix", id_or_prefix)
            return _info(rows[0])

    def list(self, include_revoked: bool = True) -> list[TokenInfo]:
        with self.sessions() as session:
            query = select(ApiToken).order_by(ApiToken.id)
            if not include_revoked:
                query = query.where(ApiToken.revoked_at.is_(None))
            return [_info(r) for r in session.scalars(query)]

    # -- console sessions --------------------------------------------------------------------------
    def open_session(self, token: TokenInfo, hours: float) -> tuple[str, SessionInfo]:
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = now + timedelta(hours=hours)
        if token.expires_at is not None:
            expires = min(expires, token.expires_at)
        with self.sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
            session.add(ConsoleSession(id_hash=digest(session_id), token_id=token.id, csrf_token=csrf,
                                       created_at=now, expires_at=expires))
        return session_id, SessionInfo(token, csrf, expires)

    def session(self, session_id: str) -> SessionInfo | None:
        if not session_id or len(session_id) > 100:
            return None
        now = datetime.now(UTC)
        with self.sessions() as session:
            row = session.execute(select(ConsoleSession, ApiToken).join(ApiToken, ApiToken.id == ConsoleSession.token_id)
                                  .where(ConsoleSession.id_hash == digest(session_id))).first()
            if row is None:
                return None
            console, token = row
            if aware(console.expires_at) <= now or not _usable(token, now):  # type: ignore[operator]
                return None
            return SessionInfo(_info(token), console.csrf_token, aware(console.expires_at))  # type: ignore[arg-type]

    def close_session(self, session_id: str) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == digest(session_id)))
