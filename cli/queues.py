"""`deepscreen dead-letters` and `deepscreen requeue-stuck`: the events the queues could not finish."""

from __future__ import annotations

import argparse
import json
import sys

from cli import common
from cli.common import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "dead-letters", cmd_dead_letters)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    common.add_database_flags(p)

    p = common.add_command(sub, "requeue-stuck", cmd_requeue_stuck)
    p.add_argument("--older-than", type=float, help="seconds (default $DEEPSCREEN_STUCK_AFTER_S)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--dry-run", action="store_true", help="only list them")
    common.add_database_flags(p)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """events that exhausted their retries (status failed), newest first"""
    from db.store import Store

    url = common.database_url(args)
    try:
        rows = Store.from_url(url).dead_letters(args.limit)
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("dead-letters", exc)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['finished_at'] or '-':<33} {row['event_id']:<40} attempts={row['attempts']:<3} {row['reason']}"
            )
    if not args.json:
        print(f"{len(rows)} dead-lettered events", file=sys.stderr)
    return EXIT_OK


def cmd_requeue_stuck(args: argparse.Namespace) -> int:
    """put events stuck in `queued` back on their queue (beat does this too)

    Events recorded as queued longer ago than --older-than seconds (default $DEEPSCREEN_STUCK_AFTER_S), and
    longer than the oldest message waiting on a queue, are enqueued again, except those whose message a worker
    holds unacknowledged (in flight, not lost); screening is idempotent, so a duplicate message writes nothing
    new. Needs the broker ($DEEPSCREEN_BROKER_URL), --dry-run too."""
    from db.store import Store
    from workers.app import app
    from workers.requeue import requeue_stuck_events

    settings = common.settings(args)
    try:
        store = Store.from_url(settings.database_url)
        ids = requeue_stuck_events(
            app, store, args.older_than or settings.stuck_after_s, args.limit, dry_run=args.dry_run
        )
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage("requeue-stuck", exc)
    for event_id in ids:
        print(event_id)
    print(f"{len(ids)} stuck events {'found' if args.dry_run else 'requeued'}", file=sys.stderr)
    return EXIT_OK
