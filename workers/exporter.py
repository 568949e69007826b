"""The worker's metrics exporter, correct under Celery's prefork pool: prometheus-client's multiprocess mode,
one HTTP exporter in the main process summing every child's files (docs/operations.md). prometheus_client is
imported lazily because PROMETHEUS_MULTIPROC_DIR must be set before its first import.
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


