"""Load: a burst of N events onto the queue, one CPU worker, real Redis, Postgres and moto S3; `--distinct`
images are spread over them, the rest are re-uploads. The clock starts when the worker is ready. Exits 1 if
any event is lost or got more than one verdict or review item.

    python -m bench.load --events 10000 --distinct 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:

    from bench.services import bench_services

    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--distinct", type=int, default=1000, help="distinct images among the events")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    parser.add_argument("--worker-env", action="append", default=[], help="extra KEY=VALUE for the worker")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    with bench_services("deepscreen_load") as svc:
        return _run(args, svc)


def _run(args: argparse.Namespace, svc) -> int:  # noqa: ANN001 - bench.services.BenchServices
    from sqlalchemy import create_engine, func, select

    from bench.distributed import face_images, rss_mb
    from bench.services import start_worker
    from db.schema import Event, ReviewItem, Verdict
    from db.states import TERMINAL
    from devservices import service_env
    from pipeline.events import UploadEvent
    from workers.app import create_app
    from workers.settings import Settings, default_model_dir
    from workers.submit import submit

    url, broker_url, s3 = svc.database_url, svc.broker_url, svc.s3
    client = s3.client()
    worker = None
    try:
        bodies = list(face_images(args.distinct, args.side, seed=11))
        print(f"uploading {args.events} objects ({args.distinct} distinct images)...", file=sys.stderr)
        events = []
        for i in range(args.events):
            key = f"load/{i:06d}.jpg"
            client.put_object(Bucket="uploads", Key=key, Body=bodies[i % args.distinct])
            events.append(UploadEvent(event_id=f"load-{i}", image_uri=f"s3://uploads/{key}", source="load"))
        extra = dict(item.split("=", 1) for item in args.worker_env)
        env = service_env(url, broker_url, s3, Path(os.environ.get("DEEPSCREEN_MODEL_DIR", default_model_dir())),
                          DEEPSCREEN_TORCH_THREADS=str(args.threads), DEEPSCREEN_BATCH_SIZE="32",
                          DEEPSCREEN_BATCH_WAIT_MS="250", DEEPSCREEN_VISIBILITY_TIMEOUT="3600", **extra)
        app = create_app(Settings(broker_url=broker_url))
        burst_at = time.time()
        submit(events, celery_app=app)
        queued_s = time.time() - burst_at
        print(f"burst of {args.events} queued in {queued_s:.1f} s; starting the worker", file=sys.stderr)
        # the clock starts when the worker can take work (its model loaded)
        worker = start_worker(env, Path(tempfile.mkdtemp(prefix="bench-load-")) / "worker.log")
        engine = create_engine(url)
        started = time.time()
        samples: list[dict[str, float]] = []
        done = 0
        while done < args.events:
            time.sleep(args.sample_s)
            if worker.process.poll() is not None:
                raise RuntimeError("worker died: " + worker.log_path.read_text()[-3000:])
            with engine.connect() as conn:
                done = int(conn.scalar(select(func.count()).select_from(Event).where(Event.status != "queued")) or 0)
            samples.append({"t": round(time.time() - started, 1), "done": done, "rss_mb": round(rss_mb(worker.process.pid), 1)})
            print(f"\r{done}/{args.events} rss={samples[-1]['rss_mb']:.0f} MB", end="", file=sys.stderr)
        drain_s = time.time() - started
        print(file=sys.stderr)
        with engine.connect() as conn:
            finished = [row.finished_at.timestamp() for row in conn.execute(select(Event.finished_at))]
            statuses = dict(conn.execute(select(Event.status, func.count()).group_by(Event.status)).all())
            verdicts = int(conn.scalar(select(func.count()).select_from(Verdict)) or 0)
            per_image = conn.execute(select(func.count()).select_from(Verdict).group_by(Verdict.image_id,
                                                                                        Verdict.model_version)).all()
            items = conn.execute(select(func.count()).select_from(ReviewItem).group_by(ReviewItem.verdict_id)).all()
        latencies = sorted(f - started for f in finished)
        pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        early = next((s for s in samples if s["done"] >= 0.1 * args.events), samples[0])
        result: dict[str, Any] = {
            "events": args.events, "distinct_images": args.distinct, "image_side": args.side,
            "threads": args.threads, "worker_env": extra, "burst_queued_s": round(queued_s, 2),
            "drain_s": round(drain_s, 1), "events_per_s": round(args.events / drain_s, 2),
            "latency_s": {"p50": round(pick(0.5), 1), "p95": round(pick(0.95), 1), "p99": round(pick(0.99), 1),
                          "max": round(latencies[-1], 1)},
            "statuses": statuses, "verdicts": verdicts,
            "lost": args.events - sum(statuses.get(s, 0) for s in TERMINAL),
            "duplicate_verdicts": sum(1 for (n,) in per_image if n > 1),
            "duplicate_review_items": sum(1 for (n,) in items if n > 1),
            "rss_mb": {"at_10pct": early["rss_mb"], "at_10pct_done": early["done"], "final": samples[-1]["rss_mb"],
                       "max": max(s["rss_mb"] for s in samples)},
            "rss_samples": samples[:: max(1, len(samples) // 40)],
        }
        result["rss_growth_after_10pct"] = round((result["rss_mb"]["final"] - early["rss_mb"]) / early["rss_mb"], 4)
        print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        engine.dispose()
        ok = result["lost"] == 0 and result["duplicate_verdicts"] == 0 and result["duplicate_review_items"] == 0
        return 0 if ok else 1
    finally:
        if worker is not None:
            worker.stop()


if __name__ == "__main__":
    sys.exit(main())
