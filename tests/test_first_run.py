"""A first run through the real `deepscreen` command: migrate creates the database and the buckets, and a
service outage is one line on stderr and exit 3 for every command."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from devservices import PG_ADMIN_URL, S3Server, ensure_postgres, free_port

REPO = Path(__file__).resolve().parent.parent


def _deepscreen(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **env}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- an outage: one line, exit 3 ------------------------------------------------------------------------------
OUTAGE_COMMANDS = [
    ["token", "create", "--role", "admin", "--name", "ops"],
    ["token", "list"],
    ["token", "revoke", "1"],
    ["export-labels", "--out", "{tmp}/labels", "--margin", "0.2"],
    ["dead-letters"],
    ["bank", "list"],
    ["rescan", "list"],
    ["migrate", "--no-buckets"],
]


@pytest.mark.parametrize("command", OUTAGE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_database_outage_is_one_line_and_exit_3(command: list[str], tmp_path: Path) -> None:
    closed = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/deepscreen"
    args = [word.format(tmp=tmp_path) for word in command]
    done = _deepscreen(
        args, DEEPSCREEN_DATABASE_URL=closed, DEEPSCREEN_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 3, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"deepscreen {args[0]}") and "Traceback" not in done.stderr
    assert "refused" in lines[0].lower()  # says what failed


# -- migrate creates the database ---------------------------------------------------------------------------
@pytest.fixture
def missing_database() -> Iterator[str]:
    """The URL of a database that does not exist yet on the machine's Postgres; dropped afterwards."""
    ensure_postgres()
    name = f'deepscreen first-run "{uuid.uuid4().hex[:8]}"'  # a space and quotes: the name is quoted safely
    url = make_url(PG_ADMIN_URL).set(database=name)
    yield url.render_as_string(hide_password=False)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote_identifier(name)
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )
        conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}"))
    admin.dispose()


def _exists(name: str) -> bool:
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            return (
                conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
                is not None
            )
    finally:
        admin.dispose()


@pytest.mark.services
def test_migrate_creates_a_missing_database_then_is_idempotent(missing_database: str) -> None:
    name = make_url(missing_database).database
    assert name and not _exists(name)
    first = _deepscreen(["migrate", "--no-buckets", "--database-url", missing_database])
    assert first.returncode == 0, first.stderr
    assert f"created database {name}" in first.stderr and "database at revision" in first.stdout
    assert _exists(name)
    again = _deepscreen(["migrate", "--no-buckets", "--database-url", missing_database])
    assert again.returncode == 0, again.stderr
    assert "created database" not in again.stderr and again.stdout == first.stdout


@pytest.mark.services
def test_migrate_without_createdb_says_what_to_run(missing_database: str) -> None:
    role = f"deepscreen_nocreate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        url = make_url(missing_database).set(username=role).render_as_string(hide_password=False)
        done = _deepscreen(["migrate", "--no-buckets", "--database-url", url])
        name = make_url(missing_database).database
        assert done.returncode == 1, done.stderr
        assert "CREATE DATABASE" in done.stderr and f'OWNER "{role}"' in done.stderr
        assert "Traceback" not in done.stderr and not _exists(name or "")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


# -- migrate creates the buckets ----------------------------------------------------------------------------
@pytest.mark.services
def test_migrate_creates_the_buckets_submit_needs(postgres_url: str, s3_server: S3Server) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        "DEEPSCREEN_DATABASE_URL": postgres_url,
        "DEEPSCREEN_S3_ENDPOINT_URL": s3_server.endpoint,
        "DEEPSCREEN_S3_BUCKET": f"results-{suffix}",
        "DEEPSCREEN_UPLOAD_BUCKET": f"uploads-{suffix}",
    }
    first = _deepscreen(["migrate"], **env)
    assert first.returncode == 0, first.stderr
    names = {bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]}
    assert {f"results-{suffix}", f"uploads-{suffix}"} <= names
    assert f"created bucket uploads-{suffix}" in first.stderr
    again = _deepscreen(["migrate"], **env)
    assert again.returncode == 0, again.stderr
    assert "created bucket" not in again.stderr


def test_a_defect_in_a_command_keeps_its_traceback_and_an_outage_is_exit_3(capsys: pytest.CaptureFixture) -> None:
    from sqlalchemy.exc import OperationalError

    from cli import common

    refused = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    assert common.outage("dead-letters", refused) == 3
    assert capsys.readouterr().err.startswith("deepscreen dead-letters: database unavailable")
    with pytest.raises(KeyError):  # a bug, not "database unavailable"
        common.outage("dead-letters", KeyError("verdict_id"))
