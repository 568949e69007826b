"""The real services a distributed benchmark runs on: a private Redis, a fresh Postgres database and a moto S3
server (with the `deepscreen` and `uploads` buckets), and a worker subprocess that is ready to take work."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devservices import PrivateRedis, S3Server, WorkerProcess, fresh_database, start_moto


@dataclass(frozen=True)
class BenchServices:
    database_url: str
    broker_url: str
    s3: S3Server
    broker_pid: int  # the private redis-server, for its CPU


@contextmanager
def bench_services(prefix: str) -> Iterator[BenchServices]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    broker = PrivateRedis()
    s3 = start_moto()
    try:
        with fresh_database(prefix) as url:
            client = s3.client()
            for bucket in ("deepscreen", "uploads"):
                client.create_bucket(Bucket=bucket)
            yield BenchServices(url, broker.url, s3, broker.process.pid)
    finally:
        s3.process.terminate()
        broker.destroy()


def start_worker(env: dict[str, str], log_path: Path, timeout: float = 180) -> WorkerProcess:
    """`deepscreen worker` in a subprocess, returned once it is ready (its model is loaded)."""
    worker = WorkerProcess(env, log_path)
    deadline = time.monotonic() + timeout
    while not worker.ready():
        if worker.process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError("worker did not start: " + log_path.read_text()[-3000:])
        time.sleep(0.2)
    return worker
