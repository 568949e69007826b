"""Alembic environment: the URL comes from the caller (db.migrate.upgrade) or DEEPSCREEN_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import pool

from db.engine import connect
from db.schema import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DEEPSCREEN_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set DEEPSCREEN_DATABASE_URL")
    return url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = connect(_url(), poolclass=pool.NullPool) if not _url().startswith("sqlite") else connect(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
