"""Apply Alembic migrations programmatically (`deepscreen migrate`, embedded start-up, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from db.store import connect

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
