"""Throwaway local services for tests and benchmarks: a fresh Postgres database, a private redis-server,
a moto S3 server and `deepscreen worker` subprocesses, each on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get(
    "DEEPSCREEN_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


class ServiceUnavailable(unittest.SkipTest):
    """A service is down and cannot be started. A SkipTest, so pytest skips the test that needed it."""


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def ensure_postgres() -> None:
    if port_open("127.0.0.1", 5432):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or not shutil.which("pg_ctlcluster"):
        raise ServiceUnavailable("PostgreSQL is not running and cannot be started here")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False)
    wait_for(lambda: port_open("127.0.0.1", 5432), 30, what="postgres")


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, migrated database on the local Postgres server (DEEPSCREEN_TEST_PG_ADMIN), dropped afterwards."""
    from sqlalchemy import create_engine, text

    from db.migrate import upgrade

    ensure_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


class PrivateRedis:
    """A redis-server of its own on a free loopback port: concurrent runs on one host cannot consume each
    other's queues, and fault tests may stop it freely."""

    def __init__(self, appendonly: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="deepscreen-redis-"))
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), 15, what="private redis")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def client(self):  # noqa: ANN201
        from workers.storage import s3_client

        return s3_client(self.endpoint, "us-east-1")


def start_moto(port: int | None = None) -> S3Server:
    port = port or free_port()
    exe = BIN / "moto_server"
    process = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: port_open("127.0.0.1", port), 30, what="moto server")
    return S3Server(f"http://127.0.0.1:{port}", process)


def service_env(
    postgres_url: str, redis_url: str, s3: S3Server, model_dir: Path, **extra: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "DEEPSCREEN_DATABASE_URL": postgres_url,
        "DEEPSCREEN_BROKER_URL": redis_url,
        "DEEPSCREEN_S3_ENDPOINT_URL": s3.endpoint,
        "DEEPSCREEN_S3_BUCKET": "deepscreen",
        "DEEPSCREEN_INPUT_BUCKETS": "uploads",
        "DEEPSCREEN_MODEL_DIR": str(model_dir),
        "DEEPSCREEN_TORCH_THREADS": "1",
        "DEEPSCREEN_BATCH_SIZE": "8",
        "DEEPSCREEN_BATCH_WAIT_MS": "200",
        "DEEPSCREEN_DETECT_MAX_SIDE": "640",
        "DEEPSCREEN_RETRY_BACKOFF_S": "0.5",
        "DEEPSCREEN_VISIBILITY_TIMEOUT": "60",
        "DEEPSCREEN_METRICS_PORT": "0",  # no exporter unless a test asks (workers of concurrent runs share ports)
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    if float(env["DEEPSCREEN_VISIBILITY_TIMEOUT"]) < 60 and "DEEPSCREEN_TASK_TIME_LIMIT_S" not in extra:
        # a test that shortens the visibility timeout to watch redelivery would need time limits shorter than
        # a batch: it runs without them
        env.update(DEEPSCREEN_TASK_SOFT_TIME_LIMIT_S="0", DEEPSCREEN_TASK_TIME_LIMIT_S="0")
    elif "DEEPSCREEN_TASK_TIME_LIMIT_S" not in extra:
        env.update(DEEPSCREEN_TASK_SOFT_TIME_LIMIT_S="40", DEEPSCREEN_TASK_TIME_LIMIT_S="50")
    return env


class WorkerProcess:
    """`deepscreen worker` in a subprocess; its log goes to a file the caller can read."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "control,upload,rescan") -> None:
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.log_offset = self.log.tell()  # a restarted worker appends to the same log
        self.process = subprocess.Popen(
            [
                str(BIN / "deepscreen"),
                "worker",
                f"--queues={queues}",
                f"--hostname=test-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return b"ready." in handle.read()

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.close()
