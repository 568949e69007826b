"""Apply Alembic migrations programmatically (`deepscreen migrate`, embedded start-up, tests)."""

from __future__ import annotations

import shlex
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class DatabaseCreateDenied(Exception):
    """The database is missing and this role may not create it; the message says what a superuser runs."""


def ensure_database(url: str) -> bool:
    """Creates the Postgres database `url` names when it is missing, through the server's `postgres`
    maintenance database with the same credentials. Returns whether it created one (SQLite files make
    themselves; a database that exists is left alone, and other connection errors are raised unchanged)."""
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.exc import OperationalError

    target = make_url(url)
    if target.get_backend_name() != "postgresql" or not target.database:
        return False
    engine = create_engine(target)
    try:
        engine.connect().close()
        return False
    except OperationalError as exc:
        # the server may be down or the database missing: only the maintenance database can tell
        failure = exc
    finally:
        engine.dispose()
    _create_database(target, failure)
    return True


INSUFFICIENT_PRIVILEGE, DUPLICATE_DATABASE = "42501", "42P04"


def _create_database(target: URL, failure: Exception) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    quote = admin.dialect.identifier_preparer.quote_identifier
    try:
        try:
            conn = admin.connect()
        except OperationalError:
            raise failure from None  # no maintenance database to ask: the first error is the one to show
        with conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            )
            if found.first() is not None:
                raise failure  # it exists: the first error was about something else
            try:
                conn.execute(text(f"CREATE DATABASE {quote(target.database)}"))
            except ProgrammingError as exc:
                code = getattr(exc.orig, "pgcode", None)
                if code == DUPLICATE_DATABASE:  # made at the same moment by another migrate
                    return
                if code != INSUFFICIENT_PRIVILEGE:
                    raise
                owner = f" OWNER {quote(target.username)}" if target.username else ""
                sql = f"CREATE DATABASE {quote(target.database)}{owner}"
                raise DatabaseCreateDenied(
                    f"database {quote(target.database)} does not exist and role {quote(target.username or '')} may "
                    f"not create it; as a superuser run: psql -h {target.host or 'localhost'} -p {target.port or 5432} "
                    f"-U postgres -c {shlex.quote(sql)}  then migrate again"
                ) from exc
    finally:
        admin.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from db.engine import connect

    engine = connect(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def revision(url: str, message: str) -> None:
    """Autogenerate a new revision against an up-to-date database; review it before committing."""
    command.revision(alembic_config(url), message=message, autogenerate=True)


def home_database(home: Path | str) -> str:
    """The embedded mode's database: `HOME/deepscreen.sqlite3`, created and migrated; returns its URL."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(home / 'deepscreen.sqlite3').resolve()}"
    upgrade(url)
    return url
