"""The operators' subcommands: status, erase, retention, probe (added to `deepscreen` by workers/cli.py)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from workers.outages import unavailable_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _settings(args: argparse.Namespace):  # noqa: ANN202
    from workers.settings import Settings

    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def cmd_status(args: argparse.Namespace) -> int:
    from workers.status import collect, render

    report = collect(_settings(args), window_s=args.window, errors=args.errors)
    print(json.dumps(report, default=str) if args.json else render(report))
    return EXIT_UNAVAILABLE if report["problems"] else EXIT_OK


def _blob_store_and_deleter(settings):  # noqa: ANN001, ANN202
    from workers.erasure import s3_original_deleter
    from workers.storage import S3BlobStore, s3_client

    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    return S3BlobStore(client, settings.s3_bucket), s3_original_deleter(client, tuple(settings.input_buckets))


def cmd_erase(args: argparse.Namespace) -> int:
    from db.erasure_store import ErasureStore
    from db.store import connect
    from workers.erasure import NothingToErase, erase

    settings = _settings(args)
    by = args.by or f"cli:{_user()}"
    try:
        engine = connect(settings.database_url)
        blobs, deleter = _blob_store_and_deleter(settings)
        report = erase(ErasureStore(engine), blobs, erased_by=by, actor_role="admin", reason=args.reason,
                       sha256=args.sha256.lower() if args.sha256 else None, image_id=args.image_id,
                       source=args.source, delete_original=deleter, keep_originals=args.keep_originals)
    except NothingToErase as exc:
        print(f"deepscreen erase: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a CLI reports service trouble as an exit code
        print(unavailable_line("erase", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        rows = ", ".join(f"{k}={v}" for k, v in report.rows.items())
        print(f"erased {report.selector}: {len(report.sha256)} image(s), {len(report.blobs_deleted)} blobs, "
              f"{len(report.originals_deleted)} originals; rows {rows}; tombstones kept")
    if report.remaining:
        print(f"deepscreen erase: objects still present: {report.remaining}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    from db.erasure_store import ErasureStore
    from db.store import connect
    from workers.retention import apply_retention

    settings = _settings(args)
    try:
        engine = connect(settings.database_url)
        blobs, _ = _blob_store_and_deleter(settings)
        done = apply_retention(ErasureStore(engine), blobs, settings.retention_heatmap_days,
                               settings.retention_verdict_days)
    except Exception as exc:  # noqa: BLE001
        print(unavailable_line("retention", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(done))
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    """Exit 0 when healthy: for compose healthchecks and Kubernetes exec probes."""
    if args.target == "worker":
        from workers.heartbeat import check_file
        from workers.settings import Settings

        settings = Settings()
        path = Path(args.file or settings.heartbeat_file)
        ok, why = check_file(path, args.max_age or settings.heartbeat_max_age_s)
        print(why, file=sys.stderr if not ok else sys.stdout)
        return EXIT_OK if ok else EXIT_FAILED
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:  # noqa: S310 - an operator's URL
            return EXIT_OK if response.status == 200 else EXIT_FAILED
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def add_operations_commands(sub: Any) -> None:
    p = sub.add_parser("status", help="queues, live workers and their models, throughput, review backlog, errors",
                       description="One look at the running system. Plain text, or --json for tools. Exit 3 "
                       "when Redis or the database cannot be reached (the rest is still shown).")
    p.add_argument("--json", action="store_true")
    p.add_argument("--window", type=float, default=300.0, help="throughput window in seconds (default 300)")
    p.add_argument("--errors", type=int, default=10, help="how many of the newest errors (default 10)")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("erase", help="erase an image (or every image of a source): blobs, rows; keep a tombstone",
                       description="Removes heatmaps, crops, thumbnails and evidence bundles from S3, the "
                       "original from its input bucket (unless --keep-originals), and the event, image, verdict, "
                       "face and review rows. Leaves a tombstone (sha256, when, by whom, why) and the audit log.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sha256", help="the image's sha256")
    which.add_argument("--image-id", type=int, help="the image's id")
    which.add_argument("--source", help="every image first seen from this source")
    p.add_argument("--reason", required=True, help="why (recorded in the tombstone and the audit log)")
    p.add_argument("--by", help="who asked (default cli:<user>)")
    p.add_argument("--keep-originals", action="store_true", help="leave the original uploads in their bucket")
    p.add_argument("--json", action="store_true")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("retention", help="apply the retention settings now (beat runs this daily)")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_retention)

    p = sub.add_parser("probe", help="health probe for compose and Kubernetes: exit 0 when healthy",
                       description="`probe worker`: the worker's heartbeat file is fresh. `probe http URL`: "
                       "the URL answers 200 (e.g. http://127.0.0.1:8000/readyz).")
    psub = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    w = psub.add_parser("worker", help="the heartbeat file is younger than --max-age")
    w.add_argument("--file", help="default $DEEPSCREEN_HEARTBEAT_FILE")
    w.add_argument("--max-age", type=float, help="seconds (default $DEEPSCREEN_HEARTBEAT_MAX_AGE_S)")
    h = psub.add_parser("http", help="GET a URL; healthy on 200")
    h.add_argument("url")
    h.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_probe)
