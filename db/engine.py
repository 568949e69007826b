"""The database engine with the settings each dialect needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event


def connect(url: str, fast_commits: bool = False, **engine_kwargs: Any) -> Engine:
    """An engine with the settings each dialect needs (SQLite: WAL, foreign keys, busy timeout).

    `fast_commits` (SQLite only; `deepscreen scan` sets it): synchronous=NORMAL, so a commit does not wait for
    an fsync, which costs a large share of a face crop's screening time. The database stays consistent; a power
    cut or OS crash can lose the last commits, which a re-run of `scan` screens again. The review console's
    decisions and audit entries never use it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **engine_kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            if fast_commits:
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine_kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in engine_kwargs:
        engine_kwargs.setdefault("pool_size", 5)
    return create_engine(url, **engine_kwargs)
