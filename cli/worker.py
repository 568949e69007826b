"""`deepscreen worker` and `deepscreen beat`: the long-running Celery processes."""

from __future__ import annotations

import argparse
import os

from cli import common
from cli.common import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "worker", cmd_worker)
    p.add_argument(
        "--queues",
        default="control,upload,rescan",
        help="queues in priority order (default control,upload,rescan)",
    )
    p.add_argument(
        "--pool",
        choices=["solo", "prefork", "threads"],
        help="Celery pool (default $DEEPSCREEN_POOL or prefork)",
    )
    p.add_argument(
        "--concurrency", type=int, help="pool processes (default $DEEPSCREEN_CONCURRENCY or 2; 1 per GPU)"
    )
    p.add_argument("--hostname", help="Celery node name")
    p.add_argument("--loglevel", default="INFO")

    p = common.add_command(sub, "beat", cmd_beat)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--schedule-file", default="/tmp/deepscreen-beat-schedule", help="beat's state file")


def cmd_worker(args: argparse.Namespace) -> int:
    """run a Celery worker that screens queued events in micro-batches"""
    from workers.memory import ensure_arena_limit
    from workers.settings import get_settings

    # the pool flags become settings before anything reads them, so the prefetch and each child's screening
    # threads follow the pool that really runs
    if args.pool:
        os.environ["DEEPSCREEN_POOL"] = args.pool
    if args.concurrency:
        os.environ["DEEPSCREEN_CONCURRENCY"] = str(args.concurrency)
    settings = get_settings()
    ensure_arena_limit(settings.malloc_arena_max)  # re-executes once, before torch or the model are loaded
    if settings.metrics_port:
        from workers import exporter

        # before anything imports prometheus_client: every pool child then counts into this folder
        folder = exporter.prepare_multiprocess_dir(settings.metrics_dir)
        exporter.serve_exporter(settings.metrics_port, folder)
    from workers.app import app

    argv = [
        "worker",
        f"--queues={args.queues}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    settings = app.conf.deepscreen_settings
    argv += [f"--pool={settings.pool}", f"--concurrency={settings.concurrency}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return EXIT_OK


def cmd_beat(args: argparse.Namespace) -> int:
    """run the Celery beat scheduler (periodic jobs such as nightly re-scans)"""
    from workers.app import app

    app.start(["beat", f"--loglevel={args.loglevel}", f"--schedule={args.schedule_file}"])
    return EXIT_OK
