"""Pytest plugin: the real services integration tests run on (loaded with `-p tests.services`).

- Postgres: the machine's server on 127.0.0.1:5432, started if down; each session gets its own database,
  migrated with Alembic, dropped at the end.
- Redis: a redis-server of the session's own on a free loopback port (so two test runs on one machine never
  consume each other's queues, and fault tests can stop it).
- S3: a moto server process on a free loopback port, spoken to over real HTTP by boto3.
- A Celery worker: `deepscreen worker` as a subprocess, pointed at all three.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("DEEPSCREEN_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


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
        pytest.skip("PostgreSQL is not running and cannot be started here")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False)
    wait_for(lambda: port_open("127.0.0.1", 5432), 30, what="postgres")


def ensure_redis() -> None:
    if port_open(REDIS_HOST, REDIS_PORT):
        return
    if not shutil.which("redis-server"):
        pytest.skip("Redis is not running and cannot be started here")
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
                    "--save", "", "--appendonly", "no"], check=False)
    wait_for(lambda: port_open(REDIS_HOST, REDIS_PORT), 15, what="redis")


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, migrated database on the machine's Postgres, dropped afterwards (tests and bench share it)."""
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
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_database("deepscreen_test") as url:
        yield url


class PrivateRedis:
    """A redis-server of this test session's own on a free loopback port: concurrent test runs on one machine
    cannot consume each other's queues, and fault tests may stop it freely."""

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
        argv = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), 15, what="private redis")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    yield server.url
    server.destroy()


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
    process = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open("127.0.0.1", port), 30, what="moto server")
    return S3Server(f"http://127.0.0.1:{port}", process)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = start_moto()
    client = server.client()
    for bucket in ("deepscreen", "uploads"):
        client.create_bucket(Bucket=bucket)
    yield server
    server.process.terminate()
    server.process.wait(10)


def service_env(postgres_url: str, redis_url: str, s3: S3Server, model_dir: Path, **extra: str) -> dict[str, str]:
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
    """`deepscreen worker` in a subprocess; its log goes to a file the test can read."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "control,upload,rescan") -> None:
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.log_offset = self.log.tell()  # a restarted worker appends to the same log
        self.process = subprocess.Popen(
            [str(BIN / "deepscreen"), "worker", f"--queues={queues}", f"--hostname=test-{uuid.uuid4().hex[:6]}@%h"],
            env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
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


@pytest.fixture(scope="session")
def flagging_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The placeholder network with thresholds that flag every face as fake (plumbing test only)."""
    import dataclasses

    from pipeline.model import METADATA_FILE, make_placeholder

    folder = tmp_path_factory.mktemp("flagging-model")
    meta = dataclasses.replace(make_placeholder(folder), version="test-flag-all", threshold_fake=0.0, threshold_real=0.0)
    (folder / METADATA_FILE).write_text(meta.to_json() + "\n")  # the sha256 covers the weights, not this file
    return folder


@pytest.fixture(scope="session")
def celery_app(redis_url):  # noqa: ANN001, ANN201
    from workers.app import create_app
    from workers.settings import Settings

    return create_app(Settings(broker_url=redis_url))


def statuses_of(engine, ids: list[str]) -> dict[str, str]:  # noqa: ANN001
    from sqlalchemy import select

    from db.schema import Event

    with engine.connect() as conn:
        rows = conn.execute(select(Event.event_id, Event.status).where(Event.event_id.in_(ids)))
        return dict(rows.all())


def wait_terminal(engine, ids: list[str], worker, timeout: float = 240) -> dict[str, str]:  # noqa: ANN001
    def done() -> bool:
        statuses = statuses_of(engine, ids)
        return len(statuses) == len(ids) and all(s != "queued" for s in statuses.values())

    try:
        wait_for(done, timeout, interval=0.5, what="terminal statuses")
    except TimeoutError:
        pytest.fail(f"not all events finished: {statuses_of(engine, ids)}\n{worker.log_path.read_text()[-4000:]}")
    return statuses_of(engine, ids)


class ThrowawayPostgres:
    """A private Postgres cluster (initdb + pg_ctl) on a free port, for tests that stop the database.
    The machine's own server is never touched, so a failed test cannot leave it down."""

    def __init__(self) -> None:
        versions = sorted(os.listdir("/usr/lib/postgresql")) if os.path.isdir("/usr/lib/postgresql") else []
        if not versions:
            pytest.skip("no PostgreSQL binaries to start a throwaway cluster")
        self.bin = Path("/usr/lib/postgresql") / versions[-1] / "bin"
        self.port = free_port()
        # not under pytest's tmp_path: that is private to root, and the server runs as the postgres user
        root = Path(tempfile.mkdtemp(prefix="deepscreen-pg-"))
        root.chmod(0o755)
        self.root = root
        self.data = root / "pgdata"
        self.logfile = root / "postgres.log"
        self.data.mkdir()
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            shutil.chown(root, "postgres")
            shutil.chown(self.data, "postgres")
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        self.start()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        options = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.logfile), "-w", "start"])

    def stop(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class SwitchableProxy:
    """A TCP proxy on a free loopback port in front of a real server. `block()` closes the listener and
    every open connection (clients see connection refused, as when the server is down); `unblock()` listens
    again. The server behind keeps its state, which a restarted moto server would not."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self.unblock()

    def unblock(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def block(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
