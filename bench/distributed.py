"""The distributed path, measured: N distinct images through Redis, one Celery worker, Postgres and moto S3,
against embedded `scan` on the same images (both warm), and the worker's RSS from `--rss-early` to N images.

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


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a prefork worker's pool children do the screening)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo += [int(child) for child in handle.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def rss_mb(pid: int) -> float:
    """Resident MB of `pid` and its descendants together."""
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024.0
        except (FileNotFoundError, StopIteration):
            continue
    return total or float("nan")


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU seconds so far of `pid` (all its threads) and, unless `descendants` is False, of its
    live descendants. A descendant that exits in between takes its seconds with it; pool children live as
    long as the worker."""
    total = 0
    for member in process_tree(pid) if descendants else [pid]:
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # gone in between (FileNotFoundError, ProcessLookupError)
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def processes_named(name: str) -> list[int]:
    """Live processes whose command name is `name` (the machine's Postgres: its postmaster and backends)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() == name:
                        out.append(int(entry))
            except OSError:  # gone in between
                continue
    return out


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
    from bench.services import bench_services

    parser = argparse.ArgumentParser(prog="bench.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rss-early", type=int, default=200)
    parser.add_argument("--side", type=int, default=320, help="side of the generated square images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per screening thread (the default setting)")
    parser.add_argument("--heatmaps", default="flagged")
    parser.add_argument("--pool", default=None, help="the worker's Celery pool (default: the setting's)")
    parser.add_argument("--concurrency", type=int, default=None, help="the worker's pool size (default: the setting's)")
    parser.add_argument("--screen-threads", type=int, default=None, help="chunks screened at once per batch")
    parser.add_argument("--worker-env", action="append", default=[], help="extra KEY=VALUE for the worker")
    parser.add_argument("--warmup", type=int, default=64, help="distinct images the worker screens before the clock starts")
    parser.add_argument("--rounds", type=int, default=4,
                        help="parts the events after --rss-early go in, each followed by embedded scan of its images")
    parser.add_argument("--latency-events", type=int, default=200,
                        help="events for the latency run, sent at half the measured throughput (0 skips it)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    with bench_services("deepscreen_bench") as svc:
        return _run(args, svc)


def _run(args: argparse.Namespace, svc) -> int:  # noqa: ANN001 - bench.services.BenchServices
    from sqlalchemy import create_engine, func, select

    from bench.services import start_worker
    from db.schema import Event
    from devservices import service_env
    from pipeline.events import UploadEvent
    from workers.app import create_app
    from workers.settings import Settings, default_model_dir
    from workers.submit import submit

    db_url, redis_url, s3 = svc.database_url, svc.broker_url, svc.s3
    client = s3.client()
    worker = None
    try:
        total = args.events + args.latency_events + args.warmup
        print(f"uploading {total} images...", file=sys.stderr)
        events = []
        local = Path(tempfile.mkdtemp(prefix="bench-same-images-"))  # the measured images, for embedded scan
        for i, body in enumerate(face_images(total, args.side)):
            key = f"bench/{i:06d}.jpg"
            client.put_object(Bucket="uploads", Key=key, Body=body)
            events.append(UploadEvent(event_id=f"bench-{i}", image_uri=f"s3://uploads/{key}", source="bench"))
            if args.warmup <= i < args.warmup + args.events:
                (local / f"{i - args.warmup:06d}.jpg").write_bytes(body)
        warmup, events = events[: args.warmup], events[args.warmup :]
        events, latency_events = events[: args.events], events[args.events :]
        env = service_env(db_url, redis_url, s3, Path(os.environ.get("DEEPSCREEN_MODEL_DIR", default_model_dir())),
                          DEEPSCREEN_TORCH_THREADS=str(args.threads), DEEPSCREEN_BATCH_SIZE="32",
                          DEEPSCREEN_BATCH_WAIT_MS="250", DEEPSCREEN_HEATMAPS=args.heatmaps,
                          DEEPSCREEN_DETECT_MAX_SIDE=str(Settings().detect_max_side),
                          **_worker_overrides(args))
        log_path = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "worker.log"
        worker = start_worker(env, log_path)
        celery_app = create_app(Settings(broker_url=redis_url))
        engine = create_engine(db_url)

        def finished() -> int:
            with engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(Event).where(Event.status != "queued")) or 0)

        def last_verdict_at(event_ids: list[str]) -> float:
            """Epoch seconds of the latest `finished_at` among `event_ids` (the worker runs on the same host, so its clock is ours)."""
            with engine.connect() as conn:
                latest = conn.scalar(select(func.max(Event.finished_at)).where(Event.event_id.in_(event_ids)))
            if latest is None:
                raise RuntimeError("every event finished, but none has a finished_at")
            return latest.timestamp()

        # Two phases, so both RSS readings are taken with the worker idle (between batches the heap is trimmed,
        # so a reading in the middle of a batch would measure the batch, not a leak).
        # CPU seconds of the measured parts: the worker's (all its processes), and the services' that share these
        # cores here and would not in production (moto for S3, Redis, the machine's Postgres), and this
        # process's own (submitting and polling)
        spent = dict.fromkeys(("worker", "moto", "redis", "postgres", "harness"), 0.0)

        def phase(batch: list) -> float:
            pids = {"worker": worker.process.pid, "moto": s3.process.pid, "redis": svc.broker_pid}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            # each server process on its own (the postmaster's tree would count every backend twice); this is
            # the whole server's CPU, the benchmark's database and anything else on it
            postgres = {pid: cpu_seconds(pid, descendants=False) for pid in processes_named("postgres")}
            harness = os.times()
            began = time.time()
            submit(batch, celery_app=celery_app)
            target = finished() + len(batch)
            while finished() < target:
                time.sleep(0.5)
                if worker.process.poll() is not None:
                    raise RuntimeError("worker died: " + log_path.read_text()[-2000:])
            # to the last verdict's own time, not to the poll that saw it (which added up to 0.5 s a part)
            took = last_verdict_at([event.event_id for event in batch]) - began
            for name, pid in pids.items():
                spent[name] += cpu_seconds(pid) - before[name]
            # a backend that exits in between takes its seconds with it; one that starts counts from zero
            spent["postgres"] += sum(cpu_seconds(pid, descendants=False) - postgres.get(pid, 0.0)
                                     for pid in processes_named("postgres"))
            after = os.times()
            spent["harness"] += after.user - harness.user + after.system - harness.system
            return took

        from bench.run import bench_scan

        if warmup:
            phase(warmup)  # not counted: the first batches pay for lazy imports and kernel selection
            spent.update(dict.fromkeys(spent, 0.0))
        # The events go in parts: the first `rss_early`, then `--rounds` equal parts. After each distributed
        # part, embedded `scan` screens the same images while the worker sits idle, so both sides of the ratio
        # are measured in the same stretches of this shared machine's time (in one piece each, a slow spell
        # on one side moved the ratio by 10%).
        early_at = min(args.rss_early, args.events)
        rest = args.events - early_at
        rounds = max(1, min(args.rounds, rest)) if rest else 0
        bounds = [0, early_at] + [early_at + rest * (r + 1) // rounds for r in range(rounds)]
        files = sorted(local.glob("*.jpg"))
        embedded_settings = Settings(torch_threads=args.threads, heatmaps=args.heatmaps, batch_size=32)
        seconds = embedded_seconds = 0.0
        split: list[tuple[float, float]] = []
        outcomes: dict[str, int] = {}
        rss_early = rss_final = float("nan")
        for start, end in zip(bounds, bounds[1:], strict=False):
            if end <= start:
                continue
            took = phase(events[start:end])
            seconds += took
            time.sleep(2)
            rss_final = rss_mb(worker.process.pid)
            if start == 0:
                rss_early = rss_final
            scanned = bench_scan(embedded_settings, files[start:end], crops=False)
            spent["embedded"] = spent.get("embedded", 0.0) + scanned["cpu_seconds"]  # the timed scan's alone
            for outcome, count in scanned["counts"].items():  # how many were flagged: they cost S3 writes
                outcomes[outcome] = outcomes.get(outcome, 0) + count
            embedded_seconds += scanned["seconds"]
            split.append(((end - start) / took, scanned["images_per_s"]))
        result: dict[str, Any] = {
            "events": args.events, "seconds": round(seconds, 2), "images_per_s": round(args.events / seconds, 2),
            "rss_mb_early": round(rss_early, 1), "rss_early_at": early_at, "rss_mb_final": round(rss_final, 1),
            "rss_growth": round((rss_final - rss_early) / rss_early, 4),
            "threads": args.threads, "image_side": args.side, "heatmaps": args.heatmaps,
            "parts_distributed_embedded": [[round(d, 2), round(e, 2)] for d, e in split],
            # where the CPU went: the worker's own, and the services' (moto as S3, Redis, Postgres) that share
            # these cores here and would not in production, and the harness's
            **{f"{name}_cpu_ms_per_image": round(1000 * spent[name] / args.events, 1)
               for name in ("worker", "moto", "redis", "postgres", "harness")},
            "embedded_cpu_ms_per_image": round(1000 * spent.get("embedded", 0.0) / args.events, 1),
            "outcomes": outcomes,  # verdict (or status) of each image, from the embedded scans
        }
        if latency_events:
            result.update(latency_run(engine, celery_app, latency_events, rate=0.5 * args.events / seconds))
        worker.stop()
        worker = None
        embedded_rate = args.events / embedded_seconds
        result["embedded_images_per_s"] = round(embedded_rate, 2)
        result["distributed_vs_embedded"] = round(result["images_per_s"] / embedded_rate, 3)
        shutil.rmtree(local, ignore_errors=True)
        print(json.dumps(result, indent=2))
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        engine.dispose()
    finally:
        if worker is not None:
            worker.stop()
    return 0


def _worker_overrides(args: argparse.Namespace) -> dict[str, str]:
    names = {"pool": "DEEPSCREEN_POOL", "concurrency": "DEEPSCREEN_CONCURRENCY", "screen_threads": "DEEPSCREEN_SCREEN_THREADS"}
    extra = dict(item.split("=", 1) for item in args.worker_env)
    return {**extra, **{env: str(getattr(args, name)) for name, env in names.items() if getattr(args, name) is not None}}


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
