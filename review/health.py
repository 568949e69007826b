"""Readiness of `deepscreen serve`: Postgres, Redis, the blob store and the model, each checked on its own.

/healthz says the process answers; /readyz says it can do its work. Each check is short (timeouts of a few
seconds) and names itself, so a 503 says which part failed. The public /readyz answers only ready or not,
from a `ReadinessCache`; the named checks with their details (paths, versions, exception text) are for
admins (GET /v1/admin/readiness).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from review.context import ReviewContext

log = logging.getLogger(__name__)
TIMEOUT_S = 3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "seconds": round(self.seconds, 4)}


def _postgres(ctx: ReviewContext) -> str:
    with ctx.store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return ctx.store.engine.dialect.name


def _redis(ctx: ReviewContext) -> str:
    if ctx.celery_app is None:
        return "not used (embedded)"
    import redis

    client = redis.Redis.from_url(ctx.settings.broker_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()
    return "pong"


def _blobs(ctx: ReviewContext) -> str:
    client = getattr(ctx.blobs, "client", None)
    if client is not None:
        client.head_bucket(Bucket=ctx.blobs.bucket)  # type: ignore[attr-defined]
        return f"bucket {ctx.blobs.bucket}"  # type: ignore[attr-defined]
    root = Path(getattr(ctx.blobs, "root", "."))
    root.mkdir(parents=True, exist_ok=True)
    return f"folder {root}"


def _model(ctx: ReviewContext) -> str:
    from pipeline.model import WEIGHTS_FILE, read_metadata

    if ctx._runtime is not None:  # noqa: SLF001 - loaded for the check page: it is the one serving
        return f"loaded {ctx._runtime.screener.model_version}"  # noqa: SLF001
    folder = Path(ctx.settings.model_dir)
    meta = read_metadata(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{WEIGHTS_FILE} missing in {folder}")
    return f"{meta.version} (loads on first use)"


CHECKS = (("postgres", _postgres), ("redis", _redis), ("blob_store", _blobs), ("model", _model))


def readiness(ctx: ReviewContext) -> list[Check]:
    results = []
    for name, check in CHECKS:
        started = time.perf_counter()
        try:
            detail, ok = check(ctx), True
        except Exception as exc:  # noqa: BLE001 - any failure is this part's failure, named
            detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}", False
        results.append(Check(name, ok, detail, time.perf_counter() - started))
    return results


class ReadinessCache:
    """The last readiness answer, reused for `ttl_s` seconds: a flood of probes costs one round of checks
    (one Postgres, Redis and S3 connection) per period, not one per request. While one thread refreshes it,
    the others answer with the previous result instead of queueing behind a check that may take seconds."""

    def __init__(self, ctx: ReviewContext, ttl_s: float) -> None:
        self.ctx = ctx
        self.ttl_s = ttl_s
        self._checks: list[Check] | None = None
        self._at = 0.0
        self._refreshing = threading.Lock()

    def _fresh(self) -> bool:
        return self._checks is not None and time.monotonic() - self._at < self.ttl_s

    def get(self) -> list[Check]:
        # only the first callers wait for a check: there is no earlier answer to give them
        if not self._fresh() and self._refreshing.acquire(blocking=self._checks is None):
            try:
                if not self._fresh():
                    self._checks, self._at = readiness(self.ctx), time.monotonic()
                    _log_failures(self._checks)
            finally:
                self._refreshing.release()
        return self._checks or []


def _log_failures(checks: list[Check]) -> None:
    """The public answer is bare, so the operator reads why in the log (once per cache period at most)."""
    for check in checks:
        if not check.ok:
            log.warning("not ready check=%s detail=%s", check.name, check.detail)
