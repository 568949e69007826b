"""Re-scans, measured: re-scan throughput, and fresh-upload latency with no re-scan, with one limited to
`--rate-share` x capacity and with an unlimited one (one worker, real Redis, Postgres and moto S3).

    python -m bench.rescan --images 200 --latency-events 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from bench.services import bench_services

    parser = argparse.ArgumentParser(prog="bench.rescan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="stored images to re-scan")
    parser.add_argument("--latency-events", type=int, default=40, help="uploads per latency probe")
    parser.add_argument("--load", type=float, default=0.3, help="upload rate of a probe, as a share of capacity")
    parser.add_argument("--rate-share", type=float, default=0.5, help="re-scan rate limit, as a share of capacity")
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per screening thread (the default setting)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    with bench_services("deepscreen_bench_rescan") as svc:
        return _run(args, svc)


def _run(args: argparse.Namespace, svc) -> int:  # noqa: ANN001, C901 - bench.services.BenchServices
    from sqlalchemy import create_engine, func, select

    from bench.distributed import face_images, latency_run
    from bench.services import start_worker
    from db.model_registry import ModelRegistry
    from db.rescan_store import RescanSelector, RescanStore
    from db.schema import Event
    from devservices import service_env
    from pipeline.events import UploadEvent
    from pipeline.model import METADATA_FILE, read_metadata
    from workers.app import create_app
    from workers.rescan import celery_driver
    from workers.settings import Settings, default_model_dir
    from workers.submit import submit

    db_url, s3 = svc.database_url, svc.s3
    client = s3.client()
    worker = None
    scratch = Path(tempfile.mkdtemp(prefix="bench-rescan-"))
    try:
        probes = 3 * args.latency_events
        print(f"uploading {args.images + probes} images...", file=sys.stderr)
        events = []
        for i, body in enumerate(face_images(args.images + probes, args.side, seed=7)):
            key = f"rescan-bench/{i:06d}.jpg"
            client.put_object(Bucket="uploads", Key=key, Body=body)
            events.append(UploadEvent(event_id=f"rb-{i}", image_uri=f"s3://uploads/{key}", source="bench"))
        stored, probe_events = events[: args.images], events[args.images:]
        model_dir = Path(os.environ.get("DEEPSCREEN_MODEL_DIR", default_model_dir()))
        env = service_env(db_url, svc.broker_url, s3, model_dir, DEEPSCREEN_TORCH_THREADS=str(args.threads),
                          DEEPSCREEN_BATCH_SIZE="32", DEEPSCREEN_BATCH_WAIT_MS="250", DEEPSCREEN_DETECT_MAX_SIDE=str(Settings().detect_max_side))
        worker = start_worker(env, scratch / "worker.log")
        app = create_app(Settings(broker_url=svc.broker_url))
        engine = create_engine(db_url)

        def finished(ids: list[str]) -> int:
            with engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(Event)
                                       .where(Event.event_id.in_(ids), Event.status != "queued")) or 0)

        started = time.perf_counter()
        submit(stored, celery_app=app)
        ids = [e.event_id for e in stored]
        while finished(ids) < len(ids):
            time.sleep(0.5)
        capacity = len(ids) / (time.perf_counter() - started)
        result: dict[str, Any] = {"images": args.images, "upload_images_per_s": round(capacity, 2),
                                  "threads": args.threads, "image_side": args.side}
        chunks = [probe_events[i * args.latency_events:(i + 1) * args.latency_events] for i in range(3)]
        result["idle"] = latency_run(engine, app, chunks[0], rate=args.load * capacity)

        copy = scratch / "model-copy"
        shutil.copytree(model_dir, copy)
        meta = read_metadata(copy)
        version = f"{meta.version}-rescan-bench"
        (copy / METADATA_FILE).write_text(dataclasses.replace(meta, version=version).to_json())
        registry = ModelRegistry(engine)
        registry.register(version, meta.sha256, str(copy))
        registry.activate(version)
        rescans = RescanStore(engine)
        for phase, share, probe in (("limited", args.rate_share, chunks[1]), ("unlimited", 1000.0, chunks[2])):
            if phase == "unlimited":  # a third version, so the same images are selected again
                again = f"{version}-2"
                (copy / METADATA_FILE).write_text(dataclasses.replace(meta, version=again).to_json())
                registry.register(again, meta.sha256, str(copy))
                registry.activate(again)
                version = again
            run = rescans.create(RescanSelector(), version, rate_per_s=share * capacity, chunk_size=500)
            driver = celery_driver(app, rescans, tick_s=1.0, max_queued=500)
            stop = threading.Event()

            def drive(run_id: int = run.id, driver: Any = driver, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    driver.tick_run(run_id)
                    if rescans.get(run_id).state in ("finished", "cancelled"):
                        return
                    time.sleep(1.0)

            thread = threading.Thread(target=drive, daemon=True)
            thread.start()
            time.sleep(3)  # let the re-scan fill the queue first
            result[phase] = latency_run(engine, app, probe, rate=args.load * capacity)
            thread.join(1800)
            stop.set()
            report = rescans.get(run.id).report
            result[phase].update({"rescan_rate_limit": round(share * capacity, 2),
                                  "rescan_images": report.get("images"),
                                  "rescan_images_per_s": report.get("images_per_s")})
        print(json.dumps(result, indent=2))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        engine.dispose()
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
