"""The operators' commands: status, erase, retention and the health probes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli import common
from cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "status", cmd_status)
    p.add_argument("--json", action="store_true")
    p.add_argument("--window", type=float, default=300.0, help="throughput window in seconds (default 300)")
    p.add_argument("--errors", type=int, default=10, help="how many of the newest errors (default 10)")
    common.add_database_flags(p)

    p = common.add_command(sub, "erase", cmd_erase)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sha256", help="the image's sha256")
    which.add_argument("--image-id", type=int, help="the image's id")
    which.add_argument("--source", help="every image first seen from this source")
    p.add_argument("--reason", required=True, help="why (recorded in the tombstone and the audit log)")
    p.add_argument("--by", help="who asked (default cli:<user>)")
    p.add_argument("--keep-originals", action="store_true", help="leave the original uploads in their bucket")
    p.add_argument("--json", action="store_true")
    common.add_database_flags(p)

    p = common.add_command(sub, "retention", cmd_retention)
    common.add_database_flags(p)

    p = common.add_command(sub, "probe", cmd_probe)
    psub = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    w = psub.add_parser("worker", help="the heartbeat file is younger than --max-age")
    w.add_argument("--file", help="default $DEEPSCREEN_HEARTBEAT_FILE")
    w.add_argument("--max-age", type=float, help="seconds (default $DEEPSCREEN_HEARTBEAT_MAX_AGE_S)")
    h = psub.add_parser("http", help="GET a URL; healthy on 200")
    h.add_argument("url")
    h.add_argument("--timeout", type=float, default=5.0)


def cmd_status(args: argparse.Namespace) -> int:
    """queues, live workers and their models, throughput, review backlog, errors

    One look at the running system. Plain text, or --json for tools. Exit 3 when Redis or the database
    cannot be reached (the rest is still shown)."""
    from workers.status import collect, render

    report = collect(common.settings(args), window_s=args.window, errors=args.errors)
    print(json.dumps(report, default=str) if args.json else render(report))
    return EXIT_UNAVAILABLE if report["problems"] else EXIT_OK


def _blob_store_and_deleter(settings: Any) -> tuple[Any, Any]:
    from workers.erasure import s3_original_deleter
    from workers.storage import S3BlobStore, s3_client

    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    return S3BlobStore(client, settings.s3_bucket), s3_original_deleter(client, tuple(settings.input_buckets))


def cmd_erase(args: argparse.Namespace) -> int:
    """erase an image (or every image of a source): blobs, rows; keep a tombstone

    Removes heatmaps, crops, thumbnails and evidence bundles from S3, the original from its input bucket
    (unless --keep-originals), and the event, image, verdict, face and review rows. Leaves a tombstone (sha256,
    when, by whom, why) and the audit log."""
    from db.engine import connect
    from db.erasure_store import ErasureStore
    from workers.erasure import NothingToErase, erase

    settings = common.settings(args)
    by = args.by or common.cli_user()
    try:
        engine = connect(settings.database_url)
        blobs, deleter = _blob_store_and_deleter(settings)
        report = erase(
            ErasureStore(engine),
            blobs,
            erased_by=by,
            actor_role="admin",
            reason=args.reason,
            sha256=args.sha256.lower() if args.sha256 else None,
            image_id=args.image_id,
            source=args.source,
            delete_original=deleter,
            keep_originals=args.keep_originals,
        )
    except NothingToErase as exc:
        print(f"deepscreen erase: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("erase", exc)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        rows = ", ".join(f"{k}={v}" for k, v in report.rows.items())
        print(
            f"erased {report.selector}: {len(report.sha256)} image(s), {len(report.blobs_deleted)} blobs, "
            f"{len(report.originals_deleted)} originals; rows {rows}; tombstones kept"
        )
    if report.remaining:
        print(f"deepscreen erase: objects still present: {report.remaining}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    """apply the retention settings now (beat runs this daily)"""
    from db.engine import connect
    from db.erasure_store import ErasureStore
    from workers.retention import apply_retention

    settings = common.settings(args)
    try:
        engine = connect(settings.database_url)
        blobs, _ = _blob_store_and_deleter(settings)
        done = apply_retention(
            ErasureStore(engine), blobs, settings.retention_heatmap_days, settings.retention_verdict_days
        )
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("retention", exc)
    print(json.dumps(done))
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    """health probe for compose and Kubernetes: exit 0 when healthy

    `probe worker`: the worker's heartbeat file is fresh. `probe http URL`: the URL answers 200 (e.g.
    http://127.0.0.1:8000/readyz)."""
    if args.target == "worker":
        from workers.heartbeat import check_file

        settings = common.settings(args)
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
