"""The distributed path, measured: N events -> Redis -> one Celery worker -> Postgres + moto S3.

Reports images/s from the first submit to the last verdict, and the worker's RSS after the first
`--rss-early` and after all N images (Grad-CAM hooks and caches must not leak). Every image is distinct
(a face with per-image noise), so nothing is answered from the sha256 reuse path.

    python -m bench.distributed --events 2000 --rss-early 200
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def face_images(count: int, side: int, seed: int = 0):  # noqa: ANN201
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(data.astronaut()).resize((side, side)))
    for _ in range(count):
        noisy = np.clip(base.astype(np.int16) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=85)
        yield buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy import create_engine, func, select

    from db.schema import Event
    from pipeline.events import UploadEvent
    from tests.services import (
        PrivateRedis,
        WorkerProcess,
        fresh_database,
        service_env,
        start_moto,
    )
    from workers.app import create_app
    from workers.settings import Settings, default_model_dir
    from workers.submit import submit

    parser = argparse.ArgumentParser(prog="bench.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rss-early", type=int, default=200)
    parser.add_argument("--side", type=int, default=320, help="side of the generated square images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heatmaps", default="flagged")
    parser.add_argument("--latency-events", type=int, default=200,
                        help="events for the latency run, sent at half the measured throughput (0 skips it)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    broker = PrivateRedis()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = start_moto()
    database = fresh_database("deepscreen_bench")
    db_url = database.__enter__()
    redis_url = broker.url
    worker = None
    try:
        client = s3.client()
        for bucket in ("deepscreen", "uploads"):
            client.create_bucket(Bucket=bucket)
        total = args.events + args.latency_events
        print(f"uploading {total} images...", file=sys.stderr)
        events = []
        for i, body in enumerate(face_images(total, args.side)):
            key = f"bench/{i:06d}.jpg"
            client.put_object(Bucket="uploads", Key=key, Body=body)
            events.append(UploadEvent(event_id=f"bench-{i}", image_uri=f"s3://uploads/{key}", source="bench"))
        events, latency_events = events[: args.events], events[args.events :]
        local = Path(tempfile.mkdtemp(prefix="bench-same-images-"))
        for i, body in enumerate(face_images(args.events, args.side)):
            (local / f"{i:06d}.jpg").write_bytes(body)
        env = service_env(db_url, redis_url, s3, Path(os.environ.get("DEEPSCREEN_MODEL_DIR", default_model_dir())),
                          DEEPSCREEN_TORCH_THREADS=str(args.threads), DEEPSCREEN_BATCH_SIZE="32",
                          DEEPSCREEN_BATCH_WAIT_MS="250", DEEPSCREEN_HEATMAPS=args.heatmaps,
                          DEEPSCREEN_DETECT_MAX_SIDE="960")
        log_path = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "worker.log"
        worker = WorkerProcess(env, log_path)
        deadline = time.monotonic() + 180
        while not worker.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not start: " + log_path.read_text()[-2000:])
            time.sleep(0.5)
        celery_app = create_app(Settings(broker_url=redis_url))
        engine = create_engine(db_url)

        def finished() -> int:
            with engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(Event).where(Event.status != "queued")) or 0)

        started = time.perf_counter()
        submit(events, celery_app=celery_app)
        rss_early = None
        early_at = None
        done = 0
        while done < args.events:
            time.sleep(0.5)
            done = finished()
            if rss_early is None and done >= args.rss_early:
                rss_early, early_at = rss_mb(worker.process.pid), done
            if worker.process.poll() is not None:
                raise RuntimeError("worker died: " + log_path.read_text()[-2000:])
        seconds = time.perf_counter() - started
        rss_final = rss_mb(worker.process.pid)
        result: dict[str, Any] = {
            "events": args.events, "seconds": round(seconds, 2), "images_per_s": round(args.events / seconds, 2),
            "rss_mb_early": round(rss_early or 0, 1), "rss_early_at": early_at, "rss_mb_final": round(rss_final, 1),
            "rss_growth": round((rss_final - (rss_early or rss_final)) / (rss_early or rss_final), 4),
            "threads": args.threads, "image_side": args.side, "heatmaps": args.heatmaps,
        }
        if latency_events:
            result.update(latency_run(engine, celery_app, latency_events, rate=0.5 * args.events / seconds))
        worker.stop()
        worker = None
        from bench.run import bench_scan

        embedded = bench_scan(Settings(torch_threads=args.threads, heatmaps=args.heatmaps, batch_size=32,
                                       detect_max_side=960), sorted(local.glob("*.jpg")), crops=False)
        result["embedded_images_per_s"] = round(embedded["images_per_s"], 2)
        result["distributed_vs_embedded"] = round(result["images_per_s"] / embedded["images_per_s"], 3)
        shutil.rmtree(local, ignore_errors=True)
        print(json.dumps(result, indent=2))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        engine.dispose()
    finally:
        if worker is not None:
            worker.stop()
        s3.process.terminate()
        broker.destroy()
        database.__exit__(None, None, None)
    return 0


def latency_run(engine, celery_app, events, rate: float) -> dict[str, Any]:  # noqa: ANN001
    """Send events one by one at `rate` per second; event->verdict latency = finished_at - send time."""
    from sqlalchemy import select

    from db.schema import Event
    from workers.submit import submit

    sent: dict[str, float] = {}
    start = time.time()
    for i, event in enumerate(events):
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        sent[event.event_id] = time.time()
        submit([event], celery_app=celery_app)
    ids = list(sent)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            rows = conn.execute(select(Event.event_id, Event.finished_at).where(Event.event_id.in_(ids),
                                                                                  Event.status != "queued")).all()
        if len(rows) == len(ids):
            break
        time.sleep(0.5)
    latencies = sorted(row.finished_at.timestamp() - sent[row.event_id] for row in rows)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"latency_rate_per_s": round(rate, 2), "latency_events": len(latencies),
            "latency_p50_s": round(pick(0.50), 3), "latency_p95_s": round(pick(0.95), 3)}


if __name__ == "__main__":
    sys.exit(main())
