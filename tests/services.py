"""Pytest plugin (`-p tests.services`): session fixtures on devservices' Postgres database, Redis and moto S3,
and the fault tests' throwaway Postgres cluster and switchable TCP proxy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devservices import PrivateRedis, S3Server, free_port, fresh_database, start_moto, wait_for


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_database("deepscreen_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    yield server.url
    server.destroy()


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
