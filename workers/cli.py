"""The `deepscreen` command: one entry point, subcommands, --help on each.

Exit codes: 0 done; 1 failed (see the message); 2 bad usage or input (argparse, malformed events);
3 a service or the model could not be reached or loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from workers.bank_cli import add_bank_commands
from workers.outages import outage_service, unavailable_line
from workers.rescan_commands import add_registry_parsers, add_rescan_parser

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

log = logging.getLogger("deepscreen")


def _settings(args: argparse.Namespace):  # noqa: ANN202
    from workers.settings import Settings

    overrides: dict[str, Any] = {}
    for name in ("model_dir", "precision", "torch_threads", "batch_size", "heatmaps", "detect_max_side", "device"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if "heatmaps" not in overrides and getattr(args, "heatmaps_default", None):
        overrides["heatmaps"] = args.heatmaps_default  # evaluate: no heatmaps unless asked
    return Settings(**overrides)


def _add_compute_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="model_dir", type=Path, help="model folder (model.safetensors + model.json)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the classifier (auto: bf16 where the CPU or GPU computes it natively, else fp32 on a CPU "
                   "and fp16 on a GPU)")
    p.add_argument("--threads", dest="torch_threads", type=int, help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, help="images per micro-batch")
    p.add_argument("--heatmaps", choices=["flagged", "all", "none"], help="which faces get a Grad-CAM heatmap")
    p.add_argument("--detect-max-side", type=int, help="long side of the copy MTCNN runs on")
    p.add_argument("--device", help="cpu or cuda[:N]")


# -- scan ------------------------------------------------------------------------------------------------
def cmd_scan(args: argparse.Namespace) -> int:
    from pipeline.errors import ModelLoadError
    from workers.embedded import expand_paths, scan
    from workers.runtime import embedded_runtime

    settings = _settings(args)
    home = Path(args.home or os.environ.get("DEEPSCREEN_HOME") or ".deepscreen")
    paths = expand_paths(args.paths, all_files=args.all_files)
    if not paths:
        print("deepscreen scan: no image files found under the given paths (--all-files takes every file)",
              file=sys.stderr)
        return EXIT_USAGE
    # a missing path is still screened (stored as invalid_input / not_found), then answered with exit 2
    missing = [raw for raw in args.paths if not Path(raw).exists()]
    try:
        runtime = embedded_runtime(settings, home, crops=args.crops)
    except ModelLoadError as exc:
        print(f"deepscreen scan: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if runtime.screener.classifier.meta.placeholder:
        print("warning: the model is a PLACEHOLDER with random weights; its verdicts mean nothing "
              "(see README.md, 'Model')", file=sys.stderr)

    def emit(row: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(row), flush=True)

    report = scan(runtime, paths, settings.batch_size, progress=not args.no_progress, on_result=emit,
                  batch_bytes=settings.scan_batch_mb << 20)
    if not args.json or args.summary:
        _print_summary(report, home, file=sys.stderr if args.json else sys.stdout)
    for raw in missing:
        print(f"deepscreen scan: no such file or folder: {raw}", file=sys.stderr)
    return EXIT_USAGE if missing else EXIT_OK


def _print_summary(report, home: Path, file) -> None:  # noqa: ANN001
    rows = report.results
    width = min(60, max([len(_short(r["source"])) for r in rows] + [6]))
    print(f"\n{'input':<{width}}  {'status':<22} {'verdict':<9} {'P(fake)':>7} {'faces':>5}", file=file)
    for r in rows:
        prob = f"{r['fake_probability']:.3f}" if r["fake_probability"] is not None else "-"
        status = r["status"] if r["status"] != "invalid_input" else f"invalid:{r['reason']}"
        print(f"{_short(r['source']):<{width}}  {status[:22]:<22} {r['verdict'] or '-':<9} {prob:>7} "
              f"{len(r['faces']):>5}", file=file)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(report.counts().items()))
    print(f"\n{len(rows)} inputs in {report.seconds:.1f}s ({report.images_per_second:.2f} images/s): {counts}", file=file)
    print(f"results and heatmaps: {home}", file=file)


def _short(path: str) -> str:
    return path if len(path) <= 60 else "..." + path[-57:]


# -- submit ----------------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
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

    settings = _settings(args)
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
                print("deepscreen submit: local files need --upload (workers read only from S3 buckets)",
                      file=sys.stderr)
                return EXIT_USAGE
            bucket = args.bucket or settings.upload_bucket
            events.extend(local_events(client, bucket, expand_paths(local, all_files=args.all_files), args.source,
                                       args.priority))
        # recorded as `queued` before they are queued, so a message Redis loses is re-sent by the sweeper
        events = parse_events(events)
        store = Store.from_url(settings.database_url)
        ids = record_and_enqueue(store, celery_app, events)
    except InvalidEvent as exc:
        print(f"deepscreen submit: invalid event: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QueueUnavailable as exc:
        print(f"deepscreen submit: {exc} ({len(exc.queued)} queued; run it again for the rest)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001 - a CLI reports service trouble as an exit code
        print(unavailable_line("submit", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if store is not None:
            store.engine.dispose()
    again = len({e.event_id for e in events}) - len(ids)
    if args.json:
        for event_id in ids:
            print(json.dumps({"event_id": event_id}))
    else:
        print(f"submitted {len(ids)} events" + (f" ({again} submitted before, not queued again)" if again else ""))
    return EXIT_OK


def _read_event_file(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.strip()
    if stripped.startswith("[") or stripped.startswith("{") and "\n{" not in stripped:
        return [stripped]
    return [line for line in stripped.splitlines() if line.strip()]


# -- worker, migrate, model --------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
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

    argv = ["worker", f"--queues={args.queues}", f"--loglevel={args.loglevel}", "--without-gossip",
            "--without-mingle"]
    settings = app.conf.deepscreen_settings
    argv += [f"--pool={settings.pool}", f"--concurrency={settings.concurrency}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return EXIT_OK


def cmd_beat(args: argparse.Namespace) -> int:
    from workers.app import app

    app.start(["beat", f"--loglevel={args.loglevel}", f"--schedule={args.schedule_file}"])
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from sqlalchemy import make_url

    from db.migrate import DatabaseCreateDenied, current, ensure_database, upgrade
    from workers.settings import Settings

    settings = Settings()
    url = args.database_url or settings.database_url
    try:
        if ensure_database(url):
            print(f"created database {make_url(url).database}", file=sys.stderr)
        upgrade(url)
    except DatabaseCreateDenied as exc:
        print(f"deepscreen migrate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001
        print(unavailable_line("migrate", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
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
        print(f"deepscreen migrate: cannot create the buckets {settings.s3_bucket}, {settings.upload_bucket}: "
              f"{exc}", file=sys.stderr)
        return EXIT_FAILED
    for name in created:
        print(f"created bucket {name}", file=sys.stderr)
    return EXIT_OK


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from db.store import Store
    from workers.settings import Settings

    url = args.database_url or Settings().database_url
    try:
        rows = Store.from_url(url).dead_letters(args.limit)
    except Exception as exc:  # noqa: BLE001
        print(unavailable_line("dead-letters", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['finished_at'] or '-':<33} {row['event_id']:<40} attempts={row['attempts']:<3} {row['reason']}")
    if not args.json:
        print(f"{len(rows)} dead-lettered events", file=sys.stderr)
    return EXIT_OK


def cmd_requeue_stuck(args: argparse.Namespace) -> int:
    from db.store import Store
    from workers.app import app
    from workers.requeue import requeue_stuck_events
    from workers.settings import Settings

    settings = Settings()
    try:
        store = Store.from_url(args.database_url or settings.database_url)
        ids = requeue_stuck_events(app, store, args.older_than or settings.stuck_after_s, args.limit,
                                   dry_run=args.dry_run)
    except Exception as exc:  # noqa: BLE001
        print(unavailable_line("requeue-stuck", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    for event_id in ids:
        print(event_id)
    print(f"{len(ids)} stuck events {'found' if args.dry_run else 'requeued'}", file=sys.stderr)
    return EXIT_OK


def cmd_model(args: argparse.Namespace) -> int:
    from workers.rescan_commands import REGISTRY_COMMANDS, cmd_registry

    if args.model_command in REGISTRY_COMMANDS:
        return cmd_registry(args)
    from pipeline.errors import ModelLoadError
    from pipeline.model import load_classifier, make_placeholder
    from workers.settings import Settings

    if args.model_command == "export":
        from pipeline.training.export import export_model

        print(json.dumps(export_model(Path(args.run), Path(args.out), args.version, args.max_val,
                                      min_face_side=args.min_face_side), indent=2))
        return EXIT_OK
    if args.model_command == "placeholder":
        meta = make_placeholder(Path(args.out))
        print(f"placeholder model (NOT a detector) written to {args.out}: version={meta.version}")
        return EXIT_OK
    folder = Path(args.model_dir or Settings().model_dir)
    try:
        classifier = load_classifier(folder)
    except ModelLoadError as exc:
        print(f"deepscreen model info: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    meta = classifier.meta
    print(json.dumps({"folder": str(folder), "version": meta.version, "placeholder": meta.placeholder,
                      "sha256": meta.sha256, "input_size": meta.input_size, "crop_margin": meta.crop_margin,
                      "temperature": meta.temperature, "logit_bias": meta.logit_bias,
                      "threshold_fake": meta.threshold_fake,
                      "threshold_real": meta.threshold_real, "architecture": meta.architecture,
                      "min_face_side": meta.min_face_side}, indent=2))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.training.train import TrainConfig, Trainer

    overrides = {"data": args.data, "out": args.out, "epochs": args.epochs, "seed": args.seed,
                 "threads": args.threads, "device": args.device}
    if args.config:
        cfg = TrainConfig.from_file(Path(args.config), **overrides)
    elif args.data:
        cfg = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    else:
        print("deepscreen train: give --config FILE or --data DIR", file=sys.stderr)
        return EXIT_USAGE
    summary = Trainer(cfg, progress=not args.no_progress).fit()
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.errors import ModelLoadError
    from workers.evaluate import evaluate, fresh_home, labelled_files
    from workers.runtime import embedded_runtime

    settings = _settings(args)
    out = Path(args.out)
    try:
        files = labelled_files(Path(args.data), Path(args.labels) if args.labels else None, args.split)
    except (OSError, ValueError) as exc:
        print(f"deepscreen evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        runtime = embedded_runtime(settings, fresh_home(out), crops=args.crops)
    except ModelLoadError as exc:
        print(f"deepscreen evaluate: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    document = evaluate(runtime, files, out, settings.batch_size, str(args.data), progress=not args.no_progress)
    keys = ("n", "auc", "ece", "accuracy", "precision", "recall", "f1", "face_detection_rate", "status_counts")
    print(json.dumps({k: document[k] for k in keys}, indent=2))
    print(f"metrics.json, scores.csv and report.md in {out}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepscreen", description="Deepfake-image screening: scan files "
                                     "locally, or run the distributed pipeline (submit, worker, migrate).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("scan", help="screen files or folders in-process (SQLite + local folder; no services)",
                       description="Screen image files (folders are searched recursively). Prints a summary "
                       "table, or one JSON object per input with --json.")
    p.add_argument("paths", nargs="+", help="image files (screened whatever their name) or folders (their "
                   "jpg, jpeg, png, webp, bmp, gif, tif and tiff files, any case); a missing path exits 2")
    p.add_argument("--all-files", action="store_true", help="take every file under the folders, not only images")
    p.add_argument("--home", help="folder for the SQLite database and heatmaps (default $DEEPSCREEN_HOME or ./.deepscreen)")
    p.add_argument("--crops", action="store_true", help="inputs are face crops: skip detection")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--summary", action="store_true", help="print the summary table (on stderr with --json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_compute_flags(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("submit", help="enqueue upload events for the workers",
                       description="Enqueue events: local files (uploaded to the upload bucket with --upload), "
                       "every object under s3://bucket/prefix, or JSON events from a file (--events). Each event "
                       "is recorded in the database ($DEEPSCREEN_DATABASE_URL) as queued first, as the API does, "
                       "so one the broker loses is sent again by the stuck-event sweeper; an event id recorded "
                       "before is not queued again.")
    p.add_argument("targets", nargs="*", help="local files/folders or s3://bucket/prefix")
    p.add_argument("--events", help="a file of JSON events (one per line, a JSON list, or an S3 notification); - for stdin")
    p.add_argument("--upload", action="store_true", help="upload local files to the upload bucket first")
    p.add_argument("--all-files", action="store_true", help="upload every file under local folders, not only images")
    p.add_argument("--bucket", help="upload bucket (default $DEEPSCREEN_UPLOAD_BUCKET)")
    p.add_argument("--source", default="cli", help="tenant or platform name recorded with each event")
    p.add_argument("--priority", choices=["upload", "rescan"], default="upload", help="which queue")
    p.add_argument("--json", action="store_true", help="print the event ids as JSON lines")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("worker", help="run a Celery worker that screens queued events in micro-batches")
    p.add_argument("--queues", default="control,upload,rescan",
                   help="queues in priority order (default control,upload,rescan)")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], help="Celery pool (default $DEEPSCREEN_POOL or prefork)")
    p.add_argument("--concurrency", type=int, help="pool processes (default $DEEPSCREEN_CONCURRENCY or 2; 1 per GPU)")
    p.add_argument("--hostname", help="Celery node name")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the Celery beat scheduler (periodic jobs such as nightly re-scans)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--schedule-file", default="/tmp/deepscreen-beat-schedule", help="beat's state file")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("migrate", help="create the database and buckets if missing; apply migrations (Alembic)",
                       description="Creates the Postgres database the URL names when it is missing (through the "
                       "server's `postgres` database, with the same credentials; without CREATEDB it prints the "
                       "command a superuser runs), applies the migrations up to the latest, and, when "
                       "$DEEPSCREEN_S3_ENDPOINT_URL is set (MinIO, moto), creates the result bucket "
                       "($DEEPSCREEN_S3_BUCKET) and the upload bucket ($DEEPSCREEN_UPLOAD_BUCKET) that "
                       "`submit --upload` needs. Running it again changes nothing.")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.add_argument("--no-buckets", action="store_true", help="leave the buckets alone")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("dead-letters", help="events that exhausted their retries (status failed), newest first")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("requeue-stuck", help="put events stuck in `queued` back on their queue (beat does this too)",
                       description="Events recorded as queued longer ago than --older-than seconds (default "
                       "$DEEPSCREEN_STUCK_AFTER_S), and longer than the oldest message waiting on a queue, are "
                       "enqueued again, except those whose message a worker holds unacknowledged (in flight, not "
                       "lost); screening is idempotent, so a duplicate message writes nothing new. Needs the "
                       "broker ($DEEPSCREEN_BROKER_URL), --dry-run too.")
    p.add_argument("--older-than", type=float, help="seconds (default $DEEPSCREEN_STUCK_AFTER_S)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--dry-run", action="store_true", help="only list them")
    p.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    p.set_defaults(func=cmd_requeue_stuck)

    p = sub.add_parser("model", help="model tools: info, export, placeholder; the registry: list, register, "
                       "activate, canary")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    m = msub.add_parser("info", help="load the model (sha256 checked) and print its metadata")
    m.add_argument("--model", dest="model_dir", help="model folder (default $DEEPSCREEN_MODEL_DIR)")
    m = msub.add_parser("export", help="calibrate a training run's best weights on validation and ship them",
                        description="Fits the temperature, a logit shift and both thresholds on the validation split, measures "
                        "validation AUC with fp16 weights and bf16 autocast, and writes the model folder (fp16 "
                        "weights when they cost no AUC).")
    m.add_argument("--run", required=True, help="training run folder (with config.json and best/)")
    m.add_argument("--out", required=True, help="model folder to write (e.g. models/deepscreen-v2)")
    m.add_argument("--version", required=True, help="version string recorded with every verdict")
    m.add_argument("--max-val", type=int, default=0, help="use only the first N validation crops (0 = all)")
    m.add_argument("--min-face-side", type=int, default=0,
                   help="faces smaller than this (box's longer side, px) get no verdict; measure it with "
                   "`python -m bench.face_size --model RUN/best` (0 = no limit)")
    m = msub.add_parser("placeholder", help="write the seeded random PLACEHOLDER model (not a detector)")
    m.add_argument("--out", default="models/placeholder")
    add_registry_parsers(msub)
    p.set_defaults(func=cmd_model)
    add_rescan_parser(sub)

    p = sub.add_parser("evaluate", help="score a labelled folder and write metrics.json, scores.csv and a report",
                       description="Evaluate the model on real/ and fake/ subfolders, or on a CSV of file,label "
                       "relative to --data. Full images run the whole pipeline (detect, classify, image score = max "
                       "over faces); --crops takes every input as a face crop.")
    p.add_argument("--data", required=True, help="labelled folder")
    p.add_argument("--labels", help="CSV with columns file,label (real|fake), paths relative to --data")
    p.add_argument("--split", help="keep only the CSV rows of this split (e.g. test, with a manifest.csv)")
    p.add_argument("--crops", action="store_true", help="inputs are face crops: skip detection")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    _add_compute_flags(p)
    p.set_defaults(func=cmd_evaluate, heatmaps_default="none")

    p = sub.add_parser("train", help="train the real/fake classifier (resumes an interrupted run)",
                       description="Train from a config file (see configs/) or flags. Re-running the same "
                       "command resumes from the run folder's checkpoint.")
    p.add_argument("--config", help="JSON run config")
    p.add_argument("--data", help="dataset folder with manifest.csv")
    p.add_argument("--out", help="run folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    from workers.ops_cli import add_operations_commands

    add_operations_commands(sub)
    add_bank_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Runs the chosen subcommand. An outage of the database, broker or object store that reaches here, in any
    subcommand, is one line on stderr and exit 3; any other error keeps its traceback."""
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if outage_service(exc) is None:
            raise
        print(unavailable_line(_command_name(args), exc), file=sys.stderr)
        return EXIT_UNAVAILABLE


def _command_name(args: argparse.Namespace) -> str:
    """`token create`, `bank list`, `migrate`: the subcommand and its action, as the user typed them."""
    actions = [value for name, value in vars(args).items() if name.endswith("_command") and isinstance(value, str)]
    return " ".join([args.command, *actions])


def configure_logging(args: argparse.Namespace) -> None:
    from workers.logs import configure_logging as configure

    # read here, not through Settings: a bad setting must still be reported through a working logger
    configure(logging.INFO if args.verbose else logging.WARNING, os.environ.get("DEEPSCREEN_LOG_FORMAT", "text"))


if __name__ == "__main__":
    sys.exit(main())
