"""The worker's metrics exporter, correct under Celery's prefork pool.

Scheme: prometheus-client's **multiprocess mode**. `deepscreen worker` points PROMETHEUS_MULTIPROC_DIR at a
fresh, empty folder before anything imports prometheus_client (`prepare_multiprocess_dir`; this module
imports it lazily for that reason). Every pool child then writes its samples to its own mmap files there,
and the worker's main process serves one HTTP exporter (`serve_exporter`) whose MultiProcessCollector sums
the files of all children. Counters and histograms of a child that died keep counting in the sum (a
restarted child never makes a counter go backwards); `deepscreen_worker_processes` is a live-sum gauge, so a
dead child's 1 is dropped (`mark_process_dead`). With the solo pool the same code runs in one process.
tests/test_metrics.py proves it with two processes and with a prefork worker of two children.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(folder: Path | None) -> Path:
    """Point prometheus-client at an empty folder (call before prometheus_client is imported anywhere).

    Sample files a previous run left would add their counts to this one's, so they are removed (only
    prometheus-client's own `*.db` files: a folder set by mistake to something else loses nothing)."""
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="deepscreen-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def multiprocess_registry(folder: str | Path) -> Any:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    return registry


def serve_exporter(port: int, folder: str | Path, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a scrape target
    """The worker's one exporter: the sum of every pool child's samples, on http://addr:port/metrics."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=addr, registry=multiprocess_registry(folder))
    except OSError as exc:
        # a taken port must not stop the screening: the missing scrape target alerts (DeepscreenNoWorkers)
        log.error("metrics exporter not started port=%d error=%s", port, exc)
        return
    log.info("metrics exporter port=%d multiproc_dir=%s", port, folder)


def mark_process_dead(pid: int) -> None:
    """A pool child exits: its live gauges stop counting (counters and histograms keep their totals)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


