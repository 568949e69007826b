"""`deepscreen submit`: record upload events as queued, then put them on the workers' queues."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli import common
from cli.common import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "submit", cmd_submit)
    p.add_argument("targets", nargs="*", help="local files/folders or s3://bucket/prefix")
    p.add_argument(
        "--events",
        help="a file of JSON events (one per line, a JSON list, or an S3 notification); - for stdin",
    )
    p.add_argument("--upload", action="store_true", help="upload local files to the upload bucket first")
    p.add_argument(
        "--all-files", action="store_true", help="upload every file under local folders, not only images"
    )
    p.add_argument("--bucket", help="upload bucket (default $DEEPSCREEN_UPLOAD_BUCKET)")
    p.add_argument("--source", default="cli", help="tenant or platform name recorded with each event")
    p.add_argument("--priority", choices=["upload", "rescan"], default="upload", help="which queue")
    p.add_argument("--json", action="store_true", help="print the event ids as JSON lines")


def cmd_submit(args: argparse.Namespace) -> int:
    """enqueue upload events for the workers

    Enqueue events: local files (uploaded to the upload bucket with --upload), every object under
    s3://bucket/prefix, or JSON events from a file (--events). Each event is recorded in the database
    ($DEEPSCREEN_DATABASE_URL) as queued first, as the API does, so one the broker loses is sent again by the
    stuck-event sweeper; an event id recorded before is not queued again."""
    from db.store import Store
    from pipeline.errors import InvalidEvent
    from workers.app import app as celery_app
    from workers.embedded import expand_paths
    from workers.storage import s3_client
    from workers.submit import (
        QueueUnavailable,
        local_events,
        parse_events,
        record_and_enqueue,
        s3_prefix_events,
    )

    settings = common.settings(args)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    events = []
    store = None
    try:
        if args.events:
            events.extend(_read_event_file(args.events))
        local = [p for p in args.targets if not p.startswith("s3://")]
        for target in args.targets:
            if target.startswith("s3://"):
                events.extend(s3_prefix_events(client, target, args.source, args.priority))
        if local:
            if not args.upload:
                print(
                    "deepscreen submit: local files need --upload (workers read only from S3 buckets)",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            bucket = args.bucket or settings.upload_bucket
            events.extend(
                local_events(
                    client, bucket, expand_paths(local, all_files=args.all_files), args.source, args.priority
                )
            )
        # recorded as `queued` before they are queued, so a message Redis loses is re-sent by the sweeper
        events = parse_events(events)
        store = Store.from_url(settings.database_url)
        ids = record_and_enqueue(store, celery_app, events)
    except InvalidEvent as exc:
        print(f"deepscreen submit: invalid event: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QueueUnavailable as exc:
        print(
            f"deepscreen submit: {exc} ({len(exc.queued)} queued; run it again for the rest)", file=sys.stderr
        )
        return EXIT_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("submit", exc)
    finally:
        if store is not None:
            store.engine.dispose()
    again = len({e.event_id for e in events}) - len(ids)
    if args.json:
        for event_id in ids:
            print(json.dumps({"event_id": event_id}))
    else:
        print(
            f"submitted {len(ids)} events"
            + (f" ({again} submitted before, not queued again)" if again else "")
        )
    return EXIT_OK


def _read_event_file(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.strip()
    if stripped.startswith("[") or stripped.startswith("{") and "\n{" not in stripped:
        return [stripped]
    return [line for line in stripped.splitlines() if line.strip()]
