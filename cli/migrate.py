"""`deepscreen migrate`: create the database and, on MinIO or moto, the buckets; apply the migrations."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli import common
from cli.common import EXIT_FAILED, EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "migrate", cmd_migrate)
    common.add_database_flags(p)
    p.add_argument("--no-buckets", action="store_true", help="leave the buckets alone")


def cmd_migrate(args: argparse.Namespace) -> int:
    """create the database and buckets if missing; apply migrations (Alembic)

    Creates the Postgres database the URL names when it is missing (through the server's `postgres`
    database, with the same credentials; without CREATEDB it prints the command a superuser runs), applies the
    migrations up to the latest, and, when $DEEPSCREEN_S3_ENDPOINT_URL is set (MinIO, moto), creates the result
    bucket ($DEEPSCREEN_S3_BUCKET) and the upload bucket ($DEEPSCREEN_UPLOAD_BUCKET) that `submit --upload`
    needs. Running it again changes nothing."""
    from sqlalchemy import make_url

    from db.migrate import DatabaseCreateDenied, current, ensure_database, upgrade

    settings = common.settings(args)
    url = settings.database_url
    try:
        if ensure_database(url):
            print(f"created database {make_url(url).database}", file=sys.stderr)
        upgrade(url)
    except DatabaseCreateDenied as exc:
        print(f"deepscreen migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("migrate", exc)
    print(f"database at revision {current(url)}")
    if args.no_buckets or not settings.s3_endpoint_url:
        return EXIT_OK  # on AWS the buckets and their policies are the operator's to make
    return _ensure_buckets(settings)


def _ensure_buckets(settings: Any) -> int:
    from botocore.exceptions import ClientError

    from workers.buckets import ensure_buckets
    from workers.storage import s3_client

    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    try:
        created = ensure_buckets(client, [settings.s3_bucket, settings.upload_bucket], settings.s3_region)
    except ClientError as exc:  # denied: the app's keys may not make buckets (compose's minio-init does)
        print(
            f"deepscreen migrate: cannot create the buckets {settings.s3_bucket}, {settings.upload_bucket}: "
            f"{exc}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    for name in created:
        print(f"created bucket {name}", file=sys.stderr)
    return EXIT_OK
