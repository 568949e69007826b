"""`deepscreen rescan`: re-screen stored images with the active model (start, pause, resume, cancel, list,
show, follow)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cli import common
from cli.common import EXIT_FAILED, EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "rescan", cmd_rescan)
    rsub = p.add_subparsers(dest="rescan_command", required=True, metavar="ACTION")
    _register_start(rsub)
    for action, text in (
        ("pause", "stop enqueuing (what is queued still runs)"),
        ("resume", "continue a paused run"),
        ("cancel", "end a run; what is queued still runs, nothing more is enqueued"),
    ):
        a = rsub.add_parser(action, help=text)
        a.add_argument("run_id", type=int)
    a = rsub.add_parser("list", help="runs, newest first")
    a.add_argument("--json", action="store_true")
    a = rsub.add_parser("show", help="a run's state, progress and report (transition matrix, throughput)")
    a.add_argument("run_id", type=int)
    a.add_argument("--csv", type=Path, help="write the changed images (old -> new verdict) to this CSV file")
    a.add_argument("--all", action="store_true", help="with --csv: every image of the run, changed or not")
    a.add_argument("--json", action="store_true")
    a = rsub.add_parser("follow", help="progress bar until the run ends; moves it forward meanwhile")
    a.add_argument("run_id", type=int)
    a.add_argument("--no-drive", action="store_true", help="only watch (beat drives the run)")
    a.add_argument("--timeout", type=float, default=0, help="give up after N seconds (0 = never)")
    for a in rsub.choices.values():
        common.add_database_flags(a)


def _register_start(rsub: argparse._SubParsersAction) -> None:
    s = rsub.add_parser(
        "start",
        help="start a run (or --dry-run: count and estimate only)",
        description="Select images without a verdict from the active model, narrowed by the "
        "options below, and start a run.",
    )
    s.add_argument("--from-model-version", help="only images whose latest verdict is from this model version")
    s.add_argument(
        "--older-than-days", type=float, help="only images whose latest verdict is older than N days"
    )
    s.add_argument("--source", help="only images from this source (tenant/platform)")
    s.add_argument(
        "--uploaded-from", type=_date, help="only images uploaded at or after this date (ISO 8601)"
    )
    s.add_argument("--uploaded-to", type=_date, help="only images uploaded before this date (ISO 8601)")
    s.add_argument(
        "--verdict",
        action="append",
        default=[],
        choices=["fake", "real", "uncertain", "no_face", "invalid_input"],
        help="only images whose latest verdict is this (repeatable)",
    )
    s.add_argument(
        "--reopen-decided",
        action="store_true",
        help="a new fake/uncertain verdict opens a new review item even where a moderator already decided",
    )
    s.add_argument("--rate", type=float, help="images per second (default $DEEPSCREEN_RESCAN_RATE_PER_S)")
    s.add_argument("--chunk", type=int, help="most images per tick (default $DEEPSCREEN_RESCAN_CHUNK)")
    s.add_argument(
        "--dry-run", action="store_true", help="print how many images would be re-scanned and how long"
    )
    s.add_argument(
        "--follow", action="store_true", help="then show a progress bar (and drive the run) until it ends"
    )
    s.add_argument("--json", action="store_true")


def _date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date: {text!r}") from None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)  # stored times are UTC


def cmd_rescan(args: argparse.Namespace) -> int:
    """re-screen stored images with the active model (runs, progress, reports)

    Re-scan runs page through stored images by keyset cursor and enqueue them on the low-priority rescan
    queue at a limited rate; workers always serve uploads first. A run survives restarts of workers, beat and
    this command. Beat moves running runs forward every DEEPSCREEN_RESCAN_TICK_S; `follow` does too while it
    runs."""
    from db.rescan_store import RescanError

    try:
        return _rescan(args)
    except RescanError as exc:
        print(f"deepscreen rescan {args.rescan_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage(f"rescan {args.rescan_command}", exc)


def _rescan(args: argparse.Namespace) -> int:
    from db.engine import connect
    from db.model_registry import ModelRegistry
    from db.rescan_store import RescanSelector, RescanStore
    from workers.rescan import estimate_seconds, target_version

    settings = common.settings(args)
    engine = connect(settings.database_url)
    store = RescanStore(engine)
    command = args.rescan_command
    if command == "start":
        selector = RescanSelector(
            from_model_version=args.from_model_version,
            older_than_days=args.older_than_days,
            source=args.source,
            uploaded_from=args.uploaded_from,
            uploaded_to=args.uploaded_to,
            verdicts=tuple(args.verdict),
            reopen_decided=args.reopen_decided,
        )
        version = target_version(ModelRegistry(engine), settings.model_dir)
        rate = args.rate or settings.rescan_rate_per_s
        if args.dry_run:
            count = store.count(selector, version)
            measured = store.measured_throughput()
            seconds = estimate_seconds(count, rate, measured)
            doc = {
                "images": count,
                "model_version": version,
                "selector": selector.to_dict(),
                "rate_per_s": rate,
                "measured_images_per_s": measured,
                "estimated_seconds": round(seconds, 1),
            }
            if args.json:
                print(json.dumps(doc))
            else:
                speed = f"measured {measured:.2f} images/s" if measured else "no run measured yet"
                print(
                    f"{count} images would be re-scanned with {version}; estimated "
                    f"{timedelta(seconds=round(seconds))} at min(rate {rate:g}/s, {speed})"
                )
            return EXIT_OK
        run = store.create(selector, version, rate, args.chunk or settings.rescan_chunk, created_by="cli")
        print(
            json.dumps(run.as_json())
            if args.json
            else f"run {run.id} started: {run.selected} images, model {run.model_version}, {rate:g} images/s"
        )
        return _follow(store, settings, run.id, drive=True, timeout=0) if args.follow else EXIT_OK
    if command in ("pause", "resume", "cancel"):
        run = store.set_state(args.run_id, command)
        print(f"run {run.id} is {run.state}")
        return EXIT_OK
    if command == "list":
        for run in store.list():
            print(
                json.dumps(run.as_json())
                if args.json
                else f"{run.id:>5} {run.state:<10} {run.enqueued:>8}/{run.selected:<8} {run.model_version:<32} "
                f"{json.dumps(run.selector)}"
            )
        return EXIT_OK
    if command == "show":
        return _show(store, args)
    return _follow(store, settings, args.run_id, drive=not args.no_drive, timeout=args.timeout)


def _show(store: Any, args: argparse.Namespace) -> int:
    run = store.get(args.run_id)
    progress = store.progress(run.id)
    if args.csv:
        from workers.rescan import write_changes_csv

        rows = store.changes(run.id, only_changed=not args.all)
        with args.csv.open("w", newline="") as handle:
            write_changes_csv(handle, rows)
        print(f"{len(rows)} rows written to {args.csv}", file=sys.stderr)
    if args.json:
        print(json.dumps({**run.as_json(), "progress": progress}))
        return EXIT_OK
    print(f"run {run.id}: {run.state}, model {run.model_version}, selector {json.dumps(run.selector)}")
    print(f"  enqueued {run.enqueued}/{run.selected}, done {progress['done']}, failed {progress['failed']}")
    report = run.report
    if report:
        print(
            f"  {report['images']} images, {report['changed']} changed, "
            f"{report.get('images_per_s') or 0:.2f} images/s over {report['seconds']:.0f} s"
        )
        print(format_matrix(report["transitions"]))
    return EXIT_OK


def format_matrix(matrix: dict[str, dict[str, int]]) -> str:
    """old verdict (rows) -> new verdict (columns)."""
    new_labels = sorted({n for row in matrix.values() for n in row})
    lines = ["  old \\ new      " + "".join(f"{n:>14}" for n in new_labels)]
    for old in sorted(matrix):
        lines.append(f"  {old:<15}" + "".join(f"{matrix[old].get(n, 0):>14}" for n in new_labels))
    return "\n".join(lines)


def _follow(store: Any, settings: Any, run_id: int, drive: bool, timeout: float) -> int:
    from tqdm import tqdm

    driver = _driver(store, settings) if drive else None
    if driver is not None:
        # A driver that died between recording a chunk and sending it (`follow` killed, a crash) left that
        # chunk's events queued; the stuck-event sweeper would send them only after STUCK_AFTER_S.
        now = datetime.now(UTC)
        unsent = store.take_over_unsent(run_id, before=now - timedelta(seconds=2), now=now)
        if unsent:
            print(
                f"re-sending {len(unsent)} queued event(s) of run {run_id} recorded by an earlier driver",
                file=sys.stderr,
            )
            driver.send(unsent)
    run = store.get(run_id)
    started = time.monotonic()
    with tqdm(total=max(run.selected, 1), desc=f"rescan run {run_id}", unit="img") as bar:
        while True:
            if driver is not None:
                driver.tick_run(run_id)
            run = store.get(run_id)
            done = store.progress(run_id)["done"]
            bar.total = max(run.selected, run.enqueued, 1)
            bar.n = done
            bar.set_postfix(state=run.state, enqueued=run.enqueued)
            bar.refresh()
            if run.state in ("finished", "cancelled", "paused"):
                break
            if timeout and time.monotonic() - started > timeout:
                print(f"\nrun {run_id} still {run.state} after {timeout:g} s", file=sys.stderr)
                return EXIT_FAILED
            time.sleep(min(1.0, settings.rescan_tick_s))
    print(f"run {run_id} {run.state}", file=sys.stderr)
    if run.report:
        print(format_matrix(run.report["transitions"]))
    return EXIT_OK


def _driver(store: Any, settings: Any) -> Any:
    from workers.app import app
    from workers.rescan import celery_driver

    return celery_driver(app, store, min(1.0, settings.rescan_tick_s), settings.rescan_max_queued)
